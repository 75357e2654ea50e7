"""Writing a feature store: one part per writer process, windows in batches, a commit per video.

Why it is safe (SPEC.md has the full protocol):
- Each writer owns one part (`parts/<name>/`, held by an flock), so no two processes ever write
  the same shard or resize the same array; zarr 3.1.6 silently loses data otherwise.
- Every file is written to a temporary file and renamed into place (zarr's LocalStore does so
  for metadata and per-window arrays; `shards` for token shards), so a SIGKILL leaves each file
  either old or new, never torn.
- What is committed is decided by one document, the part group's `zarr.json`, which this module
  writes (fsync, rename, fsync the directory) only after the video's data files are durable.
  Readers read windows [0, n_windows) and the video table from it and ignore anything past it.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import datetime
import errno
import fcntl
import functools
import json
import math
import os
import platform
import re
import secrets
import socket
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Self

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from ethoprism import __version__
from ethoprism.store import describe, pieces, shards
from ethoprism.store.codecs import check_float16_tokens, encode_tokens, stored_token_shape
from ethoprism.store.schema import (
    ARRAY_DIMS,
    PART_ATTR,
    PARTS,
    SCHEMA,
    SCHEMA_VERSION,
    WINDOW_COORD_DTYPES,
    WINDOW_COORDS,
    Layout,
    StoreError,
    VideoRecord,
    absolute_path,
    check_same_identity,
    check_schema,
    content_key,
    jsonable,
    part_arrays,
    token_arrays,
)

SHARD_TARGET_BYTES = 64 << 20  # raw bytes of tokens per shard: few files, small rewrites
MAX_WINDOWS_PER_SHARD = 64
EMBED_CHUNK = 1024  # windows per chunk of `embedding`: full reads decode few, large chunks
COORD_CHUNK = 4096  # windows per chunk of the 1-D per-window arrays
ENCODE_THREADS = max(2, os.cpu_count() or 1)  # windows coded and compressed at once
# Windows appended but not yet written (beyond the latest batch): enough to keep the
# compressors and the disk busy between the caller's batches, about 0.4 GB at the base shape.
MAX_WINDOWS_IN_FLIGHT = 32
PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _compressors(layout: str, dtype: np.dtype) -> list:
    """float16-round7 tokens: lz4 over bit planes (bitshuffle) finds their 3 zero mantissa bits
    (5.1 MB per base window; zstd 4.9) at 3x zstd's speed and decompresses 2-3x faster. The
    other layouts and the small arrays: zstd, which finds more in them than lz4 does."""
    if layout == "float16-round7" and dtype == np.float16:
        lz4 = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle", typesize=2)
        return [lz4, Crc32cCodec()]
    return [ZstdCodec(level=1), Crc32cCodec()]


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


@functools.cache
def _keep_freed_memory() -> None:
    """Have glibc's malloc keep window-sized buffers for reuse instead of mapping each one anew
    and unmapping it when freed: every unmap makes the CPUs running the writer's other threads
    flush their TLBs (an interrupt, costly in a VM), and every new page is faulted in and
    zeroed. Measured here: 10-19% more windows written per second. The process then keeps
    the memory of its busiest moment (the windows in flight). Once per process; a no-op
    where the C library is not glibc.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None and platform.libc_ver()[0] == "glibc":
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest; a base window is 6.3 MB
        mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def _fsync_path(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON durably and atomically: temp file, fsync, rename over, fsync the directory."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_path(path.parent, directory=True)


def _read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def _group_doc(attributes: dict) -> dict:
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def default_part_name() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def _writable_error(path, e: OSError) -> StoreError:
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return StoreError(
            f"cannot write to store {path}: {e.strerror} (read-only location?); "
            "open it for reading with ethoprism.store.open"
        )
    if e.errno == errno.ENOSPC:
        return StoreError(
            f"no space left on the device holding store {path}; committed videos "
            "are intact: free space and re-run to resume"
        )
    return StoreError(f"cannot write to store {path}: {e}")


@contextlib.contextmanager
def _dir_lock(directory: Path):
    """Exclusive flock on a directory (no lock files; the kernel releases it if we die)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_temp_files(directory: Path) -> None:
    """Temp files of writes killed midway (write_json_atomic's and zarr LocalStore's)."""
    for p in directory.iterdir():
        if p.is_file() and p.name.endswith((".tmp", ".partial")):
            p.unlink(missing_ok=True)


def _open_root(root: Path, identity: dict, software_version: str) -> None:
    """Create the store's root and parts groups, or check an existing root's schema and identity.

    Everything written at the root happens under the root directory's flock, so concurrent
    creators cannot race and temp files found there belong to writers that died.
    """
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} is a file, not a feature store directory")
    root.mkdir(parents=True, exist_ok=True)
    meta, parts = root / "zarr.json", root / PARTS
    with _dir_lock(root):
        if not meta.exists():
            if any(root.iterdir()):
                names = sorted(p.name for p in root.iterdir())[:3]
                raise StoreError(
                    f"{root} is a non-empty directory but not a feature store (no zarr.json; "
                    f"holds {', '.join(names)}); refusing to write into it"
                )
            attrs = {
                "schema": SCHEMA,
                "schema_version": SCHEMA_VERSION,
                "README": describe.README,
                **jsonable(identity),
                "software_version": software_version,
                "created": _now(),
                "parts": [],
            }
            write_json_atomic(meta, _group_doc(attrs))
        attrs = _read_json(meta).get("attributes", {})
        check_schema(attrs, str(root))
        if attrs["schema_version"] != SCHEMA_VERSION:
            raise StoreError(
                f"{root} has schema version {attrs['schema_version']}; this ethoprism "
                f"writes only version {SCHEMA_VERSION}"
            )
        check_same_identity(
            {k: attrs.get(k) for k in identity},
            identity,
            f"store {root} (left) vs this writer (right)",
        )
        if not (parts / "zarr.json").exists():
            parts.mkdir(exist_ok=True)
            write_json_atomic(parts / "zarr.json", _group_doc({}))
        _remove_temp_files(root)
        _remove_temp_files(parts)


def _register_part(root: Path, name: str) -> None:
    """Add a part to the root's list of parts (what remote readers, which cannot list, read)."""
    with _dir_lock(root):
        doc = _read_json(root / "zarr.json")
        parts = doc["attributes"].setdefault("parts", [])
        if name not in parts or "README" not in doc["attributes"]:
            if name not in parts:
                parts.append(name)
                parts.sort()
            doc["attributes"].setdefault("README", describe.README)  # stores made before it
            write_json_atomic(root / "zarr.json", doc)


def _consolidate(root: Path) -> None:
    """Refresh the root's consolidated metadata (plain zarr and xarray read it to list the
    store's groups and arrays in one request)."""
    with _dir_lock(root):
        doc = _read_json(root / "zarr.json")
        doc["consolidated_metadata"] = describe.consolidated(root, doc["attributes"]["parts"])
        write_json_atomic(root / "zarr.json", doc)


def _windows_per_shard(token_shape, dtype: str) -> int:
    itemsize = 1 if dtype == "int8" else 2
    window_bytes = itemsize * math.prod(token_shape)
    return int(min(MAX_WINDOWS_PER_SHARD, max(1, SHARD_TARGET_BYTES // window_bytes)))


def _shard_path(part_dir: Path, name: str, index: int) -> Path:
    return part_dir.joinpath(name, "c", str(index), *["0"] * (len(ARRAY_DIMS[name]) - 1))


class StoreWriter:
    """Appends videos to one part of a store. Use `open_writer`; a context manager."""

    def __init__(self, root: Path, layout: Layout, part: str, windows_per_shard: int | None = None):
        self.root, self.layout, self.part = root, layout, part
        self._per_shard = windows_per_shard
        self.part_dir = root / PARTS / part
        self._lock_fd = None
        self._registered = False  # listed in the root's parts: consolidate at close
        self._arrays: dict[str, zarr.Array] = {}
        self._video: VideoWriter | None = None
        self._seen: dict[str, tuple] = {}  # other parts: (zarr.json identity, complete sha256s)
        # Windows are checked (or coded) and compressed in parallel; one background thread
        # writes token shards as their windows are compressed, while the caller goes on.
        # (A pool of its own for the checks, which `append` waits for, measured slower: more
        # threads than cores.)
        self._encode_pool = ThreadPoolExecutor(
            ENCODE_THREADS, thread_name_prefix="ethoprism-store-encode"
        )
        self._io = ThreadPoolExecutor(1, thread_name_prefix="ethoprism-store-write")
        self._array_pool = ThreadPoolExecutor(
            len(PER_WINDOW_ARRAYS), thread_name_prefix="ethoprism-store-arrays"
        )
        self._encoders: dict[str, Callable[[np.ndarray], shards.Chunk]] = {}
        self._shards: dict[str, shards.ShardWriter] = {}  # owned by the writer thread
        self._write_failed = False  # on the writer thread: a write of the open video failed
        _keep_freed_memory()
        self.part_dir.mkdir(parents=True, exist_ok=True)
        # The part directory itself is the lock (released by the kernel if the process dies).
        self._lock_fd = os.open(self.part_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise StoreError(
                f"part {part!r} of store {root} is being written by another writer; "
                "give each writer its own part name"
            ) from None
        try:
            meta = self.part_dir / "zarr.json"
            if meta.exists():
                # Fail now, not at the first commit, if the part cannot be written.
                (self.part_dir / f".probe.{uuid.uuid4().hex}.tmp").touch()
            else:
                record = {
                    "name": part,
                    "created": _now(),
                    "n_windows": 0,
                    "windows_per_shard": None,
                    "token_shape": None,
                    "videos": [],
                }
                write_json_atomic(meta, _group_doc({PART_ATTR: record}))
            self.state = _read_json(meta)["attributes"][PART_ATTR]
            self._recover()
            _register_part(root, part)
            self._registered = True
        except BaseException:
            self.close()
            raise

    def _recover(self) -> None:
        """Drop what a killed writer left past the last commit: temp files, uncommitted windows."""
        for dirpath, _, files in os.walk(self.part_dir):
            for f in files:
                if f.endswith((".partial", ".tmp")):
                    os.unlink(os.path.join(dirpath, f))
        if self.state["token_shape"] is not None:
            self._open_arrays()
            # the committed windows, and those of the pieces of an unfinished video
            n = self.state["n_windows"] + pieces.windows_of(self.state)
            for arr in self._arrays.values():
                if arr.shape[0] != n:
                    arr.resize((n,) + arr.shape[1:])
            self._restart_shards(n)

    def _restart_shards(self, n: int) -> None:
        """Carry on filling the last shard after window n, its first windows kept as stored."""
        per_shard = self.state["windows_per_shard"]
        self._start_shards(
            {
                name: shards.read_chunks(
                    _shard_path(self.part_dir, name, n // per_shard), n % per_shard, per_shard
                )
                if n % per_shard
                else []
                for name in self._encoders
            },
            n,
        )

    # -- arrays -------------------------------------------------------------------------------

    def _open_arrays(self) -> None:
        store = zarr.storage.LocalStore(self.root)
        # Writing every chunk skips zarr's per-chunk "all fill value?" scan (1.5x faster writes),
        # and a chunk missing from disk is then always damage, never an elided empty chunk.
        self._arrays = {
            name: zarr.open_array(store, path=f"{PARTS}/{self.part}/{name}", mode="r+").with_config(
                {"write_empty_chunks": True}
            )
            for name in part_arrays(self.layout.dtype)
        }
        self._encoders = {
            name: shards.chunk_encoder(self._arrays[name].metadata.to_dict())
            for name in token_arrays(self.layout.dtype)
        }

    def _create_arrays(self, encoded: dict[str, np.ndarray], channels: int) -> None:
        token_shape = list(encoded["tokens"].shape[1:])
        per_shard = self._per_shard or _windows_per_shard(token_shape, self.layout.dtype)
        store = zarr.storage.LocalStore(self.root)
        specs = {name: (a.shape[1:], a.dtype) for name, a in encoded.items()}
        specs["embedding"] = ((channels,), np.dtype("float32"))
        for name in part_arrays(self.layout.dtype):
            if name in WINDOW_COORDS:
                shape, dtype = (), np.dtype(WINDOW_COORD_DTYPES[name])
                chunks, shard_shape = (COORD_CHUNK,), None
            elif name == "embedding":
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
                compressors=_compressors(self.layout.dtype, dtype),
                dimension_names=ARRAY_DIMS[name],
                attributes=describe.ARRAY_ATTRS[name],
                overwrite=True,
            )
        self.state = {**self.state, "token_shape": token_shape, "windows_per_shard": per_shard}
        self._open_arrays()
        self._start_shards({name: [] for name in self._encoders}, self.state["n_windows"])

    def _start_shards(self, committed: dict[str, list[shards.Chunk]], n: int) -> None:
        per_shard = self.state["windows_per_shard"]
        self._shards = {
            name: shards.ShardWriter(
                functools.partial(_shard_path, self.part_dir, name), per_shard, n, chunks
            )
            for name, chunks in committed.items()
        }

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

    def _write_per_window(self, start: int, data: dict[str, np.ndarray]) -> None:
        """Per-window values from window `start` on (whole chunks but for a commit's tail),
        while the writer thread streams tokens; the arrays at once, as zarr spends most of each
        write waiting on its event loop and the disk."""

        def write(name: str) -> None:
            values = data[name]
            end = start + len(values)
            arr = self._arrays[name]
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
        dtype, pool = self.layout.dtype, self.layout.pool
        if tokens.dtype == np.float16:
            round7, copy = dtype == "float16-round7", tokens.flags.writeable
            return {"tokens": check_float16_tokens(tokens[None], round7, copy)}
        return encode_tokens(tokens[None], dtype, pool)

    def _compress_window(self, stored: dict[str, np.ndarray]) -> dict[str, shards.Chunk]:
        return {name: self._encoders[name](values) for name, values in stored.items()}

    def _make_durable(self, start: int, end: int) -> None:
        """fsync the chunk and shard files holding windows [start, end), then their directories.
        Token shards were fsynced by the writer thread as it wrote them (`shards.ShardWriter`),
        so a commit waits for the disk only for what is left."""
        dirs = set()
        for name, arr in self._arrays.items():
            _fsync_path(self.part_dir / name / "zarr.json")
            per_file = arr.shards[0] if arr.shards else arr.chunks[0]
            for i in range(start // per_file, (end - 1) // per_file + 1):
                path = _shard_path(self.part_dir, name, i)
                if path.exists():
                    if name not in self._encoders:
                        _fsync_path(path)
                    dirs.update(p for p in path.parents if p.is_relative_to(self.part_dir))
        for d in dirs:
            _fsync_path(d, directory=True)

    def _publish(self, state: dict) -> None:
        write_json_atomic(self.part_dir / "zarr.json", _group_doc({PART_ATTR: state}))
        self.state = state

    # -- public API -----------------------------------------------------------------------------

    def is_complete(self, sha256: str) -> bool:
        """True if a video with this content is committed in any part of the store."""
        for name in _read_json(self.root / "zarr.json")["attributes"].get("parts", []):
            if sha256 in self._complete_in(name):
                return True
        return False

    def _complete_in(self, part: str) -> set[str]:
        """sha256s committed in a part; other parts' records are re-read only when replaced."""
        if part == self.part:
            return {v["sha256"] for v in self.state["videos"] if v["status"] == "complete"}
        meta = self.root / PARTS / part / "zarr.json"
        st = meta.stat()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._seen.get(part, (None,))[0] != key:
            state = _read_json(meta)["attributes"][PART_ATTR]
            self._seen[part] = (
                key,
                {v["sha256"] for v in state["videos"] if v["status"] == "complete"},
            )
        return self._seen[part][1]

    def begin_video(self, record: VideoRecord) -> VideoWriter:
        """Start writing a video; any previous uncommitted video of this writer is discarded.

        If this part holds committed pieces of this very video (a run interrupted inside it),
        the video continues after them: see `resume_point`.
        """
        if not isinstance(record, VideoRecord):
            record = VideoRecord.of(record)
        self._drop_video()
        done = self.resume_point(record.sha256)
        if not done:
            self._forget_pieces()
        self._video = VideoWriter(self, record, done)
        return self._video

    def resume_point(self, sha256: str) -> int:
        """How many leading windows of the video with this content this part holds in committed
        pieces (0 if none): a resumed run feeds `begin_video` the windows after them."""
        return pieces.windows_of(self.state, sha256)

    def unfinished(self) -> dict[str, int]:
        """{sha256: windows in committed pieces} of the video this part holds unfinished."""
        piece = self.state.get(pieces.KEY)
        return {piece["sha256"]: pieces.windows_of(self.state)} if piece else {}

    def _forget_pieces(self) -> None:
        """Drop the pieces of an unfinished video: the next video starts at n_windows."""
        if pieces.windows_of(self.state):
            self._publish(pieces.without(self.state))
            self._io.submit(self._restart_shards, self.state["n_windows"]).result()

    def record_failure(self, record_or_path, reason: str) -> None:
        """Add (or update) a failed row for a video; discards its uncommitted windows if any."""
        if isinstance(record_or_path, (str, os.PathLike)):
            row = {
                "path": str(record_or_path),
                "size_bytes": -1,
                "sha256": "",
                "fps": 0.0,
                "n_frames": -1,
                "duration": 0.0,
                "width": -1,
                "height": -1,
                "codec": "",
                "abs_path": absolute_path(record_or_path),
            }
        else:
            row = dataclasses.asdict(
                record_or_path
                if isinstance(record_or_path, VideoRecord)
                else VideoRecord.of(record_or_path)
            )
        row.update(status="failed", reason=str(reason), first_window=-1, n_windows=0)
        self._drop_video()
        videos = list(self.state["videos"])
        same = [
            i
            for i, v in enumerate(videos)
            if v["status"] == "failed" and content_key(v) == content_key(row)
        ]
        if same:
            videos[same[-1]] = row
        else:
            videos.append(row)
        try:
            self._publish({**self.state, "videos": videos})
        except OSError as e:
            raise _writable_error(self.root, e) from None

    def close(self) -> None:
        """Release the part; an uncommitted video is dropped (as if the writer had been killed),
        its committed pieces kept for a later run to resume."""
        self._drop_video(closing=True)
        self._io.shutdown()
        self._encode_pool.shutdown()
        self._array_pool.shutdown()
        if self._registered:
            # a store that cannot be written already said so; its old metadata stays valid
            with contextlib.suppress(OSError):
                _consolidate(self.root)
            self._registered = False
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _drop_video(self, closing: bool = False) -> None:
        """Forget the open uncommitted video, after its in-flight writes (errors moot) are done.

        Its committed pieces go too, unless the writer is closing: a later run resumes them."""
        if self._video is not None:
            with contextlib.suppress(Exception):
                self._video._wait()
            self._video = None
            self._io.submit(self._discard).result()
            if not closing:
                self._forget_pieces()

    def _discard(self) -> None:
        """On the writer thread: forget what was written past the last commit."""
        for shard in self._shards.values():
            shard.discard()
        self._write_failed = False

    def _mark_committed(self) -> None:
        """On the writer thread: what was written so far is committed."""
        for shard in self._shards.values():
            shard.mark_committed()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclasses.dataclass
class Writes:
    """What one trip to the writer thread writes."""

    windows: list[Future]  # each window's {token array: encoded chunk}, in order, as compressed
    commit: bool = False  # then write the partly filled token shards as they are


class _Pending:
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


class VideoWriter:
    """Buffers one video's windows, writes whole files as they fill, and commits the video."""

    def __init__(self, store: StoreWriter, record: VideoRecord, resumed: int = 0):
        self.store, self.record = store, record
        self.first = store.state["n_windows"]
        # windows [first, appended) are appended, uncommitted; the first `resumed` of them are
        # in committed pieces (durable, not yet visible)
        self.appended = self.first + resumed
        self._per_window: _Pending | None = None  # made once the part's arrays exist
        # Trips to the writer thread not yet waited for, with their windows: a bounded queue
        self._inflight: collections.deque[tuple[Future, int]] = collections.deque()
        self._done = False

    def _check_live(self) -> None:
        if self._done or self.store._video is not self:
            raise StoreError(
                f"video {self.record.path}: this writer was committed, failed or replaced"
            )

    def _error(self, message: str, window: int | None = None, array: str = "tokens") -> StoreError:
        where = (
            ""
            if window is None
            else (
                f" {array} of window {window} of this batch "
                f"(store window {self.appended + window}):"
            )
        )
        return StoreError(f"video {self.record.path}:{where} {message}")

    def append(
        self, tokens, embedding, start_frame, frame_step, n_valid_frames, start_time
    ) -> None:
        """Add a batch of windows: tokens (n,t,h,w,c) and embedding (n,c).

        Tokens are float32 at full resolution (the store codes them for its layout), or, for
        the float16 layouts, float16 already coded at the stored resolution (as the extraction
        does on the accelerator: half the bytes to move, no rounding on the host). A window
        the layout cannot store refuses the whole batch, naming the window.

        The batch is checked before this returns and compressed and written in the background.
        Writable float16 tokens are copied for that; read-only ones (numpy views of accelerator
        results, as the extraction passes) are not, so their memory must not be changed through
        another view before the video is committed.
        """
        self._check_live()
        tokens = np.asarray(tokens)
        if tokens.dtype != np.float16:
            tokens = tokens.astype(np.float32, copy=False)
        embedding = np.asarray(embedding, dtype=np.float32)
        n = tokens.shape[0] if tokens.ndim == 5 else -1
        if n <= 0 or embedding.shape != (n, tokens.shape[-1]):
            raise self._error(
                "expected tokens (n,t,h,w,c) with n > 0 and embedding (n,c); "
                f"got {tokens.shape} and {embedding.shape}"
            )
        layout = self.store.layout
        if tokens.dtype == np.float16:
            if layout.dtype == "int8":
                raise self._error("the int8 layout takes float32 tokens, got float16")
            stored_shape = list(tokens.shape[1:])
        else:
            try:
                stored_shape = list(stored_token_shape(tokens.shape[1:], layout.pool))
            except ValueError as e:
                raise self._error(str(e)) from None
        shape = self.store.state["token_shape"]
        if shape is not None and stored_shape != shape:
            raise self._error(
                f"stored token shape {tuple(stored_shape)} differs from this part's {tuple(shape)}"
            )
        batch = {
            "embedding": embedding,
            "video": np.full(n, len(self.store.state["videos"]), dtype=np.int64),
        }
        for name, values in (
            ("start_frame", start_frame),
            ("frame_step", frame_step),
            ("n_valid_frames", n_valid_frames),
            ("start_time", start_time),
        ):
            values = np.broadcast_to(np.asarray(values, dtype=WINDOW_COORD_DTYPES[name]), (n,))
            batch[name] = values
        try:
            if shape is None:
                if tokens.dtype == np.float16:
                    first = {"tokens": tokens[:1]}
                else:
                    try:
                        first = encode_tokens(tokens[:1], layout.dtype, layout.pool)
                    except ValueError as e:
                        raise self._error(str(e), 0) from None
                self.store._create_arrays(first, tokens.shape[-1])
            stored = self._prepare(tokens)
            if not np.isfinite(embedding).all():
                bad = int(np.argmax(~np.isfinite(embedding).all(axis=1)))
                raise self._error("not finite", bad, "embedding")
            # Compressed in the background; the writer thread takes each window when it is.
            pool = self.store._encode_pool
            windows = [pool.submit(self.store._compress_window, w) for w in stored]
            if self._per_window is None:
                per_file = min(self.store._arrays[name].chunks[0] for name in PER_WINDOW_ARRAYS)
                self._per_window = _Pending(PER_WINDOW_ARRAYS, self.appended, per_file)
            self._per_window.add(batch, n)
            self.appended += n
            self._submit(Writes(windows))
            if filled := self._per_window.take(whole_files=True):
                self.store._write_per_window(*filled)
        except OSError as e:
            self._done = True
            raise _writable_error(self.store.root, e) from None

    def _prepare(self, tokens: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Check (or code) each window of a batch in the store's thread pool, into arrays of
        the store's own; a window the layout cannot store refuses the batch, named."""
        jobs = [self.store._encode_pool.submit(self.store._prepare_window, w) for w in tokens]
        wait(jobs)
        for i, job in enumerate(jobs):
            if isinstance(job.exception(), ValueError):
                raise self._error(str(job.exception()), i)
        return [job.result() for job in jobs]

    def _submit(self, writes: Writes) -> None:
        """Hand windows and files to the writer thread, which writes them while the caller
        goes on; waits for the oldest trips while too many windows are not yet written."""
        windows = len(writes.windows)
        self._inflight.append((self.store._io.submit(self.store._write, writes), windows))
        while len(self._inflight) > 1 and sum(n for _, n in self._inflight) > MAX_WINDOWS_IN_FLIGHT:
            self._wait_oldest()

    def _wait(self) -> None:
        """Wait for every trip to the writer thread; the first error is raised."""
        while self._inflight:
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, _ = self._inflight.popleft()
        try:
            future.result()
        except BaseException:
            self._done = True  # windows were lost: this video can only be failed or replaced
            raise

    def _flush(self) -> None:
        """Write and fsync every window appended so far, arrays sized to them (the durable
        half of `commit` and `commit_piece`)."""
        store = self.store
        # The rest is done while the last windows are compressed and written: the per-window
        # values, and arrays sized to the windows appended (tokens: grown; a discarded video
        # may have left the others longer). Readers look no further than the commit record,
        # so growing an array early is safe.
        self._submit(Writes([], commit=True))
        if self._per_window is not None and (tail := self._per_window.take(False)):
            store._write_per_window(*tail)
        for arr in store._arrays.values():
            if arr.shape[0] != self.appended:
                arr.resize((self.appended,) + arr.shape[1:])
        self._wait()
        row = len(store.state["videos"])
        if pieces.windows_of(store.state) and pieces.row_of(store.state) != row:
            # pieces from an earlier run, when the table had other rows after them
            n = pieces.windows_of(store.state)
            store._write_per_window(self.first, {"video": np.full(n, row, np.int64)})
        store._make_durable(self.first, self.appended)

    def commit_piece(self) -> None:
        """Make the windows appended so far durable and recorded as pieces of this video
        (store/pieces.py), still invisible to readers: an interrupted run resumes after them."""
        self._check_live()
        if self.appended == self.first:
            return
        store = self.store
        try:
            self._flush()
            state = pieces.record(
                store.state,
                self.record.path,
                self.record.sha256,
                self.first,
                self.appended - self.first,
                len(store.state["videos"]),
            )
            store._publish(state)
        except OSError as e:
            self._done = True
            raise _writable_error(store.root, e) from None

    def commit(self, n_frames: int | None = None, duration: float | None = None) -> None:
        """Make the video visible: data made durable first, then the part's record replaced."""
        self._check_live()
        if self.appended == self.first:
            raise self._error("no windows appended; record a failure instead")
        store = self.store
        try:
            self._flush()
            row = dataclasses.asdict(self.record)
            if n_frames is not None:
                row["n_frames"] = int(n_frames)
            if duration is not None:
                row["duration"] = float(duration)
            row.update(
                status="complete",
                reason="",
                first_window=self.first,
                n_windows=self.appended - self.first,
            )
            state = pieces.without(store.state)
            store._publish({**state, "n_windows": self.appended, "videos": [*state["videos"], row]})
            store._io.submit(store._mark_committed).result()
        except OSError as e:
            raise _writable_error(store.root, e) from None
        finally:
            self._done = True


def open_writer(
    path,
    *,
    encoder: dict,
    preprocessing: dict,
    layout: Layout = Layout(),  # noqa: B008
    part: str | None = None,
    software_version: str = __version__,
    windows_per_shard: int | None = None,
) -> StoreWriter:
    """Create a store at `path` or open it for append, as one part (one writer process).

    A store with a different encoder, preprocessing or layout is refused (StoreIdentityError
    naming each differing field). Reopening a part by name resumes it after a crash.
    `windows_per_shard` applies to a new part (None: about 64 MiB of tokens per shard).
    """
    if "://" in str(path):
        raise StoreError(
            f"{path}: writing goes to a local (or mounted shared) directory, not a URL"
        )
    part = part or default_part_name()
    if not PART_NAME.match(part):
        raise StoreError(f"part name {part!r} must be letters, digits, '.', '_' or '-'")
    root = Path(path)
    identity = {"encoder": encoder, "preprocessing": preprocessing, "layout": layout.to_dict()}
    try:
        _open_root(root, identity, software_version)
        return StoreWriter(root, layout, part, windows_per_shard)
    except OSError as e:
        raise _writable_error(root, e) from None
