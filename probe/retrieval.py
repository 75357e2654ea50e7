"""Exact L2 nearest neighbours over a store's window embeddings, read one block at a time.

Distances are ||q||^2 - 2 q.x + ||x||^2 from one matrix product per index block, so the index
never has to fit in memory; each block's candidates are re-scored as ||q - x||^2 before they are
merged into a running top-k, so the reported distances carry no cancellation error. The same
block function runs in this process or, given a scheduler address, as one task per block on a
Dask distributed cluster.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import xarray as xr
from ethoprism import store
from ethoprism.errors import EthoprismError

BLOCK_BYTES = 64 * 2**20  # index rows read per block; the (queries, block) distance matrix follows it
QUERY_BATCH = 4096  # queries per pass, bounding the distance matrix


class RetrievalError(EthoprismError):
    """A query, selection or index that cannot be searched."""


@dataclass(frozen=True)
class Neighbours:
    windows: np.ndarray  # (q, k) int64 window indices in the index; -1 where fewer than k exist
    distances: np.ndarray  # (q, k) float32 L2 distances (not squared), ascending; inf where -1


# ---------------------------------------------------------------------------- the search kernel


def _augment(block):
    """[x, ||x||^2] per row, so that one product with [-2q, 1] gives ||x||^2 - 2 q.x."""
    xa = np.empty((len(block), block.shape[1] + 1), np.float32)
    xa[:, :-1] = block
    np.einsum("ij,ij->i", block, block, out=xa[:, -1])
    return xa


def _empty(q, k):
    return np.full((q, k), np.inf, np.float32), np.full((q, k), -1, np.int64)


def merge(state, rows, d2, ids, k):
    """Fold candidates (query row, squared distance, id) into the running top-k, sorted by (d2, id)."""
    q = len(state[0])
    rows = np.concatenate([np.repeat(np.arange(q), state[0].shape[1]), rows])
    d2 = np.concatenate([state[0].ravel(), d2])
    ids = np.concatenate([state[1].ravel(), ids])
    order = np.lexsort((ids, d2, rows))
    rows, d2, ids = rows[order], d2[order], ids[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(q))[rows]
    keep = rank < k
    out = _empty(q, k)
    out[0][rows[keep], rank[keep]] = d2[keep]
    out[1][rows[keep], rank[keep]] = ids[keep]
    return out


def update(state, queries, xa, row_ids, k, row_groups=None, query_groups=None):
    """The running top-k `state` of `queries` after one augmented index block `xa`.

    A query never gets a row of its own group (row_groups / query_groups: same-video exclusion).
    Once every query holds k results, only rows closer than its current k-th can enter, which
    one comparison finds; until then each query takes the block's k best.
    """
    q, dim = queries.shape
    if q == 0 or len(xa) == 0:
        return state
    qn = np.einsum("ij,ij->i", queries, queries)
    qa = np.empty((q, dim + 1), np.float32)
    qa[:, :-1] = queries
    qa[:, :-1] *= -2.0
    qa[:, -1] = 1.0
    # ||q||^2 is constant per query, so candidates are chosen on ||x||^2 - 2 q.x
    scores = qa @ xa.T
    if query_groups is not None:
        shared = np.flatnonzero(np.isin(row_groups, query_groups))
        if len(shared):
            sub = scores[:, shared]
            sub[query_groups[:, None] == row_groups[shared][None, :]] = np.inf
            scores[:, shared] = sub
    kth = state[0][:, -1]
    rows = None
    if np.isfinite(kth).all():
        # slack covers the float32 rounding of the expanded form; extra candidates are re-scored
        limit = kth - qn + 1e-4 * (kth + 3 * qn)
        hits = scores < limit[:, None]
        if np.count_nonzero(hits) <= 8 * k * q:
            rows, cols = np.nonzero(hits)
    if rows is None:
        kk = min(k, len(xa))
        cols = np.argpartition(scores, kk - 1, axis=1)[:, :kk]
        rows = np.repeat(np.arange(q), kk)
        cols = cols.ravel()
        finite = np.isfinite(scores[rows, cols])
        rows, cols = rows[finite], cols[finite]
    diff = queries[rows] - xa[cols, :-1]
    d2 = np.einsum("ij,ij->i", diff, diff)
    return merge(state, rows, d2, np.asarray(row_ids, np.int64)[cols], k)


def _finish(state):
    d2, ids = state
    return Neighbours(windows=ids, distances=np.sqrt(np.maximum(d2, 0.0)).astype(np.float32))


def _embedding(index):
    """The (n, D) embedding array of a dataset or a plain array, without reading it."""
    if isinstance(index, xr.Dataset):
        if "embedding" not in index:
            raise RetrievalError("the index dataset has no `embedding` variable (not an ethoprism store?)")
        return index["embedding"].data
    if getattr(index, "ndim", 0) != 2:
        raise RetrievalError(f"index embeddings must be 2-D (n, D), got shape {getattr(index, 'shape', None)}")
    return index


def _read(emb, i0, i1):
    part = emb[i0:i1]
    return np.asarray(part.compute() if hasattr(part, "compute") else part, np.float32)


def _blocks(n, rows, mask):
    """(start, stop) of each block holding at least one selected row."""
    for i0 in range(0, n, rows):
        i1 = min(n, i0 + rows)
        if mask is None or mask[i0:i1].any():
            yield i0, i1


def _block_rows(dim, block_rows):
    return block_rows or max(1024, BLOCK_BYTES // (4 * max(dim, 1)))


def read_blocks(index, block_rows=None, mask=None):
    """Yield (first row, block (b, D) float32) over the index's embeddings, skipping blocks with
    no row in `mask`; the next block is read while the caller works on this one."""
    emb = _embedding(index)
    spans = list(_blocks(emb.shape[0], _block_rows(emb.shape[1], block_rows), mask))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_read, emb, *spans[0]) if spans else None
        for j, (i0, _) in enumerate(spans):
            block = pending.result()
            if j + 1 < len(spans):
                pending = pool.submit(_read, emb, *spans[j + 1])
            yield i0, block


def _search_block(queries, block, i0, k, mask=None, row_groups=None, query_groups=None, state=None):
    """Update (or start) the top-k of `queries` with index rows i0.. held in `block`."""
    ids = np.arange(i0, i0 + len(block))
    if mask is not None:
        block, ids = block[mask], ids[mask]
        row_groups = None if row_groups is None else row_groups[mask]
    xa = _augment(np.asarray(block, np.float32))
    state = _empty(len(queries), k) if state is None else state
    out = []
    for a in range(0, len(queries), QUERY_BATCH):
        b = a + QUERY_BATCH
        out.append(update((state[0][a:b], state[1][a:b]), queries[a:b], xa, ids, k, row_groups,
                          None if query_groups is None else query_groups[a:b]))
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


class TopK:
    """The running k nearest index rows of a set of queries, fed the index one block at a time.

    query_groups (q,): a query never takes a row whose group (row_groups given to `add`) is its own.
    """

    def __init__(self, queries, k, query_groups=None):
        self.queries = np.atleast_2d(np.asarray(queries, np.float32))
        self.k = k
        self.query_groups = None if query_groups is None else np.asarray(query_groups, np.int64)
        self.state = _empty(len(self.queries), k)

    def add(self, block, first_row, mask=None, row_groups=None) -> None:
        """Index rows first_row.. (only those in `mask`, a bool per block row)."""
        self.state = _search_block(self.queries, block, first_row, self.k, mask, row_groups,
                                   self.query_groups, self.state)

    def merge(self, state) -> None:
        """Fold in another (d2, ids) top-k of the same queries (from a worker)."""
        d2, ids = state
        rows = np.repeat(np.arange(len(d2)), d2.shape[1])
        self.state = merge(self.state, rows, d2.ravel(), ids.ravel(), self.k)

    def result(self) -> Neighbours:
        return _finish(self.state)


def exact_search(queries, index, k=10, *, mask=None, index_groups=None, query_groups=None,
                 block_rows=None, scheduler=None) -> Neighbours:
    """The k nearest index rows of each query by L2 distance, exactly.

    queries: (q, D) float32. index: an `ethoprism.store.open` dataset (its `embedding`, read
    lazily block by block) or an (n, D) array. mask: (n,) bool, the rows that may be returned.
    index_groups (n,) / query_groups (q,): int labels; a query never returns a row of its own
    group (use -1 for "no group"). scheduler: a Dask distributed address; each block becomes a
    task on the cluster and the per-block top-k are merged here.
    """
    emb = _embedding(index)
    top = TopK(queries, k, query_groups)
    n, dim = emb.shape
    if top.queries.shape[1] != dim:
        raise RetrievalError(f"queries have {top.queries.shape[1]} dimensions, the index has {dim}")
    if k < 1:
        raise RetrievalError(f"k must be at least 1, got {k}")
    mask = None if mask is None else np.asarray(mask, bool)
    index_groups = None if query_groups is None else np.asarray(index_groups, np.int64)

    def part(rows, i0, i1):
        return None if rows is None else rows[i0:i1]

    if scheduler is not None:
        blocks = list(_blocks(n, _block_rows(dim, block_rows), mask))
        return _distributed_search(top, emb, blocks, mask, index_groups, scheduler)
    for i0, block in read_blocks(emb, block_rows, mask):
        i1 = i0 + len(block)
        top.add(block, i0, part(mask, i0, i1), part(index_groups, i0, i1))
    return top.result()


def _distributed_search(top, emb, blocks, mask, index_groups, address):
    import dask
    from dask.distributed import Client, as_completed

    try:
        client = Client(address, set_as_default=False, timeout="20s")
    except (OSError, TimeoutError) as e:
        raise RetrievalError(f"cannot reach the Dask scheduler at {address}: {e}") from None
    with client:
        q = dask.delayed(top.queries, pure=True)  # one key, shipped once, shared by all tasks
        tasks = []
        for i0, i1 in blocks:
            # a dask-backed store slice is read by the worker that runs the task
            tasks.append(dask.delayed(_search_block)(
                q, emb[i0:i1], i0, top.k,
                None if mask is None else mask[i0:i1],
                None if index_groups is None else index_groups[i0:i1],
                top.query_groups))
        for future in as_completed(client.compute(tasks), loop=client.loop):
            top.merge(future.result())
            future.release()
    return top.result()


# ------------------------------------------------------------------- moments, windows, selections


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
        raise RetrievalError(f"cannot read the time in {whole!r}: give seconds (12.5) or mm:ss (1:02.5)") from None


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
        raise RetrievalError(f"cannot read the selection {text!r}: write VIDEO or VIDEO@START-END (seconds)")
    start, end = (_parse_seconds(g, text) if g else None for g in m.groups())
    return VideoSpan(video, start, end)


def window_length(ds) -> int:
    return int(ds.attrs.get("preprocessing", {}).get("window_length", ds.sizes.get("t", 16)))


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
        known = ", ".join(os.path.basename(p) for p in paths[:5]) + (", ..." if len(paths) > 5 else "")
        raise RetrievalError(f"no video {name!r} in the store (it holds {len(paths)}: {known})")
    complete = [i for i in rows if str(ds["video_status"].values[i]) == "complete"]
    if not complete:
        raise RetrievalError(f"video {name!r} failed extraction and has no windows: "
                             f"{ds['video_reason'].values[rows[0]]}")
    if len({shas[i] for i in complete}) > 1:
        raise RetrievalError(f"{name!r} names {len(complete)} different videos in the store; give the full path")
    return complete[0]


def _window_spans(ds, windows):
    """(first, last) frame and (first, last) time covered by each window."""
    step = ds["frame_step"].values[windows]
    last = (ds["n_valid_frames"].values[windows] - 1) * step
    first_frame = ds["start_frame"].values[windows]
    fps = ds["video_fps"].values[ds["video"].values[windows]]
    t0 = ds["start_time"].values[windows]
    return (first_frame, first_frame + last), (t0, t0 + last / fps)


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
            raise RetrievalError(f"frame {moment.frame} is outside {name} (frames 0..{n_frames - 1})")
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
    """Group ids by video content (sha256), comparable across stores: (query_groups, index_groups)."""
    shas = [str(s) for s in index_ds["video_sha256"].values]
    code = {s: i for i, s in enumerate(dict.fromkeys(shas))}
    index_groups = np.array([code[s] for s in shas], np.int64)[index_ds["video"].values]
    return np.array([code.get(s, -1) for s in query_sha], np.int64), index_groups


# ------------------------------------------------------------------------------- whole queries


@dataclass(frozen=True)
class Query:
    vectors: np.ndarray  # (q, D) float32 embeddings
    names: list[str]  # what each query is, for tables and contact sheets
    sha256: list[str | None]  # the query's source video, for excluding it from the results
    windows: list[int | None]  # window index in the query store, when it comes from one
    frames: list[tuple[str, float]]  # (video file, seconds) of each query's middle frame, to show it
    identity: dict | None = None  # the store identity the vectors were made with


def query_windows(ds, windows) -> Query:
    n = ds.sizes["window"]
    windows = [int(w) for w in windows]
    bad = [w for w in windows if not 0 <= w < n]
    if bad:
        raise RetrievalError(f"window {bad[0]} is outside the store (windows 0..{n - 1})")
    vectors = np.stack([_read(ds["embedding"].data, w, w + 1)[0] for w in windows]) if windows else \
        np.zeros((0, ds.sizes["c"]), np.float32)
    rows = ds["video"].values[windows]
    return Query(
        vectors=vectors,
        names=[_describe(ds, w) for w in windows],
        sha256=[str(ds["video_sha256"].values[r]) for r in rows],
        windows=windows,
        frames=[middle_frame(ds, w) for w in windows],
        identity=store.identity(ds),
    )


def middle_frame(ds, w) -> tuple[str, float]:
    """(video path, seconds) of window w's middle valid frame, (n_valid - 1) // 2."""
    v = int(ds["video"].values[w])
    offset = (int(ds["n_valid_frames"].values[w]) - 1) // 2 * int(ds["frame_step"].values[w])
    return str(ds["video_path"].values[v]), float(ds["start_time"].values[w]) + offset / float(ds["video_fps"].values[v])


