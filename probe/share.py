"""Heads that travel between labs: published with a manifest, loaded from a URL.

A published head is its directory (head.json: classes, head config, the training store's
identity, the label file's path and sha256, hyperparameters, metrics; params.npz) plus the
store manifest format's `manifest.json` (sha256 of both, the identity). Loading one from a URL
reads the three objects into memory (sizes bounded), checks them against the manifest, and
loads them as a local head: parameters with `allow_pickle=False`, numeric dtypes only.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from ethoprism.probe.artifacts import HeadFileError, SavedHead, load_head
from ethoprism.store.manifest import MANIFEST, parse_manifest, put_object, write_manifest
from ethoprism.store.remote import is_url, storage_options_for
from ethoprism.store.schema import StoreError

HEAD_FILES = ("head.json", "params.npz")
MAX_BYTES = {"head.json": 16 << 20, "params.npz": 2 << 30, MANIFEST: 1 << 20}


def _fs(url: str, storage_options: dict | None):
    import fsspec

    try:
        return fsspec.url_to_fs(url, **storage_options_for(url, storage_options))
    except (ImportError, ValueError) as e:
        raise HeadFileError(f"cannot open {url}: {e}") from None


def _check_params(head: SavedHead, where: str) -> None:
    def walk(tree, prefix=""):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}/")
            elif not isinstance(v, np.ndarray) or v.dtype.kind not in "fiub":
                raise HeadFileError(f"{where}: parameter {prefix}{k} is not a numeric array")

    walk(head.params)


def load_any_head(source, storage_options: dict | None = None, config_type=None) -> SavedHead:
    """A head from a local directory, or from a URL where `probe publish` put it; its config
    built by `config_type` (see `load_head`)."""
    if not is_url(str(source)):
        return _validated(lambda: load_head(source, config_type), str(source))
    url = str(source).rstrip("/")
    fs, base = _fs(url, storage_options)
    blobs = {}
    for name in (MANIFEST, *HEAD_FILES):
        try:
            with fs.open(f"{base}/{name}", "rb") as f:
                blobs[name] = f.read(MAX_BYTES[name] + 1)
        except FileNotFoundError:
            raise HeadFileError(f"{url}/{name} not found: not a published head") from None
        except OSError as e:
            raise HeadFileError(f"cannot read {url}/{name}: {type(e).__name__}: {e}") from None
        if len(blobs[name]) > MAX_BYTES[name]:
            raise HeadFileError(f"{url}/{name} is larger than a head file may be")
    try:
        manifest = parse_manifest(blobs[MANIFEST], f"{url}/{MANIFEST}")
    except StoreError as e:
        raise HeadFileError(str(e)) from None
    listed = {o["path"]: o for o in manifest["objects"]}
    for name in HEAD_FILES:
        entry = listed.get(name)
        if entry is None or hashlib.sha256(blobs[name]).hexdigest() != entry["sha256"]:
            raise HeadFileError(f"{url}/{name} does not match its manifest (altered or replaced)")
    with tempfile.TemporaryDirectory(prefix="ethoprism-head-") as d:
        for name in HEAD_FILES:
            Path(d, name).write_bytes(blobs[name])
        head = _validated(lambda: load_head(d, config_type), url)
    if manifest["identity"] != head.store_identity:
        raise HeadFileError(f"{url}: head.json and the manifest name different store identities")
    return head


def _validated(load, where: str) -> SavedHead:
    try:
        head = load()
    except (TypeError, KeyError, AttributeError) as e:  # fields missing or unknown
        raise HeadFileError(f"{where}: head.json does not match the head schema ({e})") from None
    if not isinstance(head.store_identity, dict) or not isinstance(head.classes, list):
        raise HeadFileError(f"{where}: head.json store_identity or classes malformed")
    _check_params(head, where)
    return head


def publish_head(head_dir, dest: str, storage_options: dict | None = None) -> dict:
    """Copy a trained head to `dest` (directory or URL) with its manifest; its provenance."""
    head = _validated(lambda: load_head(head_dir), str(head_dir))
    fs, base = _fs(str(dest), storage_options)
    base = base.rstrip("/")
    for name in HEAD_FILES:
        put_object(fs, f"{base}/{name}", Path(head_dir, name).read_bytes())
    write_manifest(fs, base, head.store_identity, {}, [], lambda path: None)
    return {
        "dest": str(dest),
        "name": head.name,
        "classes": head.classes,
        "store_identity": head.store_identity,
        "labels": head.labels,
        "training": head.training,
        "metrics": head.metrics,
    }
