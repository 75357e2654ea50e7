"""Opening a store's metadata (root attributes, layout, committed parts; no window data), one
store or several of one identity as one handle.

Several stores combine in the order given and their parts in each store's `parts` order, each
part renamed `sNN-<name>` (NN: the store's position), so parts of different stores never collide
and sort in store order (SPEC.md, "Merging stores").
"""

from __future__ import annotations

import os

import zarr

from ethoprism.store.parts import Part, StoreHandle, read_pool
from ethoprism.store.published import PUBLISHED_ATTR, published_handle
from ethoprism.store.remote import is_url, zarr_store_for
from ethoprism.store.safety import (
    check_array_metadata,
    check_part_names,
    check_part_record,
    check_root_document,
)
from ethoprism.store.schema import (
    FRAME_TIME,
    PART_ATTR,
    PARTS,
    Layout,
    StoreError,
    aligned_arrays,
    check_same_identity,
    check_schema,
    identity_of_attrs,
    jsonable,
    part_arrays,
)


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


MAX_STORES = 100


def part_name(i: int, name: str) -> str:
    return f"s{i:02d}-{name}"


def union_handle(sources, storage_options: dict | None = None) -> StoreHandle:
    """The stores' parts as one handle; refused unless all share one identity."""
    sources = [str(s) for s in sources]
    if not sources or len(sources) > MAX_STORES:
        raise StoreError(f"give 1 to {MAX_STORES} stores to combine, not {len(sources)}")
    handles = [open_handle(s, storage_options) for s in sources]
    first = handles[0]
    for h in handles[1:]:
        check_same_identity(
            identity_of_attrs(first.attrs),
            identity_of_attrs(h.attrs),
            f"stores {first.source} (left) and {h.source} (right) cannot be combined",
        )
    parts = [
        Part(part_name(i, p.name), p.state, p.arrays)
        for i, h in enumerate(handles)
        for p in h.parts
    ]
    attrs = {k: v for k, v in first.attrs.items() if k != PUBLISHED_ATTR}
    attrs["parts"] = [p.name for p in parts]
    return StoreHandle(" + ".join(sources), attrs, first.layout, parts)
