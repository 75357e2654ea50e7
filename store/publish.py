"""`store publish`: a store's parts as ONE plain, consolidated Zarr v3 dataset, for other labs.

The published dataset is what `ethoprism.store.open(STORE)` returns, written out: one `window`
axis (the parts' windows in the reader's merge order: parts in the root's `parts` order, video
rows in table order, each video once), the video table as arrays on `videos`, every attribute
kept, the coordinates named in the root's `coordinates` attribute (so plain xarray makes them
coordinates) and consolidated metadata in the root document (so `xarray.open_zarr(URL)` needs
no listing). SPEC.md, "Published stores", has the format.

Token arrays hold one window per inner chunk, so a window's encoded bytes (compressed, with
their crc32c) move from the source shard to the published shard unchanged: only the shard
index is rewritten with the new offsets. The small arrays are re-chunked through zarr.

Resumable: each published object is written whole (renamed into place on a local disk, one
PUT on S3), the plan is derived only from the source's commit records, and a rerun writes only
the token shards that are not there yet. The root document, which makes the destination a
store, and the manifest come last.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import google_crc32c
import numpy as np
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from ethoprism.store.handle import open_handle
from ethoprism.store.manifest import MANIFEST, put_object, write_manifest
from ethoprism.store.published import PUBLISHED_ATTR
from ethoprism.store.reader import open as open_store
from ethoprism.store.reader import read_windows
from ethoprism.store.remote import is_url, storage_options_for
from ethoprism.store.schema import (
    ARRAY_DIMS,
    FRAME_TIME,
    PARTS,
    VIDEO_COLUMNS,
    StoreError,
    jsonable,
)
from ethoprism.store.shards import EMPTY, shard_index

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
EMBEDDING_CHUNK = 1024
COPY_THREADS = 4


def _fs(url: str, storage_options: dict | None):
    import fsspec

    try:
        return fsspec.url_to_fs(url, **storage_options_for(url, storage_options))
    except (ImportError, ValueError) as e:
        raise StoreError(f"cannot open {url}: {e}") from None


def _zarr_store(url: str, storage_options: dict | None):
    if is_url(url):
        return zarr.storage.FsspecStore.from_url(
            url.rstrip("/"), storage_options=storage_options_for(url, storage_options)
        )
    path = url.removeprefix("file://")
    os.makedirs(path, exist_ok=True)
    return zarr.storage.LocalStore(path)


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


def _crc32c(data) -> bytes:
    return google_crc32c.value(bytes(data)).to_bytes(4, "little")  # it takes no memoryview


class _SourceShards:
    """Reads encoded inner chunks (one window each) out of the source's shard files."""

    def __init__(self, handle, fs, base: str, name: str):
        self.fs, self.base, self.name = fs, base.rstrip("/"), name
        self.parts = handle.parts

    def chunks(self, part: int, windows: np.ndarray) -> list[bytes]:
        """Encoded chunks of consecutive part windows, in order (reads index, then one span)."""
        arr = self.parts[part].arrays[self.name]
        per_shard = arr.shards[0]
        out = []
        shard_of = windows // per_shard
        for shard in np.unique(shard_of):
            local = windows[shard_of == shard] - shard * per_shard
            key = arr.metadata.encode_chunk_key((int(shard),) + (0,) * (arr.ndim - 1))
            path = f"{self.base}/{PARTS}/{self.parts[part].name}/{self.name}/{key}"
            where = f"part {self.parts[part].name!r} {self.name} shard {key}"
            try:
                index_bytes = self.fs.cat_file(path, start=-(16 * per_shard + 4))
            except FileNotFoundError:
                raise StoreError(f"{where}: missing, but it holds committed windows") from None
            if _crc32c(index_bytes[:-4]) != index_bytes[-4:]:
                raise StoreError(f"{where}: shard index fails its crc32c (damaged source)")
            index = np.frombuffer(index_bytes[:-4], dtype="<u8").reshape(per_shard, 2)
            rows = index[local]
            if (rows[:, 0] == EMPTY).any():
                w = int(local[np.argmax(rows[:, 0] == EMPTY)] + shard * per_shard)
                raise StoreError(f"{where}: committed window {w} is missing from its shard")
            lo, hi = int(rows[:, 0].min()), int((rows[:, 0] + rows[:, 1]).max())
            span = self.fs.cat_file(path, start=lo, end=hi)
            span = memoryview(span)  # the chunks are views of it: no copy per window
            for w, (o, k) in zip(local, rows, strict=True):
                chunk = span[int(o) - lo : int(o + k) - lo]
                # a damaged source window must not travel under a manifest that vouches for it
                if len(chunk) < 4 or _crc32c(chunk[:-4]) != chunk[-4:]:
                    window = int(w + shard * per_shard)
                    raise StoreError(f"{where}: window {window} fails its crc32c (damaged source)")
                out.append(chunk)
        return out


