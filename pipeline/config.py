"""What an extraction run is asked to do, as one frozen value that crosses process boundaries."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ethoprism.extract.decoders import (
    NvdecSupport,
    choose_decoder,
    nvdec_support,
    preprocessing_for,
)
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.store.layout import Layout


@dataclass(frozen=True)
class RunConfig:
    model: str = "videoprism-b"
    checkpoint: str | None = None  # a path, "random", or None for the default lookup
    dtype: str = "float32"  # "bfloat16": matmuls in bf16 (store identity records it)
    prep: Preprocessing | None = None  # None: the encoder's window length and frame size
    layout: Layout = field(default_factory=Layout)
    batch_size: int = 8
    decode_workers: int = 2
    decoder: str = "auto"  # "auto" | "cpu" | "nvdec" (`extract.decoders`); runs use a resolved one
    # extract --frames-from: only windows centred on these frames, per video file name
    centres: tuple[tuple[str, tuple[int, ...]], ...] = ()
    frames_from: str | None = None  # the annotation file they came from (recorded in the store)

    def __post_init__(self):
        if self.prep is None:
            from ethoprism.extract.encoder import default_preprocessing  # jax: not for workers

            object.__setattr__(self, "prep", default_preprocessing(self.model))

    @property
    def windows(self) -> dict | None:
        """The store's `windows` marker: None for windows at the regular stride."""
        if not self.frames_from:
            return None
        return {"centred_on": "annotated frames", "frames_from": self.frames_from}


def resolve_decoder(
    cfg: RunConfig, store_path: str | None = None, support: NvdecSupport | None = None
) -> RunConfig:
    """`cfg` with its decoder chosen ("cpu" or "nvdec") and its preprocessing as that decoder
    makes it. The frames must match an existing store's; a new store takes the hardware
    decoder's (under "auto", where it is available) unless the run names another filter than
    the default one."""
    constraint = None
    if store_path is not None and os.path.exists(store_path):
        from ethoprism import store

        constraint = store.open(store_path).attrs["preprocessing"].get("interpolation")
    elif cfg.prep.interpolation != Preprocessing().interpolation:
        constraint = cfg.prep.interpolation
    if support is None:  # "cpu" needs nothing detected
        support = NvdecSupport(False, False) if cfg.decoder == "cpu" else nvdec_support()
    decoder = choose_decoder(cfg.decoder, support, constraint)
    prep = cfg.prep if decoder == "cpu" else preprocessing_for(cfg.prep, decoder)
    return dataclasses.replace(cfg, decoder=decoder, prep=prep)
