"""`ethoprism bench localize`: the detector's training and inference speed at the base token map
(16 x 16 x 768), and its inference time per window over the encoder's, both measured in this run.

Here rather than in `probe.localize` because the ratio needs the encoder, which the probe wings
may not import (DESIGN's dependency rule); a figure passed in from another run would not be
"measured in one run". The encoder runs with random weights (speed does not depend on them).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ethoprism.extract import load_encoder
from ethoprism.probe.localize.bench import head_rates, rate


def bench_localize(small: bool = False, batch_size: int = 16, repeat: int = 3) -> dict:
    model_name, frame_size = ("videoprism-tiny", 72) if small else ("videoprism-b", 288)
    encoder = load_encoder(model_name, "random")
    side = frame_size // encoder.config.patch_size
    head = head_rates((side, side, encoder.config.model_dim), frame_size, batch_size, repeat)

    windows = min(batch_size, 16 if small else 2)  # the base encoder: seconds a window on a CPU
    rng = np.random.default_rng(0)
    pixels = jnp.asarray(rng.random((windows, 16, frame_size, frame_size, 3)), jnp.float32)
    encoder_windows = rate(lambda: encoder(pixels), windows, 1)
    return {
        "model": model_name,
        **head,
        "encoder_windows_per_s": encoder_windows,
        "head_vs_encoder": encoder_windows / head["frames_per_s"],
    }
