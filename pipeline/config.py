"""What an extraction run is asked to do, as one frozen value that crosses process boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field

from ethoprism.extract.preprocess import Preprocessing
from ethoprism.store import Layout


@dataclass(frozen=True)
class RunConfig:
    model: str = "videoprism-b"
    checkpoint: str | None = None  # a path, "random", or None for the default lookup
    dtype: str = "float32"  # "bfloat16": matmuls in bf16 (store identity records it)
    prep: Preprocessing = field(default_factory=Preprocessing)
    layout: Layout = field(default_factory=Layout)
    batch_size: int = 8
    decode_workers: int = 2
    # extract --frames-from: only windows centred on these frames, per video file name
    centres: tuple[tuple[str, tuple[int, ...]], ...] = ()
    frames_from: str | None = None  # the annotation file they came from (recorded in the store)

    @property
    def windows(self) -> dict | None:
        """The store's `windows` marker: None for windows at the regular stride."""
        if not self.frames_from:
            return None
        return {"centred_on": "annotated frames", "frames_from": self.frames_from}

    @property
    def token_coding(self) -> tuple[str, int]:
        """What the encoder codes tokens for on the device (`extract.coding`): the layout's
        token dtype and pooling."""
        return self.layout.dtype, self.layout.pool
