"""Reading a feature store as ONE lazy xarray.Dataset over all its parts, locally or remotely.

Only what the parts' commit records declare is read: windows [0, n_windows) of each part and
its video table. Parts are merged by the rules in SPEC.md (a video committed twice appears
once; a failure superseded by a later success is hidden).
"""

from __future__ import annotations

import collections
import os
import threading

import dask.array as da
import numpy as np
import xarray as xr

from ethoprism.store.damage import damaged
from ethoprism.store.describe import array_attrs
from ethoprism.store.geometry import nominal_frame_time
from ethoprism.store.handle import open_handle, union_handle
from ethoprism.store.parts import Part, StoreHandle, gather, lazy, read_rows
from ethoprism.store.published import PUBLISHED_ATTR, dataset_of, read_published_windows
from ethoprism.store.schema import (
    ARRAY_DIMS,
    FRAME_TIME,
    VIDEO_COLUMNS,
    WINDOW_COORDS,
    StoreError,
    aligned_arrays,
    content_key,
    window_arrays,
)

# the root attributes a Dataset carries (with its source, parts and irregular windows)
DATASET_ATTRS = (
    "schema",
    "schema_version",
    "encoder",
    "preprocessing",
    "layout",
    "software_version",
    "created",
)
COORD_CHUNK_READ = 65536  # windows per dask chunk of frame_time computed for older parts


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


TOKENS_DECODED = "the frozen encoder's output tokens per window (t, h, w, c), decoded to float32"


def open(path_or_url, storage_options: dict | None = None) -> xr.Dataset:
    """Open a store (local path, http(s):// or s3:// URL) as one lazy, dask-backed Dataset.

    A list of stores of the same identity opens as their union (SPEC.md, "Merging stores").

    Dims `window, t, h, w, c` (h, w as stored: halved by pool 2) and `videos`; tokens are float32
    whatever the layout. Only committed videos' windows appear. Never writes anything.
    """
    if isinstance(path_or_url, (list, tuple)):  # a union view: copies nothing
        return dataset(union_handle(path_or_url, storage_options))
    handle = open_handle(path_or_url, storage_options)
    if PUBLISHED_ATTR in handle.attrs:
        return dataset_of(handle)
    return dataset(handle, storage_options)


def dataset(handle: StoreHandle, storage_options: dict | None = None) -> xr.Dataset:
    """The Dataset of an opened handle (its parts merged as SPEC.md says)."""
    rows, runs = merge_tables(handle.parts)
    frames = _frames_per_window(handle)
    columns, stored = _window_runs(handle, rows, runs, frames)
    data_vars = _data_vars(handle, stored)
    ds = xr.Dataset(
        data_vars,
        coords={**_window_coords(columns, rows, frames), **_video_table(rows)},
        attrs=_dataset_attrs(handle),
    )
    for name in (*data_vars, *WINDOW_COORDS[1:]):
        ds[name].attrs.update(
            {k: v for k, v in array_attrs(name).items() if k != "description"},
            description=TOKENS_DECODED if name == "tokens" else array_attrs(name)["description"],
        )
    if storage_options:
        ds.encoding["storage_options"] = dict(storage_options)
    _remember(handle)
    return ds


def _dataset_attrs(handle: StoreHandle) -> dict:
    attrs = {k: handle.attrs[k] for k in DATASET_ATTRS}
    attrs.update(source=handle.source, parts=[p.name for p in handle.parts])
    if handle.attrs.get("windows"):  # windows not at the regular stride (extract --frames-from)
        attrs["windows"] = handle.attrs["windows"]
    return attrs


