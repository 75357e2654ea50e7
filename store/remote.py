"""Stores at URLs: http(s)://, s3:// or any fsspec protocol, as zarr v3 stores; uploading one.

Readers never list directories here: static HTTP servers usually cannot, and the store's root
attributes name its parts, whose array names are fixed by the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import json
import math
import os
from pathlib import Path

import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from ethoprism.store.schema import IDENTITY_KEYS, PARTS, StoreError, check_same_identity

S3_ENDPOINT_ENV = ("ETHOPRISM_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
S3_CREDENTIAL_OPTIONS = ("anon", "key", "secret", "token", "profile", "session")


def is_url(path) -> bool:
    """True for anything with a protocol other than a local file (`s3://b/x`, `https://h/x`)."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def is_local_fs(fs) -> bool:
    """True for fsspec's local filesystem (where objects are files: temp, sync, rename)."""
    return "file" in fs.protocol or "local" in fs.protocol


def protocol_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def storage_options_for(url: str, storage_options: dict | None = None) -> dict:
    """fsspec options for `url`: the caller's, plus defaults that make S3 work without setup.

    s3: the endpoint comes from `endpoint_url` (or client_kwargs), else $ETHOPRISM_S3_ENDPOINT,
    $AWS_ENDPOINT_URL_S3 or $AWS_ENDPOINT_URL (self-hosted S3: Ceph, MinIO); with no credentials
    given or found by botocore the bucket is read anonymously (public datasets).
    """
    opts = dict(storage_options or {})
    opts.pop("cache", None)  # ethoprism's own option (store/cache.py), not fsspec's
    if protocol_of(url) in ("s3", "s3a"):
        if "endpoint_url" not in opts and "endpoint_url" not in opts.get("client_kwargs", {}):
            endpoint = next((os.environ[v] for v in S3_ENDPOINT_ENV if os.environ.get(v)), None)
            if endpoint:
                opts["endpoint_url"] = endpoint
        if not any(k in opts for k in S3_CREDENTIAL_OPTIONS) and not _aws_credentials_found():
            opts["anon"] = True
    return opts


def _aws_credentials_found() -> bool:
    import botocore.session

    return botocore.session.Session().get_credentials() is not None


def zarr_store_for(
    url: str, storage_options: dict | None = None, read_only: bool = True
) -> zarr.storage.FsspecStore:
    """A zarr v3 store over `url` (read-only by default), for zarr.open_group / xarray.open_zarr.

    The storage option `cache` (a directory) reads through a local block cache (store/cache.py).
    """
    from ethoprism.store.cache import cached, split_cache

    cache_dir, storage_options = split_cache(storage_options)
    try:
        store = zarr.storage.FsspecStore.from_url(
            url.rstrip("/"),
            storage_options=storage_options_for(url, storage_options),
            read_only=read_only,
        )
    except (ImportError, ValueError) as e:
        raise StoreError(
            f"cannot open {url}: {e} (protocol {protocol_of(url)!r} needs its fsspec "
            "package, e.g. s3fs for s3://, aiohttp for http://)"
        ) from None
    # Fetch the root document once, so that an unreachable server, a refused credential or a
    # missing bucket is one clear error here, not a library's exception from deep in a read.
    try:
        sync(store.get("zarr.json", default_buffer_prototype()))  # None (absent) is fine here
    except Exception as e:  # noqa: BLE001 - whatever the transport raises, the store is unreadable
        raise StoreError(f"cannot read {url}: {_explain(e, url)}") from None
    return cached(store, cache_dir, url.rstrip("/")) if cache_dir and read_only else store


def _endpoint(url: str, options: dict) -> str:
    """Which server an S3 request went to, for error messages."""
    if protocol_of(url) not in ("s3", "s3a"):
        return ""
    endpoint = options.get("endpoint_url") or options.get("client_kwargs", {}).get("endpoint_url")
    return f" (S3 endpoint {endpoint or 'AWS default, s3.amazonaws.com'})"


def _explain(e: Exception, url: str) -> str:
    text = " ".join(f"{type(e).__name__}: {e}".split())  # one line
    if isinstance(e, PermissionError) and protocol_of(url) in ("s3", "s3a"):
        text += (
            " (give credentials as storage_options key/secret or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY; without any the bucket is read anonymously)"
        )
    elif isinstance(e, FileNotFoundError):
        text = f"{url} not found ({e}; does the bucket or directory exist?)"
    return text


def stored_bytes(arr: zarr.Array) -> int:
    """Bytes of an array's stored files (metadata, chunks or shards), found without listing.

    zarr's `nbytes_stored` lists directories, which static HTTP servers refuse; the keys follow
    from the array's shape and chunk grid, so ask for each one's size instead (concurrently).
    """
    outer = arr.shards or arr.chunks
    grid = [math.ceil(s / c) for s, c in zip(arr.shape, outer, strict=True)]
    prefix = f"{arr.path}/" if arr.path else ""
    encode = arr.metadata.chunk_key_encoding.encode_chunk_key
    keys = [f"{prefix}zarr.json"] + [
        prefix + encode(ix) for ix in itertools.product(*map(range, grid))
    ]

    async def size(key):
        try:
            return await arr.store.getsize(key)
        except FileNotFoundError:  # a chunk never written (all fill value)
            return 0

    async def total():
        return sum(await asyncio.gather(*map(size, keys)))

    return sync(total())


