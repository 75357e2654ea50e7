"""Dry runs: what a run would do (videos, windows, store size, time) before doing it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ethoprism.errors import EthoprismError
from ethoprism.extract import CONFIGS
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.video import probe_video
from ethoprism.extract.windows import centred_starts, plan_windows
from ethoprism.pipeline import host_bench
from ethoprism.pipeline.config import RunConfig, resolve_decoder
from ethoprism.pipeline.rate import measure_rate


@dataclass
class Plan:
    videos: list[dict] = field(default_factory=list)  # path, frames, fps, windows, or error
    windows: int = 0
    bytes_per_window: float = 0.0
    windows_per_s: float | None = None
    decoder: str = "cpu"
    devices: int = 1
    host_ms_per_window: float | None = None  # CPU, measured on a sample of the videos
    # the most the slowest sampled source feeds: videos go to the encoder one at a time, and
    # each has one thread of its own (`host_bench.worker_thread_ms`); None with NVDEC
    one_video_windows_per_s: float | None = None

    @property
    def cores_needed(self) -> float | None:
        """Host cores that keep the encoder on this machine's devices fed."""
        if self.host_ms_per_window is None or not self.windows_per_s:
            return None
        return host_bench.cores(self.host_ms_per_window, self.windows_per_s)

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
            "decoder": self.decoder,
            "devices": self.devices,
            "host_ms_per_window": self.host_ms_per_window,
            "cores_needed": self.cores_needed,
            "one_video_windows_per_s": self.one_video_windows_per_s,
            "cores_here": os.cpu_count(),
        }


def bytes_per_window(cfg: RunConfig) -> float:
    enc = CONFIGS[cfg.model]
    grid = cfg.prep.frame_size // enc.patch_size
    stored = cfg.layout.stored_shape((cfg.prep.window_length, grid, grid, enc.model_dim))
    return (
        cfg.layout.stored_window_bytes(stored) + 4 * enc.model_dim + 40
    )  # embedding and per-window coordinates


def host_costs(
    infos: list[tuple[str, int, tuple]], cfg: RunConfig, frames: int = 32
) -> tuple[float | None, float | None]:
    """(Host CPU ms per window of the run, weighted by windows; the windows/s that the slowest
    source's video feeds at most). Decoding and conversion are measured on the first `frames`
    frames of one video per (codec, size) (four at most), the stages after decoding on the
    run's token shape (`pipeline.host_bench`). With the hardware decoder only demuxing stays on
    the host, and its feed rate is not measured here."""
    if not infos:
        return None, None
    sample: dict[tuple, str] = {}
    for path, _, kind in infos:
        if len(sample) < 4:
            sample.setdefault(kind, path)
    # the CPU's conversion is measured with a CPU filter; the hardware decoder's is not used
    prep = cfg.prep if cfg.decoder == "cpu" else Preprocessing(frame_size=cfg.prep.frame_size)
    costs = {
        kind: host_bench.frame_costs(path, prep, frames, 0, 1) for kind, path in sample.items()
    }
    shape = host_bench.token_shape(cfg.model, cfg.prep)
    batching = host_bench.batching_ms(cfg.prep, 8, cfg.batch_size)
    after = sum(host_bench.store_stage_ms(shape, cfg.layout, 8)["stages"].values()) + batching
    stride = cfg.prep.window_stride
    total = windows = 0
    for _, n, kind in infos:
        c = costs.get(kind) or next(iter(costs.values()))
        if cfg.decoder == "nvdec":
            per_frame = c["demux_ms_per_frame"]
        else:
            per_frame = c["decode_ms_per_frame"] + c["convert_ms_per_frame"]
        total += n * (stride * per_frame + after)
        windows += n
    one_video = None
    if cfg.decoder == "cpu":
        slowest = max(c["worker_thread_ms_per_frame"] for c in costs.values())
        one_video = host_bench.one_video_windows_per_s(slowest, stride, batching)
    return (total / windows if windows else None), one_video


def plan_run(
    paths: list[str], cfg: RunConfig, measure: bool = True, store_path: str | None = None
) -> Plan:
    cfg = resolve_decoder(cfg, store_path)
    plan = Plan(bytes_per_window=bytes_per_window(cfg), decoder=cfg.decoder)
    infos = []
    for path in paths:
        try:
            info = probe_video(path)
        except EthoprismError as e:
            plan.videos.append({"path": path, "error": str(e)})
            continue
        if cfg.frames_from:  # only the windows centred on annotated frames
            centres = dict(cfg.centres).get(os.path.basename(path), ())
            n = len(centred_starts(centres, info.n_frames, cfg.prep))
        else:
            n = len(plan_windows(info.n_frames, cfg.prep)[0])
        plan.videos.append({"path": path, "frames": info.n_frames, "fps": info.fps, "windows": n})
        plan.windows += n
        infos.append((path, n, (info.codec, info.width, info.height)))
    if measure:
        plan.windows_per_s = measure_rate(cfg)
        plan.host_ms_per_window, plan.one_video_windows_per_s = host_costs(infos, cfg)
    plan.devices = jax_device_count()
    return plan


def jax_device_count() -> int:
    import jax

    return jax.local_device_count()