def _window_runs(handle: StoreHandle, rows: list[dict], runs: list[tuple], frames: int):
    """The merged window axis, run by run: ({coordinate: pieces}, {stored array: lazy pieces}).

    Coordinates are read now (small); `video` is renumbered to the merged video table.
    """
    # part-local video row -> row of the merged table (-1: dropped by the merge)
    row_of = [np.full(len(part.state["videos"]), -1, dtype=np.int64) for part in handle.parts]
    for i, row in enumerate(rows):
        row_of[row["part"]][row["row"]] = i
    columns = {name: [] for name in (*WINDOW_COORDS, FRAME_TIME, "part", "part_window")}
    stored = {}
    names = handle.layout.arrays + ("embedding",) + tuple(aligned_arrays(handle.attrs["encoder"]))
    fps = np.array([row["fps"] for row in rows], np.float64)
    for p, start, stop in runs:
        arrays = handle.parts[p].arrays
        c = {name: arrays[name][start:stop] for name in WINDOW_COORDS}
        c["video"] = row_of[p][c["video"]]
        if FRAME_TIME in arrays:
            c[FRAME_TIME] = lazy(arrays[FRAME_TIME])[start:stop]
        else:  # a part written before frame_time
            nominal = nominal_frame_time(
                c["start_time"], c["frame_step"], c["n_valid_frames"], fps[c["video"]], frames
            )
            c[FRAME_TIME] = da.from_array(nominal, chunks=(COORD_CHUNK_READ, frames))
        c["part"] = np.full(stop - start, p, dtype=np.int32)
        c["part_window"] = np.arange(start, stop, dtype=np.int64)
        for name, values in c.items():
            columns[name].append(values)
        for name in names:
            stored.setdefault(name, []).append(lazy(arrays[name])[start:stop])
    return columns, stored


def _data_vars(handle: StoreHandle, stored: dict[str, list]) -> dict:
    """tokens (decoded to float32), embedding and the aligned arrays, lazily."""
    aligned = aligned_arrays(handle.attrs["encoder"])
    if stored:
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
    return {
        "tokens": (ARRAY_DIMS["tokens"], tokens),
        "embedding": (ARRAY_DIMS["embedding"], embedding),
        **aligned_vars,
    }


def _window_coords(columns: dict[str, list], rows: list[dict], frames: int) -> dict:
    def cat(chunks, dtype):
        return np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)

    coords = {
        name: ("window", cat(columns[name], "float64" if name == "start_time" else "int64"))
        for name in WINDOW_COORDS
    }
    video = coords["video"][1]
    names = np.array([os.path.basename(row["path"]) for row in rows] or [""], dtype=object)
    coords["video_name"] = ("window", names[video] if len(video) else np.zeros(0, dtype=object))
    frame_time = columns[FRAME_TIME]
    coords[FRAME_TIME] = (
        ARRAY_DIMS[FRAME_TIME],
        da.concatenate(frame_time) if frame_time else da.zeros((0, frames), np.float64),
    )
    coords["part"] = ("window", cat(columns["part"], np.int32))
    coords["part_window"] = ("window", cat(columns["part_window"], np.int64))
    return coords


def _video_table(rows: list[dict]) -> dict:
    return {
        f"video_{col}": (
            "videos",
            # abs_path: absent from rows written before it was recorded
            np.array([row.get(col, "") for row in rows], dtype=_column_dtype(col)),
        )
        for col in VIDEO_COLUMNS
    }


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
        return read_published_windows(ds, indices, var)
    handle = _handle_of(ds) if var in window_arrays(ds.attrs.get("encoder") or {}) else None
    if handle is None or "part_window" not in ds.coords:
        return np.asarray(ds[var].isel(window=indices).values)
    parts = [handle.parts[[p.name for p in handle.parts].index(name)] for name in ds.attrs["parts"]]
    names = handle.layout.arrays if var == "tokens" else (var,)
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
        try:
            return read_rows(parts[part_of[run[0]]].arrays, names, rows[run])
        except Exception as e:  # noqa: BLE001  checksum, codec or shard index: all mean damage
            raise damaged(ds, indices[order][run], var, e) from None

    return gather(one, runs, order, handle.layout, var)
