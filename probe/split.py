"""Train / validation / test splits of labelled windows that keep every class trainable.

Neighbouring windows share frames, so a split never lets a training window see a frame of a
held-out one. Three ways, tried in order until every class keeps a training window:
1. by video: whole videos, drawn at random (`labels.split_by_video`);
2. by video within class: whole videos again, but a video only goes to validation or test while
   every class still has a training video;
3. by time within video (too few videos, e.g. each behaviour filmed in one video): within each
   class, its last windows in time (video order, then start frame) are held out: the last
   `test_fraction` for test, the `val_fraction` before them for validation. Windows that share a
   frame with a window of a held-out part are left out of training ("gap"), and validation
   windows that share a frame with a test window are left out too. A class with fewer than
   `MIN_WINDOWS_TO_SPLIT` windows (or too few to hold any out and keep two) stays in training
   whole, and the held-out windows sharing frames with its windows go to the gap instead.
A split file (CSV video,split) is used as given. If a class still has no training window, the
error names the options that fix it.

Test frames are the frames of test windows: no training or validation window covers them, so
per-frame metrics there are held out (windows in the gap were never trained on either).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from ethoprism.probe import labels as L

MIN_WINDOWS_TO_SPLIT = 4  # a class with fewer windows stays in training whole (time split)
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class WindowSplit:
    part: np.ndarray  # (n,) per window of the WindowLabels: train | val | test | gap
    how: str  # "split file" | "by video" | "by video within class" | "by time within video"
    videos: dict[str, str]  # video -> train | val | test, or "mixed" (split by time)
    # video -> [[first, last], ...] frames held out for testing, for videos split by time
    test_frames: dict[str, list[list[int]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"how": self.how, "videos": self.videos, "test_frames": self.test_frames}


def _video_parts(wl: L.WindowLabels, videos: dict[str, str]) -> np.ndarray:
    return np.array([videos.get(v, "unused") for v in wl.video], dtype=object)


def _trainable(wl: L.WindowLabels, part: np.ndarray) -> bool:
    return bool((wl.target[part == "train"].sum(0) > 0).all())


def _within_class(
    wl: L.WindowLabels, names: list[str], n_test: int, n_val: int, seed: int
) -> dict[str, str] | None:
    """Whole videos to test, then validation, in random order, skipping any video whose removal
    would leave a class without a training video; None if the counts cannot be reached."""
    videos = dict.fromkeys(names, "train")
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    for want, n in (("test", n_test), ("val", n_val)):
        taken = 0
        for v in order:
            if taken == n:
                break
            if videos[v] != "train":
                continue
            videos[v] = want
            if _trainable(wl, _video_parts(wl, videos)):
                taken += 1
            else:
                videos[v] = "train"
        if taken < n:
            return None
    return videos


def _frame_spans(ds: xr.Dataset, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    start, step, valid = (
        ds[k].values[windows].astype(np.int64)
        for k in ("start_frame", "frame_step", "n_valid_frames")
    )
    return start, start + step * (np.maximum(valid, 1) - 1)


def _by_time(
    ds: xr.Dataset, wl: L.WindowLabels, test_fraction: float, val_fraction: float
) -> np.ndarray:
    part = np.full(len(wl.window), "train", dtype=object)
    primary = wl.target.argmax(1)  # a multi-label window goes with its first class
    small = np.zeros(len(part), bool)  # windows of classes too small to split: never left out
    for c in range(wl.target.shape[1]):
        mine = np.flatnonzero(primary == c)  # already in video, then time, order
        m = len(mine)
        n_test = max(round(test_fraction * m), test_fraction > 0)
        n_val = max(round(val_fraction * m), val_fraction > 0)
        if m < MIN_WINDOWS_TO_SPLIT or n_test + n_val > m - 2:  # keep a few training windows
            small[mine] = True
            continue
        part[mine[m - n_test :]] = "test"
        part[mine[m - n_test - n_val : m - n_test]] = "val"
    start, end = _frame_spans(ds, wl.window)
    # a window sharing a frame with a window of another part goes to the gap: the held-out one
    # beside a small class's window, else the less held-out one (train < val < test)
    level = np.array([{"train": 0, "val": 1, "test": 2}[p] for p in part])
    neighbours = _overlapping(wl.video, start, end)
    beside_small = np.array(
        [
            not small[i] and bool((small[nb] & (level[nb] != level[i])).any())
            for i, nb in enumerate(neighbours)
        ],
        bool,
    )
    lower = np.array(
        [
            bool(((level[nb] > level[i]) & ~beside_small[nb]).any())
            for i, nb in enumerate(neighbours)
        ],
        bool,
    )
    part[beside_small | (lower & ~small)] = "gap"
    return part


def _overlapping(video: np.ndarray, start: np.ndarray, end: np.ndarray) -> list[np.ndarray]:
    """Per window, the windows of the same video sharing a frame with it (itself included),
    found among neighbours in start order: memory linear in the number of windows."""
    out: list[np.ndarray] = [np.zeros(0, np.int64)] * len(video)
    for v in np.unique(video):
        idx = np.flatnonzero(video == v)
        idx = idx[np.argsort(start[idx], kind="stable")]
        s, e = start[idx], end[idx]
        lo = np.searchsorted(s, s - (e - s).max(), "left")
        hi = np.searchsorted(s, e, "right")
        for j, i in enumerate(idx):
            nb = idx[lo[j] : hi[j]]
            out[i] = nb[end[nb] >= start[i]]
    return out


def _test_frames(ds, wl: L.WindowLabels, part: np.ndarray) -> dict[str, list[list[int]]]:
    start, end = _frame_spans(ds, wl.window)
    out = {}
    for v in np.unique(wl.video[part == "test"]):
        spans = sorted(
            zip(
                start[(wl.video == v) & (part == "test")],
                end[(wl.video == v) & (part == "test")],
                strict=True,
            )
        )
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], int(b))
            else:
                merged.append([int(a), int(b)])
        out[str(v)] = merged
    return out


def choose_split(
    ds: xr.Dataset,
    wl: L.WindowLabels,
    *,
    test_fraction: float = 0.25,
    val_fraction: float = 0.0,
    seed: int = 0,
    split_file: str | os.PathLike | None = None,
) -> WindowSplit:
    """The first split (see the module docstring) that leaves every class a training window."""
    names = sorted(set(wl.video))
    if split_file:
        videos = L.read_split(split_file, names)
        split = WindowSplit(_video_parts(wl, videos), "split file", videos)
        _check(wl, split, "edit the split file so that each class has a training video")
        return split
    if not test_fraction and not val_fraction:
        videos = dict.fromkeys(names, "train")
        return WindowSplit(_video_parts(wl, videos), "by video", videos)
    try:
        videos = L.split_by_video(names, test_fraction, val_fraction, seed)
    except L.LabelError:
        videos = None  # too few videos to split whole
    if videos is not None and _trainable(wl, _video_parts(wl, videos)):
        return WindowSplit(_video_parts(wl, videos), "by video", videos)
    if videos is not None:
        counts = {p: sum(x == p for x in videos.values()) for p in PARTS}
        within = _within_class(wl, names, counts["test"], counts["val"], seed)
        if within is not None:
            return WindowSplit(_video_parts(wl, within), "by video within class", within)
    part = _by_time(ds, wl, test_fraction, val_fraction)
    held = {str(v) for v in wl.video[(part == "val") | (part == "test")]}
    videos = {v: "mixed" if v in held else "train" for v in names}
    split = WindowSplit(part, "by time within video", videos, _test_frames(ds, wl, part))
    _check(
        wl,
        split,
        "label more videos, pass a --split file, or hold nothing out with "
        "--test-fraction 0 --val-fraction 0 (and a fixed --lr)",
    )
    return split


def _check(wl: L.WindowLabels, split: WindowSplit, fix: str) -> None:
    counts = wl.target[split.part == "train"].sum(0)
    for c in np.flatnonzero(counts == 0):
        where = sorted(set(wl.video[wl.target[:, c] > 0]))
        raise L.LabelError(
            f"class {wl.classes[c]!r} has no example in the training set (split {split.how}; its "
            f"windows are in: {', '.join(where)}); {fix}"
        )
