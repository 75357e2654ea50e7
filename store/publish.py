"""`store publish`: a store's parts as ONE plain, consolidated Zarr v3 dataset, for other labs.

The published dataset is what `ethoprism.store.open(STORE)` returns, written out: one `window`
axis (the parts' windows in the reader's merge order: parts in the root's `parts` order, video
rows in table order, each video once), the video table as arrays on `videos`, every attribute
kept, the coordinates named in the root's `coordinates` attribute (so plain xarray makes them
coordinates) and consolidated metadata in the root document (so `xarray.open_zarr(URL)` needs
no listing). SPEC.md, "Published stores", has the format.

Token arrays hold one window per inner chunk, so a window's encoded bytes (compressed, with
their crc32c) move from the source shard to the published shard unchanged: only the shard
index is rewritten with the new offsets (shard_copy.py). The other arrays are encoded by zarr
in memory, then written and hashed by ethoprism, while the shards copy (none is read back).

Resumable: each published object is written whole (renamed into place on a local disk, one
PUT on S3), the plan is derived only from the source's commit records, and a rerun writes only
the token shards that are not there yet. The root document, which makes the destination a
store, and the manifest come last, after every object they vouch for is synced to the disk.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from ethoprism.store.durable import fsync_path
from ethoprism.store.handle import open_handle
from ethoprism.store.manifest import MANIFEST, put_object, write_manifest
from ethoprism.store.published import PUBLISHED_ATTR
from ethoprism.store.reader import dataset, read_windows
from ethoprism.store.remote import is_local_fs, storage_options_for
from ethoprism.store.schema import (
    FRAME_TIME,
    VIDEO_COLUMNS,
    StoreError,
    aligned_arrays,
    jsonable,
)
from ethoprism.store.shard_copy import copy_token_shards

PUBLISHING_ATTR = "ethoprism_publishing"  # root attribute while a publish is under way
FORMAT = "ethoprism.published"
FORMAT_VERSION = 1
# coordinates of the window axis, as `store.open` names them, then the video table's
WINDOW_COORDS_OUT = (
    "video",
    "start_frame",
    "frame_step",
    "n_valid_frames",
    "start_time",
    "video_name",
    "part",
    "part_window",
    FRAME_TIME,  # (window, frame)
)
SMALL_CHUNK = 4096  # windows (or videos) per chunk of a coordinate
EMBEDDING_CHUNK = 1024  # windows per chunk of a (window, c) embedding
CHUNKS_PER_BATCH = 16  # chunks of an embedding encoded in memory at a time
# shards copied at a time, each through a staging buffer of a few MB: a thread waits on the disk for
# part of each shard (O_DIRECT writes and fsync are synchronous), so more threads than cores
# keep the cores hashing (measured on 2 busy cores: 8 threads 0.29-0.32 s per 208 MB, 2 or 4
# threads 0.35-0.41 s; at load 3, 0.21-0.25 s whatever the count)
COPY_THREADS = min(16, 4 * (os.cpu_count() or 1))


def _fs(url: str, storage_options: dict | None):
    import fsspec

    try:
        return fsspec.url_to_fs(url, **storage_options_for(url, storage_options))
    except (ImportError, ValueError) as e:
        raise StoreError(f"cannot open {url}: {e}") from None


def _token_plan(handle, ds: xr.Dataset) -> dict[str, dict]:
    """For each token array: its published metadata document and windows per shard."""
    plans = {}
    n = ds.sizes["window"]
    for name in handle.layout.arrays:
        docs = [jsonable(p.arrays[name].metadata.to_dict()) for p in handle.parts if p.arrays]
        if not docs:
            continue
        first = docs[0]
        (sharding,) = first["codecs"]
        inner = sharding["configuration"]["chunk_shape"]
        if (
            sharding["name"] != "sharding_indexed"
            or inner[0] != 1
            or inner[1:] != first["shape"][1:]
        ):
            raise StoreError(
                f"{name}: not stored as one window per inner chunk of a shard; "
                "this ethoprism publishes only such stores"
            )
        for doc in docs[1:]:
            if doc["codecs"] != first["codecs"] or doc["data_type"] != first["data_type"]:
                raise StoreError(
                    f"{name}: parts store it with different codecs, so windows cannot be copied "
                    "without recompressing"
                )
        per_shard = min(int(first["chunk_grid"]["configuration"]["chunk_shape"][0]), max(n, 1))
        doc = json.loads(json.dumps(first))
        doc["shape"] = [n] + first["shape"][1:]
        doc["chunk_grid"]["configuration"]["chunk_shape"] = [per_shard] + first["shape"][1:]
        # the source's chunk key encoding, which the published metadata copies
        encode = next(p for p in handle.parts if p.arrays).arrays[name].metadata.encode_chunk_key
        plans[name] = {"doc": doc, "per_shard": per_shard, "key": encode}
    return plans


def _small_arrays(ds: xr.Dataset) -> dict[str, tuple[tuple[str, ...], np.ndarray, int]]:
    """The published store's non-token arrays: name -> (dims, values, chunk length)."""
    out = {}
    for name in WINDOW_COORDS_OUT:
        out[name] = (ds[name].dims, np.asarray(ds[name].values), SMALL_CHUNK)
    for col in VIDEO_COLUMNS:
        out[f"video_{col}"] = (("videos",), ds[f"video_{col}"].values, SMALL_CHUNK)
    return out


