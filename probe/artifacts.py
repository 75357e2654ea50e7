"""Saved heads: parameters as npz (no pickle) and everything else as JSON, in one directory.

Shared by the wings: a head's config is whatever dataclass its wing defines, saved as its
fields and built again by the `config_type` the wing passes to `load_head` (a plain dict
without one). head.json holds the head type and config, the classes, the label file (path,
sha256, column, alignment), the training config, the metrics, and the identity of the store the
head was trained on. A head is refused on a store whose encoder, preprocessing or token pooling
differ: its tokens would mean something else.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ethoprism import store
from ethoprism.errors import EthoprismError

FORMAT = "ethoprism.probe.head"
FORMAT_VERSION = 1


class HeadFileError(EthoprismError):
    """A head directory that is missing, damaged or of an unknown format."""


@dataclasses.dataclass
class SavedHead:
    name: str
    config: Any  # the wing's head config (a dataclass), or its fields as a dict
    classes: list[str]
    background: str | None  # excluded from mAP
    multi_label: bool
    params: Any  # nested dict of numpy arrays, one head (no stacking axis)
    store_identity: dict  # store.identity of the training store
    labels: dict  # path, sha256, column, align
    training: dict  # TrainConfig as a dict, seed, learning rate, shots, split
    metrics: dict


def flatten_params(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "/"))
        else:
            out[key] = np.asarray(v)
    return out


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def save_head(directory: str | os.PathLike, head: SavedHead) -> Path:
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": head.name,
        "head": head.config if isinstance(head.config, dict) else dataclasses.asdict(head.config),
        "classes": head.classes,
        "background": head.background,
        "multi_label": head.multi_label,
        "store_identity": head.store_identity,
        "labels": head.labels,
        "training": head.training,
        "metrics": head.metrics,
    }
    return write_head_files(directory, head.params, meta)


def write_head_files(directory: str | os.PathLike, params: dict, meta: dict) -> Path:
    """directory/params.npz (the flattened parameters) and directory/head.json (`meta`)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "params.npz", **flatten_params(params))
    (d / "head.json").write_text(json.dumps(meta, indent=1, default=_jsonable))
    return d


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON-able")


def load_head(
    directory: str | os.PathLike, config_type: Callable[..., Any] | None = None
) -> SavedHead:
    """The head saved in `directory`; its config built by `config_type` (the wing's config
    class) from the saved fields, or left as a dict."""
    d = Path(directory)
    meta, params = read_head_files(d, FORMAT, FORMAT_VERSION, "head", HeadFileError)
    try:
        config = meta["head"] if config_type is None else config_type(**meta["head"])
    except TypeError as e:
        raise HeadFileError(f"{d}/head.json: the head config does not fit: {e}") from None
    return SavedHead(
        meta["name"],
        config,
        meta["classes"],
        meta["background"],
        meta["multi_label"],
        params,
        meta["store_identity"],
        meta["labels"],
        meta["training"],
        meta["metrics"],
    )


def read_head_files(
    d: Path, format: str, version: int, what: str, error: type[EthoprismError]
) -> tuple[dict, dict]:
    """head.json and the parameters of a saved `what` (head, detector) of `format` up to
    `version`, any fault raised as `error` naming the file."""
    try:
        meta = json.loads((d / "head.json").read_text())
        with np.load(d / "params.npz", allow_pickle=False) as z:
            params = unflatten_params({k: z[k] for k in z.files})
    except FileNotFoundError as e:
        raise error(
            f"{d}: not a saved {what} ({os.path.basename(e.filename)} is missing)"
        ) from None
    except (ValueError, OSError) as e:
        raise error(f"{d}: cannot read the saved {what}: {e}") from None
    if meta.get("format") != format or meta.get("format_version", 0) > version:
        raise error(f"{d}/head.json: not an ethoprism {what} of format version <= {version}")
    return meta, params


def _relevant(identity: dict) -> dict:
    """What changes the meaning or shape of tokens: encoder, preprocessing and spatial pooling.

    The token dtype (rounding / int8) only adds quantisation noise, so a head moves between
    layouts of the same features.
    """
    return {
        "encoder": identity.get("encoder"),
        "preprocessing": identity.get("preprocessing"),
        "pool": (identity.get("layout") or {}).get("pool"),
    }


def check_store(head: SavedHead, ds, where: str = "") -> None:
    """Refuse a store whose tokens are not those the head was trained on."""
    message = f"head {head.name!r} was trained on another store{where}"
    check_trained_on(head.store_identity, ds, message)


def check_trained_on(identity: dict, ds, message: str) -> None:
    """Refuse `ds` unless its tokens mean what they meant in the store of `identity` (and have
    its geometry), with `message` naming what was trained there."""
    store.check_same_identity(_relevant(identity), _relevant(store.identity(ds)), message)
