"""Exact L2 nearest neighbours over a store's window embeddings, read one block at a time.

Distances are ||q||^2 - 2 q.x + ||x||^2 from one matrix product per index block, so the index
never has to fit in memory; that float32 form only picks candidates, with a slack that covers its
rounding error, and each candidate is re-scored as ||q - x||^2 in float64 before it is merged into
a running top-k (ties broken by window index). So the ids agree with a float64 brute force except
between windows whose distances differ by less than float32 inputs can resolve. The same
block function runs in this process or, given a scheduler address, as one task per block on a
Dask distributed cluster.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import xarray as xr

from ethoprism.errors import EthoprismError
from ethoprism.store.damage import first_damaged

BLOCK_BYTES = (
    64 * 2**20
)  # index rows read per block; the (queries, block) distance matrix follows it
QUERY_BATCH = 4096  # queries per pass, bounding the distance matrix
MAX_CANDIDATES = 32  # x k per query: re-scored candidates per block at most


class RetrievalError(EthoprismError):
    """A query, selection or index that cannot be searched."""


@dataclass(frozen=True)
class Neighbours:
    windows: np.ndarray  # (q, k) int64 window indices in the index; -1 where fewer than k exist
    distances: np.ndarray  # (q, k) float64 L2 distances (not squared), ascending; inf where -1


# ---------------------------------------------------------------------------- the search kernel


def _augment(block):
    """[x, ||x||^2] per row, so that one product with [-2q, 1] gives ||x||^2 - 2 q.x."""
    xa = np.empty((len(block), block.shape[1] + 1), np.float32)
    xa[:, :-1] = block
    np.einsum("ij,ij->i", block, block, out=xa[:, -1])
    return xa


def _empty(q, k):
    return np.full((q, k), np.inf, np.float64), np.full((q, k), -1, np.int64)


def merge(state, rows, d2, ids, k):
    """Fold candidates (query row, squared distance, id) into the running top-k, sorted by
    (d2, id)."""
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


def update(
    state, queries, xa, row_ids, k, row_groups=None, query_groups=None, block=None, centre=0
):
    """The running top-k `state` of `queries` after one augmented index block `xa`.

    xa augments the block's rows minus `centre` (distances do not change, and the float32
    expanded form loses far less to cancellation around the data than around the origin);
    `block` holds the rows themselves for exact re-scoring (default: xa's rows, centre 0).
    A query never gets a row of its own group (row_groups / query_groups: same-video exclusion).
    Every row whose float32 score is within the rounding slack of the query's k-th distance (the
    block's k-th best until the query holds k results) is re-scored exactly in float64.
    """
    q, dim = queries.shape
    if q == 0 or len(xa) == 0:
        return state
    block = xa[:, :-1] if block is None else block
    centred = queries - np.asarray(centre, np.float32)
    qn = np.einsum("ij,ij->i", centred, centred)
    qa = np.empty((q, dim + 1), np.float32)
    qa[:, :-1] = centred
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
    if not np.isfinite(kth).all():
        # until a query holds k results: the k-th best score of this block bounds its candidates
        kk = min(k, len(xa))
        block_kth = np.partition(scores, kk - 1, axis=1)[:, kk - 1] + qn
        kth = np.where(np.isfinite(kth), np.minimum(kth, block_kth), block_kth)
    # the slack covers the float32 rounding of the expanded form (relative to the norms, not to
    # the distance); every candidate within it is re-scored exactly
    limit = kth - qn + 1e-4 * (np.abs(kth) + 3 * qn)
    hits = (scores <= limit[:, None]) & np.isfinite(scores)
    if np.count_nonzero(hits) > MAX_CANDIDATES * k * q:
        # a slack wider than the data (rows far from the centre): keep memory bounded with each
        # query's MAX_CANDIDATES * k best float32 scores
        kk = min(MAX_CANDIDATES * k, len(xa))
        best = np.argpartition(scores, kk - 1, axis=1)[:, :kk]
        keep = np.zeros_like(hits)
        np.put_along_axis(keep, best, True, axis=1)
        hits &= keep
    rows, cols = np.nonzero(hits)
    diff = queries[rows].astype(np.float64) - block[cols].astype(np.float64)
    d2 = np.einsum("ij,ij->i", diff, diff)
    return merge(state, rows, d2, np.asarray(row_ids, np.int64)[cols], k)


def _finish(state):
    d2, ids = state
    return Neighbours(windows=ids, distances=np.sqrt(np.maximum(d2, 0.0)))


def _embedding(index, var: str = "embedding"):
    """The (n, D) `var` array of a dataset, or a plain array, without reading it."""
    if isinstance(index, xr.Dataset):
        if var not in index:
            raise RetrievalError(
                f"the index dataset has no `{var}` variable (not an ethoprism store?)"
            )
        return index[var].data
    if getattr(index, "ndim", 0) != 2:
        raise RetrievalError(
            f"index embeddings must be 2-D (n, D), got shape {getattr(index, 'shape', None)}"
        )
    return index


def read_slice(emb, i0, i1):
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


def read_blocks(index, block_rows=None, mask=None, var: str = "embedding"):
    """Yield (first row, block (b, D) float32) over the index's `var` embeddings, skipping blocks
    with no row in `mask`; the next block is read while the caller works on this one. A store
    dataset's damaged chunk is named (part, windows, video)."""
    emb = _embedding(index, var)
    spans = list(_blocks(emb.shape[0], _block_rows(emb.shape[1], block_rows), mask))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(read_slice, emb, *spans[0]) if spans else None
        for j, (i0, i1) in enumerate(spans):
            try:
                block = pending.result()
            except Exception as e:
                if isinstance(index, xr.Dataset) and "part" in index.coords:
                    raise first_damaged(index, var, i0, i1, e) from None
                raise
            if j + 1 < len(spans):
                pending = pool.submit(read_slice, emb, *spans[j + 1])
            yield i0, block


def _search_block(queries, block, i0, k, mask=None, row_groups=None, query_groups=None, state=None):
    """Update (or start) the top-k of `queries` with index rows i0.. held in `block`."""
    ids = np.arange(i0, i0 + len(block))
    if mask is not None:
        block, ids = block[mask], ids[mask]
        row_groups = None if row_groups is None else row_groups[mask]
    block = np.asarray(block, np.float32)
    centre = block.mean(0, dtype=np.float64).astype(np.float32) if len(block) else 0
    xa = _augment(block - centre)
    state = _empty(len(queries), k) if state is None else state
    out = []
    for a in range(0, len(queries), QUERY_BATCH):
        b = a + QUERY_BATCH
        out.append(
            update(
                (state[0][a:b], state[1][a:b]),
                queries[a:b],
                xa,
                ids,
                k,
                row_groups,
                None if query_groups is None else query_groups[a:b],
                block,
                centre,
            )
        )
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
        self.state = _search_block(
            self.queries, block, first_row, self.k, mask, row_groups, self.query_groups, self.state
        )

    def merge(self, state) -> None:
        """Fold in another (d2, ids) top-k of the same queries (from a worker)."""
        d2, ids = state
        rows = np.repeat(np.arange(len(d2)), d2.shape[1])
        self.state = merge(self.state, rows, d2.ravel(), ids.ravel(), self.k)

    def result(self) -> Neighbours:
        return _finish(self.state)


def exact_search(
    queries,
    index,
    k=10,
    *,
    mask=None,
    index_groups=None,
    query_groups=None,
    block_rows=None,
    scheduler=None,
) -> Neighbours:
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
    for i0, block in read_blocks(index, block_rows, mask):
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
            tasks.append(
                dask.delayed(_search_block)(
                    q,
                    emb[i0:i1],
                    i0,
                    top.k,
                    None if mask is None else mask[i0:i1],
                    None if index_groups is None else index_groups[i0:i1],
                    top.query_groups,
                )
            )
        for future in as_completed(client.compute(tasks), loop=client.loop):
            top.merge(future.result())
            future.release()
    return top.result()