def _create(group: zarr.Group, name, dims, shape, dtype, chunk, attributes) -> zarr.Array:
    return group.create_array(
        name,
        shape=shape,
        dtype=dtype,
        chunks=(max(1, min(chunk, shape[0])),) + tuple(shape[1:]),
        compressors=[ZstdCodec(level=1), Crc32cCodec()] if dtype is not str else "auto",
        dimension_names=dims,
        config={"write_empty_chunks": True},
        attributes=attributes,
    )


def _in_memory() -> tuple[zarr.Group, dict]:
    """A zarr group whose objects land in the returned dict: zarr encodes the published
    arrays (its format, its codecs) without a round trip to the destination per zarr call, and
    ethoprism writes and hashes the objects itself, like the token shards (none is read back)."""
    objects: dict = {}
    return zarr.open_group(zarr.storage.MemoryStore(objects), mode="w", zarr_format=3), objects


def _taken(objects: dict) -> dict[str, bytes]:
    """The encoded objects zarr left in `objects` (emptied), its root document aside."""
    out = {k: v.to_bytes() for k, v in objects.items() if k != "zarr.json"}
    objects.clear()
    return out


def _small_objects(handle, ds: xr.Dataset, plans: dict) -> dict[str, bytes]:
    """Every published object but the embeddings' and the token shards: the coordinates, the
    video table and the token arrays' metadata documents."""
    group, objects = _in_memory()
    for name, (dims, values, chunk) in _small_arrays(ds).items():
        if values.dtype == object:
            values = values.astype(str)
        kind = str if values.dtype.kind == "U" else values.dtype
        arr = _create(
            group, name, dims, values.shape, kind, chunk, _source_attributes(handle, name)
        )
        if len(values):
            arr[:] = values  # one write per array
    out = _taken(objects)
    for name, plan in plans.items():
        out[f"{name}/zarr.json"] = json.dumps(plan["doc"]).encode()
    return out


def _embedded(ds: xr.Dataset) -> tuple[str, ...]:
    """The embeddings published beside the tokens: `embedding`, then a video-text model's
    text-aligned ones (video_embedding, frame_embeddings)."""
    return ("embedding", *aligned_arrays(ds.attrs["encoder"]))


