"""`ethoprism bench localize`: the detector's training and inference speed at the base token map
(16 x 16 x 768), and its inference time per window over the encoder's, measured in one run.

One frame of interest per window, so the head's cost per window is its cost per frame.
The encoder runs with random weights (speed does not depend on them).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ethoprism.probe.localize.model import Detector, DetectorConfig, level_grids, peaks, targets
from ethoprism.probe.localize.train import make_train_step


def _rate(fn, n_items: int, repeat: int) -> float:
    jax.block_until_ready(fn())  # compile
    t0 = time.perf_counter()
    for _ in range(repeat):
        jax.block_until_ready(fn())
    return repeat * n_items / (time.perf_counter() - t0)


def bench_localize(small: bool = False, batch_size: int = 16, repeat: int = 3) -> dict:
    from ethoprism.extract import load_encoder  # the encoder only to time it

    model_name, frame_size = ("videoprism-tiny", 72) if small else ("videoprism-b", 288)
    encoder = load_encoder(model_name, "random")
    cfg = encoder.config
    side = frame_size // cfg.patch_size
    h, w, d = side, side, cfg.model_dim
    config = DetectorConfig(n_classes=2)
    model = Detector(config)
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.normal(size=(batch_size, h, w, d)), jnp.float32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), tokens[:1])["params"]

    grids = level_grids(config, h, w)
    one = targets(config, grids, frame_size, np.array([[20.0, 30, 60, 40]]), np.array([0]))
    level_targets = [tuple(jnp.asarray(np.stack([a] * batch_size)) for a in lvl) for lvl in one]
    tx = optax.adamw(1e-4, weight_decay=1e-5)
    step = make_train_step(model, tx)
    state = {"params": params, "opt": tx.init(params)}

    def train_once():
        state["params"], state["opt"], loss, _ = step(
            state["params"], state["opt"], tokens, level_targets
        )
        return loss

    train_steps = _rate(train_once, 1, repeat)

    infer = jax.jit(lambda p, x: peaks(model.apply({"params": p}, x)[0], frame_size, 100))
    frames_per_s = _rate(lambda: infer(params, tokens), batch_size, repeat)

    windows = max(1, min(batch_size, 2 if not small else 16))
    length = 16
    pixels = jnp.asarray(rng.random((windows, length, frame_size, frame_size, 3)), jnp.float32)
    encoder_windows = _rate(lambda: encoder(pixels), windows, 1)
    return {
        "model": model_name,
        "map_shape": [h, w, d],
        "batch_size": batch_size,
        "train_steps_per_s": train_steps,
        "frames_per_s": frames_per_s,
        "encoder_windows_per_s": encoder_windows,
        "head_vs_encoder": encoder_windows / frames_per_s,
    }
