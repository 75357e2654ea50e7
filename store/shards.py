"""Token shards written directly in zarr v3's sharding format, windows compressed in parallel.

zarr-python 3.1.6 encodes a shard's inner chunks one after another, checksums them on its event
loop thread, copies the shard twice while assembling it and writes it through a temporary file:
on two cores that made the store 5-8x slower than the disk. The format itself is short (zarr v3
`sharding_indexed`): the encoded inner chunks back to back, then an index of (offset, nbytes)
uint64 pairs, little-endian, C order over the shard's chunk grid, followed by the index's crc32c.
So the writer compresses each window in a thread pool (blosc and zstd release the GIL) and
streams the encoded chunks into shard files as they come (`ShardWriter`). zarr reads these shards
as its own, byte for byte (tested); only the codec chains named below are written this way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import blosc
import google_crc32c
import numcodecs
import numpy as np

from ethoprism.store.schema import StoreError

EMPTY = np.iinfo(np.uint64).max  # offset and nbytes of a chunk the shard does not hold

# one encoded inner chunk, as the buffers written back to back (bytes, or uint8 arrays)
Chunk = tuple[bytes | np.ndarray, ...]


def _crc32c(data) -> bytes:
    return google_crc32c.value(data).to_bytes(4, "little")


def _compressor(codec: dict) -> Callable[[np.ndarray], bytes]:
    name, conf = codec["name"], codec.get("configuration", {})
    if name == "blosc":
        if conf.get("blocksize", 0):
            raise StoreError("blosc with a fixed block size is not written by this ethoprism")
        # python-blosc: the same C-Blosc 1.21 as numcodecs (zarr's reader, its own copy of the
        # library, which these settings do not touch), so the same bytes, but built with AVX2
        # bitshuffle and returning its buffer without a copy: 15% less CPU per window. Its calls
        # must release the GIL and run single-threaded, as the writer runs windows in parallel
        # itself: set here, when a writer first needs it, not when the store is imported.
        blosc.set_releasegil(True)
        blosc.set_nthreads(1)
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[conf["shuffle"]]
        cname, clevel, typesize = conf["cname"], conf["clevel"], conf["typesize"]

        def compress(values: np.ndarray) -> bytes:
            return blosc.compress_ptr(
                values.ctypes.data, values.nbytes // typesize, typesize, clevel, shuffle, cname
            )

        return compress
    if name == "zstd":
        return numcodecs.Zstd(conf.get("level", 0), checksum=conf.get("checksum", False)).encode
    raise StoreError(f"token arrays compressed with {name!r} are not written by this ethoprism")


def _as_bytes(values: np.ndarray) -> np.ndarray:
    """Uncompressed: the values' own bytes (uint8), not copied: the writer owns the tokens it
    holds."""
    return values.reshape(-1).view(np.uint8)


def chunk_encoder(metadata: dict) -> Callable[[np.ndarray], Chunk]:
    """The encoder of one inner chunk for an array with zarr v3 metadata `metadata` (a dict).

    Supported chains: sharding_indexed (index at the end, index codecs bytes + crc32c) over
    bytes (little-endian) -> [blosc | zstd | nothing] -> crc32c, as `writer` creates them.
    """
    (sharding,) = metadata["codecs"]
    conf = sharding["configuration"]
    names = [c["name"] for c in conf["codecs"]]
    index_names = [c["name"] for c in conf["index_codecs"]]
    if (
        sharding["name"] != "sharding_indexed"
        or conf.get("index_location", "end") != "end"
        or index_names != ["bytes", "crc32c"]
        or len(names) not in (2, 3)
        or names[0] != "bytes"
        or names[-1] != "crc32c"
        or conf["codecs"][0].get("configuration", {}).get("endian", "little") != "little"
    ):
        raise StoreError(f"unsupported codec chain for direct shard writes: {conf}")
    compress = _compressor(conf["codecs"][1]) if len(names) == 3 else _as_bytes

    def encode(values: np.ndarray) -> Chunk:
        data = compress(np.ascontiguousarray(values))
        return data, _crc32c(data)

    return encode


def shard_index(chunks: list[Chunk], chunks_per_shard: int) -> bytes:
    """The index (and its crc32c) of a shard file holding `chunks` back to back from offset 0,
    as its first windows; the shard's other chunks are absent."""
    return shard_index_of_sizes([sum(len(b) for b in chunk) for chunk in chunks], chunks_per_shard)


