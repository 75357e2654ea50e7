"""Moving windows' encoded chunks from source shards into new shards, checked and hashed on the way.

Token arrays hold one window per inner chunk, so a window travels from a source shard to a
published one as its encoded bytes (compressed, with their crc32c), unchanged: only the shard
index is new. Publishing must also check each window's crc32c (a damaged source window must not
travel under a manifest that vouches for it) and sha256 each published object (the manifest).

Each published shard streams through one small aligned staging buffer per thread (reused): the
source bytes are read straight into it, a block of back-to-back windows at a time (one read, one
ranged GET remotely), each block is crc-checked and hashed while it is still in the CPU's cache,
and every STAGE bytes the whole disk blocks are written with O_DIRECT (no copy into the page
cache, and the sync before the rename has little left to do), the rest carried over. So each
byte is copied once (the read) and passed over twice (crc32c, sha256). hashlib and
google_crc32c release the GIL on large buffers, so shards copy in threads.
Measured on 208 MB of shards in the page cache, one thread: sha256 0.114 s of CPU (SHA
extensions; no copy that writes a manifest can skip it), the read 0.017 s, crc32c 0.014 s, the
O_DIRECT writes 0.003 s; the token copy as a whole 0.16-0.19 s of CPU, against 0.23-0.27 s when
each shard was read whole, then checked, hashed and written buffered in separate passes (and a
whole-shard buffer per thread cost a page fault per 4 KB of it: 0.05 s more).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numpy as np

from ethoprism.store.manifest import put_object
from ethoprism.store.remote import is_local_fs
from ethoprism.store.schema import PARTS, StoreError
from ethoprism.store.shards import (
    ALIGN,
    EMPTY,
    aligned_empty,
    open_new,
    shard_index_of_sizes,
    write_all,
)

INDEX_ENTRY = 16  # bytes per inner chunk in a shard index: (offset, nbytes) as <u8
BLOCK = 1 << 20  # bytes read at a time (whole windows): checked and hashed while in the cache
STAGE = 2 << 20  # bytes of a shard staged before they are written (whole ALIGN blocks)


def _crc_ok(chunk) -> bool:
    # google_crc32c refuses memoryviews but takes numpy views: no copy of the window
    body = np.frombuffer(chunk, np.uint8)
    return len(body) >= 4 and google_crc32c.value(body[:-4]).to_bytes(4, "little") == bytes(
        body[-4:]
    )


class SourceShard:
    """One source shard file: its checked index, and reads of its bytes into a buffer."""

    def __init__(self, fs, path: str, per_shard: int, where: str):
        self.fs, self.path, self.per_shard, self.where = fs, path, per_shard, where
        tail = INDEX_ENTRY * per_shard + 4
        try:
            index_bytes = fs.cat_file(path, start=-tail)
        except FileNotFoundError:
            raise StoreError(f"{where}: missing, but it holds committed windows") from None
        if len(index_bytes) < tail:
            raise StoreError(f"{where}: {len(index_bytes)} bytes, shorter than its index")
        if not _crc_ok(index_bytes):
            raise StoreError(f"{where}: shard index fails its crc32c (damaged source)")
        self.index = np.frombuffer(index_bytes[:-4], dtype="<u8").reshape(per_shard, 2)

    def rows(self, local: np.ndarray) -> np.ndarray:
        """(offset, nbytes) of the shard's windows `local` (indices in the shard), as int64."""
        rows = self.index[local]
        if (rows[:, 0] == EMPTY).any():
            w = int(local[np.argmax(rows[:, 0] == EMPTY)])
            raise StoreError(f"{self.where}: committed window {w} of the shard is missing from it")
        return rows.astype(np.int64)

    @contextlib.contextmanager
    def reader(self) -> Iterator[Callable[[np.ndarray, int], None]]:
        """`read(out, start)`: fill the uint8 buffer `out` with the shard's bytes from `start`
        (a local file: read straight into it; elsewhere: one ranged GET, copied in)."""
        if is_local_fs(self.fs):
            fd = os.open(self.path, os.O_RDONLY)
            try:

                def read(out: np.ndarray, start: int) -> None:
                    done = 0
                    while done < out.size:
                        got = os.preadv(fd, [out[done:]], start + done)
                        if got == 0:
                            self._truncated()
                        done += got

                yield read
            finally:
                os.close(fd)
        else:

            def read(out: np.ndarray, start: int) -> None:
                data = self.fs.cat_file(self.path, start=start, end=start + out.size)
                if len(data) < out.size:
                    self._truncated()
                out[:] = np.frombuffer(data, np.uint8)

            yield read

    def _truncated(self):
        raise StoreError(f"{self.where}: shard shorter than its index says (truncated)")


