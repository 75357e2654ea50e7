"""Saved detectors: parameters as npz (no pickle) and everything else as JSON, in one directory.

head.json holds the detector config, the classes, the identity of the training store, the
token-map shape and the training record. A detector is refused on a store whose encoder,
preprocessing or token pooling differ from its training store's: its tokens would mean
something else, and its boxes would map to other pixels.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from ethoprism.errors import EthoprismError
from ethoprism.probe.artifacts import check_trained_on, read_head_files, write_head_files
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
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(det.config),
        "classes": det.classes,
        "store_identity": det.store_identity,
        "map_shape": list(det.map_shape),
        "training": det.training,
    }
    return write_head_files(directory, det.params, meta)


def load(directory: str | os.PathLike) -> SavedDetector:
    meta, params = read_head_files(
        Path(directory), FORMAT, FORMAT_VERSION, "detector", DetectorFileError
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


def check_store(det: SavedDetector, ds, where: str) -> None:
    message = f"the detector at {where} was trained on another store"
    check_trained_on(det.store_identity, ds, message)
