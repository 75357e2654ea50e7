"""Decode throughput of one file: raw decoding vs decoding plus conversion and resizing
(a ratio)."""

from __future__ import annotations

import time
from typing import NamedTuple

from ethoprism.extract.preprocess import Preprocessing, Resizer
from ethoprism.extract.video import iter_raw


class Rate(NamedTuple):
    """Frames per second of one decoding run, by two clocks."""

    wall_fps: float
    cpu_fps: float  # per CPU second of this process, all threads


def decode_rate(path, n_frames: int, threads: int, convert, prep=None) -> Rate:
    """Decoding the first n_frames of `path` and passing each to `convert` (decoded smaller where
    `prep` lets the decoder shrink them: `preprocess.decoder_lowres`)."""
    wall, cpu = time.perf_counter(), time.process_time()
    n = 0
    for _, _, frame in iter_raw(path, threads, prep):
        convert(frame)
        n += 1
        if n >= n_frames:
            break
    return Rate(
        n / (time.perf_counter() - wall),
        n / max(time.process_time() - cpu, 1e-9),
    )


def measure_decode(
    path,
    prep: Preprocessing | None = None,
    seconds: float = 5.0,
    threads: int = 0,
    repeats: int = 2,
) -> dict:
    """Raw decode frames/s (native pixel format, nothing converted) and decode+convert+resize
    frames/s.

    Both are measured on the same leading frames of `path`, as many as raw decoding gets through
    in about `seconds`, alternating `repeats` times and keeping each one's best (the machines are
    shared and noisy). `ratio` = resize_fps / raw_fps in wall time, the issue's target being
    >= 0.5; `cpu_ratio` is the same in CPU time, which other processes on the machine disturb less.
    """
    prep = prep or Preprocessing()
    n_frames = _frames_in(path, seconds, threads)
    resize = Resizer(prep)
    raw = resized = Rate(0.0, 0.0)
    for _ in range(repeats):
        raw = max(raw, decode_rate(path, n_frames, threads, lambda frame: None))
        resized = max(resized, decode_rate(path, n_frames, threads, resize))
    return {
        "path": str(path),
        "frames": n_frames,
        "frame_size": prep.frame_size,
        "resize": prep.resize,
        "threads": threads,
        "raw_fps": raw[0],
        "resize_fps": resized[0],
        "ratio": resized[0] / raw[0],
        "cpu_ratio": resized[1] / raw[1],
    }


def _frames_in(path, seconds: float, threads: int) -> int:
    """How many frames raw decoding gets through in about `seconds` (the whole video if fewer)."""
    start = time.perf_counter()
    n = 0
    for _ in iter_raw(path, threads):
        n += 1
        if time.perf_counter() - start >= seconds:
            break
    return n
