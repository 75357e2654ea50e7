"""Approximate nearest neighbours for archives of millions of windows: a FAISS IVF-Flat index.

Built from a store's `embedding` block by block and saved beside a local store (`STORE.ann/`,
never inside the zarr hierarchy) or, for any store and required for a remote one (http(s)://,
s3://, which is never written to), in a local directory the user names; with the store's
identity, window count and a fingerprint of its videos, so that an index of another store
(foreign) or of an older state of this one (stale) is refused. nprobe is chosen at build time
as the smallest power of two whose recall@10 against exact search, on a sample of the store's
own windows (each excluding itself), reaches the target.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from ethoprism import store
from ethoprism.probe.retrieve.knn import Neighbours, RetrievalError, TopK, read_blocks

INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
RECALL_QUERIES = 200
TARGET_RECALL = 0.95


class AnnError(RetrievalError):
    """An approximate index that is missing, foreign or stale."""


@dataclass(frozen=True)
class AnnInfo:
    kind: str  # "IVFFlat"
    nlist: int
    nprobe: int  # chosen at build time to reach the target recall
    n_windows: int
    dim: int
    recall_at_10: float  # against exact search, at nprobe, on recall_queries of the store's windows
    recall_queries: int
    videos_fingerprint: str
    identity: dict
    build_seconds: float
    var: str = "embedding"  # the per-window embedding indexed (an --index-dir's name does not say)


def index_dir(store_path, var: str = "embedding", index_path=None) -> str:
    """Where a store's index lives: `index_path` (a local directory) when given, else beside a
    local store, `<store>.ann` (for `embedding`) or `<store>.<var>.ann` (for another embedding,
    e.g. a video-text store's `video_embedding`). A remote store needs `index_path`."""
    if index_path is not None:
        where = os.fspath(index_path).removeprefix("file://").rstrip("/")
        if "://" in where:
            raise AnnError(f"--index-dir {index_path}: the index is kept in a local directory")
        return where
    path = os.fspath(store_path).removeprefix("file://").rstrip("/")
    if "://" in path:
        raise AnnError(
            f"{store_path} is remote and is never written to: give the approximate index a local "
            "directory with --index-dir DIR (to build-index and to query --approx alike)"
        )
    return path + (".ann" if var == "embedding" else f".{var}.ann")


def default_nlist(n: int) -> int:
    """~sqrt(n) lists, with at least 40 training points per list (FAISS warns below 39)."""
    return int(max(1, min(round(math.sqrt(n)), n // 40)))


def videos_fingerprint(ds) -> str:
    """sha256 over the content fingerprints of the store's videos, in window order."""
    h = hashlib.sha256()
    for sha, n in zip(ds["video_sha256"].values, ds["video_n_windows"].values, strict=False):
        h.update(f"{sha}:{int(n)};".encode())
    return h.hexdigest()


# ----------------------------------------------------------------- array-level building blocks


def training_rows(n: int, nlist: int, seed: int = 0) -> np.ndarray:
    """The sorted rows the coarse quantiser is trained on: 40 per list, at random."""
    if n < nlist:
        raise AnnError(
            f"cannot build {nlist} lists from {n} windows; use --nlist {max(1, n // 40)} or fewer"
        )
    return np.sort(np.random.default_rng(seed).choice(n, min(n, 40 * nlist), replace=False))


def read_rows(ds, rows, var: str = "embedding") -> np.ndarray:
    """Embeddings of the given sorted rows of a store: per-window reads when they are few, one
    pass over the blocks holding them when they are many."""
    n = ds.sizes["window"]
    if 8 * len(rows) < n:
        return np.ascontiguousarray(store.read_windows(ds, rows, var=var), np.float32)
    wanted = np.zeros(n, bool)
    wanted[rows] = True
    return np.concatenate(
        [block[wanted[i0 : i0 + len(block)]] for i0, block in read_blocks(ds, mask=wanted, var=var)]
    )


def build_ivf(
    emb, sample, nlist: int, *, seed: int = 0, on_block=None, var: str = "embedding"
) -> faiss.IndexIVFFlat:
    """An IVF-Flat index over the rows of `emb` (a store dataset or an (n, D) array), ids = rows.

    The coarse quantiser is trained on `sample` (rows of emb, see training_rows); rows are added
    one block at a time, so only the index itself (which holds the vectors) must fit in memory.
    on_block(first_row, block) sees every block as it is added (to measure recall in the same pass).
    """
    sample = np.ascontiguousarray(sample, np.float32)
    dim = sample.shape[1]
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist, faiss.METRIC_L2)
    index.cp.seed = seed
    index.train(sample)
    for i0, block in read_blocks(emb, var=var):
        index.add(np.ascontiguousarray(block))
        if on_block is not None:
            on_block(i0, block)
    return index


TIE_RTOL = 1e-6  # distances closer than this (relative) are ties: either window is a right answer


def recall_at_k(
    found: np.ndarray,
    truth: np.ndarray,
    found_dist: np.ndarray | None = None,
    truth_dist: np.ndarray | None = None,
) -> float:
    """Mean fraction of each query's true k neighbours that were found (both (q, k); -1 ignored).

    With the exact distances of the found windows and of the true ones, a found window tied with
    the true k-th (within TIE_RTOL) counts as found: which of tied windows comes back is arbitrary.
    """
    hits = []
    for i, (f, t) in enumerate(zip(found, truth, strict=False)):
        n_true = max(1, int((t >= 0).sum()))
        if found_dist is None or truth_dist is None:
            hits.append(len(set(f[f >= 0]) & set(t[t >= 0])) / n_true)
            continue
        kth = truth_dist[i][t >= 0].max(initial=0.0)
        ok = (f >= 0) & (found_dist[i] <= kth * (1 + TIE_RTOL) + 1e-12)
        hits.append(min(int(ok.sum()), n_true) / n_true)
    return float(np.mean(hits)) if hits else 0.0


def exact_distances(queries: np.ndarray, ids: np.ndarray, vectors) -> np.ndarray:
    """(q, k) float64 L2 distances of queries to windows `ids` (inf where -1); vectors(sorted
    unique ids) -> their embeddings."""
    wanted = np.unique(ids[ids >= 0])
    rows = vectors(wanted).astype(np.float64) if len(wanted) else np.zeros((0, queries.shape[1]))
    at = np.searchsorted(wanted, np.maximum(ids, 0))
    diff = queries.astype(np.float64)[:, None, :] - rows[np.minimum(at, len(wanted) - 1)]
    return np.where(ids >= 0, np.sqrt((diff**2).sum(-1)), np.inf)


def tune_nprobe(
    index,
    queries,
    truth,
    k: int = 10,
    target: float = TARGET_RECALL,
    exclude: np.ndarray | None = None,
    truth_dist: np.ndarray | None = None,
    vectors=None,
) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@k reaches `target` (or nlist), and its recall.

    exclude: (q,) an id each query must not return (its own row, when queries come from the index).
    truth_dist and vectors (ids -> embeddings): count ties with the true k-th as found.
    """
    nprobe = 1
    while True:
        index.nprobe = nprobe
        _, ids = index.search(queries, k + (exclude is not None))
        if exclude is not None:
            ids = np.stack([row[row != own][:k] for row, own in zip(ids, exclude, strict=False)])
        found_dist = (
            exact_distances(queries, ids, vectors)
            if vectors is not None and truth_dist is not None
            else None
        )
        recall = recall_at_k(ids, truth, found_dist, truth_dist)
        if recall >= target or nprobe >= index.nlist:
            return nprobe, recall
        nprobe = min(2 * nprobe, index.nlist)


# --------------------------------------------------------------------------- store-level index


@dataclass
class AnnIndex:
    index: faiss.IndexIVFFlat
    info: AnnInfo

    def search(
        self, queries, k=10, *, mask=None, index_groups=None, query_groups=None
    ) -> Neighbours:
        """Like `retrieval.exact_search`, approximately: mask / groups become FAISS ID selectors."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
        if queries.shape[1] != self.info.dim:
            raise AnnError(
                f"queries have {queries.shape[1]} dimensions, the index has {self.info.dim}"
            )
        d2 = np.full((len(queries), k), np.inf, np.float32)
        ids = np.full((len(queries), k), -1, np.int64)
        if query_groups is None:
            query_groups = np.full(len(queries), -1)
        # one selector per distinct excluded group (queries from one video share it)
        for group in np.unique(query_groups):
            rows = np.flatnonzero(query_groups == group)
            allowed = (
                np.ones(self.info.n_windows, bool)
                if mask is None
                else np.asarray(mask, bool).copy()
            )
            if group >= 0:
                allowed &= np.asarray(index_groups) != group
            d2[rows], ids[rows] = self._search_allowed(queries[rows], k, allowed)
        d2[ids < 0] = np.inf
        return Neighbours(windows=ids, distances=np.sqrt(np.maximum(d2, 0)).astype(np.float32))

    def _search_allowed(self, queries, k, allowed):
        """Search only the allowed ids. A selection empties most lists, so nprobe grows with its
        rarity, and doubles while a query finds fewer than k of the allowed windows."""
        n_allowed = int(allowed.sum())
        bitmap = np.packbits(allowed, bitorder="little")
        # the selector and its bitmap must stay referenced while FAISS reads them
        selector = (
            None
            if n_allowed == len(allowed)
            else faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap))
        )
        nlist = self.info.nlist
        nprobe = min(nlist, math.ceil(self.info.nprobe * len(allowed) / max(1, n_allowed)))
        while True:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            dist, found = self.index.search(queries, k, params=params)
            if nprobe >= nlist or (found >= 0).sum(1).min() >= min(k, n_allowed):
                return dist, found
            nprobe = min(nlist, 2 * nprobe)


def build_index(
    store_path,
    *,
    nlist: int | None = None,
    recall_queries: int = RECALL_QUERIES,
    target_recall: float = TARGET_RECALL,
    seed: int = 0,
    var: str = "embedding",
    index_path=None,
    storage_options: dict | None = None,
) -> AnnInfo:
    """Build the IVF-Flat index of a store's `var` embeddings, measure its recall@10, save it
    in `index_path` or beside a local store (see `index_dir`)."""
    t0 = time.perf_counter()
    out = index_dir(store_path, var, index_path)
    _check_replaceable(out)
    ds = store.open(os.fspath(store_path), storage_options)
    if var not in ds or ds[var].ndim != 2:
        raise AnnError(f"{store_path} has no per-window embedding {var!r} to index")
    n, dim = ds[var].shape
    if n == 0:
        raise AnnError(f"{store_path} holds no windows to index")
    nlist = nlist or default_nlist(n)
    rng = np.random.default_rng(seed + 1)
    probe_rows = np.sort(rng.choice(n, min(n, recall_queries), replace=False))
    queries = read_rows(ds, probe_rows, var)
    # exact neighbours of the sampled windows (each excluding itself, as a held-out query would),
    # found in the same pass over the store that fills the index
    exact = TopK(queries, 10, query_groups=probe_rows)
    index = build_ivf(
        ds,
        read_rows(ds, training_rows(n, nlist, seed), var),
        nlist,
        seed=seed,
        on_block=lambda i0, block: exact.add(block, i0, row_groups=np.arange(i0, i0 + len(block))),
        var=var,
    )
    truth = exact.result()
    nprobe, recall = tune_nprobe(
        index,
        queries,
        truth.windows,
        10,
        target_recall,
        exclude=probe_rows,
        truth_dist=truth.distances,
        vectors=lambda ids: read_rows(ds, ids, var),
    )
    info = AnnInfo(
        "IVFFlat",
        nlist,
        nprobe,
        n,
        dim,
        recall,
        len(probe_rows),
        videos_fingerprint(ds),
        store.identity(ds),
        round(time.perf_counter() - t0, 3),
        var,
    )
    # written beside `out` in a folder of its own (never one of the user's), then swapped in
    parent, name = os.path.split(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}.", dir=parent)
    try:
        faiss.write_index(index, os.path.join(tmp, INDEX_FILE))
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(asdict(info), f, indent=2)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return info


def _check_replaceable(out: str) -> None:
    """A rebuild replaces `out` whole: refuse one that holds anything but an index (a directory
    named with --index-dir may be the user's own)."""
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out) or not set(os.listdir(out)) <= {INDEX_FILE, META_FILE}:
        raise AnnError(
            f"{out} exists and is not an approximate index (it holds other files); give the "
            "index a new directory"
        )


