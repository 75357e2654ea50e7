"""Saved detectors: parameters as npz (no pickle) and everything else as JSON, in one directory.

head.json holds the detector config, the classes, the identity of the training store, the
token-map shape and the training record. A detector is refused on a store whose encoder,
preprocessing or token pooling differ from its training store's: its tokens would mean
something else, and its boxes would map to other pixels.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.probe.artifacts import flatten_params, unflatten_params
from ethoprism.probe.localize.model import DetectorConfig

FORMAT = "ethoprism.localize.detector"
FORMAT_VERSION = 1


class DetectorFileError(EthoprismError):
    """A detector directory that is missing, damaged or of an unknown format."""


@dataclasses.dataclass
class SavedDetector:
    config: DetectorConfig
    classes: list[str]
    params: Any  # nested dict of numpy arrays
    store_identity: dict
    map_shape: tuple[int, int, int]  # (h, w, D) the detector was trained on
    training: dict  # config, annotation file, loss


def save(directory: str | os.PathLike, det: SavedDetector) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "params.npz", **flatten_params(det.params))
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(det.config),
        "classes": det.classes,
        "store_identity": det.store_identity,
        "map_shape": list(det.map_shape),
        "training": det.training,
    }
    (d / "head.json").write_text(json.dumps(meta, indent=1))
    return d


def load(directory: str | os.PathLike) -> SavedDetector:
    d = Path(directory)
    try:
        meta = json.loads((d / "head.json").read_text())
        with np.load(d / "params.npz", allow_pickle=False) as z:
            params = unflatten_params({k: z[k] for k in z.files})
    except FileNotFoundError as e:
        raise DetectorFileError(
            f"{d}: not a saved detector ({os.path.basename(e.filename)} is missing)"
        ) from None
    except (ValueError, OSError) as e:
        raise DetectorFileError(f"{d}: cannot read the saved detector: {e}") from None
    if meta.get("format") != FORMAT or meta.get("format_version", 0) > FORMAT_VERSION:
        raise DetectorFileError(
            f"{d}/head.json: not an ethoprism detector of format version <= {FORMAT_VERSION}"
        )
    cfg = dict(meta["config"])
    cfg["scales"] = tuple(cfg["scales"])
    return SavedDetector(
        DetectorConfig(**cfg),
        list(meta["classes"]),
        params,
        meta["store_identity"],
        tuple(meta["map_shape"]),
        meta["training"],
    )


def _relevant(identity: dict) -> dict:
    """What changes the meaning or geometry of tokens: encoder, preprocessing, pooling."""
    return {
        "encoder": identity.get("encoder"),
        "preprocessing": identity.get("preprocessing"),
        "pool": (identity.get("layout") or {}).get("pool"),
    }


def check_store(det: SavedDetector, ds, where: str) -> None:
    store.check_same_identity(
        _relevant(det.store_identity),
        _relevant(store.identity(ds)),
        f"the detector at {where} was trained on another store",
    )
