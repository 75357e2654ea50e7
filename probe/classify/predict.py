"""Per-frame predictions: window probabilities averaged over all windows covering each frame.

A window covers the contiguous frame span from its start_frame to its last valid frame,
start_frame + (n_valid_frames - 1) * frame_step. With frame_step 1 that is exactly the frames the
encoder saw; with frame_step K > 1 the frames between the sampled ones count as covered too,
since the window's prediction describes that stretch of time (otherwise, with a stride that is
a multiple of K, some frames would never be covered at all). Padded frames past a video's end
are not covered, so a video's last frames average over fewer windows. A frame that no window
covers gets NaN probabilities and no label.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import xarray as xr

from ethoprism.store import geometry


def frame_probabilities(
    prob: np.ndarray,
    start_frame: np.ndarray,
    frame_step: np.ndarray,
    n_valid: np.ndarray,
    n_frames: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(n_frames, C) mean probability over covering windows (NaN if none), and (n_frames,)
    counts."""
    prob = np.asarray(prob, np.float64)
    first = np.asarray(start_frame, np.int64)
    geo = geometry.Windows(
        video=np.zeros(len(first), np.int64),
        start_frame=first,
        frame_step=np.asarray(frame_step, np.int64),
        n_valid=np.asarray(n_valid, np.int64),
        frame_time=np.zeros((len(first), 0)),
    )
    last = np.minimum(geo.last_frame, n_frames - 1)
    total = np.zeros((n_frames + 1, prob.shape[1]))
    count = np.zeros(n_frames + 1, np.int64)
    # difference arrays: +p at a window's first frame, -p one past its last, then a running sum
    np.add.at(total, first, prob)
    np.add.at(total, last + 1, -prob)
    np.add.at(count, first, 1)
    np.add.at(count, last + 1, -1)
    total, count = np.cumsum(total[:-1], 0), np.cumsum(count[:-1])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count[:, None] > 0, total / count[:, None], np.nan)
    return mean, count


def video_windows(ds: xr.Dataset, video_name: str) -> np.ndarray:
    return np.flatnonzero(ds["video_name"].values.astype(str) == video_name)


def video_frame_probabilities(
    ds: xr.Dataset, windows: np.ndarray, prob: np.ndarray, n_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """frame_probabilities for one video's windows (positions on `window`) and their
    probabilities."""
    geo = geometry.windows(ds, windows, times=False)
    return frame_probabilities(prob, geo.start_frame, geo.frame_step, geo.n_valid, n_frames)


def frame_labels(frame_prob: np.ndarray) -> np.ndarray:
    """argmax per frame; -1 where no window covers the frame."""
    covered = ~np.isnan(frame_prob).any(1)
    return np.where(covered, np.nan_to_num(frame_prob, nan=-1.0).argmax(1), -1)


def write_frame_csv(
    path: str | os.PathLike, frame_prob: np.ndarray, classes: list[str], times: np.ndarray
) -> Path:
    """CSV: frame, time (seconds, `times[frame]`: the stored times, `store.geometry.
    video_frame_times`), label, one probability column per class."""
    path = Path(path)
    labels = frame_labels(frame_prob)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "time", "label", *[f"p_{c}" for c in classes]])
        for i, (lab, p) in enumerate(zip(labels, frame_prob, strict=False)):
            w.writerow(
                [
                    i,
                    f"{times[i]:.4f}",
                    classes[lab] if lab >= 0 else "",
                    *("" if np.isnan(v) else f"{v:.5f}" for v in p),
                ]
            )
    return path
