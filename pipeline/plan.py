"""Dry runs: what a run would do (videos, windows, store size, time) before doing it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ethoprism.errors import EthoprismError
from ethoprism.extract import CONFIGS, load_encoder
from ethoprism.extract.encode import ShardedEncoder
from ethoprism.extract.video import probe_video
from ethoprism.extract.weights import RANDOM
from ethoprism.extract.windows import plan_windows
from ethoprism.pipeline.config import RunConfig


@dataclass
class Plan:
    videos: list[dict] = field(default_factory=list)  # path, frames, fps, windows, or error
    windows: int = 0
    bytes_per_window: float = 0.0
    windows_per_s: float | None = None

    @property
    def store_bytes(self) -> float:
        return self.windows * self.bytes_per_window

    @property
    def seconds(self) -> float | None:
        return self.windows / self.windows_per_s if self.windows_per_s else None

    def to_dict(self) -> dict:
        return {
            "videos": self.videos,
            "windows": self.windows,
            "bytes_per_window": self.bytes_per_window,
            "store_bytes": self.store_bytes,
            "windows_per_s": self.windows_per_s,
            "seconds": self.seconds,
        }


def bytes_per_window(cfg: RunConfig) -> float:
    enc = CONFIGS[cfg.model]
    grid = cfg.prep.frame_size // enc.patch_size
    stored = cfg.layout.stored_shape((cfg.prep.window_length, grid, grid, enc.model_dim))
    return (
        cfg.layout.stored_window_bytes(stored) + 4 * enc.model_dim + 40
    )  # embedding and per-window coordinates


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


def plan_run(paths: list[str], cfg: RunConfig, measure: bool = True) -> Plan:
    plan = Plan(bytes_per_window=bytes_per_window(cfg))
    for path in paths:
        try:
            info = probe_video(path)
        except EthoprismError as e:
            plan.videos.append({"path": path, "error": str(e)})
            continue
        n = len(plan_windows(info.n_frames, cfg.prep)[0])
        plan.videos.append({"path": path, "frames": info.n_frames, "fps": info.fps, "windows": n})
        plan.windows += n
    if measure:
        plan.windows_per_s = measure_rate(cfg)
    return plan
