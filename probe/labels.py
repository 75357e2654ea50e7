"""Behaviour labels: read label tables, align them to the store's windows, split by video.

Two table shapes, both CSV with a header:
- per-frame segments: `video, start_frame, end_frame, <label column>[, track]`, end inclusive;
- per-clip: `video, <label column>` (the whole video carries the label).
A label cell may hold several labels separated by ";". Frames that no row covers, and rows whose
label is the background name (default "none") or empty, are background. Overlapping rows with
different labels make a frame multi-label, which single-label training refuses.

Videos are matched by file name (the store's `video_name`). Frame indices are decode order.
A still image (PNG, JPEG, ...) is a video of one frame: its segment rows say frame 0 (start_frame
0, end_frame 0), and its one window carries its label.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ethoprism.errors import EthoprismError
from ethoprism.probe.defaults import BACKGROUND, LABEL_COLUMN
from ethoprism.store import geometry
from ethoprism.store.schema import STILL_CODEC, file_sha256

ALIGN_MODES = ("centre", "majority", "any")


class LabelError(EthoprismError):
    """A label file that cannot be used as it is; the message names file, row, video and frame."""


@dataclass(frozen=True)
class Segment:
    video: str  # file name, matched against the store's video_name
    start: int
    end: int | None  # inclusive; None for a per-clip row (the whole video)
    labels: tuple[str, ...]  # empty for background
    track: str
    row: int  # line number in the file (the header is line 1)


@dataclass(frozen=True)
class LabelTable:
    path: str
    sha256: str
    column: str
    background: str
    per_clip: bool
    segments: tuple[Segment, ...]
    classes: tuple[str, ...]  # background first, then the behaviours in sorted order

    @property
    def videos(self) -> list[str]:
        return sorted({s.video for s in self.segments})


def read_labels(
    path: str | os.PathLike, column: str = LABEL_COLUMN, background: str = BACKGROUND
) -> LabelTable:
    """Read a per-frame segment table or a per-clip table (see the module docstring)."""
    path = os.fspath(path)
    rows, header = _read_rows(path)
    per_clip = _is_per_clip(path, header, column)
    segments = tuple(
        _segment(path, line, r, column, background, per_clip)
        for line, r in enumerate(rows, start=2)
    )
    behaviours = sorted({lab for s in segments for lab in s.labels})
    return LabelTable(
        path, file_sha256(path), column, background, per_clip, segments, (background, *behaviours)
    )


def _read_rows(path: str) -> tuple[list[dict], list[str]]:
    """The label file's rows (at least one) and its header."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
            header = list(rows[0].keys()) if rows else []
    except OSError as e:
        raise LabelError(f"{path}: cannot read label file: {e.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise LabelError(f"{path}: not a UTF-8 CSV label file ({e})") from None
    if not rows:
        raise LabelError(f"{path}: no label rows")
    return rows, header


def _is_per_clip(path: str, header: list[str], column: str) -> bool:
    """Whether the table is per clip (no frame columns); refuses a header missing a column."""
    per_clip = "start_frame" not in header and "end_frame" not in header
    needed = ["video", column] if per_clip else ["video", "start_frame", "end_frame", column]
    missing = [c for c in needed if c not in header]
    if missing:
        raise LabelError(
            f"{path}: missing column(s) {', '.join(missing)}; the header has {', '.join(header)}"
        )
    return per_clip


def _segment(
    path: str, line: int, r: dict, column: str, background: str, per_clip: bool
) -> Segment:
    """Row `line` of the file as a Segment (background and empty labels dropped)."""
    video = os.path.basename((r["video"] or "").strip())
    if not video:
        raise LabelError(f"{path} row {line}: empty video name")
    labels = tuple(sorted({x.strip() for x in (r[column] or "").split(";")} - {"", background}))
    start, end = (0, None) if per_clip else _frame_range(path, line, video, r)
    return Segment(video, start, end, labels, (r.get("track") or "").strip(), line)


def _frame_range(path: str, line: int, video: str, r: dict) -> tuple[int, int]:
    """A segment row's (start_frame, end_frame), checked: integers, 0 <= start <= end."""
    try:
        start, end = int(r["start_frame"]), int(r["end_frame"])
    except (TypeError, ValueError):
        raise LabelError(
            f"{path} row {line}: video {video!r}: start_frame/end_frame must be integers, "
            f"got {r['start_frame']!r}, {r['end_frame']!r}"
        ) from None
    if start < 0 or end < start:
        raise LabelError(f"{path} row {line}: video {video!r}: bad frame range {start}..{end}")
    return start, end


def frame_targets(table: LabelTable, video: str, n_frames: int, multi_label: bool) -> np.ndarray:
    """(n_frames, C) bool: which classes each frame of `video` carries (background if none)."""
    classes = {c: i for i, c in enumerate(table.classes)}
    out = np.zeros((n_frames, len(classes)), bool)
    single = np.full(n_frames, -1)  # single-label mode: the class each frame got so far ...
    owner = np.full(n_frames, -1)  # ... and the row that gave it, for error messages
    by_row = {s.row: s for s in table.segments}
    for s in (s for s in table.segments if s.video == video):
        end = n_frames - 1 if s.end is None else s.end
        if end >= n_frames:
            raise LabelError(
                f"{table.path} row {s.row}: video {video!r}: end_frame {end} is beyond the video's "
                f"last frame {n_frames - 1} ({n_frames} frames)"
            )
        if not multi_label:
            if len(s.labels) > 1:
                raise LabelError(
                    f"{table.path} row {s.row}: video {video!r}: frames {s.start}..{end} carry "
                    f"several labels {', '.join(s.labels)} in single-label mode (use multi-label)"
                )
            mine = classes[s.labels[0]] if s.labels else 0
            got = single[s.start : end + 1]
            clash = np.flatnonzero((got >= 0) & (got != mine))
            if len(clash):
                f = s.start + int(clash[0])
                other = by_row[int(owner[f])]
                raise LabelError(
                    f"{table.path} rows {other.row} and {s.row}: video {video!r} frame {f} "
                    f"is labelled both {('/'.join(other.labels) or table.background)!r} and "
                    f"{('/'.join(s.labels) or table.background)!r} in single-label mode "
                    "(overlapping segments disagree; use multi-label if frames carry several "
                    "behaviours)"
                )
            got[:] = mine
            owner[s.start : end + 1] = s.row
        for lab in s.labels:
            out[s.start : end + 1, classes[lab]] = True
    out[:, 0] = ~out[:, 1:].any(1)
    return out


@dataclass(frozen=True)
class WindowLabels:
    window: np.ndarray  # (n,) int64 indices on the store's `window` axis
    target: np.ndarray  # (n, C) float32: one-hot (single-label) or multi-hot
    video: np.ndarray  # (n,) str file names
    classes: tuple[str, ...]
    multi_label: bool


def is_still(ds: xr.Dataset, row: int) -> bool:
    """Whether the store's video `row` is a still image (a one-frame video, codec STILL_CODEC)."""
    return str(ds["video_codec"].values[row]) == STILL_CODEC


def still_frame_message(where: str, video: str, given: str, frame_0: str = "") -> str:
    """The error for a row of a label or annotation file (`where`: file, row, field) that gives
    the still image `video` a frame other than 0 (`given`); `frame_0` says how that file writes
    frame 0. Shared by the wings so that a still is refused in the same words everywhere."""
    return (
        f"{where}: video {video!r} is a still image, one frame: label it as frame 0{frame_0}, "
        f"not {given}"
    )


def store_videos(ds: xr.Dataset) -> dict[str, dict]:
    """Per-video rows of the store keyed by file name (complete and failed videos)."""
    names = [os.path.basename(str(p)) for p in ds["video_path"].values]
    table = {}
    for i, name in enumerate(names):
        row = {
            "row": i,
            "n_frames": int(ds["video_n_frames"].values[i]),
            "fps": float(ds["video_fps"].values[i]),
            "still": is_still(ds, i),
            "status": str(ds["video_status"].values[i]),
            "reason": str(ds["video_reason"].values[i]),
        }
        if name in table and table[name]["status"] == "complete" and row["status"] == "complete":
            raise LabelError(
                f"the store holds two complete videos named {name!r}; labels match by file "
                "name, so rename one of them"
            )
        if name not in table or row["status"] == "complete":
            table[name] = row
    return table


def complete_videos(ds: xr.Dataset, videos: list[str] | None) -> tuple[dict[str, dict], list[str]]:
    """The store's complete videos (store_videos rows) and the names of those asked for (None:
    all, sorted); a name that is not a complete video is refused."""
    rows = {k: r for k, r in store_videos(ds).items() if r["status"] == "complete"}
    wanted = videos or sorted(rows)
    for v in wanted:
        if v not in rows:
            raise EthoprismError(f"video {v!r} is not a complete video of the store")
    return rows, wanted


def check_videos(ds: xr.Dataset, table: LabelTable) -> dict[str, dict]:
    """Every labelled video must be a complete video of the store, and a still image's rows must
    say frame 0; returns store_videos(ds)."""
    videos = store_videos(ds)
    for s in table.segments:
        if s.video not in videos:
            raise LabelError(
                f"{table.path} row {s.row}: video {s.video!r} is not in the store "
                f"(the store has {', '.join(sorted(videos)) or 'no videos'})"
            )
        if videos[s.video]["status"] != "complete":
            raise LabelError(
                f"{table.path} row {s.row}: video {s.video!r} failed extraction: "
                f"{videos[s.video]['reason']}"
            )
        if videos[s.video]["still"] and (s.start, s.end) not in ((0, 0), (0, None)):
            raise LabelError(
                still_frame_message(
                    f"{table.path} row {s.row}",
                    s.video,
                    f"{s.start}..{s.end}",
                    " (start_frame 0, end_frame 0)",
                )
            )
    return videos


def align(
    ds: xr.Dataset, table: LabelTable, *, how: str = "centre", multi_label: bool = False
) -> WindowLabels:
    """Label every window of the labelled videos by the frames it covers.

    centre: the window's centre frame, frame (n_valid - 1) // 2 of its valid frames (frame 7 of 16,
    the paper's f_i for the window f_{i-7}..f_{i+8}); majority: the class most of its valid frames
    carry (single-label; ties go to the class listed first) or each class more than half of them
    carry (multi-label); any: each class at least one of them carries (multi-label only).
    """
    if how not in ALIGN_MODES:
        raise LabelError(f"unknown alignment {how!r}; choose one of {', '.join(ALIGN_MODES)}")
    if how == "any" and not multi_label:
        raise LabelError(
            "alignment 'any' gives a window every label it overlaps; it needs multi-label"
        )
    videos = check_videos(ds, table)
    name = ds["video_name"].values.astype(str)
    geo = geometry.windows(ds, times=False)
    valid = geo.n_valid
    windows, targets, names = [], [], []
    for video in table.videos:
        frames = frame_targets(table, video, videos[video]["n_frames"], multi_label)
        for w in np.flatnonzero(name == video):
            seen = frames[geo.frames(w)]
            if how == "centre":
                t = seen[(valid[w] - 1) // 2]
            elif how == "any":
                t = seen.any(0)
            elif multi_label:
                t = seen.sum(0) > valid[w] / 2
            else:
                t = np.eye(len(table.classes), dtype=bool)[seen.sum(0).argmax()]
            windows.append(w)
            targets.append(t)
            names.append(video)
    target = np.array(targets, np.float32).reshape(-1, len(table.classes))
    classes, keep = list(table.classes), np.ones(len(table.classes), bool)
    counts = target.sum(0)
    if counts[0] == 0:  # no background window: background is not a class to learn
        keep[0] = False
    for c in np.flatnonzero(counts[1:] == 0) + 1:
        rows = [s.row for s in table.segments if classes[c] in s.labels]
        raise LabelError(
            f"{table.path}: class {classes[c]!r} (rows {', '.join(map(str, rows[:5]))}) has no "
            f"window labelled with it under alignment {how!r}; its segments are shorter than "
            "what the windows resolve (try alignment 'any' with multi-label, or drop the class)"
        )
    return WindowLabels(
        np.array(windows, np.int64),
        target[:, keep],
        np.array(names, str),
        tuple(c for c, k in zip(classes, keep, strict=False) if k),
        multi_label,
    )


def split_by_video(
    videos: list[str], test_fraction: float = 0.25, val_fraction: float = 0.0, seed: int = 0
) -> dict[str, str]:
    """Assign whole videos to train / val / test (neighbouring windows overlap, so never split
    windows)."""
    videos = sorted(set(videos))
    order = np.random.default_rng(seed).permutation(len(videos))
    n_test = round(test_fraction * len(videos)) if test_fraction else 0
    n_val = round(val_fraction * len(videos)) if val_fraction else 0
    n_test, n_val = max(n_test, test_fraction > 0), max(n_val, val_fraction > 0)
    if n_test + n_val >= len(videos):
        raise LabelError(
            f"cannot split {len(videos)} labelled video(s) into train, "
            f"{n_val} validation and {n_test} test video(s); label more videos or pass a split file"
        )
    split = {}
    for rank, i in enumerate(order):
        split[videos[i]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return split


def read_split(path: str | os.PathLike, videos: list[str]) -> dict[str, str]:
    """A split file: CSV `video, split` with split in train / val / test. Unlisted videos are
    unused."""
    path = os.fspath(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise LabelError(f"{path}: cannot read split file: {e.strerror}") from None
    split = {}
    for line, r in enumerate(rows, start=2):
        video, part = (
            os.path.basename((r.get("video") or "").strip()),
            (r.get("split") or "").strip(),
        )
        if part not in ("train", "val", "test"):
            raise LabelError(f"{path} row {line}: split must be train, val or test, got {part!r}")
        if video not in videos:
            raise LabelError(f"{path} row {line}: video {video!r} has no labels")
        split[video] = part
    if "train" not in split.values():
        raise LabelError(f"{path}: no training video")
    return split


def check_has_examples(labels: WindowLabels, mask: np.ndarray, what: str) -> None:
    """Every class must have a training example; name the class and where its examples are."""
    counts = labels.target[mask].sum(0)
    for c in np.flatnonzero(counts == 0):
        where = sorted(set(labels.video[labels.target[:, c] > 0]))
        raise LabelError(
            f"class {labels.classes[c]!r} has no example in the {what} "
            f"(its windows are in: {', '.join(where)}); change the split"
        )


def sample_shots(labels: WindowLabels, pool: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k windows per class, uniformly without replacement from `pool` (window positions), sorted."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c, name in enumerate(labels.classes):
        have = pool[labels.target[pool, c] > 0]
        if len(have) < k:
            raise LabelError(
                f"class {name!r} has {len(have)} training window(s), fewer than {k} shots"
            )
        chosen.append(rng.choice(have, k, replace=False))
    return np.unique(np.concatenate(chosen))