def shard_index_of_sizes(sizes: list[int], chunks_per_shard: int) -> bytes:
    """shard_index, given the chunks' sizes in bytes."""
    index = np.full((chunks_per_shard, 2), EMPTY, dtype="<u8")
    sizes = np.asarray(sizes, dtype="<u8")
    index[: len(sizes), 0] = np.cumsum(sizes) - sizes
    index[: len(sizes), 1] = sizes
    index_bytes = index.tobytes()
    return index_bytes + _crc32c(index_bytes)


ALIGN = 4096  # covers the logical block sizes O_DIRECT asks for on common disks


def aligned_empty(nbytes: int) -> np.ndarray:
    """An uninitialised uint8 buffer of `nbytes` starting at an ALIGN-aligned address (what
    O_DIRECT writes from)."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    skip = -raw.ctypes.data % ALIGN
    return raw[skip : skip + nbytes]


def open_new(path: Path | str, direct: bool) -> tuple[int, bool]:
    """Create (truncate) `path` for writing, with O_DIRECT if `direct` and the filesystem
    allows it; (fd, whether O_DIRECT is on)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    if direct and hasattr(os, "O_DIRECT"):
        try:
            return os.open(path, flags | os.O_DIRECT, 0o644), True
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    return os.open(path, flags, 0o644), False


def write_all(fd: int, view: np.ndarray, direct: bool) -> bool:
    """Write `view` whole (with O_DIRECT: an aligned address and whole ALIGN blocks); a write
    O_DIRECT refuses turns it off for this file and is retried buffered. Returns whether
    O_DIRECT is still on."""
    while view.size:
        try:
            written = os.write(fd, view)
        except OSError as e:
            if not direct or e.errno != errno.EINVAL:
                raise
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
            direct = False
            continue
        view = view[written:]  # O_DIRECT writes whole blocks, so offsets stay aligned
    return direct


