"""A local, persistent cache of a remote store's bytes (`--cache DIR`), for reading.

Reads of a remote store are byte ranges of shard files (a shard's index, a window's inner
chunk) and whole small objects; random minibatches read the same ranges again epoch after
epoch. Each answer is kept in DIR as one file named by the sha256 of (store, key, byte range),
written whole (temp file, rename), so any number of threads and processes share the cache and
a warm cache reads at local-disk speed. fsspec's `blockcache` would be the obvious layer, but
its metadata is not thread-safe (concurrent opens raise KeyError in fsspec 2026.9) and zarr
reads concurrently; whole-file caches fetch a 64 MiB shard to read one window. A published
store never changes in place, so entries never expire; delete DIR to drop them. A working store
that writers still extend is seen through the cache as it was when first read: its commit
records are cached with the shard bytes they describe, which is consistent (committed windows
keep their bytes and offsets) but not current.
The cache is asked for with the storage option `cache` (an ethoprism option, not fsspec's).
"""

from __future__ import annotations

import hashlib
import os
import uuid

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage._wrapper import WrapperStore

CACHE_OPTION = "cache"


def cache_options(cache_dir, storage_options: dict | None = None) -> dict | None:
    """Storage options that read through a local cache in `cache_dir` (None: unchanged)."""
    if cache_dir is None:
        return storage_options
    return {**(storage_options or {}), CACHE_OPTION: os.fspath(cache_dir)}


def split_cache(storage_options: dict | None) -> tuple[str | None, dict]:
    """(cache directory or None, the options for fsspec)."""
    opts = dict(storage_options or {})
    return opts.pop(CACHE_OPTION, None), opts


class CachedStore(WrapperStore[Store]):
    """A read-only zarr store whose `get` answers are kept as files in a local directory."""

    def __init__(self, store: Store, cache_dir: str, name: str):
        super().__init__(store)
        self.cache_dir, self.name = cache_dir, name
        os.makedirs(cache_dir, exist_ok=True)

    def _path(self, key: str, byte_range: ByteRequest | None) -> str:
        digest = hashlib.sha256(f"{self.name}\0{key}\0{byte_range!r}".encode()).hexdigest()
        return os.path.join(self.cache_dir, digest[:2], digest)

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        path = self._path(key, byte_range)
        try:
            with open(path, "rb") as f:
                return prototype.buffer.from_bytes(f.read())
        except FileNotFoundError:
            pass
        value = await self._store.get(key, prototype, byte_range)
        if value is not None:  # an absent key is not cached: it may be written later
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(value.to_bytes())
            os.replace(tmp, path)
        return value

    def with_read_only(self, read_only: bool = False):
        return self  # a cache only ever reads


def cached(store: Store, cache_dir: str, name: str) -> CachedStore:
    """`store` (read-only) read through the cache in `cache_dir`; `name` identifies the store."""
    return CachedStore(store, cache_dir, name)
