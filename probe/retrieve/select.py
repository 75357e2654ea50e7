"""Naming what to search: moments (VIDEO@SECONDS, VIDEO#FRAME), video spans, and the window
that covers a moment, resolved against a store's video table."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from ethoprism.probe.retrieve.knn import RetrievalError
from ethoprism.store import geometry


@dataclass(frozen=True)
class Moment:
    video: str  # a path, file name or sha256 prefix, as in the store's video table
    seconds: float | None = None
    frame: int | None = None


def parse_moment(text: str) -> Moment:
    """`VIDEO@SECONDS` (seconds or [hh:]mm:ss) or `VIDEO#FRAME`."""
    video, sep, at = text.rpartition("@")
    if sep and video:
        return Moment(video, seconds=_parse_seconds(at, text))
    video, sep, at = text.rpartition("#")
    if sep and video and at.isdigit():
        return Moment(video, frame=int(at))
    raise RetrievalError(f"cannot read the moment {text!r}: write VIDEO@SECONDS or VIDEO#FRAME")


def _parse_seconds(text, whole):
    try:
        seconds = 0.0
        for part in text.split(":"):
            seconds = seconds * 60 + float(part)
        return seconds
    except ValueError:
        raise RetrievalError(
            f"cannot read the time in {whole!r}: give seconds (12.5) or mm:ss (1:02.5)"
        ) from None


@dataclass(frozen=True)
class VideoSpan:
    video: str
    start: float | None = None  # seconds; a window is in the span when its centre time is
    end: float | None = None


def parse_span(text: str) -> VideoSpan:
    """`VIDEO` or `VIDEO@START-END` (seconds; either end may be left open: `VIDEO@30-`)."""
    video, sep, rng = text.rpartition("@")
    if not sep:
        return VideoSpan(text)
    m = re.fullmatch(r"\s*([0-9.:]*)\s*-\s*([0-9.:]*)\s*", rng)
    if not video or not m:
        raise RetrievalError(
            f"cannot read the selection {text!r}: write VIDEO or VIDEO@START-END (seconds)"
        )
    start, end = (_parse_seconds(g, text) if g else None for g in m.groups())
    return VideoSpan(video, start, end)


def find_video(ds, name: str) -> int:
    """The row of the video table named by its path, file name or sha256 prefix (>= 8 hex)."""
    paths = [str(p) for p in ds["video_path"].values]
    shas = [str(s) for s in ds["video_sha256"].values]
    rows = [i for i, p in enumerate(paths) if p == name]
    if not rows:
        rows = [i for i, p in enumerate(paths) if os.path.basename(p) == os.path.basename(name)]
    if not rows and len(name) >= 8:
        rows = [i for i, s in enumerate(shas) if s.startswith(name.lower())]
    if not rows:
        known = ", ".join(os.path.basename(p) for p in paths[:5]) + (
            ", ..." if len(paths) > 5 else ""
        )
        raise RetrievalError(f"no video {name!r} in the store (it holds {len(paths)}: {known})")
    complete = [i for i in rows if str(ds["video_status"].values[i]) == "complete"]
    if not complete:
        raise RetrievalError(
            f"video {name!r} failed extraction and has no windows: "
            f"{ds['video_reason'].values[rows[0]]}"
        )
    if len({shas[i] for i in complete}) > 1:
        raise RetrievalError(
            f"{name!r} names {len(complete)} different videos in the store; give the full path"
        )
    return complete[0]


def _window_spans(ds, windows):
    """(first, last) frame and (first, last) time covered by each window, as stored."""
    geo = geometry.windows(ds, windows)
    return (geo.start_frame, geo.last_frame), (geo.start_time, geo.end_time)


def window_at(ds, moment: Moment) -> int:
    """The window covering the moment whose centre is nearest to it."""
    row = find_video(ds, moment.video)
    windows = np.flatnonzero(ds["video"].values == row)
    name = os.path.basename(str(ds["video_path"].values[row]))
    if not len(windows):
        raise RetrievalError(f"video {name} has no windows in the store")
    frames, times = _window_spans(ds, windows)
    if moment.frame is not None:
        n_frames = int(ds["video_n_frames"].values[row])
        if not 0 <= moment.frame < n_frames:
            raise RetrievalError(
                f"frame {moment.frame} is outside {name} (frames 0..{n_frames - 1})"
            )
        at, (lo, hi) = moment.frame, frames
    else:
        duration = float(ds["video_duration"].values[row])
        if not 0 <= moment.seconds <= duration:
            raise RetrievalError(f"{moment.seconds:g} s is outside {name} (0..{duration:.3f} s)")
        at, (lo, hi) = moment.seconds, times
    off_centre = np.abs((lo + hi) / 2 - at) + np.where((lo <= at) & (at <= hi), 0, np.inf)
    if np.isinf(off_centre).all():  # a gap between windows (stride > span): take the nearest
        off_centre = np.abs((lo + hi) / 2 - at)
    return int(windows[np.argmin(off_centre)])


def selection_mask(ds, spans: list[VideoSpan]) -> np.ndarray:
    """(n_windows,) bool: the windows inside any of the spans."""
    video = ds["video"].values
    _, (t0, t1) = _window_spans(ds, np.arange(len(video)))
    centre = (t0 + t1) / 2
    mask = np.zeros(len(video), bool)
    for span in spans:
        inside = video == find_video(ds, span.video)
        if span.start is not None:
            inside &= centre >= span.start
        if span.end is not None:
            inside &= centre <= span.end
        mask |= inside
    return mask


def video_groups(query_sha: list[str | None], index_ds) -> tuple[np.ndarray, np.ndarray]:
    """Group ids by video content (sha256), comparable across stores:
    (query_groups, index_groups)."""
    shas = [str(s) for s in index_ds["video_sha256"].values]
    code = {s: i for i, s in enumerate(dict.fromkeys(shas))}
    index_groups = np.array([code[s] for s in shas], np.int64)[index_ds["video"].values]
    return np.array([code.get(s, -1) for s in query_sha], np.int64), index_groups
