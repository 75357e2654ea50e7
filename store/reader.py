"""Reading a feature store as ONE lazy xarray.Dataset over all its parts, locally or remotely.

Only what the parts' commit records declare is read: windows [0, n_windows) of each part and
its video table. Parts are merged by the rules in SPEC.md (a video committed twice appears
once; a failure superseded by a later success is hidden).
"""

from __future__ import annotations

import collections
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ethoprism.store.damage import damaged
from ethoprism.store.describe import array_attrs
from ethoprism.store.geometry import nominal_frame_time
from ethoprism.store.published import PUBLISHED_ATTR
from ethoprism.store.remote import is_url, zarr_store_for
from ethoprism.store.safety import (
    check_array_metadata,
    check_part_names,
    check_part_record,
    check_root_document,
)
from ethoprism.store.schema import (
    ARRAY_DIMS,
    FRAME_TIME,
    PART_ATTR,
    PARTS,
    VIDEO_COLUMNS,
    WINDOW_COORDS,
    Layout,
    StoreError,
    aligned_arrays,
    check_schema,
    content_key,
    jsonable,
    part_arrays,
)

READ_THREADS = 16
COORD_CHUNK_READ = 65536  # windows per dask chunk of frame_time computed for older parts


@dataclass
class Part:
    """One part as committed: its record and its arrays (opened read-only)."""

    name: str
    state: dict
    arrays: dict[str, zarr.Array]

    @property
    def n_windows(self) -> int:
        return int(self.state["n_windows"])


@dataclass
class StoreHandle:
    """An opened store: root attributes, layout and committed parts."""

    source: str
    attrs: dict
    layout: Layout
    parts: list[Part]


# store.open registers each opened store here, so read_windows can reach its zarr arrays
# from a dataset (and any selection of it) without putting objects into the dataset's attrs.
# The most recently used few are kept; a dataset whose store was dropped (or that was
# unpickled in another process) reopens it with the storage options it was opened with, which
# travel in its `encoding` (pickled with it, never written into attrs or files).
OPENED_STORES = 8
_OPENED: collections.OrderedDict[str, StoreHandle] = collections.OrderedDict()
_OPENED_LOCK = threading.Lock()


def _remember(handle: StoreHandle) -> None:
    with _OPENED_LOCK:
        _OPENED[handle.source] = handle
        _OPENED.move_to_end(handle.source)
        while len(_OPENED) > OPENED_STORES:
            _OPENED.popitem(last=False)


def _handle_of(ds: xr.Dataset) -> StoreHandle | None:
    """The opened store behind a dataset from `open`, reopened if no longer held here."""
    source = ds.attrs.get("source")
    if not source:
        return None
    with _OPENED_LOCK:
        handle = _OPENED.get(source)
        if handle is not None:
            _OPENED.move_to_end(source)
            return handle
    handle = open_handle(source, ds.encoding.get("storage_options"))
    _remember(handle)
    return handle


def _zarr_store(path_or_url: str, storage_options: dict | None):
    if is_url(path_or_url):
        return zarr_store_for(path_or_url, storage_options, read_only=True)
    path = path_or_url.removeprefix("file://")
    if not os.path.isdir(path):
        raise StoreError(f"{path} does not exist or is not a directory: not a feature store")
    if not os.path.exists(os.path.join(path, "zarr.json")):
        raise StoreError(f"{path} is not a feature store (no zarr.json: not a zarr v3 group)")
    return zarr.storage.LocalStore(path, read_only=True)


def _open_group(store, path: str, where: str) -> zarr.Group:
    try:
        return zarr.open_group(store, path=path, mode="r", zarr_format=3)
    except (
        FileNotFoundError,
        KeyError,
        ValueError,
        zarr.errors.GroupNotFoundError,
        zarr.errors.NodeTypeValidationError,
    ) as e:  # ValueError: unparsable zarr.json
        raise StoreError(
            f"{where}: not a feature store or part ({type(e).__name__}: {e})"
        ) from None