def _embedding_chunk(shape: tuple[int, ...]) -> int:
    """Windows per chunk of an embedding: EMBEDDING_CHUNK vectors of c, so a chunk of
    frame_embeddings (window, t, c) holds EMBEDDING_CHUNK / t windows (chunks of like size)."""
    return max(1, EMBEDDING_CHUNK // int(np.prod(shape[1:-1], dtype=np.int64)))


def _embeddings(handle, ds: xr.Dataset) -> Iterator[dict[str, bytes]]:
    """The published embeddings' objects, CHUNKS_PER_BATCH chunks at a time (whole chunks, so
    each is encoded once; an archive's embeddings need not fit in memory)."""
    group, objects = _in_memory()
    for name in _embedded(ds):
        var = ds[name]
        chunk = _embedding_chunk(var.shape)
        attributes = _source_attributes(handle, name)
        arr = _create(group, name, var.dims, var.shape, var.dtype, chunk, attributes)
        n, batch = var.shape[0], CHUNKS_PER_BATCH * chunk
        for lo in range(0, n, batch):
            hi = min(lo + batch, n)  # read_windows: zarr directly, no dask
            arr[lo:hi] = read_windows(ds, np.arange(lo, hi), name)
            yield _taken(objects)


def _write_others(batches: Iterator[dict[str, bytes]], fs, base: str) -> tuple[dict, dict]:
    """Every published object but the token shards (`batches` of {path: encoded object}),
    written under `base` (in threads: on S3 each is a round trip); (the arrays' metadata
    documents by name, {path: (size, sha256)})."""
    metadata, written = {}, {}
    local = is_local_fs(fs)

    def put(item):
        path, data = item
        put_object(fs, f"{base}/{path}", data)
        if local:  # synced now, while the shards copy, not after them (_make_durable)
            fsync_path(f"{base}/{path}")
        return path, (len(data), hashlib.sha256(data).hexdigest())

    with ThreadPoolExecutor(COPY_THREADS) as pool:
        for objects in batches:
            for key, data in objects.items():
                if key.endswith("/zarr.json"):
                    metadata[key.removesuffix("/zarr.json")] = json.loads(data)
            written.update(pool.map(put, objects.items()))
    return metadata, written


def _make_durable(fs, base: str, paths) -> None:
    """fsync the directories of every object written (or found by a rerun), once, before the
    root document and the manifest vouch for them. The objects themselves are synced as they
    are written (a token shard a rerun finds was synced before its rename); an object store's
    PUT is durable already."""
    if not is_local_fs(fs):
        return
    directories = {base}
    for p in paths:  # each directory, and every one made for it (their entries are new too)
        parts = p.split("/")[:-1]
        directories.update("/".join([base, *parts[:i]]) for i in range(1, len(parts) + 1))
    with ThreadPoolExecutor(COPY_THREADS) as pool:  # the disk queues them; fsync waits in C
        list(pool.map(lambda d: fsync_path(d, directory=True), directories))


def _source_attributes(handle, name: str) -> dict:
    """The attributes of a source array (the first part's), kept on its published copy."""
    part = next((p for p in handle.parts if name in p.arrays), None)
    return dict(part.arrays[name].attrs) if part else {}


def publish(
    source: str,
    dest: str,
    storage_options: dict | None = None,
    dest_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Publish the store at `source` to `dest` (a directory or writable fsspec URL).

    `progress(bytes, windows)` is called as token shards are copied, one call at a time (a
    caller may add the numbers up without a lock of its own). Returns a summary
    ({"dest", "windows", "videos", "objects", "bytes", "token_bytes", "token_seconds",
    "up_to_date"}; only "dest", "windows" and "up_to_date" when nothing was left to do).
    """
    handle, ds = _open_source(source, storage_options)
    plans = _token_plan(handle, ds)
    plan_digest = _plan_digest(handle, plans)
    fs_dst, base_dst = _fs(dest, dest_options)
    base_dst = base_dst.rstrip("/")
    if _check_destination(fs_dst, base_dst, dest, plan_digest):
        return {"dest": dest, "windows": ds.sizes["window"], "up_to_date": True}
    put_object(fs_dst, f"{base_dst}/zarr.json", _group_doc({PUBLISHING_ATTR: plan_digest}))
    src = _fs(source, storage_options)
    written, metadata, token_seconds = _write_objects(
        handle, ds, plans, src, (fs_dst, base_dst), progress
    )
    _make_durable(fs_dst, base_dst, written)
    attrs = _published_attrs(handle, ds, source, plan_digest)
    root = _root_doc(attrs, metadata)
    put_object(fs_dst, f"{base_dst}/zarr.json", json.dumps(root).encode(), durable=True)
    manifest = write_manifest(
        fs_dst,
        base_dst,
        identity={k: attrs[k] for k in ("encoder", "preprocessing", "layout")},
        known=written,
        videos=_video_ranges(ds),
        windows_of=_windows_of(plans, ds),
    )
    return _summary(dest, ds, plans, written, manifest, token_seconds)


def _open_source(source: str, storage_options: dict | None) -> tuple:
    """(handle, dataset) of a store that can be published: not published, some window."""
    handle = open_handle(source, storage_options)
    if PUBLISHED_ATTR in handle.attrs:
        raise StoreError(f"{source} is already a published store; copy it as it is")
    ds = dataset(handle, storage_options)  # (the handle opened once: it reads every part)
    if ds.sizes["window"] == 0:
        raise StoreError(f"{source} holds no committed windows: nothing to publish")
    return handle, ds


def _plan_digest(handle, plans: dict) -> str:
    """What the publish will write, as a digest: the parts' window counts and the token
    arrays' published metadata (a rerun over the same state finds the same digest)."""
    return hashlib.sha256(
        json.dumps(
            [[p.name, p.n_windows] for p in handle.parts] + [plans[k]["doc"] for k in plans]
        ).encode()
    ).hexdigest()


def _check_destination(fs, base: str, dest: str, plan_digest: str) -> bool:
    """True if `dest` already holds this publish, finished; refuses anything else there but
    an unfinished publish of the same plan (which a rerun finishes) or nothing."""
    root_doc_path = f"{base}/zarr.json"
    if fs.exists(root_doc_path):
        there = json.loads(fs.cat_file(root_doc_path)).get("attributes", {})
        plan_there = (there.get(PUBLISHED_ATTR) or {}).get("plan", there.get(PUBLISHING_ATTR))
        if PUBLISHED_ATTR in there and plan_there != plan_digest:
            raise StoreError(f"{dest} already holds a published store (of another state)")
        if plan_there == plan_digest and fs.exists(f"{base}/{MANIFEST}"):
            return True
        if plan_there != plan_digest:  # (the manifest is written last: without it, finish)
            raise StoreError(
                f"{dest} holds something else (or an unfinished publish of another state of "
                "the store); choose an empty destination"
            )
    elif fs.exists(base) and fs.ls(base):
        raise StoreError(f"{dest} is not empty; choose an empty destination")
    return False


def _write_objects(handle, ds: xr.Dataset, plans: dict, src, dst, progress) -> tuple:
    """Every published object but the root document and the manifest: the token shards copied,
    the other arrays written beside them; (written {path: (size, sha256)}, the arrays'
    metadata documents by name, seconds the token copy took)."""
    # The other arrays are written while the shards copy, but encoded (the first embedding batch
    # too) before: zarr's encoding takes the GIL often, and next to the copy's threads it
    # finished only after them (measured: 0.03-0.05 s added to the 0.2 s of a 200 MB publish).
    embedding = _embeddings(handle, ds)
    first = [_small_objects(handle, ds, plans), next(embedding)]  # (at least one window)
    with ThreadPoolExecutor(1) as side:
        others = side.submit(_write_others, itertools.chain(first, embedding), *dst)
        started = time.perf_counter()
        written = copy_token_shards(handle, ds, plans, src, dst, progress, COPY_THREADS)
        token_seconds = time.perf_counter() - started
        metadata, more = others.result()
    written.update(more)
    return written, metadata, token_seconds


def _published_attrs(handle, ds: xr.Dataset, source: str, plan_digest: str) -> dict:
    """Every root attribute of the source (store.open shows some), then the Dataset's, the
    coordinates' names and the publish record."""
    attrs = {**handle.attrs, **{k: v for k, v in ds.attrs.items() if k != "source"}}
    attrs["coordinates"] = " ".join([*WINDOW_COORDS_OUT, *(f"video_{c}" for c in VIDEO_COLUMNS)])
    attrs[PUBLISHED_ATTR] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "read_only": True,
        "source": str(source),
        "published": datetime.now(UTC).isoformat(timespec="seconds"),
        "plan": plan_digest,
    }
    return attrs


def _root_doc(attrs: dict, metadata: dict) -> dict:
    """The published root document, the arrays' metadata consolidated into it."""
    root = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    root["consolidated_metadata"] = {
        "kind": "inline",
        "must_understand": False,
        "metadata": dict(sorted(metadata.items())),
    }
    return root


def _summary(dest, ds: xr.Dataset, plans, written, manifest, token_seconds) -> dict:
    return {
        "dest": dest,
        "windows": ds.sizes["window"],
        "videos": int((ds.video_status.values == "complete").sum()),
        "objects": len(manifest["objects"]),
        "bytes": sum(o["size"] for o in manifest["objects"]),
        "token_bytes": sum(
            size for path, (size, _) in written.items() if path.split("/")[0] in plans
        ),
        "token_seconds": token_seconds,
        "up_to_date": False,
    }


def _group_doc(attributes: dict) -> bytes:
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}).encode()


def _video_ranges(ds: xr.Dataset) -> list[dict]:
    return [
        {"path": str(p), "first_window": int(f), "n_windows": int(k)}
        for p, f, k, s in zip(
            ds.video_path.values,
            ds.video_first_window.values,
            ds.video_n_windows.values,
            ds.video_status.values,
            strict=True,
        )
        if s == "complete"
    ]


def _windows_of(plans: dict, ds: xr.Dataset) -> Callable[[str], tuple[int, int] | None]:
    """The published windows [lo, hi) an object holds (token shards, embedding chunks)."""
    n = ds.sizes["window"]
    per_chunk = {name: plan["per_shard"] for name, plan in plans.items()}
    per_chunk.update({name: _embedding_chunk(ds[name].shape) for name in _embedded(ds)})
    per_chunk.update({name: SMALL_CHUNK for name in WINDOW_COORDS_OUT})

    def of(path: str) -> tuple[int, int] | None:
        name, _, key = path.partition("/")
        if name not in per_chunk or not key.startswith("c/"):
            return None
        i = int(key.split("/")[1])
        return i * per_chunk[name], min(n, (i + 1) * per_chunk[name])

    return of


__all__ = ["MANIFEST", "PUBLISHED_ATTR", "publish"]
