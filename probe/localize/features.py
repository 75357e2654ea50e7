"""The token map (h, w, D) of a frame of interest, read lazily from the store.

Frame i is served by the window that centres it best: among the stored windows of its video that
encoded frame i, the one where i sits nearest position L/2 - 1 (7 of 16, so the window covers
i-7..i+8 as in the paper; at a video's ends the clamped window). A store extracted with
`--frames-from ANNOTATIONS` holds exactly those windows; a regular store serves every frame from
its nearest-centred window. A window of one valid frame (a still image, or a one-frame video)
shows that frame at every position, padding included, so it is served at position L/2 - 1 like
any other frame of interest: the paper's still images repeated 16 times. Pooled layouts are
refused: pooling averages away the spatial detail that boxes need.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.probe.labels import is_still


class FeatureError(EthoprismError):
    """A store that cannot serve token maps for the frames asked."""


@dataclass(frozen=True)
class FrameRefs:
    """Where each frame's token map is: window index on the store's axis and time position."""

    video: np.ndarray  # (n,) file names
    frame: np.ndarray  # (n,) int64
    window: np.ndarray  # (n,) int64
    t: np.ndarray  # (n,) int64


def check_layout(ds: xr.Dataset) -> None:
    pool = int((ds.attrs.get("layout") or {}).get("pool", 1))
    if pool != 1:
        raise FeatureError(
            f"{ds.attrs.get('source', 'the store')}: tokens are stored pooled {pool}x{pool} "
            f"(layout pool {pool}); localization needs the full per-frame token map: "
            "extract with --pool 1"
        )


def video_table(ds: xr.Dataset) -> dict[str, dict]:
    """Complete videos of the store by file name: row, n_frames, width, height, fps, path, still."""
    out = {}
    for i, path in enumerate(ds["video_path"].values):
        if str(ds["video_status"].values[i]) != "complete":
            continue
        out[os.path.basename(str(path))] = {
            "row": i,
            "path": str(path),
            "n_frames": int(ds["video_n_frames"].values[i]),
            "width": int(ds["video_width"].values[i]),
            "height": int(ds["video_height"].values[i]),
            "fps": float(ds["video_fps"].values[i]),
            "still": is_still(ds, i),
        }
    return out


def locate(ds: xr.Dataset, frames: list[tuple[str, int]]) -> FrameRefs:
    """The window and time position serving each (video, frame); see the module docstring."""
    check_layout(ds)
    videos = video_table(ds)
    centre = int(ds.attrs["preprocessing"]["window_length"]) // 2 - 1
    video_of = ds["video"].values
    start = ds["start_frame"].values
    step = ds["frame_step"].values
    valid = ds["n_valid_frames"].values
    windows, ts = np.zeros(len(frames), np.int64), np.zeros(len(frames), np.int64)
    by_video: dict[str, np.ndarray] = {}
    for k, (video, frame) in enumerate(frames):
        if video not in videos:
            raise FeatureError(f"video {video!r} is not a complete video of the store")
        if video not in by_video:
            by_video[video] = np.flatnonzero(video_of == videos[video]["row"])
        cand = by_video[video]
        offset = frame - start[cand]
        covers = (offset >= 0) & (offset % step[cand] == 0) & (offset // step[cand] < valid[cand])
        if not covers.any():
            raise FeatureError(
                f"frame {frame} of {video!r} was encoded in no window of the store; "
                "extract with --frames-from ANNOTATIONS (or --stride 1)"
            )
        pos = np.where(valid[cand][covers] == 1, centre, offset[covers] // step[cand][covers])
        best = int(np.argmin(np.abs(pos - centre)))  # first (earliest) on a tie
        windows[k], ts[k] = cand[covers][best], pos[best]
    return FrameRefs(
        np.array([v for v, _ in frames], dtype=object),
        np.array([f for _, f in frames], np.int64),
        windows,
        ts,
    )


def read_maps(ds: xr.Dataset, refs: FrameRefs, index=None) -> np.ndarray:
    """(n, h, w, D) float32 token maps of refs[index] (all when None), read from the store."""
    index = np.arange(len(refs.window)) if index is None else np.asarray(index)
    windows, inverse = np.unique(refs.window[index], return_inverse=True)
    tokens = store.read_windows(ds, windows, "tokens")  # (u, t, h, w, D)
    return np.ascontiguousarray(tokens[inverse, refs.t[index]], dtype=np.float32)


def map_shape(ds: xr.Dataset) -> tuple[int, int, int]:
    _, _, h, w, d = ds["tokens"].shape
    return int(h), int(w), int(d)