def _write_token_shards(handle, ds, plans, src, dst, progress) -> dict[str, tuple[int, str]]:
    """Copy every token array's windows into published shards; {path: (size, sha256)}."""
    fs_src, base_src = src
    fs_dst, base_dst = dst
    part_of, window_of = ds.part.values, ds.part_window.values
    n = ds.sizes["window"]
    written: dict[str, tuple[int, str]] = {}
    for name, plan in plans.items():
        per_shard = plan["per_shard"]
        source = _SourceShards(handle, fs_src, base_src, name)

        def one(shard, name=name, plan=plan, per_shard=per_shard, source=source):
            lo, hi = shard * per_shard, min(n, (shard + 1) * per_shard)
            chunks = []
            start = lo
            while start < hi:  # runs of consecutive windows of one part
                stop = start + 1
                while (
                    stop < hi
                    and part_of[stop] == part_of[start]
                    and window_of[stop] == window_of[stop - 1] + 1
                ):
                    stop += 1
                chunks += source.chunks(int(part_of[start]), window_of[start:stop])
                start = stop
            pieces = [*chunks, shard_index([(c,) for c in chunks], per_shard)]
            size = sum(len(p) for p in pieces)
            digest = hashlib.sha256()
            for piece in pieces:
                digest.update(piece)
            path = f"{name}/{plan['key']((shard,) + (0,) * (len(plan['doc']['shape']) - 1))}"
            target = f"{base_dst}/{path}"
            try:
                done = fs_dst.size(target) == size
            except FileNotFoundError:
                done = False
            if not done:
                put_object(fs_dst, target, pieces)
            if progress:
                progress(size, hi - lo)
            return path, (size, digest.hexdigest())

        with ThreadPoolExecutor(COPY_THREADS) as pool:
            written.update(pool.map(one, range(math.ceil(n / per_shard))))
    return written


def _small_arrays(ds: xr.Dataset) -> dict[str, tuple[tuple[str, ...], np.ndarray, int]]:
    """The published store's non-token arrays: name -> (dims, values, chunk length)."""
    out = {}
    for name in WINDOW_COORDS_OUT:
        out[name] = (ds[name].dims, np.asarray(ds[name].values), SMALL_CHUNK)
    for col in VIDEO_COLUMNS:
        out[f"video_{col}"] = (("videos",), ds[f"video_{col}"].values, SMALL_CHUNK)
    return out


