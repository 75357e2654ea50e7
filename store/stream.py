"""The store's write pipeline: windows checked (or coded) and compressed in a thread pool, token
shards streamed to disk by one writer thread, per-window arrays written in whole chunks.

`WindowStream` owns the pools, the part's zarr arrays and its shard writers; what is committed
is decided elsewhere (`durable.PartRecord`), after `WindowStream` has written and flushed.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import platform
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from ethoprism.store import describe, pieces, shards
from ethoprism.store.durable import shard_path
from ethoprism.store.schema import (
    ARRAY_DIMS,
    FRAME_TIME,
    PARTS,
    WINDOW_COORD_DTYPES,
    WINDOW_COORDS,
    Layout,
    StoreError,
    part_arrays,
)

SHARD_TARGET_BYTES = 64 << 20  # raw bytes of tokens per shard: few files, small rewrites
MAX_WINDOWS_PER_SHARD = 64
EMBED_CHUNK = 1024  # windows per chunk of `embedding`: full reads decode few, large chunks
COORD_CHUNK = 4096  # windows per chunk of the 1-D per-window arrays
ENCODE_THREADS = max(2, os.cpu_count() or 1)  # windows coded and compressed at once


_CODECS = {"blosc": BloscCodec, "zstd": ZstdCodec}


def _compressors(layout: Layout, name: str) -> list:
    """zarr's codecs for stored array `name`: the layout's compressor (SPEC.md says why each),
    then crc32c."""
    codec = layout.compressor(name)
    if codec is None:
        return [Crc32cCodec()]
    return [_CODECS[codec["name"]](**codec["configuration"]), Crc32cCodec()]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


@functools.cache
def keep_freed_memory() -> None:
    """Have glibc's malloc keep window-sized buffers for reuse instead of mapping each one anew
    and unmapping it when freed: every unmap makes the CPUs running the writer's other threads
    flush their TLBs (an interrupt, costly in a VM), and every new page is faulted in and
    zeroed. Measured here: 10-19% more windows written per second. The process then keeps
    the memory of its busiest moment (the windows in flight). Once per process; a no-op
    where the C library is not glibc. A setting of the whole process, so opt-in: the
    extraction run and the store bench ask for it; the writer never does on its own.
    """
    # 32 MiB is glibc's largest mmap threshold; a base window is 6.3 MB
    _mallopt((_M_MMAP_THRESHOLD, 32 << 20), (_M_TRIM_THRESHOLD, 1 << 30))


def return_freed_buffers() -> None:
    """Have glibc give every freed buffer of 4 MiB or more back to the system at once: the
    opposite trade, for training heads. glibc's threshold for that adapts upwards to the
    largest buffer freed so far (up to 32 MiB), so the 4-32 MiB buffers of minibatch reads,
    parameters and XLA's temporaries, made by several threads, stay in per-thread heaps where
    later, larger buffers cannot use them: `bench probe` peaked ~1 GB higher for it. Opt-in like
    `keep_freed_memory`: a probe training run and its bench ask for it.
    """
    _mallopt((_M_MMAP_THRESHOLD, 4 << 20))


def _mallopt(*settings: tuple[int, int]) -> None:
    """glibc's mallopt(parameter, value) for each setting; nothing where the C library is not
    glibc."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None and platform.libc_ver()[0] == "glibc":
        for parameter, value in settings:
            mallopt(parameter, value)