def load_index(store_path, ds=None, var: str = "embedding", index_path=None) -> AnnIndex:
    """The saved index of a store's `var` embeddings (in `index_path`, else beside the store),
    refused if it belongs to another store or an older state of it."""
    where = index_dir(store_path, var, index_path)
    build = (
        f"`ethoprism retrieve build-index {store_path}"
        + ("" if var == "embedding" else f" --embedding {var}")
        + ("" if index_path is None else f" --index-dir {index_path}")
        + "`"
    )
    ds = store.open(os.fspath(store_path)) if ds is None else ds
    try:
        with open(os.path.join(where, META_FILE)) as f:
            meta = json.load(f)
    except FileNotFoundError:
        raise AnnError(f"no approximate index at {where}; build it with {build}") from None
    # indexes built before `var` was recorded lived only beside their store, named by it
    info = AnnInfo(**{"var": var, **meta})
    if info.var != var:
        raise AnnError(
            f"approximate index {where} indexes {info.var!r}, not {var!r}; build one in another "
            f"directory with {build}"
        )
    try:
        store.check_same_identity(
            info.identity, store.identity(ds), f"approximate index {where} vs store"
        )
    except store.StoreIdentityError as e:
        raise AnnError(
            f"{e}: the index was built from another store (foreign); rebuild it with {build}"
        ) from None
    n = ds.sizes["window"]
    if info.n_windows != n or info.videos_fingerprint != videos_fingerprint(ds):
        raise AnnError(
            f"approximate index {where} is stale: built for {info.n_windows} windows, the store "
            f"now holds {n}{'' if info.n_windows != n else ' from different videos'}; rebuild it "
            f"with {build}"
        )
    return AnnIndex(faiss.read_index(os.path.join(where, INDEX_FILE)), info)
