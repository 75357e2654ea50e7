"""The store's durable protocol: atomic JSON documents, fsync, locks, the root and its parts.

What is committed is decided by one document per part, its group's `zarr.json`, written here
(temp file, fsync, rename, fsync the directory) only after the data files it names are durable
(`PartRecord.make_durable`). Each part is held by an flock on its directory, so no two processes
write the same part; everything written at the root happens under the root directory's flock.
SPEC.md has the full protocol.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import secrets
import socket
import uuid
from collections.abc import Collection
from pathlib import Path

from ethoprism.store import describe
from ethoprism.store.published import PUBLISHED_ATTR
from ethoprism.store.schema import (
    ARRAY_DIMS,
    PART_ATTR,
    PARTS,
    SCHEMA,
    SCHEMA_VERSION,
    StoreError,
    StoreIdentityError,
    check_same_identity,
    check_schema,
    jsonable,
)


def fsync_path(path: Path, directory: bool = False) -> None:
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
    fsync_path(path.parent, directory=True)


def read_json(path: Path):
    with open(path) as f:
        return json.load(f)


def group_doc(attributes: dict) -> dict:
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def default_part_name() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"


def writable_error(path, e: OSError) -> StoreError:
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
def dir_lock(directory: Path):
    """Exclusive flock on a directory (no lock files; the kernel releases it if we die)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_temp_files(directory: Path) -> None:
    """Temp files of writes killed midway (write_json_atomic's and zarr LocalStore's)."""
    for p in directory.iterdir():
        if p.is_file() and p.name.endswith((".tmp", ".partial")):
            p.unlink(missing_ok=True)


def open_root(
    root: Path, identity: dict, software_version: str, windows: dict | None = None
) -> None:
    """Create the store's root and parts groups, or check an existing root's schema and identity.

    Everything written at the root happens under the root directory's flock, so concurrent
    creators cannot race and temp files found there belong to writers that died.
    """
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root} is a file, not a feature store directory")
    root.mkdir(parents=True, exist_ok=True)
    meta, parts = root / "zarr.json", root / PARTS
    with dir_lock(root):
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
                "created": now(),
                "parts": [],
            }
            if windows:  # windows not at the regular stride (extract --frames-from)
                attrs["windows"] = jsonable(windows)
            write_json_atomic(meta, group_doc(attrs))
        attrs = read_json(meta).get("attributes", {})
        check_schema(attrs, str(root))
        if PUBLISHED_ATTR in attrs:
            raise StoreError(
                f"{root} is a published store, read-only by contract: extract into a working "
                "store (another directory) and publish that"
            )
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
        if attrs.get("windows") != (jsonable(windows) if windows else None):
            raise StoreIdentityError(
                f"store {root} holds windows {attrs.get('windows') or 'at a regular stride'}; "
                f"this writer writes {windows or 'windows at a regular stride'}: use another store"
            )
        if not (parts / "zarr.json").exists():
            parts.mkdir(exist_ok=True)
            write_json_atomic(parts / "zarr.json", group_doc({}))
        remove_temp_files(root)
        remove_temp_files(parts)


def register_part(root: Path, name: str) -> None:
    """Add a part to the root's list of parts (what remote readers, which cannot list, read)."""
    with dir_lock(root):
        doc = read_json(root / "zarr.json")
        parts = doc["attributes"].setdefault("parts", [])
        if name not in parts or "README" not in doc["attributes"]:
            if name not in parts:
                parts.append(name)
                parts.sort()
            doc["attributes"].setdefault("README", describe.README)  # stores made before it
            write_json_atomic(root / "zarr.json", doc)


def consolidate(root: Path) -> None:
    """Refresh the root's consolidated metadata (plain zarr and xarray read it to list the
    store's groups and arrays in one request)."""
    with dir_lock(root):
        doc = read_json(root / "zarr.json")
        doc["consolidated_metadata"] = describe.consolidated(root, doc["attributes"]["parts"])
        write_json_atomic(root / "zarr.json", doc)


def shard_path(part_dir: Path, name: str, index: int, ndim: int | None = None) -> Path:
    ndim = ndim or len(ARRAY_DIMS[name])  # given for arrays not in ARRAY_DIMS (text-aligned)
    return part_dir.joinpath(name, "c", str(index), *["0"] * (ndim - 1))


class PartRecord:
    """One part held by this process: its flock, its commit record (`state`) and publishing it.

    The part directory itself is the lock (released by the kernel if the process dies).
    """

    def __init__(self, root: Path, part: str):
        self.root, self.name = root, part
        self.dir = root / PARTS / part
        self._lock_fd = None
        self._seen: dict[str, tuple] = {}  # other parts: (zarr.json identity, complete sha256s)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StoreError(
                f"part {part!r} of store {root} is being written by another writer; "
                "give each writer its own part name"
            ) from None
        try:
            meta = self.dir / "zarr.json"
            if meta.exists():
                # Fail now, not at the first commit, if the part cannot be written.
                (self.dir / f".probe.{uuid.uuid4().hex}.tmp").touch()
            else:
                record = {
                    "name": part,
                    "created": now(),
                    "n_windows": 0,
                    "windows_per_shard": None,
                    "token_shape": None,
                    "videos": [],
                }
                write_json_atomic(meta, group_doc({PART_ATTR: record}))
            self.state = read_json(meta)["attributes"][PART_ATTR]
            self._remove_temp_files()
        except BaseException:
            self.close()
            raise

    def _remove_temp_files(self) -> None:
        """Temp files a killed writer left anywhere in the part."""
        for dirpath, _, files in os.walk(self.dir):
            for f in files:
                if f.endswith((".partial", ".tmp")):
                    os.unlink(os.path.join(dirpath, f))

    def register(self) -> None:
        register_part(self.root, self.name)

    def publish(self, state: dict) -> None:
        write_json_atomic(self.dir / "zarr.json", group_doc({PART_ATTR: state}))
        self.state = state

    def make_durable(self, arrays: dict, sharded: Collection[str], start: int, end: int) -> None:
        """fsync the chunk and shard files holding windows [start, end), then their directories.
        Token shards (the arrays in `sharded`) were fsynced by the writer thread as it wrote them
        (`shards.ShardWriter`), so a commit waits for the disk only for what is left."""
        dirs = set()
        for name, arr in arrays.items():
            fsync_path(self.dir / name / "zarr.json")
            per_file = arr.shards[0] if arr.shards else arr.chunks[0]
            for i in range(start // per_file, (end - 1) // per_file + 1):
                path = shard_path(self.dir, name, i, arr.ndim)
                if path.exists():
                    if name not in sharded:
                        fsync_path(path)
                    dirs.update(p for p in path.parents if p.is_relative_to(self.dir))
        for d in dirs:
            fsync_path(d, directory=True)

    def is_complete(self, sha256: str) -> bool:
        """True if a video with this content is committed in any part of the store."""
        for name in read_json(self.root / "zarr.json")["attributes"].get("parts", []):
            if sha256 in self._complete_in(name):
                return True
        return False

    def _complete_in(self, part: str) -> set[str]:
        """sha256s committed in a part; other parts' records are re-read only when replaced."""
        if part == self.name:
            return {v["sha256"] for v in self.state["videos"] if v["status"] == "complete"}
        meta = self.root / PARTS / part / "zarr.json"
        st = meta.stat()
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if self._seen.get(part, (None,))[0] != key:
            state = read_json(meta)["attributes"][PART_ATTR]
            self._seen[part] = (
                key,
                {v["sha256"] for v in state["videos"] if v["status"] == "complete"},
            )
        return self._seen[part][1]

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
