"""Whole queries: resolve moments or windows to vectors, search a store exactly or through its
saved approximate index, and tabulate the neighbours."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ethoprism import store
from ethoprism.probe.retrieve.ann import load_index
from ethoprism.probe.retrieve.knn import Neighbours, RetrievalError, exact_search
from ethoprism.probe.retrieve.select import (
    parse_moment,
    parse_span,
    selection_mask,
    video_groups,
    window_at,
)
from ethoprism.store import geometry


@dataclass(frozen=True)
class Query:
    vectors: np.ndarray  # (q, D) float32 embeddings
    names: list[str]  # what each query is, for tables and contact sheets
    sha256: list[str | None]  # the query's source video, for excluding it from the results
    windows: list[int | None]  # window index in the query store, when it comes from one
    frames: list[
        tuple[str, float]
    ]  # (video file, seconds) of each query's middle frame, to show it
    identity: dict | None = None  # the store identity the vectors were made with


def query_windows(ds, windows) -> Query:
    n = ds.sizes["window"]
    windows = [int(w) for w in windows]
    bad = [w for w in windows if not 0 <= w < n]
    if bad:
        raise RetrievalError(f"window {bad[0]} is outside the store (windows 0..{n - 1})")
    vectors = (
        np.asarray(store.read_windows(ds, windows, var="embedding"), np.float32)
        if windows
        else np.zeros((0, ds.sizes["c"]), np.float32)
    )
    geo = geometry.windows(ds, windows)
    paths = [str(ds["video_path"].values[v]) for v in geo.video]
    return Query(
        vectors=vectors,
        names=[
            f"{os.path.basename(p)}@{t:.3f}s #{f} (window {w})"
            for p, t, f, w in zip(paths, geo.start_time, geo.start_frame, windows, strict=True)
        ],
        sha256=[str(ds["video_sha256"].values[v]) for v in geo.video],
        windows=windows,
        frames=[(p, float(t)) for p, t in zip(paths, geo.middle_time, strict=True)],
        identity=store.identity(ds),
    )


def middle_frame(ds, w) -> tuple[str, float]:
    """(video path, stored seconds) of window w's middle valid frame, (n_valid - 1) // 2."""
    geo = geometry.windows(ds, [w])
    return str(ds["video_path"].values[geo.video[0]]), float(geo.middle_time[0])


def window_start(ds, w) -> tuple[float, int]:
    """(start_time seconds, start_frame) of window w: what tables and sheet captions both show."""
    return float(ds["start_time"].values[w]), int(ds["start_frame"].values[w])


def overlapping(index_ds, query: Query, query_ds=None) -> list[np.ndarray]:
    """Per query, the index windows sharing a frame with the query window (itself included):
    same video (same store: same video row; another store: same content sha256) and
    intersecting frame spans. Empty for queries that are not store windows (a clip)."""
    start = index_ds["start_frame"].values.astype(np.int64)
    end = start + index_ds["frame_step"].values.astype(np.int64) * (
        np.maximum(index_ds["n_valid_frames"].values.astype(np.int64), 1) - 1
    )
    same_store = query_ds is index_ds
    index_video = index_ds["video"].values
    index_sha = np.asarray(index_ds["video_sha256"].values).astype(str)[index_video]
    out = []
    for qi, w in enumerate(query.windows):
        if w is None or query_ds is None:
            out.append(np.zeros(0, np.int64))
            continue
        q_start = int(query_ds["start_frame"].values[w])
        q_end = q_start + int(query_ds["frame_step"].values[w]) * (
            max(int(query_ds["n_valid_frames"].values[w]), 1) - 1
        )
        video = index_video == index_video[w] if same_store else index_sha == str(query.sha256[qi])
        out.append(np.flatnonzero(video & (start <= q_end) & (end >= q_start)))
    return out


def _drop(found: Neighbours, excluded: list[np.ndarray], k: int) -> Neighbours:
    """The first k results of each query that are not in its excluded windows."""
    windows = np.full((len(excluded), k), -1, np.int64)
    distances = np.full((len(excluded), k), np.inf)
    for qi, skip in enumerate(excluded):
        keep = (found.windows[qi] >= 0) & ~np.isin(found.windows[qi], skip)
        w, d = found.windows[qi][keep][:k], found.distances[qi][keep][:k]
        windows[qi, : len(w)], distances[qi, : len(d)] = w, d
    return Neighbours(windows, distances)


