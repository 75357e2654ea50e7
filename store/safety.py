"""Checks on metadata read from elsewhere (a store, a manifest), before anything is decoded.

A zarr array's codecs decide what code runs on its bytes: a `numcodecs.pickle` codec or an
object dtype would unpickle whatever the other side wrote. So every array's metadata is held
against the short list of codecs and dtypes that ethoprism writes, and its shape is bounded,
before zarr reads one chunk of it.
"""

from __future__ import annotations

import posixpath

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
