"""Reading a published store (one plain dataset, see publish.py) as `store.open` does a working one.

The Dataset is the one `store.open` gave on the store that was published: same dims, values,
coordinates and attributes (plus `ethoprism_published`). Its `part` / `part_window` still say
where each window was in the source; the published position of a window is looked up from them.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import xarray as xr
import zarr

from ethoprism.store.layout import Layout
from ethoprism.store.parts import Part, StoreHandle, gather, lazy, read_rows
from ethoprism.store.safety import check_array_metadata
from ethoprism.store.schema import (
    ARRAY_DIMS,
    VIDEO_COLUMNS,
    WINDOW_COORDS,
    StoreError,
    aligned_arrays,
    jsonable,
    window_arrays,
)

PUBLISHED_ATTR = "ethoprism_published"  # the root attribute that makes a store a published one


@dataclass
class Published:
    arrays: dict[str, zarr.Array]
    layout: Layout
    keys: np.ndarray  # sorted (part << 40 | part_window) of every window
    positions: np.ndarray  # the published position of each key

    def locate(self, part: np.ndarray, part_window: np.ndarray) -> np.ndarray:
        q = (part.astype(np.int64) << 40) | part_window.astype(np.int64)
        return self.positions[np.searchsorted(self.keys, q)]


_OPENED: dict[str, Published] = {}


def open_published(zstore, source: str, attrs: dict) -> xr.Dataset:
    """The Dataset of the published store at `source` (zstore: its read-only zarr store)."""
    try:
        root = zarr.open_group(zstore, mode="r", zarr_format=3, use_consolidated=True)
        metadata = root.metadata.consolidated_metadata.metadata
    except (ValueError, KeyError, AttributeError, zarr.errors.GroupNotFoundError) as e:
        raise StoreError(f"{source}: published store without consolidated metadata ({e})") from None
    layout = Layout.from_dict(attrs["layout"])
    aligned = aligned_arrays(attrs["encoder"])  # a video-text model's text-aligned embeddings
    names = [*layout.arrays, "embedding", *aligned]
    coord_names = attrs.get("coordinates", "").split()
    for name in names + coord_names:
        if name not in metadata:
            raise StoreError(f"{source}: published store lacks array {name!r}")
        check_array_metadata(jsonable(metadata[name].to_dict()), f"{source} array {name!r}")
    arrays = {name: root[name] for name in names + coord_names}
    stored = {name: lazy(arrays[name]) for name in names}
    coords = {}
    for name in coord_names:
        values = arrays[name][:]
        if values.dtype.kind in "TU":  # zarr strings; store.open has Python str objects
            values = values.astype(object)
        coords[name] = (tuple(arrays[name].metadata.dimension_names), values)
    ds_attrs = {k: v for k, v in attrs.items() if k not in ("coordinates", "consolidated_metadata")}
    ds_attrs["source"] = source
    ds = xr.Dataset(
        {
            "tokens": (ARRAY_DIMS["tokens"], layout.decode(stored)),
            "embedding": (ARRAY_DIMS["embedding"], stored["embedding"]),
            **{name: (dims, stored[name]) for name, dims in aligned.items()},
        },
        coords=coords,
        attrs=ds_attrs,
    )
    for name in aligned:  # store.open gives them their stored attributes
        ds[name].attrs.update(arrays[name].attrs)
    _check_lengths(source, arrays, coords, names)
    keys = (coords["part"][1].astype(np.int64) << 40) | coords["part_window"][1].astype(np.int64)
    order = np.argsort(keys, kind="stable")
    _OPENED[source] = Published(arrays, layout, keys[order], order)
    return ds


def read_published_windows(ds: xr.Dataset, indices: np.ndarray, var: str) -> np.ndarray:
    """`read_windows` on a dataset of a published store: one slice read per stored chunk."""
    pub = _OPENED.get(ds.attrs["source"])
    if pub is None or var not in window_arrays(ds.attrs["encoder"]):
        return np.asarray(ds[var].isel(window=indices).values)
    names = pub.layout.arrays if var == "tokens" else (var,)
    if not len(indices):
        return np.zeros((0,) + ds[var].shape[1:], dtype=np.float32)
    pos = pub.locate(ds.part.values[indices], ds.part_window.values[indices])
    order = np.argsort(pos, kind="stable")
    rows = pos[order]
    chunk = rows // pub.arrays[names[0]].chunks[0]
    runs = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(chunk)) + 1)
    return gather(lambda run: read_rows(pub.arrays, names, rows[run]), runs, order, pub.layout, var)


def published_handle(zstore, source: str, attrs: dict) -> StoreHandle:
    """A published store as a StoreHandle of one part (for info and validate): its windows
    are the part's, its video table the part's commit record."""
    ds = open_published(zstore, source, attrs)
    pub = _OPENED[source]
    table = {col: pub.arrays[f"video_{col}"][:] for col in VIDEO_COLUMNS}
    videos = [
        {col: _plain(table[col][i]) for col in VIDEO_COLUMNS} for i in range(len(table["path"]))
    ]
    n = pub.arrays["embedding"].shape[0]
    names = [*pub.layout.arrays, "embedding", *aligned_arrays(attrs["encoder"]), *WINDOW_COORDS]
    state = {"name": "published", "n_windows": n, "videos": videos}
    if n:
        state["token_shape"] = list(pub.arrays["tokens"].shape[1:])
    part = Part("published", state, {name: pub.arrays[name] for name in names})
    handle = StoreHandle(source, attrs, pub.layout, [part])
    _DATASETS[id(handle)] = ds
    weakref.finalize(handle, _DATASETS.pop, id(handle), None)
    return handle


_DATASETS: dict[int, xr.Dataset] = {}


def dataset_of(handle: StoreHandle) -> xr.Dataset:
    """The Dataset opened with a handle from `published_handle` (what `store.open` returns)."""
    return _DATASETS.pop(id(handle))


def _plain(v):
    return v.item() if isinstance(v, np.generic) else str(v) if not isinstance(v, str) else v


def _check_lengths(source: str, arrays: dict, coords: dict, stored: list[str]) -> None:
    """Window and video arrays (`stored`: the data variables' arrays) agree in length and
    `video` indexes the table."""
    lengths = {name: arr.shape[0] for name, arr in arrays.items()}
    for dim in ("window", "videos"):
        sizes = {lengths[n] for n, (dims, _) in coords.items() if dims[0] == dim}
        if dim == "window":
            sizes |= {arrays[name].shape[0] for name in stored}
        if len(sizes) > 1:
            raise StoreError(f"{source}: arrays on {dim!r} differ in length ({sorted(sizes)})")
    video, n_videos = coords["video"][1], len(coords["video_path"][1])
    if len(video) and (video.min() < 0 or video.max() >= n_videos):
        raise StoreError(f"{source}: coordinate video indexes past the {n_videos}-row video table")
