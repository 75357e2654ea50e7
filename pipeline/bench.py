"""`ethoprism bench extract`: how close the whole pipeline comes to the encoder alone.

Ratios are measured in one run on one machine, so machine noise mostly cancels:
- end-to-end windows/s (decode, resize, encode, write a real store) / encoder-only windows/s,
  same model, batch and compiled function (the compile is excluded from both; the encoder alone
  is timed before and after the run and averaged);
- decode+resize frames/s / raw decode frames/s of the same file;
- peak RSS of this process and its decode workers.
"""

from __future__ import annotations

import contextlib
import resource
import tempfile
import threading
import time

import numpy as np
import psutil

from ethoprism.extract import load_encoder
from ethoprism.extract.decode_bench import measure_decode
from ethoprism.extract.encode import ShardedEncoder
from ethoprism.extract.encoder import default_preprocessing, get_config
from ethoprism.extract.video import probe_video
from ethoprism.extract.windows import plan_windows
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.run import extract_local


class PeakRSS:
    """Samples the summed RSS of a process tree (default: this one) every `interval` seconds.

    Twice a second by default: walking /proc costs CPU, and on a 2-core machine a 50 ms sampler
    stole enough of it from the encoder to cost the end-to-end figure ~20%.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.5):
        self.peak = 0
        self.at_peak: dict[str, int] = {}  # each process's RSS in the peak sample, by name:pid
        self._pid, self._interval = pid, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        root = psutil.Process(self._pid)
        while not self._stop.is_set():
            sample = {}
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:  # the watched process has exited
                tree = []
            for p in tree:
                with contextlib.suppress(psutil.Error):
                    sample[f"{p.name()}:{p.pid}"] = p.memory_info().rss
            if sum(sample.values()) > self.peak:
                self.peak, self.at_peak = sum(sample.values()), sample
            self._stop.wait(self._interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if (
            self._pid is None
        ):  # this process's own high-water mark, in case it peaked between samples
            self.peak = max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def bench_extract(
    video: str,
    model: str = "videoprism-b",
    windows: int = 16,
    batch_size: int = 4,
    checkpoint: str | None = "random",
    dtype: str = "float32",
    decode_workers: int = 2,
) -> dict:
    info = probe_video(video)
    length = get_config(model).window_length
    stride = max(1, (info.n_frames - length) // max(windows - 1, 1))
    prep = default_preprocessing(model, window_stride=stride)
    cfg = RunConfig(
        model=model,
        checkpoint=checkpoint,
        dtype=dtype,
        prep=prep,
        batch_size=batch_size,
        decode_workers=decode_workers,
    )
    encoder = load_encoder(model, checkpoint, dtype)
    sharded = ShardedEncoder(encoder, batch_size, prep.pixel_range, store_layout=cfg.layout)
    size = prep.frame_size
    pixels = np.random.default_rng(0).integers(
        0, 256, (sharded.batch_size, length, size, size, 3), np.uint8
    )
    sharded(pixels)  # compile once, for both measurements

    n = len(plan_windows(info.n_frames, prep)[0])
    batches = -(-n // sharded.batch_size)

    def encoder_only_seconds() -> float:
        """The same batches (same padding) as the run, with nothing else to do."""
        t0 = time.perf_counter()
        for handle in [sharded.submit(pixels) for _ in range(batches)]:
            sharded.fetch(handle)
        return time.perf_counter() - t0

    # Encoder alone before and after the run: their mean cancels a drift in machine load.
    before = encoder_only_seconds()
    with tempfile.TemporaryDirectory() as tmp, PeakRSS() as rss:
        summary = extract_local([video], f"{tmp}/bench.zarr", cfg, sharded=sharded)
    after = encoder_only_seconds()
    e2e = summary.windows / summary.seconds
    encoder_only = n / ((before + after) / 2)

    decode = measure_decode(video, prep)
    return {
        "model": model,
        "video": video,
        "windows": summary.windows,
        "batch_size": sharded.batch_size,
        "devices": sharded.n_devices,
        "end_to_end_windows_per_s": e2e,
        "encoder_only_windows_per_s": encoder_only,
        "pipeline_efficiency": e2e / encoder_only,
        "decode": decode,
        "peak_rss_mb": rss.peak / 2**20,
    }