def windows_per_shard(token_shape, layout: Layout) -> int:
    window_bytes = layout.window_bytes(token_shape)
    return int(min(MAX_WINDOWS_PER_SHARD, max(1, SHARD_TARGET_BYTES // window_bytes)))


@dataclasses.dataclass
class Writes:
    """What one trip to the writer thread writes."""

    windows: list[Future]  # each window's {token array: encoded chunk}, in order, as compressed
    commit: bool = False  # then write the partly filled token shards as they are


class Pending:
    """Per-window arrays (embedding, coordinates) appended but not yet written.

    They are written when they fill whole chunks, so a chunk is written once when it fills;
    only a commit writes a partly filled one, which the next video's windows then rewrite
    (whole-file rename: SPEC.md).
    """

    def __init__(self, names: tuple[str, ...], start: int, per_file: int):
        self.names, self.start, self.per_file = names, start, per_file
        self.batches: list[dict[str, np.ndarray]] = []
        self.n = 0

    def add(self, batch: dict[str, np.ndarray], n: int) -> None:
        self.batches.append({name: batch[name] for name in self.names})
        self.n += n

    def take(self, whole_files: bool) -> tuple[int, dict[str, np.ndarray]] | None:
        """(first window, values) to write now: the whole files filled, or all if not
        whole_files."""
        end = self.start + self.n
        if whole_files:
            end -= end % self.per_file
        k = end - self.start
        if k <= 0:
            return None
        if len(self.batches) == 1:
            data = self.batches[0]
        else:
            data = {name: np.concatenate([b[name] for b in self.batches]) for name in self.names}
        first, self.start, self.n = self.start, end, self.n - k
        self.batches = [{name: v[k:] for name, v in data.items()}] if self.n else []
        return first, {name: v[:k] for name, v in data.items()}


PER_WINDOW_ARRAYS = ("embedding", *WINDOW_COORDS)


class WindowStream:
    """The arrays of one part and the threads that fill them: windows are checked (or coded)
    and compressed in parallel; one background thread writes token shards as their windows
    are compressed, while the caller goes on. (A pool of its own for the checks, which
    `append` waits for, measured slower: more threads than cores.)"""

    def __init__(
        self,
        root: Path,
        layout: Layout,
        part: str,
        per_shard: int | None = None,
        aligned: dict[str, tuple[str, ...]] | None = None,
    ):
        self.root, self.layout, self.part = root, layout, part
        self.aligned = aligned or {}  # text-aligned per-window arrays -> dimension names
        self.part_dir = root / PARTS / part
        self._per_shard = per_shard
        self.arrays: dict[str, zarr.Array] = {}
        self.encode_pool = ThreadPoolExecutor(
            ENCODE_THREADS, thread_name_prefix="ethoprism-store-encode"
        )
        self._io = ThreadPoolExecutor(1, thread_name_prefix="ethoprism-store-write")
        self._array_pool = ThreadPoolExecutor(
            len(PER_WINDOW_ARRAYS) + 1 + len(self.aligned),
            thread_name_prefix="ethoprism-store-arrays",
        )
        self.encoders: dict[str, Callable[[np.ndarray], shards.Chunk]] = {}
        self._shards: dict[str, shards.ShardWriter] = {}  # owned by the writer thread
        self._write_failed = False  # on the writer thread: a write of the open video failed

    def recover(self, state: dict) -> None:
        """Carry on from a part's commit record: uncommitted windows dropped, the partly
        filled last shard continued with its committed windows kept as stored."""
        if state["token_shape"] is None:
            return
        self.open_arrays()
        # the committed windows, and those of the pieces of an unfinished video (pieces.py)
        n = state["n_windows"] + pieces.windows_of(state)
        self.resize(n)
        self._restart_shards(state, n)

    def restart_shards(self, state: dict) -> None:
        """Back to the part's committed windows, dropping pieces (on the writer thread)."""
        self._io.submit(self._restart_shards, state, state["n_windows"]).result()

    def _restart_shards(self, state: dict, n: int) -> None:
        """Carry on filling the last shard after window n, its first windows kept as stored."""
        per_shard = state["windows_per_shard"]
        self._start_shards(
            {
                name: shards.read_chunks(
                    shard_path(self.part_dir, name, n // per_shard), n % per_shard, per_shard
                )
                if n % per_shard
                else []
                for name in self.encoders
            },
            n,
            per_shard,
        )

    # -- arrays -------------------------------------------------------------------------------

    def open_arrays(self) -> None:
        store = zarr.storage.LocalStore(self.root)
        # Writing every chunk skips zarr's per-chunk "all fill value?" scan (1.5x faster writes),
        # and a chunk missing from disk is then always damage, never an elided empty chunk.
        self.arrays = {
            name: zarr.open_array(store, path=f"{PARTS}/{self.part}/{name}", mode="r+").with_config(
                {"write_empty_chunks": True}
            )
            for name in part_arrays(self.layout)
            + ((FRAME_TIME,) if (self.part_dir / FRAME_TIME).is_dir() else ())
            + tuple(self.aligned)
        }
        self.encoders = {
            name: shards.chunk_encoder(self.arrays[name].metadata.to_dict())
            for name in self.layout.arrays
        }

    def per_window_arrays(self) -> tuple[str, ...]:
        """Embedding, coordinates, in parts that have it frame_time, and the text-aligned
        embeddings of a video-text model's store."""
        time = (FRAME_TIME,) if FRAME_TIME in self.arrays else ()
        return PER_WINDOW_ARRAYS + time + tuple(self.aligned)

    def create_arrays(
        self,
        encoded: dict[str, np.ndarray],
        channels: int,
        frames: int | None,
        state: dict,
        aligned: dict[str, np.ndarray] | None = None,
    ) -> dict:
        """Create the part's arrays for tokens like `encoded`, frame_time too if `frames` (its
        frames per window) is given, the text-aligned arrays like `aligned`; returns `state`
        with the token shape and windows per shard set."""
        token_shape = list(encoded["tokens"].shape[1:])
        per_shard = self._per_shard or windows_per_shard(token_shape, self.layout)
        store = zarr.storage.LocalStore(self.root)
        specs = {name: (a.shape[1:], a.dtype) for name, a in {**encoded, **(aligned or {})}.items()}
        specs["embedding"] = ((channels,), np.dtype("float32"))
        if not frames:  # left by an earlier first batch that did give frame_time
            shutil.rmtree(self.part_dir / FRAME_TIME, ignore_errors=True)
        time = (FRAME_TIME,) if frames else ()
        for name in part_arrays(self.layout) + time + tuple(self.aligned):
            if name == FRAME_TIME:
                shape, dtype = (frames,), np.dtype("float64")
                chunks, shard_shape = (COORD_CHUNK, frames), None
            elif name in WINDOW_COORDS:
                shape, dtype = (), np.dtype(WINDOW_COORD_DTYPES[name])
                chunks, shard_shape = (COORD_CHUNK,), None
            elif name == "embedding" or name in self.aligned:
                shape, dtype = specs[name]
                chunks, shard_shape = (EMBED_CHUNK, *shape), None
            else:
                shape, dtype = specs[name]
                chunks, shard_shape = (1, *shape), (per_shard, *shape)
            zarr.create_array(
                store,
                name=f"{PARTS}/{self.part}/{name}",
                shape=(0, *shape),
                dtype=dtype,
                chunks=chunks,
                shards=shard_shape,
                fill_value=0,
                compressors=_compressors(self.layout, name),
                dimension_names=self.aligned.get(name) or ARRAY_DIMS[name],
                attributes=describe.array_attrs(name),
                overwrite=True,
            )
        self.open_arrays()
        self._start_shards({name: [] for name in self.encoders}, state["n_windows"], per_shard)
        return {**state, "token_shape": token_shape, "windows_per_shard": per_shard}

    def _start_shards(self, committed: dict[str, list[shards.Chunk]], n: int, per_shard: int):
        self._shards = {
            name: shards.ShardWriter(
                functools.partial(shard_path, self.part_dir, name), per_shard, n, chunks
            )
            for name, chunks in committed.items()
        }

    def resize(self, n: int) -> None:
        """Size every array to n windows (tokens: grown; a discarded video may have left the
        others longer)."""
        for arr in self.arrays.values():
            if arr.shape[0] != n:
                arr.resize((n,) + arr.shape[1:])

    def per_window_chunk(self) -> int:
        return min(self.arrays[name].chunks[0] for name in self.per_window_arrays())

    # -- windows ------------------------------------------------------------------------------

    def prepare(self, tokens: np.ndarray) -> list[Future]:
        """Check (or code) each window of a batch in the pool; the jobs, all done."""
        jobs = [self.encode_pool.submit(self._prepare_window, w) for w in tokens]
        wait(jobs)
        return jobs

    def compress(self, stored: list[dict[str, np.ndarray]]) -> list[Future]:
        """Compress windows in the background; the writer thread takes each when it is."""
        return [self.encode_pool.submit(self._compress_window, w) for w in stored]

    def submit(self, writes: Writes) -> Future:
        """Hand windows (and a commit's flush) to the writer thread."""
        return self._io.submit(self._write, writes)

    def _write(self, writes: Writes) -> None:
        """On the writer thread: stream windows into their token shards as each is compressed,
        and at a commit write the partly filled shards. After a failure nothing more is
        written until the video is discarded: later windows would land in the wrong place."""
        if self._write_failed:
            raise StoreError("an earlier write of this video failed; it cannot be committed")
        try:
            self._write_now(writes)
        except BaseException:
            self._write_failed = True
            raise

    def _write_now(self, writes: Writes) -> None:
        for window in writes.windows:
            for name, chunk in window.result().items():
                self._shards[name].add(chunk)
        if writes.commit:
            for shard in self._shards.values():
                shard.flush()

    def write_per_window(self, start: int, data: dict[str, np.ndarray]) -> None:
        """Per-window values from window `start` on (whole chunks but for a commit's tail),
        while the writer thread streams tokens; the arrays at once, as zarr spends most of each
        write waiting on its event loop and the disk."""

        def write(name: str) -> None:
            values = data[name]
            end = start + len(values)
            arr = self.arrays[name]
            if arr.shape[0] < end:
                arr.resize((end,) + arr.shape[1:])
            arr[start:end] = values

        list(self._array_pool.map(write, data))

    def _prepare_window(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """One window (t,h,w,c) -> the values stored per token array, which nobody will change
        while they wait to be compressed. Float32 tokens at full resolution are coded here;
        float16 tokens come already coded (by the encoder) and are checked, and copied unless
        read-only (as numpy views of accelerator results are: the extraction's own).
        """
        if tokens.dtype == np.float16:
            return self.layout.check_coded(tokens[None], copy=tokens.flags.writeable)
        return self.layout.encode(tokens[None])

    def _compress_window(self, stored: dict[str, np.ndarray]) -> dict[str, shards.Chunk]:
        return {name: self.encoders[name](values) for name, values in stored.items()}

    # -- commits ------------------------------------------------------------------------------

    def discard(self) -> None:
        """Forget what was written past the last commit (on the writer thread, once the
        writes before are done)."""
        self._io.submit(self._discard).result()

    def _discard(self) -> None:
        for shard in self._shards.values():
            shard.discard()
        self._write_failed = False

    def mark_committed(self) -> None:
        """What was written so far is committed (on the writer thread)."""
        self._io.submit(self._mark_committed).result()

    def _mark_committed(self) -> None:
        for shard in self._shards.values():
            shard.mark_committed()

    def close(self) -> None:
        self._io.shutdown()
        self.encode_pool.shutdown()
        self._array_pool.shutdown()