def upload_store(local_path, url: str, storage_options: dict | None = None) -> int:
    """Copy a local store to `url` (e.g. s3://bucket/name.zarr); returns the number of files.

    What is copied is the store as committed when the copy starts: the root document is read
    first and written last, parts created meanwhile stay behind, and a part that a writer holds
    is refused (its files could change under the copy). Data files go before metadata
    documents, deepest first, so a reader of the destination never sees a commit record
    before the data it points to. Lock and temporary files (dot files) stay behind. A store
    already at `url` is overwritten only if it has the same identity.
    """
    root = Path(local_path)
    root_doc, attrs = _read_root_document(root)
    parts = set(attrs.get("parts", []))
    options = storage_options_for(url, storage_options)
    fs, base = _writable_fs(url, options)
    with contextlib.ExitStack() as held:
        for part in sorted(parts):
            _hold_part(held, root, part)
        files = _committed_files(root, parts)
        try:
            _check_destination(fs, base, url, root, attrs)
            _put_files(fs, base, root, files)
            fs.pipe_file(f"{base}/zarr.json", root_doc)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever the transport raises, the push failed
            raise StoreError(
                f"uploading {root} to {url} failed{_endpoint(url, options)}: {_explain(e, url)}"
            ) from None
    return len(files) + 1


def _read_root_document(root: Path) -> tuple[bytes, dict]:
    """A local store's root document (bytes, as it will be uploaded) and its attributes."""
    if not (root / "zarr.json").is_file():
        raise StoreError(f"{root} is not a feature store (no zarr.json)")
    root_doc = (root / "zarr.json").read_bytes()
    try:
        return root_doc, json.loads(root_doc).get("attributes", {})
    except ValueError as e:
        raise StoreError(f"{root}/zarr.json is damaged (not JSON: {e})") from None


def _writable_fs(url: str, options: dict):
    """(filesystem, base path without a trailing slash) to upload to."""
    import fsspec

    try:
        fs, base = fsspec.url_to_fs(url, **options)
    except (ImportError, ValueError) as e:
        raise StoreError(f"cannot write to {url}: {e}") from None
    return fs, base.rstrip("/")


def _committed_files(root: Path, parts: set[str]) -> list[Path]:
    """The store's files to upload: not the root document (written last, by itself), no dot
    file (locks, temporaries), nothing inside a part the root document does not name."""

    def wanted(rel: tuple[str, ...]) -> bool:
        in_new_part = len(rel) > 2 and rel[0] == PARTS and rel[1] not in parts
        return not in_new_part and not any(s.startswith(".") for s in rel) and rel != ("zarr.json",)

    return [p for p in root.rglob("*") if p.is_file() and wanted(p.relative_to(root).parts)]


def _check_destination(fs, base: str, url: str, root: Path, attrs: dict) -> None:
    """A store already at the destination must have the identity of the one uploaded."""
    if not fs.exists(f"{base}/zarr.json"):
        return
    there = json.loads(fs.cat_file(f"{base}/zarr.json")).get("attributes", {})
    check_same_identity(
        {k: there.get(k) for k in IDENTITY_KEYS},
        {k: attrs.get(k) for k in IDENTITY_KEYS},
        f"store at {url} (left) vs {root} (right)",
    )


def _put_files(fs, base: str, root: Path, files: list[Path]) -> None:
    """Upload `files` under `base`: data files first, then metadata documents deepest first."""
    targets = {p: f"{base}/{p.relative_to(root).as_posix()}" for p in files}
    _make_folders(fs, base, targets.values())
    data = [p for p in files if p.name != "zarr.json"]
    meta = sorted(
        (p for p in files if p.name == "zarr.json"),
        key=lambda p: -len(p.relative_to(root).parts),
    )
    for batch in (data, meta):
        if batch:
            fs.put([str(p) for p in batch], [targets[p] for p in batch])


def _make_folders(fs, base: str, targets) -> None:
    """A local destination (a path or file://) needs its folders made; object stores have none."""
    from fsspec.implementations.local import LocalFileSystem

    if isinstance(fs, LocalFileSystem):
        for folder in sorted({t.rsplit("/", 1)[0] for t in targets} | {base}):
            fs.makedirs(folder, exist_ok=True)


def _hold_part(held: contextlib.ExitStack, root: Path, part: str) -> None:
    """Share-lock a part's directory, which its writer holds exclusively while it writes."""
    try:
        fd = os.open(root / PARTS / part, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise StoreError(f"part {part!r} named in {root}/zarr.json cannot be read: {e}") from None
    held.callback(os.close, fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise StoreError(
            f"part {part!r} of {root} is being written; push the store when its "
            "writer has finished (or stopped: committed videos are kept)"
        ) from None
