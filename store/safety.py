"""Checks on metadata read from elsewhere (a store, a manifest), before anything is decoded.

A zarr array's codecs decide what code runs on its bytes: a `numcodecs.pickle` codec or an
object dtype would unpickle whatever the other side wrote. So every array's metadata is held
against the short list of codecs and dtypes that ethoprism writes, and its shape is bounded,
before zarr reads one chunk of it.
"""

from __future__ import annotations

import posixpath
import re

from ethoprism.store.schema import StoreError

SAFE_CODECS = {"bytes", "blosc", "zstd", "crc32c", "sharding_indexed", "vlen-utf8", "transpose"}
SAFE_DTYPES = {
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "string",
}
MAX_NDIM = 8
MAX_EXTENT = 1 << 40  # windows of an archive, elements of a dimension
MAX_PATH_CHARS = 1024


def _codec_names(codecs: list) -> list[str]:
    names = []
    for codec in codecs or []:
        if isinstance(codec, str):
            names.append(codec)
            continue
        if not isinstance(codec, dict):
            names.append(repr(codec))
            continue
        names.append(str(codec.get("name")))
        conf = codec.get("configuration") or {}
        names += _codec_names(conf.get("codecs", [])) + _codec_names(conf.get("index_codecs", []))
    return names


def check_array_metadata(doc: dict, where: str) -> None:
    """Refuse an array whose zarr v3 metadata names an unsafe codec or dtype, or is unbounded."""
    if not isinstance(doc, dict):
        raise StoreError(f"{where}: array metadata is not a JSON object")
    dtype = doc.get("data_type")
    if not isinstance(dtype, str) or dtype not in SAFE_DTYPES:
        raise StoreError(
            f"{where}: data type {dtype!r} is not one ethoprism reads "
            f"({', '.join(sorted(SAFE_DTYPES))}); refusing to decode it"
        )
    unsafe = [n for n in _codec_names(doc.get("codecs", [])) if n not in SAFE_CODECS]
    if unsafe:
        raise StoreError(
            f"{where}: codec {unsafe[0]!r} is not one ethoprism reads "
            f"({', '.join(sorted(SAFE_CODECS))}); refusing to decode it (it could run code)"
        )
    shape = doc.get("shape")
    chunks = ((doc.get("chunk_grid") or {}).get("configuration") or {}).get("chunk_shape")
    for name, dims in (("shape", shape), ("chunk shape", chunks)):
        if (
            not isinstance(dims, list)
            or len(dims) > MAX_NDIM
            or not all(isinstance(d, int) and 0 <= d <= MAX_EXTENT for d in dims)
        ):
            raise StoreError(f"{where}: {name} {dims!r} is not a short list of sizes")
    if len(chunks) != len(shape) or 0 in chunks:
        raise StoreError(f"{where}: chunk shape {chunks} does not fit shape {shape}")


def check_relative_path(path, where: str) -> str:
    """A path inside a store: relative, '/'-separated, no '..', no absolute path or drive."""
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS:
        raise StoreError(f"{where}: object path {path!r} is not a short string")
    parts = path.split("/")
    if (
        path.startswith("/")
        or "\\" in path
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
        or posixpath.normpath(path) != path
    ):
        raise StoreError(
            f"{where}: object path {path!r} escapes the store (absolute, '..' or not normal)"
        )
    return path


def check_root_document(zstore, where: str) -> None:
    """Check a group's raw zarr.json (its consolidated arrays' metadata) before zarr parses it."""
    import json

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    try:
        raw = sync(zstore.get("zarr.json", default_buffer_prototype()))
    except Exception:  # noqa: BLE001 - unreadable: opening the group reports it clearly
        return
    if raw is None:
        return
    try:
        doc = json.loads(raw.to_bytes())
    except ValueError:
        return  # not JSON: zarr's own error names it
    consolidated = (doc.get("consolidated_metadata") or {}).get("metadata") or {}
    if not isinstance(consolidated, dict):
        raise StoreError(f"{where}: consolidated metadata is not a JSON object")
    for name, meta in consolidated.items():
        if isinstance(meta, dict) and meta.get("node_type") == "array":
            check_array_metadata(meta, f"{where} array {name!r}")


PART_NAME_CHARS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_PARTS = 100_000
MAX_VIDEOS = 10_000_000


def check_part_names(parts, where: str) -> list[str]:
    """The root's `parts`: a list of plain names (each becomes a path inside the store)."""
    if not isinstance(parts, list) or len(parts) > MAX_PARTS:
        raise StoreError(f"{where}: root attribute parts is not a list of part names")
    for name in parts:
        if not isinstance(name, str) or not PART_NAME_CHARS.match(name) or ".." in name:
            raise StoreError(f"{where}: part name {name!r} is not a plain name")
    return parts


def check_part_record(state, where: str) -> None:
    """A part's commit record: counts bounded, video rows with the fields readers use."""
    if not isinstance(state, dict):
        raise StoreError(f"{where}: commit record is not a JSON object")
    n = state.get("n_windows")
    videos = state.get("videos")
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_EXTENT:
        raise StoreError(f"{where}: commit record n_windows {n!r} is not a count")
    if not isinstance(videos, list) or len(videos) > MAX_VIDEOS:
        raise StoreError(f"{where}: commit record videos is not a list")
    for i, row in enumerate(videos):
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), int) and not isinstance(row.get(k), bool)
            for k in ("first_window", "n_windows")
        ):
            raise StoreError(f"{where}: video row {i} lacks integer first_window / n_windows")
        if not all(isinstance(row.get(k), str) for k in ("path", "sha256", "status")):
            raise StoreError(f"{where}: video row {i} lacks path / sha256 / status strings")
        if row["status"] == "complete" and not (
            row["first_window"] >= 0 and row["first_window"] + row["n_windows"] <= n
        ):
            raise StoreError(f"{where}: video row {i} ({row['path']}) has windows past n_windows")