def query_moments(ds, moments: list[str]) -> Query:
    return query_windows(ds, [window_at(ds, parse_moment(m)) for m in moments])


def _describe(ds, w):
    name = os.path.basename(str(ds["video_path"].values[ds["video"].values[w]]))
    return f"{name}@{float(ds['start_time'].values[w]):.2f}s #{int(ds['start_frame'].values[w])} (window {w})"


def results_table(ds, query: Query, found: Neighbours) -> list[dict]:
    """One row per (query, rank): video, start time, start frame, window, distance."""
    rows = []
    for qi, (ids, dist) in enumerate(zip(found.windows, found.distances)):
        for rank, (w, d) in enumerate(zip(ids, dist), start=1):
            if w < 0:
                continue
            v = int(ds["video"].values[w])
            rows.append({
                "query": query.names[qi], "rank": rank, "window": int(w),
                "video": os.path.basename(str(ds["video_path"].values[v])),
                "video_path": str(ds["video_path"].values[v]),
                "start_time": float(ds["start_time"].values[w]),
                "start_frame": int(ds["start_frame"].values[w]),
                "distance": float(d),
            })
    return rows


def search(index_ds, query: Query, k=10, *, exclude_same_video=False, videos: list[str] | None = None,
           scheduler=None, ann=None, block_rows=None) -> Neighbours:
    """Search `index_ds` for the query's vectors; `ann` is an `ann.AnnIndex` to search approximately."""
    if query.identity is not None:
        store.check_same_identity(query.identity, store.identity(index_ds), "query store vs index store")
    mask = selection_mask(index_ds, [parse_span(v) for v in videos]) if videos else None
    groups = video_groups(query.sha256, index_ds) if exclude_same_video else (None, None)
    if ann is not None:
        return ann.search(query.vectors, k, mask=mask, index_groups=groups[1], query_groups=groups[0])
    return exact_search(query.vectors, index_ds, k, mask=mask, index_groups=groups[1],
                        query_groups=groups[0], scheduler=scheduler, block_rows=block_rows)