def open_handle(path_or_url, storage_options: dict | None = None) -> StoreHandle:
    """Open a store's metadata and arrays (no window data is read)."""
    source = str(path_or_url)
    store = _zarr_store(source, storage_options)
    check_root_document(store, source)  # a published store's arrays, before zarr parses them
    root = _open_group(store, "", source)
    attrs = dict(root.attrs)
    check_schema(attrs, source)
    if PUBLISHED_ATTR in attrs:
        from ethoprism.store.published import published_handle

        return published_handle(store, source, attrs)
    layout = Layout.from_dict(attrs["layout"])
    names = part_arrays(layout) + tuple(aligned_arrays(attrs["encoder"]))
    parts = []
    for name in check_part_names(attrs.get("parts", []), source):
        group = _open_group(store, f"{PARTS}/{name}", f"{source} part {name!r}")
        state = group.attrs.get(PART_ATTR)
        if state is None:
            raise StoreError(f"{source} part {name!r} has no commit record ({PART_ATTR} attribute)")
        check_part_record(state, f"{source} part {name!r}")
        arrays = {}
        if state["n_windows"] > 0:
            try:
                # concurrently: each open is a round trip, which adds up over http and s3
                opened = read_pool().map(
                    lambda a, name=name: zarr.open_array(
                        store, path=f"{PARTS}/{name}/{a}", mode="r", zarr_format=3
                    ),
                    names,
                )
                frame_time = read_pool().submit(
                    _open_optional, store, f"{PARTS}/{name}/{FRAME_TIME}"
                )
                arrays = dict(zip(names, opened, strict=True))
            except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError) as e:
                raise StoreError(f"{source} part {name!r}: an array is missing ({e})") from None
            except (ValueError, TypeError) as e:  # metadata zarr cannot parse
                raise StoreError(f"{source} part {name!r}: unreadable array ({e})") from None
            if frame_time.result() is not None:
                arrays[FRAME_TIME] = frame_time.result()
            for a, arr in arrays.items():  # before any chunk is decoded
                check_array_metadata(jsonable(arr.metadata.to_dict()), f"{source} {name}/{a}")
        parts.append(Part(name, state, arrays))
    return StoreHandle(source, attrs, layout, parts)


def _open_optional(store, path: str) -> zarr.Array | None:
    """An array that parts written by earlier versions lack (frame_time)."""
    try:
        return zarr.open_array(store, path=path, mode="r", zarr_format=3)
    except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError):
        return None


def merge_tables(parts: list[Part]) -> tuple[list[dict], list[tuple[int, int, int]]]:
    """Merge the parts' video tables (SPEC.md, "Merging parts").

    Returns the rows (each with its `part` index and part-local `row`) and the window runs
    (part index, start, stop) that make up the dataset's `window` axis, in order.
    """
    complete = {}
    last_failed = {}
    for p, part in enumerate(parts):
        for r, row in enumerate(part.state["videos"]):
            key = content_key(row)
            if row["status"] == "complete":
                complete.setdefault(key, (p, r))
            else:
                last_failed[key] = (p, r)
    kept = set(complete.values()) | {pr for k, pr in last_failed.items() if k not in complete}
    rows, runs, window = [], [], 0
    for p, part in enumerate(parts):
        for r, row in enumerate(part.state["videos"]):
            if (p, r) not in kept:
                continue
            row = {**row, "part": p, "row": r}
            if row["status"] == "complete":
                start, n = row["first_window"], row["n_windows"]
                if runs and runs[-1][0] == p and runs[-1][2] == start:
                    runs[-1] = (p, runs[-1][1], start + n)
                else:
                    runs.append((p, start, start + n))
                row["first_window"] = window
                window += n
            else:
                row["first_window"] = -1
            rows.append(row)
    return rows, runs


DASK_CHUNK_BYTES = 64 << 20
TOKENS_DECODED = "the frozen encoder's output tokens per window (t, h, w, c), decoded to float32"