def _blocks(rows: np.ndarray) -> Iterator[tuple[int, int]]:
    """[i, j) ranges of `rows` whose bytes lie back to back in the file, up to BLOCK bytes
    (or one window larger than that): each is one read."""
    i, n = 0, len(rows)
    while i < n:
        j, end = i + 1, rows[i, 0] + rows[i, 1]
        while j < n and rows[j, 0] == end and end + rows[j, 1] - rows[i, 0] <= BLOCK:
            end += rows[j, 1]
            j += 1
        yield i, j
        i = j


_buffers = threading.local()


def _buffer(nbytes: int) -> np.ndarray:
    """This thread's aligned staging buffer, at least `nbytes` (kept between shards: fresh
    memory costs a page fault per 4 KB, as much CPU as reading the bytes)."""
    buf = getattr(_buffers, "buf", None)
    if buf is None or buf.size < nbytes:
        buf = _buffers.buf = aligned_empty(-(-nbytes // ALIGN) * ALIGN)
    return buf


class _LocalFile:
    """A new file written from an aligned buffer (O_DIRECT where the filesystem allows it: no
    copy into the page cache, and the sync after it has little left to do), synced before it
    is renamed into place (its directory is synced with the others, once, by publish)."""

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self.tmp = os.path.join(
            os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}"
        )
        self.fd, self.direct = open_new(self.tmp, True)

    def write(self, view: np.ndarray) -> None:
        """Whole ALIGN blocks, from an aligned address."""
        self.direct = write_all(self.fd, view, self.direct)

    def finish(self, buf: np.ndarray, staged: int, size: int) -> None:
        """Write the last `staged` bytes (at the start of `buf`), making the file `size` long."""
        padded = -(-staged // ALIGN) * ALIGN if self.direct else staged
        self.write(buf[:padded])
        os.ftruncate(self.fd, size)  # drop the padding O_DIRECT wrote past the index
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)


class _RemoteObject:
    """An object elsewhere, collected and written with one PUT at the end."""

    def __init__(self, fs, path: str):
        self.fs, self.path, self.pieces = fs, path, []

    def write(self, view: np.ndarray) -> None:
        self.pieces.append(view.tobytes())

    def finish(self, buf: np.ndarray, staged: int, size: int) -> None:
        put_object(self.fs, self.path, [*self.pieces, buf[:staged].tobytes()])

    def close(self) -> None:
        self.pieces = []


def copy_shard(
    fs,
    path: str,
    sources: list[tuple[SourceShard, np.ndarray, Callable[[int], str]]],
    per_shard: int,
) -> tuple[int, str]:
    """Write the shard at `path` holding, in order, the windows `local` of each
    (source, local, where) of `sources` (`where(k)` names the k-th of them in messages); each
    window's crc32c is checked. Returns its (size, sha256). Where a rerun finds the shard there
    at its size nothing is written (a shard that is there is whole: it was synced before its
    rename), but the windows are still read, checked and hashed: the manifest vouches for the
    source's bytes, and verify compares what is there to them."""
    rows = [source.rows(local) for source, local, _ in sources]
    index_size = INDEX_ENTRY * per_shard + 4
    size = sum(int(r[:, 1].sum()) for r in rows) + index_size
    try:
        exists = fs.size(path) == size
    except FileNotFoundError:
        exists = False
    largest = max([BLOCK, index_size] + [int(r[:, 1].max()) for r in rows if len(r)])
    buf = _buffer(STAGE + largest + ALIGN)
    out = None if exists else _LocalFile(path) if is_local_fs(fs) else _RemoteObject(fs, path)
    digest, staged, sizes = hashlib.sha256(), 0, []
    try:
        for (source, _, where), r in zip(sources, rows, strict=True):
            with source.reader() as read:
                for i, j in _blocks(r):
                    lo = r[i, 0]
                    block = buf[staged : staged + r[j - 1, 0] + r[j - 1, 1] - lo]
                    read(block, int(lo))
                    for k in range(i, j):
                        if not _crc_ok(block[r[k, 0] - lo : r[k, 0] - lo + r[k, 1]]):
                            raise StoreError(f"{where(k)} fails its crc32c (damaged source)")
                    digest.update(block)
                    sizes += r[i:j, 1].tolist()
                    staged += block.size
                    if out is None:
                        staged = 0
                    elif staged >= STAGE:  # whole blocks out, the rest (< ALIGN) carried over
                        whole = staged // ALIGN * ALIGN
                        out.write(buf[:whole])
                        buf[: staged - whole] = buf[whole:staged]
                        staged -= whole
        index = np.frombuffer(shard_index_of_sizes(sizes, per_shard), np.uint8)
        buf[staged : staged + index.size] = index
        digest.update(index)
        if out is not None:
            out.finish(buf, staged + index.size, size)
    finally:
        if out is not None:
            out.close()
    return size, digest.hexdigest()


def _sources(handle, fs, base: str, name: str, part: int, windows: np.ndarray):
    """(source shard, its windows, where) for consecutive windows of one part, in order."""
    arr = handle.parts[part].arrays[name]
    per_shard = arr.shards[0]
    shard_of = windows // per_shard
    out = []
    for shard in np.unique(shard_of):
        local = windows[shard_of == shard] - shard * per_shard
        key = arr.metadata.encode_chunk_key((int(shard),) + (0,) * (arr.ndim - 1))
        at = f"part {handle.parts[part].name!r} {name} shard {key}"
        path = f"{base}/{PARTS}/{handle.parts[part].name}/{name}/{key}"

        def where(k, at=at, local=local, first=shard * per_shard):
            return f"{at}: window {int(local[k] + first)}"

        out.append((SourceShard(fs, path, per_shard, at), local, where))
    return out


def copy_token_shards(
    handle, ds, plans: dict, src, dst, progress, threads: int
) -> dict[str, tuple[int, str]]:
    """Copy every token array's windows into the published shards that `plans` (publish's) lay
    out, `threads` shards at a time; {path: (size, sha256)}. `progress(bytes, windows)` is
    called once per shard, never by two threads at once (callers add the numbers up)."""
    fs_src, base_src = src
    fs_dst, base_dst = dst
    part_of, window_of = ds.part.values, ds.part_window.values
    n = ds.sizes["window"]
    written: dict[str, tuple[int, str]] = {}
    reporting = threading.Lock()
    for name, plan in plans.items():
        per_shard = plan["per_shard"]

        def one(shard, name=name, plan=plan, per_shard=per_shard):
            lo, hi = shard * per_shard, min(n, (shard + 1) * per_shard)
            sources = []
            start = lo
            while start < hi:  # runs of consecutive windows of one part
                stop = start + 1
                while (
                    stop < hi
                    and part_of[stop] == part_of[start]
                    and window_of[stop] == window_of[stop - 1] + 1
                ):
                    stop += 1
                sources += _sources(
                    handle, fs_src, base_src, name, int(part_of[start]), window_of[start:stop]
                )
                start = stop
            path = f"{name}/{plan['key']((shard,) + (0,) * (len(plan['doc']['shape']) - 1))}"
            got = copy_shard(fs_dst, f"{base_dst}/{path}", sources, per_shard)
            if progress:
                with reporting:
                    progress(got[0], hi - lo)
            return path, got

        with ThreadPoolExecutor(threads) as pool:
            written.update(pool.map(one, range(math.ceil(n / per_shard))))
    return written
