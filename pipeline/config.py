"""What an extraction run is asked to do, as one frozen value that crosses process boundaries."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ethoprism.extract.decoders import (
    NvdecSupport,
    choose_decoder,
    nvdec_support,
    preprocessing_for,
)
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.store.layout import Layout
from ethoprism.store.schema import StoreError, check_schema


@dataclass(frozen=True)
class RunConfig:
    model: str = "videoprism-b"
    checkpoint: str | None = None  # a path, "random", or None for the default lookup
    dtype: str = "float32"  # "bfloat16": matmuls in bf16 (store identity records it)
    prep: Preprocessing | None = None  # None: the encoder's window length and frame size
    layout: Layout = field(default_factory=Layout)
    batch_size: int = 8
    decode_workers: int = 2
    # A long video's windows are made durable in pieces this often, so that an interrupted run
    # redoes at most this much of it (0: after every batch).
    piece_seconds: float = 30.0
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


def centred_on(frames_from: str | None) -> dict:
    """RunConfig fields for a run that encodes only the windows centred on the frames annotated
    in `frames_from` (`extract --frames-from`); none for a run at the regular stride."""
    if frames_from is None:
        return {}
    from ethoprism.probe.localize.annotations import read

    ann = read(frames_from)
    centres = tuple((v, tuple(ann.frames_of(v))) for v in ann.videos)
    return {"centres": centres, "frames_from": frames_from}


def config_for_store(
    store_path: str,
    *,
    model: str | None = None,
    checkpoint: str | None = None,
    dtype: str | None = None,
    prep: dict | None = None,
    layout: dict | None = None,
    **run,
) -> RunConfig:
    """The run's config: what was given, then (for an existing store) the store's own encoder,
    checkpoint and preprocessing, then the defaults (the encoder's window length and frame
    size). So appending to a store needs no options, and a store made with random weights
    keeps getting random weights."""
    from ethoprism.extract.encoder import default_preprocessing  # jax: not for workers
    from ethoprism.extract.weights import RANDOM_SHA256

    given_prep = {k: v for k, v in (prep or {}).items() if v is not None}
    given_layout = {k: v for k, v in (layout or {}).items() if v is not None}
    attrs = _store_attrs(store_path)
    base_prep = None
    if attrs is not None:
        encoder = attrs.get("encoder", {})
        if model is None:
            model = encoder.get("name")
            if checkpoint is None and encoder.get("checkpoint_sha256") == RANDOM_SHA256:
                checkpoint = "random"
        dtype = dtype or encoder.get("dtype")
        base_prep = attrs.get("preprocessing")
        given_layout = {**attrs.get("layout", {}), **given_layout}
    defaults = RunConfig.__dataclass_fields__
    model = model or defaults["model"].default
    if base_prep is None:
        base_prep = default_preprocessing(model).to_dict()
    return RunConfig(
        model=model,
        checkpoint=checkpoint,
        dtype=dtype or defaults["dtype"].default,
        prep=Preprocessing.from_dict({**base_prep, **given_prep}),
        layout=Layout.from_dict({**Layout().to_dict(), **given_layout}),
        **run,
    )


def _store_attrs(store_path: str) -> dict | None:
    """The root attributes of an existing local store, or None where there is none yet."""
    meta = Path(store_path) / "zarr.json"
    if not meta.is_file():
        return None
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError) as e:
        raise StoreError(f"{store_path}: cannot read its zarr.json ({e})") from None
    check_schema(attrs, store_path)
    return attrs


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