def _lazy(arr: zarr.Array) -> da.Array:
    """Dask chunks of whole shards, several if shards are small (fewer tasks, same reads)."""
    per_file = arr.shards[0] if arr.shards else arr.chunks[0]
    file_bytes = per_file * arr.dtype.itemsize * int(np.prod(arr.shape[1:]))
    per_chunk = per_file * max(1, DASK_CHUNK_BYTES // max(file_bytes, 1))
    return da.from_zarr(arr, chunks=(per_chunk,) + arr.shape[1:])


def open(path_or_url, storage_options: dict | None = None) -> xr.Dataset:
    """Open a store (local path, http(s):// or s3:// URL) as one lazy, dask-backed Dataset.

    A list of stores of the same identity opens as their union (SPEC.md, "Merging stores").

    Dims `window, t, h, w, c` (h, w as stored: halved by pool 2) and `videos`; tokens are float32
    whatever the layout. Only committed videos' windows appear. Never writes anything.
    """
    if isinstance(path_or_url, (list, tuple)):
        from ethoprism.store.merge import open_union

        return open_union(path_or_url, storage_options)
    handle = open_handle(path_or_url, storage_options)
    if PUBLISHED_ATTR in handle.attrs:
        from ethoprism.store.published import dataset_of

        return dataset_of(handle)
    return dataset(handle, storage_options)


def dataset(handle: StoreHandle, storage_options: dict | None = None) -> xr.Dataset:
    """The Dataset of an opened handle (its parts merged as SPEC.md says)."""
    rows, runs = merge_tables(handle.parts)
    attrs = {
        k: handle.attrs[k]
        for k in (
            "schema",
            "schema_version",
            "encoder",
            "preprocessing",
            "layout",
            "software_version",
            "created",
        )
    }
    attrs.update(source=handle.source, parts=[p.name for p in handle.parts])
    if handle.attrs.get("windows"):  # windows not at the regular stride (extract --frames-from)
        attrs["windows"] = handle.attrs["windows"]

    # part-local video row -> row of the merged table (-1: dropped by the merge)
    row_of = [np.full(len(part.state["videos"]), -1, dtype=np.int64) for part in handle.parts]
    for i, row in enumerate(rows):
        row_of[row["part"]][row["row"]] = i
    coords, stored = {name: [] for name in WINDOW_COORDS}, {}
    aligned = aligned_arrays(handle.attrs["encoder"])
    part_idx, part_window, frame_time = [], [], []
    frames = _frames_per_window(handle)
    fps = np.array([row["fps"] for row in rows], np.float64)
    for p, start, stop in runs:
        arrays = handle.parts[p].arrays
        for name in WINDOW_COORDS:
            coords[name].append(arrays[name][start:stop])
        coords["video"][-1] = row_of[p][coords["video"][-1]]
        if FRAME_TIME in arrays:
            frame_time.append(_lazy(arrays[FRAME_TIME])[start:stop])
        else:  # a part written before frame_time
            c = {name: v[-1] for name, v in coords.items()}
            nominal = nominal_frame_time(
                c["start_time"], c["frame_step"], c["n_valid_frames"], fps[c["video"]], frames
            )
            frame_time.append(da.from_array(nominal, chunks=(COORD_CHUNK_READ, frames)))
        for name in handle.layout.arrays + ("embedding",) + tuple(aligned):
            stored.setdefault(name, []).append(_lazy(arrays[name])[start:stop])
        part_idx.append(np.full(stop - start, p, dtype=np.int32))
        part_window.append(np.arange(start, stop, dtype=np.int64))

    if runs:
        stored = {k: da.concatenate(v) for k, v in stored.items()}
        tokens = handle.layout.decode(stored)
        embedding = stored["embedding"]
        aligned_vars = {name: (dims, stored[name]) for name, dims in aligned.items()}
    else:
        t, h, w, c = _empty_token_shape(handle)
        tokens = da.zeros((0, t, h, w, c), dtype=np.float32)
        embedding = da.zeros((0, c), dtype=np.float32)
        aligned_vars = {
            name: (dims, da.zeros((0, *({"t": t, "c": c}[d] for d in dims[1:])), np.float32))
            for name, dims in aligned.items()
        }

    def cat(chunks, dtype):
        return np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)

    video = cat(coords["video"], np.int64)
    names = np.array([os.path.basename(row["path"]) for row in rows] or [""], dtype=object)
    window_coords = {
        name: ("window", cat(coords[name], "float64" if name == "start_time" else "int64"))
        for name in WINDOW_COORDS
    }
    window_coords["video_name"] = (
        "window",
        names[video] if len(video) else np.zeros(0, dtype=object),
    )
    window_coords[FRAME_TIME] = (
        ARRAY_DIMS[FRAME_TIME],
        da.concatenate(frame_time) if frame_time else da.zeros((0, frames), np.float64),
    )
    window_coords["part"] = ("window", cat(part_idx, np.int32))
    window_coords["part_window"] = ("window", cat(part_window, np.int64))
    table = {
        f"video_{col}": (
            "videos",
            # abs_path: absent from rows written before it was recorded
            np.array([row.get(col, "") for row in rows], dtype=_column_dtype(col)),
        )
        for col in VIDEO_COLUMNS
    }
    ds = xr.Dataset(
        {
            "tokens": (ARRAY_DIMS["tokens"], tokens),
            "embedding": (ARRAY_DIMS["embedding"], embedding),
            **aligned_vars,
        },
        coords={**window_coords, **table},
        attrs=attrs,
    )
    for name in ("tokens", "embedding", *WINDOW_COORDS[1:], *aligned_vars):
        ds[name].attrs.update(
            {k: v for k, v in array_attrs(name).items() if k != "description"},
            description=TOKENS_DECODED if name == "tokens" else array_attrs(name)["description"],
        )
    if storage_options:
        ds.encoding["storage_options"] = dict(storage_options)
    _remember(handle)
    return ds


