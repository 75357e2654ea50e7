"""`ethoprism bench probe`: many heads vs one, store reads vs memory, MAP training windows/s.

Builds a temporary on-disk store of synthetic tokens (random, at the base token shape by default)
with `store.open_writer`, then times training epochs of MAP heads after a warm-up run that
compiles. All figures are ratios (or rates) measured in the same run. "From memory" reads the
same windows from a numpy array holding the store's float16 values, converted to float32 per
minibatch as the store's reader does.

Each timed run trains two epochs. The figures use the second: the steady state of a real run
(tens of epochs), where the one-time setup is amortised. The setup, mostly drawing each head's
initial parameters (7M random numbers per MAP head at width 768, ~0.13 s each on 2 cores), would
otherwise weigh as much as several minibatches in a 4-minibatch epoch. The first epoch with the
setup is reported too (`first_epoch_seconds`, `many_vs_one_first_epoch`).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.probe.classify.heads import HeadConfig
from ethoprism.probe.classify.train import (
    HeadSpec,
    TrainConfig,
    store_source,
    train_heads,
)
from ethoprism.store.stream import return_freed_buffers


def _write_synthetic_store(
    path: Path, windows: int, shape: tuple[int, int, int, int], seed: int = 0
) -> None:
    rng = np.random.default_rng(seed)
    encoder = {
        "name": "synthetic",
        "config": {"token_shape": list(shape)},
        "checkpoint_sha256": "none",
        "dtype": "float32",
    }
    prep = {
        "frame_size": 288,
        "resize": "squash",
        "window_length": shape[0],
        "window_stride": 8,
        "frame_step": 1,
        "pixel_range": [0.0, 1.0],
    }
    with store.open_writer(path, encoder=encoder, preprocessing=prep) as w:
        n_frames = 8 * (windows - 1) + shape[0]
        video = w.begin_video(
            store.VideoRecord(
                "synthetic.mp4", 0, "0" * 64, 24.0, n_frames, n_frames / 24, 288, 288, "none"
            )
        )
        for start in range(0, windows, 8):
            n = min(8, windows - start)
            tokens = rng.normal(size=(n, *shape)).astype(np.float32)
            frames = 8 * np.arange(start, start + n)
            video.append(tokens, tokens.mean((1, 2, 3)), frames, 1, shape[0], frames / 24.0)
        video.commit()


def _read_all(ds, n: int, batch_size: int) -> np.ndarray:
    """All tokens held in memory as the store holds them, float16 (the layout's values are
    float16, so nothing is lost), read a minibatch at a time: one read of all 64 base windows
    as float32 would hold them ~3 times over (2.4 GB)."""
    out = np.empty((n, *ds["tokens"].shape[1:]), np.float16)
    for lo in range(0, n, batch_size):
        out[lo : lo + batch_size] = store.read_windows(ds, np.arange(lo, min(n, lo + batch_size)))
    return out


def _epoch_seconds(
    source, n_windows: int, n_heads: int, head: HeadConfig, cfg: TrainConfig
) -> tuple[float, float]:
    """Seconds of (setup + first epoch, second epoch) of training `n_heads` heads for two epochs."""
    rng = np.random.default_rng(0)
    target = np.eye(head.num_classes, dtype=np.float32)[
        rng.integers(0, head.num_classes, n_windows)
    ]
    specs = [
        HeadSpec(f"h{i}", i, np.ones(n_windows, bool), target, 5e-5 * (1 + i))
        for i in range(n_heads)
    ]
    epoch_ends = []
    t = time.perf_counter()
    train_heads(
        source,
        np.arange(n_windows),
        specs,
        head,
        dataclasses.replace(cfg, epochs=2),
        progress=lambda event: "val_loss" in event and epoch_ends.append(time.perf_counter()),
    )
    return epoch_ends[0] - t, epoch_ends[1] - epoch_ends[0]


def bench_probe(
    windows: int = 64,
    heads: int = 16,
    batch_size: int = 16,
    shape: tuple[int, int, int, int] = (16, 16, 16, 768),
    directory: str | None = None,
    num_classes: int = 8,
    repeats: int = 2,
    stage: Callable[[str], None] = lambda _: None,
) -> dict:
    """Time one training epoch of 1 and `heads` MAP heads, from the store and from memory;
    `stage` hears what it is doing."""
    if directory is not None and not Path(directory).is_dir():
        raise EthoprismError(f"--directory {directory} is not a directory")
    return_freed_buffers()  # before the store is written and read: those buffers come back too
    with tempfile.TemporaryDirectory(dir=directory, prefix="ethoprism-bench-probe-") as tmp:
        path = Path(tmp) / "features.zarr"
        stage(f"writing {windows} windows of tokens {shape}")
        _write_synthetic_store(path, windows, shape)
        ds = store.open(str(path))
        head = HeadConfig("map", num_classes=num_classes).for_width(shape[-1])
        cfg = TrainConfig(epochs=1, batch_size=batch_size)
        from_store = store_source(ds, "tokens")
        held = _read_all(ds, windows, batch_size)
        in_memory = lambda idx: held[idx].astype(np.float32)  # noqa: E731  as read from the store
        times, first = {}, {}
        for n in (1, heads):
            stage(f"compiling {n} MAP head(s)")
            _epoch_seconds(in_memory, batch_size, n, head, cfg)  # compile (one batch an epoch)
            for r in range(repeats):  # interleaved, best of each: the machine is shared and noisy
                for name, src in (("memory", in_memory), ("store", from_store)):
                    stage(f"{n} MAP head(s): 2 epochs from {name}, round {r + 1} of {repeats}")
                    t_first, t = _epoch_seconds(src, windows, n, head, cfg)
                    times[(name, n)] = min(t, times.get((name, n), np.inf))
                    first[(name, n)] = min(t_first, first.get((name, n), np.inf))
    return {
        "windows": windows,
        "heads": heads,
        "batch_size": batch_size,
        "token_shape": list(shape),
        "attention_heads": head.num_heads,
        "epoch_seconds": {f"{src}_{n}": t for (src, n), t in times.items()},
        "first_epoch_seconds": {f"{src}_{n}": t for (src, n), t in first.items()},
        "many_vs_one": times[("store", heads)] / times[("store", 1)],
        "many_vs_one_first_epoch": first[("store", heads)] / first[("store", 1)],
        "store_vs_memory": times[("store", heads)] / times[("memory", heads)],
        "store_vs_memory_one_head": times[("store", 1)] / times[("memory", 1)],
        "windows_per_s_one_head": windows / times[("store", 1)],
        "head_windows_per_s_many": heads * windows / times[("store", heads)],
    }
