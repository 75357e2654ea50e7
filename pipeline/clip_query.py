"""Retrieval by a new clip: encode it exactly as the store's windows were, then search the store.

The clip is windowed with the store's own preprocessing and encoded with the store's own
encoder (name, config, checkpoint sha256, dtype), through the same sharded encoder the
extraction uses. A checkpoint whose identity differs from the store's is refused: embeddings of
other weights are not comparable with the store's.
"""

from __future__ import annotations

import os

import numpy as np

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.extract import load_encoder
from ethoprism.extract.encode import ShardedEncoder
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.video import probe_video
from ethoprism.extract.weights import RANDOM, RANDOM_SHA256
from ethoprism.extract.windows import iter_windows, stack_windows
from ethoprism.probe import retrieve as retrieval
from ethoprism.store import geometry
from ethoprism.store.schema import file_sha256

BATCH = 8


class ClipQueryError(EthoprismError):
    """A clip that cannot be compared with a store (other weights, undecodable)."""


def _refuse_other_weights(identity: dict, wanted: dict, checkpoint) -> None:
    try:
        store.check_same_identity(
            {"encoder": identity}, {"encoder": wanted}, "the clip's encoder vs the store's"
        )
    except store.StoreIdentityError as e:
        raise ClipQueryError(
            f"{e}: the weights ({checkpoint or 'default lookup'}) are not the ones the "
            "store was made with; pass the store's checkpoint (--checkpoint)"
        ) from None


def _encoder_for(store_ds, checkpoint):
    wanted = store_ds.attrs["encoder"]
    if checkpoint is None and wanted.get("checkpoint_sha256") == RANDOM_SHA256:
        checkpoint = RANDOM  # the store was made with the seeded random init, which is reproducible
    if checkpoint is not None:
        # a named file's fingerprint refuses other weights before they are loaded
        sha = RANDOM_SHA256 if checkpoint == RANDOM else file_sha256(checkpoint)
        _refuse_other_weights({**wanted, "checkpoint_sha256": sha}, wanted, checkpoint)
    encoder = load_encoder(wanted["name"], checkpoint, wanted.get("dtype", "float32"))
    _refuse_other_weights(encoder.identity, wanted, checkpoint)
    return encoder


def _encode(path, store_ds, checkpoint):
    """(embeddings (n, D), windows) of the clip, windowed and encoded as the store's were."""
    encoder = _encoder_for(store_ds, checkpoint)
    prep = Preprocessing.from_dict(store_ds.attrs["preprocessing"])
    sharded = ShardedEncoder(encoder, BATCH, prep.pixel_range)
    windows, out, batch = [], [], []
    for window in iter_windows(os.fspath(path), prep):
        windows.append(window)
        batch.append(window.pixels)
        if len(batch) == BATCH:
            out.append(sharded(stack_windows(batch)).embedding)
            batch = []
    if batch:
        out.append(sharded(stack_windows(batch)).embedding)
    if not out:
        raise ClipQueryError(f"{path}: no frames decoded, nothing to search with")
    return np.concatenate(out), windows


def embed_clip(path, store_ds, checkpoint=None) -> np.ndarray:
    """(n_windows, D) embeddings of a clip, made with the store's encoder and preprocessing."""
    return _encode(path, store_ds, checkpoint)[0]


def clip_query(path, store_ds, checkpoint=None) -> retrieval.Query:
    """A retrieval query of every window of the clip (its file's sha256 lets the store exclude
    it)."""
    vectors, windows = _encode(path, store_ds, checkpoint)
    info = probe_video(path)
    name = os.path.basename(os.fspath(path))
    geo = geometry.of_extracted(windows)
    return retrieval.Query(
        vectors=vectors,
        names=[
            f"{name}@{t:.2f}s #{f} (clip window {i})"
            for i, (t, f) in enumerate(zip(geo.start_time, geo.start_frame, strict=True))
        ],
        sha256=[info.sha256] * len(windows),
        windows=[None] * len(windows),
        frames=[(os.fspath(path), float(t)) for t in geo.middle_time],
        identity=store.identity(store_ds),
    )


def run_clip_query(
    clip, store_path, *, checkpoint=None, index_store=None, **search
) -> retrieval.QueryResult:
    """`ethoprism retrieve query STORE --clip FILE`: encode with STORE's encoder, search the index
    store."""
    query = clip_query(clip, store.open(store_path), checkpoint)
    return retrieval.run_query(index_store or store_path, query=query, **search)
