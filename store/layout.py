"""The token layouts: SPEC.md's format table as data, and `Layout`, the one owner of how tokens
are stored. Every other module asks a `Layout` (its arrays, dtypes, item size, codecs, whether
the extraction codes its tokens on the device, bytes per window) and none looks at its name.

Pure numpy (no zarr, no dask), so the extraction can import it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ethoprism.store import codecs
from ethoprism.store.errors import StoreError

# Codecs as zarr v3 metadata (name, configuration); the writer builds zarr's codecs from them.
LZ4_BITSHUFFLE = {
    "name": "blosc",
    "configuration": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle", "typesize": 2},
}
ZSTD = {"name": "zstd", "configuration": {"level": 1}}

POOLS = (1, 2, 4)


@dataclass(frozen=True)
class TokenFormat:
    """One row of SPEC.md's token-layout table."""

    arrays: dict[str, tuple[str, tuple[str, ...]]]  # stored array -> (dtype, dimension names)
    # of the `tokens` array (None: stored as they are, crc32c only); the scales and every other
    # array take ZSTD
    compressor: dict | None
    coded_on_device: bool  # float16 coded by the extraction on the accelerator (extract.coding)
    round7: bool  # values on the 7-mantissa-bit grid
    # stored / raw bytes of VideoPrism-B activations: float16-round7 in blosc lz4 + bitshuffle
    # (5.12 / 6.29 MB per base window), the others in zstd, float16-uncompressed none (SPEC.md)
    compression: float
    encode: Callable[[np.ndarray], dict]  # pooled float32 tokens -> the stored arrays
    decode: Callable[[dict], object]  # the stored arrays (numpy or dask) -> float32 tokens


_TOKENS = ("window", "t", "h", "w", "c")


def _float16(compressor, round7: bool, compression: float) -> TokenFormat:
    """Tokens stored as one float16 array (rounded to 7 mantissa bits or exact)."""
    return TokenFormat(
        arrays={"tokens": ("float16", _TOKENS)},
        compressor=compressor,
        coded_on_device=True,
        round7=round7,
        compression=compression,
        encode=lambda x: {"tokens": codecs.encode_float16(x, round7=round7)},
        decode=lambda s: codecs.decode_float16(s["tokens"]),
    )


FORMATS = {
    "float16-round7": _float16(LZ4_BITSHUFFLE, round7=True, compression=0.815),
    "float16": _float16(ZSTD, round7=False, compression=0.93),
    # float16 not compressed: the host's cheapest layout (no compressor pass, ~4 ms less CPU per
    # base window than float16-round7 in `ethoprism bench host`) for 23% more disk
    "float16-uncompressed": _float16(None, round7=False, compression=1.0),
    "int8": TokenFormat(
        arrays={
            "tokens": ("int8", _TOKENS),
            "token_scale": ("float32", ("window", "t", "h", "w")),
            "channel_scale": ("float32", ("window", "c")),
        },
        compressor=ZSTD,
        coded_on_device=False,  # a window's channel RMS is taken on the host
        round7=False,
        compression=0.87,
        encode=lambda x: dict(
            zip(("tokens", "token_scale", "channel_scale"), codecs.encode_int8(x), strict=True)
        ),
        decode=lambda s: codecs.decode_int8(s["tokens"], s["token_scale"], s["channel_scale"]),
    ),
}
LAYOUT_DTYPES = tuple(FORMATS)
# every array any layout stores for its tokens, with its dimension names
TOKEN_ARRAY_DIMS = {name: dims for f in FORMATS.values() for name, (_, dims) in f.arrays.items()}


@dataclass(frozen=True)
class Layout:
    """How tokens are stored; chosen when a store is created and recorded in its attributes."""

    # | "float16" | "float16-uncompressed" | "int8" (per token, after per-channel RMS)
    dtype: str = "float16-round7"
    pool: int = 1  # spatial average pooling 1 | 2 | 4 before storing

    def __post_init__(self):
        if self.dtype not in FORMATS:
            raise StoreError(
                f"layout dtype {self.dtype!r} is not one of {', '.join(LAYOUT_DTYPES)}"
            )
        if self.pool not in POOLS:
            raise StoreError(f"layout pool {self.pool!r} is not one of 1, 2, 4")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        return cls(dtype=d["dtype"], pool=int(d["pool"]))

    def __str__(self) -> str:
        return f"{self.dtype} pool {self.pool}"

    @property
    def format(self) -> TokenFormat:
        return FORMATS[self.dtype]

    @property
    def arrays(self) -> tuple[str, ...]:
        """The stored arrays that together hold the tokens (`tokens` first)."""
        return tuple(self.format.arrays)

    def array_dtype(self, name: str) -> np.dtype:
        return np.dtype(self.format.arrays[name][0])

    @property
    def itemsize(self) -> int:
        """Bytes per stored token value."""
        return self.array_dtype("tokens").itemsize

    @property
    def coded_on_device(self) -> bool:
        """The extraction codes this layout's tokens on the accelerator (float16 arrives)."""
        return self.format.coded_on_device

    @property
    def round7(self) -> bool:
        return self.format.round7

    def compressor(self, name: str) -> dict | None:
        """The compressor of stored array `name` (zarr v3 metadata; None: none), crc32c
        aside."""
        return self.format.compressor if name == "tokens" else ZSTD

    def stored_shape(self, token_shape) -> tuple[int, ...]:
        """(t, h, w, c) of full-resolution tokens -> the (t, h, w, c) this layout stores."""
        return codecs.stored_token_shape(token_shape, self.pool)

    def window_bytes(self, stored_shape) -> int:
        """Raw (uncompressed) bytes of one window's `tokens` at the stored shape."""
        return self.itemsize * math.prod(stored_shape)

    def stored_window_bytes(self, stored_shape) -> float:
        """Expected bytes on disk of one window's `tokens` (VideoPrism-B activations)."""
        return self.window_bytes(stored_shape) * self.format.compression

    def encode(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Full-resolution float32 tokens (n, t, h, w, c) -> the arrays stored (names as on
        disk). Raises ValueError for values the layout cannot store."""
        return self.format.encode(codecs.pool_spatial(np.asarray(tokens, np.float32), self.pool))

    def decode(self, stored: dict):
        """Stored arrays (numpy or dask) -> float32 tokens at the stored (pooled) resolution."""
        return self.format.decode(stored)

    def check_coded(self, tokens: np.ndarray, copy: bool = True) -> dict[str, np.ndarray]:
        """float16 tokens coded on the device (`coded_on_device`) -> the arrays stored, checked
        as `codecs.check_float16_tokens` does. Raises ValueError (for a layout the device does
        not code, too)."""
        if not self.coded_on_device:
            raise ValueError(f"the {self.dtype} layout takes float32 tokens, got float16")
        return {"tokens": codecs.check_float16_tokens(tokens, self.round7, copy)}
