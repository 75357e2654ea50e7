"""What an extraction run is asked to do, as one frozen value that crosses process boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field

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

    def __post_init__(self):
        if self.prep is None:
            from ethoprism.extract.encoder import default_preprocessing  # jax: not for workers

            object.__setattr__(self, "prep", default_preprocessing(self.model))
