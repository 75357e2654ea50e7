"""`ethoprism bench store`: bytes per window per layout, write speed vs raw disk, random reads.

Everything is a ratio measured in one run on one disk (machines here are noisy). The write
figure compares the store, fed as the extraction feeds it (float16 layouts: tokens coded on the
accelerator, so float16 in; int8: float32 in, quantised here), with writing its resulting bytes
raw, with an fsync where the store commits a video: the store's checks, compression, crc32c,
files and fsyncs against the disk alone. One more row has the store round float32 tokens itself
(the API's other input). windows/s is what to compare with the encoder's rate, and CPU ms per
window (all threads) what the store costs the machine whatever else runs on it; "cores for
disk speed" (store CPU seconds / raw write seconds) how many cores writing at the disk's pace
takes, which says what to expect on a bigger host than this benchmark's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from ethoprism.store.handle import open_handle
from ethoprism.store.reader import open as open_store
from ethoprism.store.reader import read_windows
from ethoprism.store.schema import Layout, StoreError, VideoRecord
from ethoprism.store.stream import keep_freed_memory
from ethoprism.store.validate import info
from ethoprism.store.writer import open_writer

BASE_TOKEN_SHAPE = (16, 16, 16, 768)
LAYOUTS = (
    Layout("float16-round7"),
    Layout("float16"),
    Layout("float16-uncompressed"),
    Layout("int8"),
    Layout("float16-round7", 2),
    Layout("float16-round7", 4),
    Layout("int8", 2),
)
BATCH = 32


def activation_like(n: int, shape=BASE_TOKEN_SHAPE, seed: int = 0) -> np.ndarray:
    """(n, *shape) float32 shaped like transformer activations: per-channel scales and offsets,
    heavy tails (Student t, 4 dof) and a few outlier channels 30x larger than the rest."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    scale = np.exp(rng.normal(0.0, 0.7, c)).astype(np.float32)
    scale[rng.choice(c, max(1, c // 200), replace=False)] *= 30.0
    offset = rng.normal(0.0, 0.5, c).astype(np.float32)
    x = rng.standard_t(4, size=(n, *shape)).astype(np.float32)
    return x * scale + offset


# Windows per committed video: 64 windows, 17 s of 30 fps video at stride 8; archives hold
# minutes-long videos. Every commit rewrites the token shard it ends in (up to ~64 MiB), so
# much shorter videos would write some bytes twice; the raw baseline fsyncs as often.
PER_VIDEO = 64


def writer_input(tokens: np.ndarray, layout: Layout, coded: bool) -> np.ndarray:
    """The tokens as the extraction hands them to the writer (`coded`: float16 layouts coded on
    the accelerator, bit-identical to `Layout.encode`, read-only as numpy views of accelerator
    results are), or float32 at full resolution."""
    if coded and layout.coded_on_device:
        coded_tokens = layout.encode(tokens)["tokens"]
        coded_tokens.flags.writeable = False
        return coded_tokens
    return tokens


def _write(
    path: Path, layout: Layout, tokens: np.ndarray, windows: int, per_video: int = PER_VIDEO
) -> tuple[float, float]:
    """Write `windows` windows (batches of up to 8 of `tokens`) in videos of `per_video`.

    Returns (wall seconds, CPU seconds of this process, all threads).

    Each inner chunk is compressed on its own, so repeating windows does not flatter the sizes.
    """
    emb = np.random.default_rng(2).normal(size=(len(tokens), tokens.shape[-1])).astype(np.float32)
    batches = {k: (tokens[:k], emb[:k]) for k in range(1, 9)}  # prepared outside the timing
    keep_freed_memory()  # as the extraction run does
    start, cpu = time.perf_counter(), time.process_time()
    with open_writer(
        path,
        encoder={"name": "bench"},
        preprocessing={"window_length": 16},
        layout=layout,
        part="bench",
    ) as w:
        for v, first in enumerate(range(0, windows, per_video)):
            n = min(per_video, windows - first)
            vw = w.begin_video(
                VideoRecord(f"v{v}.mp4", 0, f"sha{v}", 30.0, 8 * n + 8, 0.0, 0, 0, "h264")
            )
            for b in range(0, n, 8):
                k = min(8, n - b)
                vw.append(*batches[k], 8 * np.arange(b, b + k), 1, 16, np.arange(b, b + k) / 3.75)
            vw.commit()
    return time.perf_counter() - start, time.process_time() - cpu


def _raw_write(path: Path, nbytes: int, videos: int) -> float:
    """Sequential write of nbytes (incompressible) in `videos` equal pieces, each fsynced like
    a video's commit."""
    block = np.random.default_rng(1).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    pieces = np.diff(np.linspace(0, nbytes, videos + 1).astype(np.int64))
    start = time.perf_counter()
    with open(path, "wb") as f:
        for piece in pieces:
            left = int(piece)
            while left > 0:
                left -= f.write(block[: min(left, len(block))])
            f.flush()
            os.fsync(f.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return elapsed


def _time_reads(fn, batches) -> float:
    start = time.perf_counter()
    for idx in batches:
        fn(idx)
    return (time.perf_counter() - start) / len(batches)


def bench_store(
    windows: int = 128,
    directory: str | None = None,
    repeats: int = 3,
    token_shape: tuple[int, int, int, int] = BASE_TOKEN_SHAPE,
) -> dict:
    """Run the store benchmark in a temporary directory (on the disk of `directory`)."""
    windows = max(windows, BATCH)
    tokens = activation_like(8, token_shape)
    out = {"windows": windows, "token_shape": list(token_shape), "layouts": []}
    if directory is not None and not Path(directory).is_dir():
        raise StoreError(f"--directory {directory} is not a directory")
    with tempfile.TemporaryDirectory(dir=directory, prefix="ethoprism-bench-") as tmp:
        tmp = Path(tmp)
        runs = [(layout, True) for layout in LAYOUTS] + [(Layout(), False)]
        for layout, coded in runs:
            path = _store_path(tmp, layout)
            given = writer_input(tokens, layout, coded)
            store_s, cpu_s, raw_s = [], [], []  # the default layout is timed `repeats` times
            for _ in range(repeats if layout == Layout() else 1):
                shutil.rmtree(path, ignore_errors=True)
                wall, cpu = _write(path, layout, given, windows)
                store_s.append(wall)
                cpu_s.append(cpu)
                stored = info(path)["bytes_on_disk"]
                raw_s.append(_raw_write(tmp / "raw.bin", stored, -(-windows // PER_VIDEO)))
            store_t, raw_t = float(np.median(store_s)), float(np.median(raw_s))
            out["layouts"].append(
                {
                    "layout": layout.to_dict(),
                    "tokens_in": "coded" if given.dtype == np.float16 else "float32",
                    "bytes_per_window": stored / windows,
                    "write_mb_per_s": stored / store_t / 1e6,
                    "raw_write_mb_per_s": stored / raw_t / 1e6,
                    "write_vs_raw": raw_t / store_t,
                    "windows_per_s": windows / store_t,
                    "write_cpu_ms_per_window": float(np.median(cpu_s)) / windows * 1e3,
                    # CPU seconds the store spends per second of raw disk writing: the cores a
                    # host needs for the store to keep pace with the disk
                    "cores_for_disk_speed": float(np.median(cpu_s)) / raw_t,
                }
            )
        out["reads"] = _bench_reads(_store_path(tmp, Layout()), windows)
    # The target's figure: the default layout, fed as the extraction feeds it
    out["write_vs_raw"] = out["layouts"][0]["write_vs_raw"]
    return out


def _store_path(tmp: Path, layout: Layout) -> Path:
    return tmp / f"{layout.dtype}-p{layout.pool}.zarr"


def _bench_reads(path: Path, windows: int) -> dict:
    ds = open_store(path)
    tokens_arr = open_handle(path).parts[0].arrays["tokens"]
    in_memory = tokens_arr[:]  # the same windows, as stored, in RAM
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(windows, BATCH, replace=False)) for _ in range(8)]
    if not np.array_equal(read_windows(ds, batches[0]), in_memory[batches[0]].astype(np.float32)):
        raise StoreError(f"{path}: read_windows disagrees with the stored array")
    reader_s = _time_reads(lambda idx: read_windows(ds, idx), batches)
    memory_s = _time_reads(lambda idx: in_memory[idx].astype(np.float32), batches)
    oindex_s = _time_reads(lambda idx: tokens_arr.oindex[idx].astype(np.float32), batches[:3])
    return {
        "batch": BATCH,
        "read_windows_ms": reader_s * 1e3,
        "memory_ms": memory_s * 1e3,
        "oindex_ms": oindex_s * 1e3,
        "read_windows_vs_memory": memory_s / reader_s,
        "speedup_vs_oindex": oindex_s / reader_s,
    }
