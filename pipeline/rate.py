"""The encoder's speed on this machine, measured (a dry run's time, the host benchmark's cores)."""

from __future__ import annotations

import time

import numpy as np

from ethoprism.extract.encode import ShardedEncoder
from ethoprism.extract.models import load_encoder
from ethoprism.extract.weights import RANDOM
from ethoprism.pipeline.config import RunConfig


def measure_rate(cfg: RunConfig, batches: int = 2) -> float:
    """Encoder windows/s at the run's model, batch and dtype (after compiling).

    Measured with randomly initialised weights: the speed does not depend on their values, and
    a dry run must not need (or download) the checkpoint.
    """
    encoder = load_encoder(cfg.model, RANDOM, cfg.dtype)
    sharded = ShardedEncoder(encoder, cfg.batch_size, cfg.prep.pixel_range, store_layout=cfg.layout)
    size, length = cfg.prep.frame_size, cfg.prep.window_length
    pixels = np.random.default_rng(0).integers(
        0, 256, (sharded.batch_size, length, size, size, 3), np.uint8
    )
    sharded(pixels)  # compile
    t0 = time.perf_counter()
    for _ in range(batches):
        sharded(pixels)
    return batches * sharded.batch_size / (time.perf_counter() - t0)
