"""The detector's own speed: training steps/s and inference frames/s at a given token map.

One frame of interest per window, so the head's cost per window is its cost per frame. The ratio
to the encoder (`ethoprism bench localize`) is taken in `pipeline.localize_bench`, which may
import the encoder; this wing may not.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ethoprism.probe.localize.model import Detector, DetectorConfig, level_grids, peaks, targets
from ethoprism.probe.localize.train import make_train_step


def rate(fn, n_items: int, repeat: int) -> float:
    """Items/s of `fn` (one call = n_items), after one call that compiles it."""
    jax.block_until_ready(fn())  # compile
    t0 = time.perf_counter()
    for _ in range(repeat):
        jax.block_until_ready(fn())
    return repeat * n_items / (time.perf_counter() - t0)


def head_rates(
    map_shape: tuple[int, int, int], frame_size: int, batch_size: int = 16, repeat: int = 3
) -> dict:
    """Training steps/s and inference frames/s of a two-class detector on (h, w, D) maps."""
    h, w, d = map_shape
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

    infer = jax.jit(lambda p, x: peaks(model.apply({"params": p}, x)[0], frame_size, 100))
    return {
        "map_shape": [h, w, d],
        "batch_size": batch_size,
        "train_steps_per_s": rate(train_once, 1, repeat),
        "frames_per_s": rate(lambda: infer(params, tokens), batch_size, repeat),
    }
