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
    prep: Preprocessing = field(default_factory=Preprocessing)
    layout: Layout = field(default_factory=Layout)
    batch_size: int = 8
    decode_workers: int = 2