def _write_small(group: zarr.Group, name, dims, values, chunk, attributes=None) -> None:
    if values.dtype == object:
        values = values.astype(str)
    kind = str if values.dtype.kind == "U" else values.dtype
    arr = group.create_array(
        name,
        shape=values.shape,
        dtype=kind,
        chunks=(max(1, min(chunk, len(values))),) + values.shape[1:],
        compressors=[ZstdCodec(level=1), Crc32cCodec()] if kind is not str else "auto",
        dimension_names=dims,
        overwrite=True,
        config={"write_empty_chunks": True},
        attributes=attributes,
    )
    if len(values):
        arr[:] = values


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

    `progress(bytes, windows)` is called as token shards are copied. Returns a summary
    ({"dest", "windows", "videos", "objects", "bytes", "token_bytes_written"}).
    """
    handle = open_handle(source, storage_options)
    if PUBLISHED_ATTR in handle.attrs:
        raise StoreError(f"{source} is already a published store; copy it as it is")
    ds = open_store(source, storage_options)
    if ds.sizes["window"] == 0:
        raise StoreError(f"{source} holds no committed windows: nothing to publish")
    plans = _token_plan(handle, ds)
    plan_digest = hashlib.sha256(
        json.dumps(
            [[p.name, p.n_windows] for p in handle.parts] + [plans[k]["doc"] for k in plans]
        ).encode()
    ).hexdigest()
    fs_dst, base_dst = _fs(dest, dest_options)
    base_dst = base_dst.rstrip("/")
    root_doc_path = f"{base_dst}/zarr.json"
    if fs_dst.exists(root_doc_path):
        there = json.loads(fs_dst.cat_file(root_doc_path)).get("attributes", {})
        plan_there = (there.get(PUBLISHED_ATTR) or {}).get("plan", there.get(PUBLISHING_ATTR))
        if PUBLISHED_ATTR in there and plan_there != plan_digest:
            raise StoreError(f"{dest} already holds a published store (of another state)")
        if plan_there == plan_digest and fs_dst.exists(f"{base_dst}/{MANIFEST}"):
            return {"dest": dest, "windows": ds.sizes["window"], "up_to_date": True}
        if plan_there != plan_digest:  # (the manifest is written last: without it, finish)
            raise StoreError(
                f"{dest} holds something else (or an unfinished publish of another state of "
                "the store); choose an empty destination"
            )
    elif fs_dst.exists(base_dst) and fs_dst.ls(base_dst):
        raise StoreError(f"{dest} is not empty; choose an empty destination")
    put_object(
        fs_dst,
        root_doc_path,
        _group_doc({PUBLISHING_ATTR: plan_digest}),
    )
    group = zarr.open_group(_zarr_store(dest, dest_options), mode="r+", zarr_format=3)
    with ThreadPoolExecutor(COPY_THREADS) as pool:  # each is a few round trips: overlap them
        list(
            pool.map(
                lambda item: _write_small(
                    group, item[0], *item[1], _source_attributes(handle, item[0])
                ),
                _small_arrays(ds).items(),
            )
        )
    emb = ds.embedding
    emb_arr = group.create_array(
        "embedding",
        shape=emb.shape,
        dtype="float32",
        chunks=(max(1, min(EMBEDDING_CHUNK, emb.shape[0])), emb.shape[1]),
        compressors=[ZstdCodec(level=1), Crc32cCodec()],
        dimension_names=ARRAY_DIMS["embedding"],
        overwrite=True,
        config={"write_empty_chunks": True},
        attributes=_source_attributes(handle, "embedding"),
    )
    for lo in range(0, emb.shape[0], EMBEDDING_CHUNK):
        hi = min(lo + EMBEDDING_CHUNK, emb.shape[0])  # read_windows: zarr directly, no dask
        emb_arr[lo:hi] = read_windows(ds, np.arange(lo, hi), "embedding")
    fs_src, base_src = _fs(source, storage_options)
    for name, plan in plans.items():
        put_object(fs_dst, f"{base_dst}/{name}/zarr.json", json.dumps(plan["doc"]).encode())
    started = time.perf_counter()
    tokens_written = _write_token_shards(
        handle, ds, plans, (fs_src, base_src), (fs_dst, base_dst), progress
    )
    token_seconds = time.perf_counter() - started

    names = sorted([*_small_arrays(ds), "embedding", *plans])
    metadata = {name: json.loads(fs_dst.cat_file(f"{base_dst}/{name}/zarr.json")) for name in names}
    # every root attribute of the source (store.open shows some), then the Dataset's
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
    root = {"zarr_format": 3, "node_type": "group", "attributes": attrs}
    root["consolidated_metadata"] = {
        "kind": "inline",
        "must_understand": False,
        "metadata": metadata,
    }
    put_object(fs_dst, root_doc_path, json.dumps(root).encode())
    manifest = write_manifest(
        fs_dst,
        base_dst,
        identity={k: attrs[k] for k in ("encoder", "preprocessing", "layout")},
        known=tokens_written,
        videos=_video_ranges(ds),
        windows_of=_windows_of(plans, ds),
    )
    return {
        "dest": dest,
        "windows": ds.sizes["window"],
        "videos": int((ds.video_status.values == "complete").sum()),
        "objects": len(manifest["objects"]),
        "bytes": sum(o["size"] for o in manifest["objects"]),
        "token_bytes": sum(size for size, _ in tokens_written.values()),
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
    per_chunk["embedding"] = EMBEDDING_CHUNK
    per_chunk.update({name: SMALL_CHUNK for name in WINDOW_COORDS_OUT})

    def of(path: str) -> tuple[int, int] | None:
        name, _, key = path.partition("/")
        if name not in per_chunk or not key.startswith("c/"):
            return None
        i = int(key.split("/")[1])
        return i * per_chunk[name], min(n, (i + 1) * per_chunk[name])

    return of


__all__ = ["MANIFEST", "PUBLISHED_ATTR", "publish"]