def query_moments(ds, moments: list[str]) -> Query:
    return query_windows(ds, [window_at(ds, parse_moment(m)) for m in moments])


def results_table(ds, query: Query, found: Neighbours) -> list[dict]:
    """One row per (query, rank): video, start time, start frame, window, distance."""
    rows = []
    for qi, (ids, dist) in enumerate(zip(found.windows, found.distances, strict=False)):
        for rank, (w, d) in enumerate(zip(ids, dist, strict=False), start=1):
            if w < 0:
                continue
            v = int(ds["video"].values[w])
            seconds, frame = window_start(ds, w)
            rows.append(
                {
                    "query": query.names[qi],
                    "rank": rank,
                    "window": int(w),
                    "video": os.path.basename(str(ds["video_path"].values[v])),
                    "video_path": str(ds["video_path"].values[v]),
                    "start_time": seconds,
                    "start_frame": frame,
                    "distance": float(d),
                }
            )
    return rows


def search(
    index_ds,
    query: Query,
    k=10,
    *,
    exclude_same_video=False,
    videos: list[str] | None = None,
    scheduler=None,
    ann=None,
    block_rows=None,
) -> Neighbours:
    """Search `index_ds` for the query's vectors; `ann` is an `ann.AnnIndex` to search
    approximately."""
    if query.identity is not None:
        store.check_same_identity(
            query.identity, store.identity(index_ds), "query store vs index store"
        )
    mask = selection_mask(index_ds, [parse_span(v) for v in videos]) if videos else None
    groups = video_groups(query.sha256, index_ds) if exclude_same_video else (None, None)
    if ann is not None:
        return ann.search(
            query.vectors, k, mask=mask, index_groups=groups[1], query_groups=groups[0]
        )
    return exact_search(
        query.vectors,
        index_ds,
        k,
        mask=mask,
        index_groups=groups[1],
        query_groups=groups[0],
        scheduler=scheduler,
        block_rows=block_rows,
    )


@dataclass
class QueryResult:
    index: xr.Dataset  # the searched store
    query: Query
    found: Neighbours
    query_ds: xr.Dataset | None = None  # the store the query windows come from (None for a clip)

    def table(self) -> list[dict]:
        return results_table(self.index, self.query, self.found)


def run_query(
    index_store: str,
    *,
    query: Query | None = None,
    query_store: str | None = None,
    moments=(),
    windows=(),
    k: int = 10,
    exclude_same_video: bool = False,
    include_overlapping: bool = False,
    videos: list[str] | None = None,
    scheduler: str | None = None,
    approx: bool = False,
    index_path: str | None = None,
    storage_options: dict | None = None,
) -> QueryResult:
    """`ethoprism retrieve query`: resolve moments / windows in `query_store` (default: the index
    store), or take a ready `query`, and search `index_store` exactly or with its saved ANN
    index (in `index_path`, else beside the store).

    A query window is not its own result, nor are the windows sharing frames with it (they are
    near copies of it), unless `include_overlapping`."""
    approx = approx or index_path is not None
    if approx and scheduler:
        raise RetrievalError(
            "--approx searches the saved index in this process; --scheduler is for exact search"
        )
    index_ds = store.open(index_store, storage_options)
    qds = None
    if query is None:
        qds = (
            index_ds
            if query_store in (None, index_store)
            else store.open(query_store, storage_options)
        )
        query = query_windows(
            qds, [window_at(qds, parse_moment(m)) for m in moments] + list(windows)
        )
    if not len(query.vectors):
        raise RetrievalError("nothing to search for: give --moment, --window or --clip")
    index = None
    if approx:
        index = load_index(index_store, index_ds, index_path=index_path)
    excluded = (
        [np.zeros(0, np.int64)] * len(query.vectors)
        if include_overlapping
        else overlapping(index_ds, query, qds)
    )
    extra = max((len(e) for e in excluded), default=0)
    found = search(
        index_ds,
        query,
        k + extra,
        exclude_same_video=exclude_same_video,
        videos=videos,
        scheduler=scheduler,
        ann=index,
    )
    return QueryResult(index_ds, query, _drop(found, excluded, k), qds)