@dataclass
class QueryResult:
    index: xr.Dataset  # the searched store
    query: Query
    found: Neighbours
    query_ds: xr.Dataset | None = None  # the store the query windows come from (None for a clip)

    def table(self) -> list[dict]:
        return results_table(self.index, self.query, self.found)


def run_query(index_store: str, *, query: Query | None = None, query_store: str | None = None,
              moments=(), windows=(), k: int = 10, exclude_same_video: bool = False,
              videos: list[str] | None = None, scheduler: str | None = None, approx: bool = False,
              storage_options: dict | None = None) -> QueryResult:
    """`ethoprism retrieve query`: resolve moments / windows in `query_store` (default: the index
    store), or take a ready `query`, and search `index_store` exactly or with its saved ANN index."""
    if approx and scheduler:
        raise RetrievalError("--approx searches the saved index in this process; --scheduler is for exact search")
    index_ds = store.open(index_store, storage_options)
    qds = None
    if query is None:
        qds = index_ds if query_store in (None, index_store) else store.open(query_store, storage_options)
        query = query_windows(qds, [window_at(qds, parse_moment(m)) for m in moments] + list(windows))
    if not len(query.vectors):
        raise RetrievalError("nothing to search for: give --moment, --window or --clip")
    index = None
    if approx:
        from ethoprism.probe.ann import load_index  # ann builds on this module

        index = load_index(index_store, index_ds)
    found = search(index_ds, query, k, exclude_same_video=exclude_same_video, videos=videos,
                   scheduler=scheduler, ann=index)
    return QueryResult(index_ds, query, found, qds)