def _column_dtype(col: str):
    if col in ("path", "abs_path", "sha256", "codec", "status", "reason"):
        return object
    return np.float64 if col in ("fps", "duration") else np.int64


def _frames_per_window(handle: StoreHandle) -> int:
    """frame_time's width: as stored, else the preprocessing's window length."""
    for part in handle.parts:
        if FRAME_TIME in part.arrays:
            return int(part.arrays[FRAME_TIME].shape[1])
    return int((handle.attrs.get("preprocessing") or {}).get("window_length", 1))


def _empty_token_shape(handle: StoreHandle) -> tuple[int, int, int, int]:
    for part in handle.parts:
        if part.state.get("token_shape"):
            return tuple(part.state["token_shape"])
    return (0, 0, 0, 0)


def select(
    ds: xr.Dataset,
    video: str | int | None = None,
    start: float | None = None,
    end: float | None = None,
    unit: str = "seconds",
) -> xr.Dataset:
    """Windows of one video (file name, path or table row) starting in [start, end).

    `unit` is "seconds" (start_time) or "frames" (start_frame). Lazy: no tokens are read.
    """
    keep = np.ones(ds.sizes["window"], dtype=bool)
    if video is not None:
        if isinstance(video, (int, np.integer)):
            keep &= ds.video.values == video
        else:
            paths = ds.video_path.values[ds.video.values] if ds.sizes["videos"] else np.array([])
            keep &= (ds.video_name.values == str(video)) | (paths == str(video))
        if not keep.any():
            raise StoreError(f"no committed video {video!r} in this dataset")
    if unit not in ("seconds", "frames"):
        raise StoreError(f"unit must be 'seconds' or 'frames', not {unit!r}")
    at = ds.start_time.values if unit == "seconds" else ds.start_frame.values
    if start is not None:
        keep &= at >= start
    if end is not None:
        keep &= at < end
    return ds.isel(window=np.flatnonzero(keep))


_pool: ThreadPoolExecutor | None = None


def read_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="ethoprism-read")
    return _pool


def _forget_pool_after_fork() -> None:
    global _pool
    _pool = None  # its threads do not exist in a forked child: submitting there would hang


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def read_windows(ds: xr.Dataset, indices, var: str = "tokens") -> np.ndarray:
    """ds[var] at the given window positions as numpy, fast for random minibatches.

    Each stored chunk holding requested windows is read once, by a slice over just those
    windows, in a thread pool: one small read per window for tokens (one window per chunk),
    one read per chunk of many windows for embeddings. zarr 3.1.6's `oindex` over random
    windows is 10-50x slower. Datasets not from `store.open` (e.g. built in memory) fall back
    to ordinary indexing.
    """
    indices = np.arange(ds.sizes["window"])[np.asarray(indices, dtype=np.int64)]
    if PUBLISHED_ATTR in ds.attrs:
        from ethoprism.store.published import read_published_windows

        return read_published_windows(ds, indices, var)
    handle = _handle_of(ds) if var in ("tokens", "embedding") else None
    if handle is None or "part_window" not in ds.coords:
        return np.asarray(ds[var].isel(window=indices).values)
    parts = [handle.parts[[p.name for p in handle.parts].index(name)] for name in ds.attrs["parts"]]
    names = handle.layout.arrays if var == "tokens" else ("embedding",)
    if not len(indices):
        return np.zeros((0,) + ds[var].shape[1:], dtype=np.float32)
    part_of = ds.part.values[indices]
    rows = ds.part_window.values[indices]
    order = np.lexsort((rows, part_of))
    part_of, rows = part_of[order], rows[order]
    per_chunk = np.array([p.arrays[names[0]].chunks[0] if p.arrays else 1 for p in parts])
    chunk = rows // per_chunk[part_of]
    runs = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(part_of) | np.diff(chunk)) + 1)

    def one(run):
        arrays, got = parts[part_of[run[0]]].arrays, rows[run]
        lo, hi = int(got[0]), int(got[-1]) + 1
        try:
            return {name: arrays[name][lo:hi][got - lo] for name in names}
        except Exception as e:  # noqa: BLE001  checksum, codec or shard index: all mean damage
            raise damaged(ds, indices[order][run], var, e) from None

    got = list(read_pool().map(one, runs))
    stacked = {}
    for name in names:  # each piece copied once, straight to its place (a batch is ~200 MB)
        first = got[0][name]
        stacked[name] = np.empty((len(rows), *first.shape[1:]), first.dtype)
        for run, g in zip(runs, got, strict=True):
            stacked[name][order[run]] = g[name]
    if var == "embedding":
        return stacked["embedding"]
    return handle.layout.decode(stacked)
