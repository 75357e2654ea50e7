"""Window geometry, its one owner: each window's frames and times from the stored coordinates.

Window w of a video covers source frames `start_frame + j * frame_step`, j < `n_valid_frames`
(SPEC.md), and frame j was shown at `frame_time[w, j]` seconds, the pts time the extraction
decoded it with. Every read-side frame or time (labels, predictions, retrieval, clip queries)
comes from here, so what a user sees is what the extraction stored, whatever the frame rate
(odd timebases, variable rate). Stores written before `frame_time` existed read with nominal
times, `start_time + j * frame_step / fps` (`nominal_frame_time`), the best they allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def nominal_frame_time(start_time, frame_step, n_valid, fps, frames: int) -> np.ndarray:
    """(n, frames) times of stores without `frame_time`: from each window's stored start_time
    at its video's nominal rate; padding repeats the last valid frame's time. A video without a
    rate (fps 0: a still image) has every frame at its start_time."""
    j = np.minimum(np.arange(frames), np.asarray(n_valid)[:, None] - 1)
    fps = np.asarray(fps, np.float64)
    step = np.where(fps > 0, np.asarray(frame_step, np.float64) / np.where(fps > 0, fps, 1), 0.0)
    return np.asarray(start_time, np.float64)[:, None] + j * step[:, None]


@dataclass(frozen=True)
class Windows:
    """The geometry of some windows, as arrays over them."""

    video: np.ndarray  # (n,) row of the video table
    start_frame: np.ndarray  # (n,) int64
    frame_step: np.ndarray  # (n,) int64
    n_valid: np.ndarray  # (n,) int64 real (not padded) frames
    frame_time: np.ndarray  # (n, frames) float64 seconds; padding repeats the last valid one

    def __len__(self) -> int:
        return len(self.start_frame)

    def _frame(self, j: np.ndarray) -> np.ndarray:
        return self.start_frame + j * self.frame_step

    def _time(self, j: np.ndarray) -> np.ndarray:
        return self.frame_time[np.arange(len(self)), j]

    @property
    def last_frame(self) -> np.ndarray:
        """The last valid frame: windows cover [start_frame, last_frame]."""
        return self._frame(self.n_valid - 1)

    @property
    def middle_frame(self) -> np.ndarray:
        """Valid frame (n_valid - 1) // 2 (frame 7 of 16: the paper's centre frame)."""
        return self._frame((self.n_valid - 1) // 2)

    @property
    def start_time(self) -> np.ndarray:
        return self.frame_time[:, 0]

    @property
    def end_time(self) -> np.ndarray:
        """The time of the last valid frame."""
        return self._time(self.n_valid - 1)

    @property
    def middle_time(self) -> np.ndarray:
        return self._time((self.n_valid - 1) // 2)

    def frames(self, i: int) -> np.ndarray:
        """The source frames window i's encoder input saw (its valid frames)."""
        return self.start_frame[i] + self.frame_step[i] * np.arange(self.n_valid[i])

    def times(self, i: int) -> np.ndarray:
        return self.frame_time[i, : self.n_valid[i]]


def windows(ds, index=None, times: bool = True) -> Windows:
    """The geometry of windows `index` (positions on `window`; all if None) of a dataset from
    `ethoprism.store.open` (or any selection of one); without `times` (frames only, no
    frame_time read), frame_time is empty."""
    index = np.arange(ds.sizes["window"]) if index is None else np.asarray(index, np.int64)

    def take(name):
        return np.asarray(ds[name].values[index]).astype(np.int64)

    video, start, step, valid = (
        take(k) for k in ("video", "start_frame", "frame_step", "n_valid_frames")
    )
    if not times:
        frame_time = np.zeros((len(index), 0))
    elif "frame_time" in ds.variables:
        frame_time = np.asarray(ds["frame_time"].isel(window=index).values, np.float64)
    else:  # a dataset not from `store.open` (an older store opened with plain xarray)
        frames = (ds.attrs.get("preprocessing") or {}).get("window_length")
        frame_time = nominal_frame_time(
            ds["start_time"].values[index],
            step,
            valid,
            ds["video_fps"].values[video],
            int(frames or (valid.max() if len(valid) else 1)),
        )
    return Windows(video, start, step, valid, frame_time)


def of_extracted(extracted) -> Windows:
    """The geometry of windows as the extraction yields them (`extract.windows.Window`), e.g. a
    query clip's, which no store holds."""
    return Windows(
        video=np.zeros(len(extracted), np.int64),
        start_frame=np.array([w.start_frame for w in extracted], np.int64),
        frame_step=np.array([w.frame_step for w in extracted], np.int64),
        n_valid=np.array([w.n_valid_frames for w in extracted], np.int64),
        frame_time=np.array([w.frame_times for w in extracted], np.float64).reshape(
            len(extracted), -1
        ),
    )


def video_frame_times(ds, row: int) -> np.ndarray:
    """(n_frames,) time of every frame of video `row`: the stored time of each frame a window
    holds; frames no window holds (frame_step > 1, stride > window span) are interpolated
    linearly between the nearest stored ones."""
    n_frames = int(ds["video_n_frames"].values[row])
    geo = windows(ds, np.flatnonzero(ds["video"].values == row))
    if not len(geo):
        return np.full(n_frames, np.nan)
    frames = np.concatenate([geo.frames(i) for i in range(len(geo))])
    times = np.concatenate([geo.times(i) for i in range(len(geo))])
    frames, first = np.unique(frames, return_index=True)
    return np.interp(np.arange(n_frames), frames, times[first])