class ShardWriter:
    """Writes one token array's shard files as its windows' encoded chunks arrive, in order.

    The shard being filled is streamed into a temp file while later windows are still being
    compressed, then fsynced and renamed into place when full, or at a commit (`flush`) holding
    the windows so far. So the disk works alongside the compressors, a commit waits only for a
    short tail, and readers see the old file or the new one. The first window after a commit
    starts a new temp file and rewrites the shard's committed chunks into it from memory.
    Not thread-safe: the store's writer thread owns it.

    Where the filesystem allows it files are written with O_DIRECT from an aligned buffer:
    copying tokens into the page cache cost the kernel about as much CPU as compressing them
    (measured here: 1 GB/s buffered, a few percent of one core with O_DIRECT at the disk's
    speed). A filesystem that refuses O_DIRECT (tmpfs, some FUSE mounts) gets buffered writes
    from the first refusal on.
    """

    STAGING = 32 << 20  # bytes per write to the disk

    def __init__(
        self,
        path_of: Callable[[int], Path],
        per_shard: int,
        n_windows: int,
        committed: list[Chunk],
        direct: bool = True,
    ):
        """`path_of(i)`: the path of shard i; `committed`: the chunks of the committed windows
        of the partly filled shard (n_windows % per_shard of them), as on disk."""
        self.path_of, self.per_shard = path_of, per_shard
        self.direct = direct and hasattr(os, "O_DIRECT")
        self._n = n_windows  # windows added so far
        self._chunks = list(committed)  # chunks of the shard being filled
        self._committed = (n_windows, list(committed))  # what `discard` goes back to
        # The temp file of the shard being filled (once it differs from what is on disk)
        self._fd, self._tmp, self._target = -1, None, Path()
        self._staged = self._size = 0  # bytes in the staging buffer, in the file so far
        # numpy copies release the GIL (memoryview copies hold it), so compressing goes on
        # while chunks are staged; the slice starting at an aligned address is the buffer.
        self._staging = aligned_empty(self.STAGING)

    def add(self, chunk: Chunk) -> None:
        """The next window's chunk; a shard it fills is made durable and renamed into place."""
        if self._fd < 0:  # a new shard, or one whose committed windows are already on disk
            self._open(self.path_of(self._n // self.per_shard))
            for earlier in self._chunks:
                self._write(earlier)
        self._write(chunk)
        self._chunks.append(chunk)
        self._n += 1
        if len(self._chunks) == self.per_shard:
            self.flush()
            self._chunks = []

    def flush(self) -> None:
        """Make the shard being filled durable and visible as it is (a commit's tail)."""
        if self._fd < 0:
            return
        try:
            self._write((shard_index(self._chunks, self.per_shard),))
            self._write_staged(-(-self._staged // ALIGN) * ALIGN)
            os.ftruncate(self._fd, self._size)  # drop the padding past the shard's index
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
            os.replace(self._tmp, self._target)
            self._tmp = None
        finally:
            self._abort()

    def mark_committed(self) -> None:
        """The windows added so far are committed: `discard` comes back to here."""
        self._committed = (self._n, list(self._chunks))

    def discard(self) -> None:
        """Forget the windows past the last commit (a dropped video). Shards they filled may be
        on disk, holding windows past the committed ones, which readers never read and the
        next video rewrites."""
        self._abort()
        self._n, chunks = self._committed
        self._chunks = list(chunks)

    def _open(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._target, self._tmp = path, path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        self._staged = self._size = 0
        self._fd, self.direct = open_new(self._tmp, self.direct)

    def _write(self, chunk: Chunk) -> None:
        for piece in chunk:
            source = np.frombuffer(piece, np.uint8)
            while source.size:
                k = min(source.size, self.STAGING - self._staged)
                self._staging[self._staged : self._staged + k] = source[:k]
                self._staged += k
                self._size += k
                source = source[k:]
                if self._staged == self.STAGING:
                    self._write_staged(self.STAGING)

    def _write_staged(self, nbytes: int) -> None:
        """Write the first nbytes (whole aligned blocks) of the staging buffer."""
        # O_DIRECT refused: buffered writes for this file and every later one
        self.direct = write_all(self._fd, self._staging[:nbytes], self.direct)
        self._staged = 0

    def _abort(self) -> None:
        """Close and delete the temp file, if any is left."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)
            self._tmp = None


def read_chunks(path: Path, count: int, chunks_per_shard: int) -> list[Chunk]:
    """The first `count` encoded chunks of a shard file (to carry on filling it after a restart)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path}: shard file of committed windows is missing") from None
    index_size = 16 * chunks_per_shard
    index_bytes = data[-index_size - 4 : -4]
    if len(data) < index_size + 4 or _crc32c(index_bytes) != data[-4:]:
        raise StoreError(f"{path}: shard index is damaged (length or crc32c mismatch)")
    index = np.frombuffer(index_bytes, dtype="<u8").reshape(chunks_per_shard, 2)
    chunks = []
    for i, (offset, nbytes) in enumerate(index[:count]):
        if offset == EMPTY or offset + nbytes > len(data) - index_size - 4:
            raise StoreError(f"{path}: committed chunk {i} of this shard is missing")
        body, crc = data[offset : offset + nbytes - 4], data[offset + nbytes - 4 : offset + nbytes]
        if _crc32c(body) != crc:
            raise StoreError(f"{path}: committed chunk {i} of this shard fails its crc32c")
        chunks.append((body, crc))
    return chunks
