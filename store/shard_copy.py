"""Moving windows' encoded chunks from source shards into new shards, checked and hashed on the way.

Token arrays hold one window per inner chunk, so a window travels from a source shard to a
published one as its encoded bytes (compressed, with their crc32c), unchanged: only the shard
index is new. Publishing must also check each window's crc32c (a damaged source window must not
travel under a manifest that vouches for it) and sha256 each published object (the manifest).
Each run of windows is one read (one ranged GET remotely); the checks and the hash work on views
of it (numpy views: google_crc32c refuses memoryviews) and release the GIL on large buffers, so
shards copy in threads. Measured on 150 MB of shards in the page cache: about 2.5x the CPU of a
kernel copy (`cp`), most of it sha256, which no copy that writes a manifest can skip (mapping
local shards with mmap instead of reading them saved about 7%: not worth a second way to read).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import google_crc32c
import numpy as np

from ethoprism.store.manifest import put_object
from ethoprism.store.schema import PARTS, StoreError
from ethoprism.store.shards import EMPTY, shard_index

INDEX_ENTRY = 16  # bytes per inner chunk in a shard index: (offset, nbytes) as <u8


def _crc_ok(chunk: memoryview) -> bool:
    # google_crc32c refuses memoryviews but takes numpy views: no copy of the window
    body = np.frombuffer(chunk, np.uint8)
    return len(chunk) >= 4 and google_crc32c.value(body[:-4]).to_bytes(4, "little") == chunk[-4:]


class SourceShard:
    """One source shard file: its checked index, and the encoded chunks of chosen windows."""

    def __init__(self, fs, path: str, per_shard: int, where: str):
        self.fs, self.path, self.per_shard, self.where = fs, path, per_shard, where
        tail = INDEX_ENTRY * per_shard + 4
        try:
            index_bytes = fs.cat_file(path, start=-tail)
        except FileNotFoundError:
            raise StoreError(f"{where}: missing, but it holds committed windows") from None
        if len(index_bytes) < tail:
            raise StoreError(f"{where}: {len(index_bytes)} bytes, shorter than its index")
        if not _crc_ok(memoryview(index_bytes)):
            raise StoreError(f"{where}: shard index fails its crc32c (damaged source)")
        self.index = np.frombuffer(index_bytes[:-4], dtype="<u8").reshape(per_shard, 2)

    def chunks(self, local: np.ndarray) -> list[memoryview]:
        """The encoded chunks of the shard's windows `local` (indices in the shard), as views
        of one read of the span holding them."""
        rows = self.index[local]
        if (rows[:, 0] == EMPTY).any():
            w = int(local[np.argmax(rows[:, 0] == EMPTY)])
            raise StoreError(f"{self.where}: committed window {w} of the shard is missing from it")
        lo, hi = int(rows[:, 0].min()), int((rows[:, 0] + rows[:, 1]).max())
        span = memoryview(self.fs.cat_file(self.path, start=lo, end=hi))
        if len(span) < hi - lo:
            raise StoreError(f"{self.where}: shard shorter than its index says (truncated)")
        return [span[int(o) - lo : int(o + k) - lo] for o, k in rows]


def write_shard(
    fs,
    path: str,
    chunks: list[memoryview],
    per_shard: int,
    where: Callable[[int], str],
    exists: bool,
) -> tuple[int, str]:
    """Write `chunks` (window i of the shard = chunks[i]) as the shard at `path`, synced to the
    disk before it is renamed into place (a shard that is there is whole, which a rerun
    trusts; one shard's sync overlaps the hashing of others in the other threads); returns its
    (size, sha256). Each chunk's crc32c is checked first (`where(i)` names a damaged one).
    With `exists` (a rerun found the object at its size) nothing is written, but the chunks are
    still checked and hashed: the manifest vouches for the source's bytes, and verify compares
    what is there against them."""
    index = shard_index([(c,) for c in chunks], per_shard)
    digest = hashlib.sha256()
    for i, chunk in enumerate(chunks):
        if not _crc_ok(chunk):
            raise StoreError(f"{where(i)} fails its crc32c (damaged source)")
        digest.update(chunk)
    digest.update(index)
    if not exists:
        put_object(fs, path, [*chunks, index], durable=True)
    return sum(len(c) for c in chunks) + len(index), digest.hexdigest()


def _source_chunks(handle, fs, base: str, name: str, part: int, windows: np.ndarray):
    """Views of the encoded chunks of consecutive windows of one part, in order, and the
    source location of each (for messages)."""
    arr = handle.parts[part].arrays[name]
    per_shard = arr.shards[0]
    chunks, where = [], []
    shard_of = windows // per_shard
    for shard in np.unique(shard_of):
        local = windows[shard_of == shard] - shard * per_shard
        key = arr.metadata.encode_chunk_key((int(shard),) + (0,) * (arr.ndim - 1))
        at = f"part {handle.parts[part].name!r} {name} shard {key}"
        path = f"{base}/{PARTS}/{handle.parts[part].name}/{name}/{key}"
        chunks += SourceShard(fs, path, per_shard, at).chunks(local)
        where += [f"{at}: window {int(w + shard * per_shard)}" for w in local]
    return chunks, where


def copy_token_shards(
    handle, ds, plans: dict, src, dst, progress, threads: int
) -> dict[str, tuple[int, str]]:
    """Copy every token array's windows into the published shards that `plans` (publish's) lay
    out, `threads` shards at a time; {path: (size, sha256)}."""
    fs_src, base_src = src
    fs_dst, base_dst = dst
    part_of, window_of = ds.part.values, ds.part_window.values
    n = ds.sizes["window"]
    written: dict[str, tuple[int, str]] = {}
    for name, plan in plans.items():
        per_shard = plan["per_shard"]

        def one(shard, name=name, plan=plan, per_shard=per_shard):
            lo, hi = shard * per_shard, min(n, (shard + 1) * per_shard)
            chunks, where = [], []
            start = lo
            while start < hi:  # runs of consecutive windows of one part
                stop = start + 1
                while (
                    stop < hi
                    and part_of[stop] == part_of[start]
                    and window_of[stop] == window_of[stop - 1] + 1
                ):
                    stop += 1
                got = _source_chunks(
                    handle, fs_src, base_src, name, int(part_of[start]), window_of[start:stop]
                )
                chunks, where = chunks + got[0], where + got[1]
                start = stop
            path = f"{name}/{plan['key']((shard,) + (0,) * (len(plan['doc']['shape']) - 1))}"
            target = f"{base_dst}/{path}"
            size = sum(len(c) for c in chunks) + INDEX_ENTRY * per_shard + 4
            try:
                exists = fs_dst.size(target) == size
            except FileNotFoundError:
                exists = False
            got = write_shard(fs_dst, target, chunks, per_shard, where.__getitem__, exists)
            if progress:
                progress(size, hi - lo)
            return path, got

        with ThreadPoolExecutor(threads) as pool:
            written.update(pool.map(one, range(math.ceil(n / per_shard))))
    return written
