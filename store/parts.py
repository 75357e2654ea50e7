"""An opened store in memory, and what every reader of one shares.

`Part` and `StoreHandle` are a store's metadata as committed (no window data). `read_pool` is the
thread pool all chunk reads go through; `read_rows` and `gather` read random windows with it, one
slice per stored chunk; `lazy` is the dask view of one stored array. Working stores (reader),
published ones (published) and unions of stores (handle) are built from these.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dask.array as da
import numpy as np
import zarr

from ethoprism.store.layout import Layout

READ_THREADS = 16
DASK_CHUNK_BYTES = 64 << 20


@dataclass
class Part:
    """One part as committed: its record and its arrays (opened read-only)."""

    name: str
    state: dict
    arrays: dict[str, zarr.Array]

    @property
    def n_windows(self) -> int:
        return int(self.state["n_windows"])


@dataclass
class StoreHandle:
    """An opened store: root attributes, layout and committed parts."""

    source: str
    attrs: dict
    layout: Layout
    parts: list[Part]


def lazy(arr: zarr.Array) -> da.Array:
    """Dask chunks of whole shards, several if shards are small (fewer tasks, same reads)."""
    per_file = arr.shards[0] if arr.shards else arr.chunks[0]
    file_bytes = per_file * arr.dtype.itemsize * int(np.prod(arr.shape[1:]))
    per_chunk = per_file * max(1, DASK_CHUNK_BYTES // max(file_bytes, 1))
    return da.from_zarr(arr, chunks=(per_chunk,) + arr.shape[1:])


def read_rows(arrays: dict[str, zarr.Array], names, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The sorted `rows` of each named array, by one slice over them (they share a chunk)."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    return {name: arrays[name][lo:hi][rows - lo] for name in names}


def gather(read_run, runs: list[np.ndarray], order: np.ndarray, layout: Layout, var: str):
    """`var` (tokens, embedding or a text-aligned array) of the windows asked for, in the order
    asked: each run of them read by `read_run` (-> {array: values}) in the read pool, in sorted
    order, where `order` gives the asked position of each."""
    got = list(read_pool().map(read_run, runs))
    stacked = {}
    for name in got[0]:  # each piece copied once, straight to its place (a batch is ~200 MB)
        first = got[0][name]
        stacked[name] = np.empty((len(order), *first.shape[1:]), first.dtype)
        for run, g in zip(runs, got, strict=True):
            stacked[name][order[run]] = g[name]
    return layout.decode(stacked) if var == "tokens" else stacked[var]


_pool: ThreadPoolExecutor | None = None


def read_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ethoprism-read")
    return _pool


def _forget_pool_after_fork() -> None:
    global _pool
    _pool = None  # its threads do not exist in a forked child: submitting there would hang


os.register_at_fork(after_in_child=_forget_pool_after_fork)
