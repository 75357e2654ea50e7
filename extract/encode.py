"""Batches of windows through the frozen encoder, data-parallel over every local device.

One jit-compiled function per run: the batch axis is sharded over a 1-D `data` mesh of all
local devices, parameters are replicated, and every call has the same shape (a short last batch
is padded), so nothing recompiles between batches. Frames travel to the device as uint8 (4x less
host-to-device traffic than float32), grayscale ones as one channel (3x less again; one more
compilation for their shape), and are scaled to the pixel range and made RGB there; tokens can
be coded for the store's layout there too (`extract.coding`), so they travel back as float16.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ethoprism.extract.coding import code_tokens, tokens_finite


class EncodedBatch(NamedTuple):
    tokens: np.ndarray  # (n, T, h, w, D) float32, or float16 coded for a store layout
    embedding: np.ndarray  # (n, D) float32
    # (n,) bool: float16 tokens checked on the device (`coding.tokens_finite`); else None
    checked: np.ndarray | None = None
    aligned: dict | None = None  # a video-text model's text-aligned embeddings, name -> (n, ...)


class ShardedEncoder:
    """Runs `encoder` on uint8 windows (n, T, S, S, 3), or (n, T, S, S, 1) gray, n <= batch_size,
    over all local devices.

    `store_layout` (a `store.Layout`) has the tokens coded for that layout on the device where
    the layout says so (`extract.coding`); None returns them as float32.
    """

    def __init__(
        self,
        encoder,
        batch_size: int,
        pixel_range=(0.0, 1.0),
        devices=None,
        store_layout=None,
    ):
        self.encoder = encoder
        self.store_layout = store_layout
        devices = list(devices if devices is not None else jax.local_devices())
        # Every device gets the same number of windows; round the batch up rather than fail.
        self.batch_size = -(-batch_size // len(devices)) * len(devices)
        self.mesh = Mesh(np.array(devices), ("data",))
        self._batch_sharding = NamedSharding(self.mesh, P("data"))
        replicated = NamedSharding(self.mesh, P())
        self._params = jax.device_put(encoder.params, replicated)
        lo, hi = pixel_range
        scale = (hi - lo) / 255.0

        checks = store_layout is not None and store_layout.coded_on_device

        def forward(params, pixels):
            frames = pixels.astype(jnp.float32) * scale + lo
            frames = jnp.broadcast_to(frames, (*frames.shape[:-1], 3))  # gray: R = G = B
            out = encoder.apply(params, frames)
            tokens = out.tokens if store_layout is None else code_tokens(out.tokens, store_layout)
            aligned = out._asdict() | {"tokens": None, "embedding": None}
            return tokens, out.embedding, tokens_finite(tokens) if checks else None, aligned

        self._forward = jax.jit(
            forward,
            in_shardings=(replicated, self._batch_sharding),
            out_shardings=self._batch_sharding,  # every output: batch-sharded
        )

    @property
    def n_devices(self) -> int:
        return self.mesh.devices.size

    def submit(self, pixels: np.ndarray):
        """Dispatch one batch asynchronously; returns a handle for `fetch`."""
        n = len(pixels)
        if n > self.batch_size:
            raise ValueError(f"batch of {n} windows exceeds batch_size {self.batch_size}")
        if n < self.batch_size:
            pad = np.zeros((self.batch_size - n, *pixels.shape[1:]), pixels.dtype)
            pixels = np.concatenate([pixels, pad])
        pixels = jax.device_put(pixels, self._batch_sharding)
        return n, self._forward(self._params, pixels)

    @staticmethod
    def fetch(handle) -> EncodedBatch:
        """Wait for a submitted batch and bring its real (unpadded) rows to host memory."""
        n, (tokens, embedding, checked, aligned) = handle
        checked = None if checked is None else np.asarray(checked)[:n]
        aligned = {k: np.asarray(v)[:n] for k, v in aligned.items() if v is not None}
        return EncodedBatch(
            np.asarray(tokens)[:n], np.asarray(embedding)[:n], checked, aligned or None
        )

    def __call__(self, pixels: np.ndarray) -> EncodedBatch:
        return self.fetch(self.submit(pixels))
