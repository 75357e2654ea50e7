"""`ethoprism bench host`: host CPU milliseconds per window, stage by stage, and the cores that
keep one accelerator busy.

Every figure is CPU time of this process (all its threads: `time.process_time`), not wall time,
so other work on a shared machine disturbs it little, and it says what a window costs the host
whatever the host's core count. Stages, measured in one run:
- decode: the decoder alone, per frame, on each source clip (384p, 720p and 1080p H.264, 720p
  MJPEG and 720p gray FFV1; the 720p clips are transcoded from the shared 1080p clip at bench
  time);
- convert + resize: decode with the pipeline's conversion to encoder frames, minus decode;
  grayscale sources are kept one channel (`extract.windows`), and also measured as the RGB
  path takes them ("as RGB"), which is what keeping them gray saves; sources whose decoder can
  shrink them itself are also measured under interpolation "area-lowres" (its decode counted
  in convert + resize, against decoding at full size; `preprocess.decoder_lowres`);
- batching: frames into the window ring, windows out of it, through the decode pool's process
  queue (pickled), stacked into encoder batches;
- token check, compression, checksum, disk write: the store's own code on tokens of the
  encoder's shape coded as the accelerator codes them (activation-like values).
Per window at stride S a decoder decodes S new frames (and converts those a window uses), so
the totals are given for stride 8 and 16. Cores = CPU seconds per window x windows per second.
The hardware-decoder (NVDEC) column is an estimate: demuxing (measured) replaces decoding and
conversion, which run on the GPU; everything after decoding stays on the host.

Cores say what the host must have, not that one video can use them. The decode pool feeds the
encoder one video at a time (`pipeline.decode`); its frames are decoded on FFmpeg's threads (or,
for MJPEG, which has none, on a frame pool: `extract.packets`) and converted on the frame
pool (`extract.framepool`), but the worker's own thread still demuxes and assembles windows:
"one video" is the windows/s that thread allows (its CPU per frame, measured on the extraction's
own path, plus batching), an upper bound on one video's feed rate whatever the cores.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import google_crc32c
import numpy as np

from ethoprism.extract.decode_bench import decode_rate
from ethoprism.extract.encoder import get_config
from ethoprism.extract.preprocess import Preprocessing, Resizer, decoder_lowres
from ethoprism.extract.video import demux_times, probe_video
from ethoprism.extract.windows import WindowAssembler, iter_windows, stack_windows
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.decode import Windows, WindowSlots
from ethoprism.pipeline.rate import measure_rate
from ethoprism.store import Layout
from ethoprism.store.bench import activation_like, writer_input
from ethoprism.store.schema import VideoRecord
from ethoprism.store.shards import ShardWriter, chunk_encoder
from ethoprism.store.writer import open_writer

SHARED_VIDEOS = Path("/work/shared/data/videos")
SOURCE_384 = SHARED_VIDEOS / "fly_pair_384.mp4"
SOURCE_1080 = SHARED_VIDEOS / "spider_1080p60.mp4"
STRIDES = (8, 16)
DEFAULT_ACCELERATOR_RATE = 450.0  # VideoPrism-B bf16 windows/s on an H100-class device
STAGES = (
    "decode",
    "convert_resize",
    "batching",
    "token_check",
    "compression",
    "checksum",
    "disk_write",
)


def make_clips(directory: Path, frames: int = 96, source_384=SOURCE_384, source_1080=SOURCE_1080):
    """{label: path}: the two shared H.264 clips as they are, and the first `frames` frames of
    the 1080p one transcoded to 720p H.264, 720p MJPEG and 720p gray FFV1 in `directory`.
    (H.264 has no gray pixel format in FFmpeg's decoder: monochrome streams decode as yuv420p.)"""
    clips = {"384p h264": Path(source_384)}
    for label, name, codec, pix_fmt in (
        ("720p h264", "clip_720p.mp4", "libx264", "yuv420p"),
        ("720p mjpeg", "clip_720p.avi", "mjpeg", "yuvj420p"),
        ("720p gray", "clip_720p_gray.mkv", "ffv1", "gray"),
    ):
        clips[label] = _transcode(source_1080, Path(directory) / name, codec, pix_fmt, frames)
    clips["1080p h264"] = Path(source_1080)
    return clips


def _transcode(source, target: Path, codec: str, pix_fmt: str, frames: int) -> Path:
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream_in = src.streams.video[0]
        rate = stream_in.average_rate or Fraction(30)
        out = dst.add_stream(codec, rate=rate)
        out.width, out.height, out.pix_fmt = 1280, 720, pix_fmt
        if codec == "libx264":
            out.options = {"preset": "veryfast", "crf": "20"}
        for i, frame in enumerate(src.decode(stream_in)):
            if i == frames:
                break
            rgb = frame.to_ndarray(width=1280, height=720, format="rgb24", interpolation="AREA")
            dst.mux(out.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        dst.mux(out.encode(None))
    return target


def frame_costs(
    path, prep: Preprocessing, frames: int, threads: int, repeats: int, single_channel=True
) -> dict:
    """CPU ms per frame: decode alone (at full size), and decode + convert + resize as `prep`
    says, and demuxing alone (for the hardware decoder's estimate). `single_channel`: grayscale
    sources kept one channel, as extraction does.

    The two are run in `repeats` alternating pairs; the ratio is the median of the pairs' ratios
    (with their range), since a shared machine's speed drifts by 20% from run to run and each
    pair sees nearly the same machine. The decode worker's own thread is timed too, running
    the extraction's windows: what stays serial there caps the frames/s of one video."""
    resize = Resizer(prep, single_channel)
    raw, converted, worker = [], [], []
    for _ in range(repeats):
        raw.append(decode_rate(path, frames, threads, lambda frame: None))
        converted.append(decode_rate(path, frames, threads, resize, prep))
        worker.append(worker_thread_ms(path, prep, frames, threads))
    ratios = [r.cpu_fps / c.cpu_fps for r, c in zip(raw, converted, strict=True)]
    cpu = time.process_time()
    n = len(demux_times(path))
    demux_ms = (time.process_time() - cpu) / max(n, 1) * 1e3
    decode_ms = 1e3 / float(np.median([r.cpu_fps for r in raw]))
    ratio = float(np.median(ratios))
    return {
        "decode_ms_per_frame": decode_ms,
        "decode_convert_ms_per_frame": decode_ms * ratio,
        "convert_ms_per_frame": max(decode_ms * (ratio - 1), 0.0),
        "decode_convert_vs_decode": ratio,
        "decode_convert_vs_decode_range": [min(ratios), max(ratios)],
        "worker_thread_ms_per_frame": float(np.median(worker)),
        "demux_ms_per_frame": demux_ms,
    }


def worker_thread_ms(path, prep: Preprocessing, frames: int, threads: int) -> float:
    """CPU ms per frame of the thread that makes a video's windows (a decode worker's), over
    about `frames` frames after its first window: demuxing, window assembly, and whatever
    decoding and conversion its frame pool (`extract.framepool`) and FFmpeg's threads do not
    take off it. Timed from the first window on: opening the video and filling the pools
    (which run up to 2 x threads frames ahead of the windows) are not a per-frame cost."""
    windows = iter_windows(path, prep, threads=threads)
    begun = cpu = time.thread_time()
    first = end = 0
    for window in windows:
        end = window.start_frame + prep.window_span
        if not first:
            cpu, first = time.thread_time(), end
        elif end - first >= frames:
            break
    spent = time.thread_time()
    windows.close()
    if end == first:  # one window: no steady state to time
        return (spent - begun) / max(end, 1) * 1e3
    return (spent - cpu) / (end - first) * 1e3


def one_video_windows_per_s(worker_ms_per_frame: float, stride: int, batching_ms: float):
    """The most windows/s one video feeds: the decode pool feeds one video at a time, and its
    worker's own thread spends `worker_ms_per_frame` on each of the `stride` new frames of a
    window, plus batching (counted whole, though the consumer does part of it: conservative)."""
    return 1e3 / (stride * worker_ms_per_frame + batching_ms)


def _cpu_ms_per(n: int, fn) -> float:
    cpu = time.process_time()
    fn()
    return (time.process_time() - cpu) / n * 1e3


def batching_ms(
    prep: Preprocessing,
    windows: int,
    batch_size: int,
    shared_memory: bool = True,
    channels: int = 3,
) -> float:
    """CPU ms per window of the path from resized frames to an encoder batch, as the decode
    pool runs it: frames into the ring buffer, each window out of it into a shared-memory slot,
    its number through a queue, copied out and stacked into batches (both processes' work).
    `shared_memory=False`: the path before slots, windows pickled through the queue;
    `channels`: 1 for a grayscale source's windows."""
    from multiprocessing import get_context

    rng = np.random.default_rng(0)
    size = prep.frame_size
    frames = rng.integers(0, 256, (4, size, size, channels), np.uint8)
    n_frames = (windows - 1) * prep.window_stride + prep.window_span
    shape = (prep.window_length, size, size, 3)
    # as many slots as the pool gives a worker, reused from run to run as the pool reuses them
    slots = WindowSlots(get_context("spawn"), 8, shape) if shared_memory else None

    def receive(chunk) -> list[np.ndarray]:
        if slots is None:
            return [w.pixels for w in pickle.loads(pickle.dumps(Windows(0, chunk))).windows]
        out = []
        for n in pickle.loads(pickle.dumps([slots.slot_of(w.pixels) for w in chunk])):
            out.append(slots.view(n, channels).copy())
            slots.release(n)
        return out

    def run():
        assembler, chunk, pixels = WindowAssembler(prep, slots.take if slots else None), [], []
        for i in range(n_frames):
            need = assembler.needs(i)
            chunk += assembler.push(i, i / 30, frames[i % 4] if need else None)
            if len(chunk) == 4:
                pixels += receive(chunk)
                chunk = []
        pixels += receive(chunk) if chunk else []
        for k in range(0, len(pixels), batch_size):
            stack_windows(pixels[k : k + batch_size])

    try:
        run()  # first touch of the memory, once per run in the pool
        return _cpu_ms_per(windows, run)
    finally:
        if slots is not None:
            slots.close()


def token_shape(model: str, prep: Preprocessing) -> tuple[int, int, int, int]:
    """(t, h, w, c) of one window's tokens out of the encoder (a layout may pool them)."""
    config = get_config(model)
    grid = prep.frame_size // config.patch_size
    return prep.window_length, grid, grid, config.model_dim


def store_stage_ms(tokens_shape, layout: Layout, windows: int, directory=None) -> dict:
    """CPU ms per window of the store's stages on `windows` windows of `tokens_shape` (as the
    encoder makes them) coded for `layout` as the accelerator codes them: each stage alone, and
    the whole writer (which runs them on its threads).

    float16 tokens are checked on the accelerator by the extraction (`coding.tokens_finite`),
    so their host check costs nothing; what it would cost is `host_token_check_ms`."""
    full = activation_like(min(windows, 8), tokens_shape)
    given = writer_input(full, layout, coded=True)
    coded = given.dtype == np.float16  # as the extraction hands them over: checked
    order = np.arange(windows) % len(given)
    emb = np.zeros((len(given), tokens_shape[-1]), np.float32)
    with tempfile.TemporaryDirectory(dir=directory, prefix="ethoprism-bench-host-") as tmp:
        root = Path(tmp) / "host.zarr"
        cpu = time.process_time()
        with open_writer(
            root, encoder={"name": "bench"}, preprocessing={}, layout=layout, part="bench"
        ) as w:
            vw = w.begin_video(VideoRecord("v.mp4", 0, "sha", 30.0, 8 * windows + 8, 0, 0, 0, "x"))
            for b in range(0, windows, 8):
                rows = order[b : b + 8]
                vw.append(given[rows], emb[rows], 8 * rows, 1, 16, rows / 3.75, checked=coded)
            vw.commit()
        writer_ms = (time.process_time() - cpu) / windows * 1e3
        meta = json.loads((root / "parts" / "bench" / "tokens" / "zarr.json").read_text())
        encode = chunk_encoder(meta)
        # the stages one by one, one window at a time as the writer's threads run them
        stages = {}
        if coded:
            host_check = _cpu_ms_per(
                windows, lambda: [layout.check_coded(given[i][None], copy=False) for i in order]
            )
            stages["token_check"] = 0.0
        else:
            stages["token_check"] = host_check = _cpu_ms_per(
                windows,
                lambda: [layout.encode(given[i][None]) for i in order],
            )
        stored = [
            layout.encode(g[None])["tokens"][0]
            if g.dtype != np.float16
            else np.ascontiguousarray(g)
            for g in given
        ]
        chunks = []
        both = _cpu_ms_per(windows, lambda: chunks.extend(encode(stored[i]) for i in order))
        stages["checksum"] = _cpu_ms_per(
            windows, lambda: [google_crc32c.value(c[0]) for c in chunks]
        )
        stages["compression"] = max(both - stages["checksum"], 0.0)
        per_shard = meta["codecs"][0]["configuration"]["chunk_shape"][0]
        per_shard = meta["chunk_grid"]["configuration"]["chunk_shape"][0] // per_shard

        def write():
            sw = ShardWriter(lambda i: Path(tmp) / "shards" / f"s{i}", per_shard, 0, [])
            for chunk in chunks:
                sw.add(chunk)
            sw.flush()

        stages["disk_write"] = _cpu_ms_per(windows, write)
        stored_bytes = sum(len(c[0]) + 4 for c in chunks) / windows
    return {
        "stages": stages,
        "host_token_check_ms": host_check,
        "writer_ms_per_window": writer_ms,
        "bytes_per_window": stored_bytes,
    }


def accelerator_rate(model: str, prep: Preprocessing, layout: Layout, rate: float) -> dict:
    """The encoder's windows/s on this machine's accelerator, measured (bf16), or `rate` where
    JAX sees only CPUs."""
    import jax

    backend = jax.default_backend()
    if backend == "cpu":
        return {"windows_per_s": rate, "source": "stated (--accelerator-rate), no accelerator"}
    cfg = RunConfig(model=model, checkpoint="random", dtype="bfloat16", prep=prep, layout=layout)
    per_device = measure_rate(cfg, batches=4) / jax.local_device_count()
    return {"windows_per_s": per_device, "source": f"measured on {backend} (bf16, per device)"}


def cores(ms_per_window: float, windows_per_s: float) -> float:
    """Cores kept busy by `ms_per_window` of CPU at `windows_per_s`."""
    return ms_per_window * windows_per_s / 1e3


def bench_host(
    model: str = "videoprism-b",
    prep: Preprocessing | None = None,
    layout: Layout | None = None,
    frames: int = 96,
    windows: int = 32,
    threads: int = 0,
    repeats: int = 2,
    batch_size: int = 8,
    rate: float = DEFAULT_ACCELERATOR_RATE,
    clips: dict | None = None,
    directory=None,
) -> dict:
    """Run the host benchmark; `clips` ({label: path}) replaces the standard four sources."""
    prep = prep or Preprocessing()
    layout = layout or Layout()
    shape = token_shape(model, prep)
    lowres = dataclasses.replace(prep, interpolation="area-lowres")
    with tempfile.TemporaryDirectory(dir=directory, prefix="ethoprism-clips-") as tmp:
        sources = clips if clips is not None else make_clips(Path(tmp), frames)
        per_clip = {}
        for label, path in sources.items():
            info = probe_video(path)
            n = min(frames, info.n_frames)
            gray = info.pix_fmt.startswith("gray")
            # a gray source also as the RGB path takes it: what keeping it gray saves
            rows = [(label, 1, prep), (f"{label} as RGB", 3, prep)] if gray else [(label, 3, prep)]
            if lowres != prep and decoder_lowres(lowres, info.codec, info.width, info.height):
                rows.append((f"{label} area-lowres", 1 if gray else 3, lowres))
            for name, channels, row_prep in rows:
                per_clip[name] = {
                    "path": str(path),
                    "codec": info.codec,
                    "pix_fmt": info.pix_fmt,
                    "width": info.width,
                    "height": info.height,
                    "channels": channels,
                    "interpolation": row_prep.interpolation,
                    **frame_costs(path, row_prep, n, threads, repeats, channels == 1),
                }
    store = store_stage_ms(shape, layout, windows, directory)
    accel = accelerator_rate(model, prep, layout, rate)
    out = {
        "model": model,
        "preprocessing": prep.to_dict(),
        "layout": layout.to_dict(),
        "token_shape": list(shape),
        "threads": threads,
        "accelerator": accel,
        "store": store,
        "strides": {},
        "clips": per_clip,
    }
    windows_per_s = accel["windows_per_s"]
    for stride in STRIDES:
        sprep = Preprocessing(**{**prep.to_dict(), "window_stride": stride})
        assembler = WindowAssembler(sprep)
        start = sprep.window_span  # steady state: frames a new window brings
        converted = sum(assembler.needs(i) for i in range(start, start + stride))
        batch = {
            c: batching_ms(sprep, min(windows, 16), batch_size, channels=c)
            for c in sorted({clip["channels"] for clip in per_clip.values()} | {3})
        }
        pickled = batching_ms(sprep, min(windows, 16), batch_size, shared_memory=False)
        after_ms = batch[3] + sum(store["stages"].values())
        out["strides"][str(stride)] = {
            "batching_ms": batch[3],
            "batching_gray_ms": batch.get(1),
            "batching_pickled_ms": pickled,
            "after_decode_ms": after_ms,
        }
        for clip in per_clip.values():
            stages = {
                "decode": stride * clip["decode_ms_per_frame"],
                "convert_resize": converted * clip["convert_ms_per_frame"],
                "batching": batch[clip["channels"]],
                **store["stages"],
            }
            stages = {k: stages[k] for k in STAGES}
            total = sum(stages.values())
            after_clip = total - stages["decode"] - stages["convert_resize"]
            nvdec = stride * clip["demux_ms_per_frame"] + after_ms  # RGB frames, gray or not
            clip.setdefault("strides", {})[str(stride)] = {
                "stages_ms": stages,
                "total_ms": total,
                "after_decode_ms": after_clip,
                "cores_per_100_windows_per_s": cores(total, 100.0),
                "cores_per_accelerator": cores(total, windows_per_s),
                "nvdec_estimate_ms": nvdec,
                "nvdec_cores_per_accelerator": cores(nvdec, windows_per_s),
                "one_video_windows_per_s": one_video_windows_per_s(
                    clip["worker_thread_ms_per_frame"], stride, stages["batching"]
                ),
            }
    return out
