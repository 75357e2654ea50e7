"""The host-cost cuts change no stored value: a store written after them decodes to the tokens
a store written before them held, and the store still refuses bad tokens from anyone else."""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from ethoprism import store
from ethoprism.extract import load_encoder
from ethoprism.extract.coding import tokens_finite
from ethoprism.extract.encode import ShardedEncoder
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.windows import iter_windows
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.run import extract_local
from ethoprism.store import Layout, VideoRecord, open_writer
from ethoprism.store.bench import activation_like, writer_input
from ethoprism.store.schema import StoreError

DATA = Path(__file__).parent.parent / "data"
HORSE = str(DATA / "videos" / "horse_288x162.mp4")
CHECKPOINT = str(DATA / "golden" / "checkpoint.npz")

# Decoded by the code before the cuts (commit 470c7fb: the host re-checked every token, and
# "bilinear" was the default filter): the horse clip at 72 px, stride 16. sha256 of the 20
# windows' uint8 frames. Frames are the cuts' input; the tokens the encoder makes of them depend
# on the jax version and the CPU, so they are recomputed here from the frames, not pinned.
BEFORE_FRAMES = "045d994727089ee1ec6e88255810ee6c74ec170d86871d6708934985b9e840e9"


@pytest.mark.slow
def test_store_after_the_cuts_holds_the_tokens_of_a_store_before_them(tmp_path):
    prep = Preprocessing(frame_size=72, window_stride=16, interpolation="bilinear")
    cfg = RunConfig(
        model="videoprism-tiny", checkpoint=CHECKPOINT, prep=prep, batch_size=4, decode_workers=1
    )
    frames = np.stack([np.array(w.pixels) for w in iter_windows(HORSE, prep)])
    assert hashlib.sha256(frames.tobytes()).hexdigest() == BEFORE_FRAMES

    summary = extract_local([HORSE], str(tmp_path / "after.zarr"), cfg, part="p")
    assert summary.windows == 20
    ds = store.open(str(tmp_path / "after.zarr"))
    tokens = ds["tokens"].values
    assert tokens.shape == (20, 16, 4, 4, 64)
    assert ds.attrs["preprocessing"]["interpolation"] == "bilinear"

    # what the encoder makes of those frames, coded for the layout, is what the store holds
    encoder = load_encoder(cfg.model, CHECKPOINT, cfg.dtype)
    sharded = ShardedEncoder(encoder, 4, prep.pixel_range, store_layout=cfg.layout)
    want = [sharded(frames[i : i + 4]) for i in range(0, len(frames), 4)]
    want_tokens = np.concatenate([b.tokens for b in want]).astype(np.float32)
    want_embedding = np.concatenate([b.embedding for b in want])
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(ds["embedding"].values.astype(np.float32), want_embedding)


def test_tokens_finite_flags_each_window_on_the_device():
    x = np.ones((3, 2, 2, 2, 4), np.float16)
    x[1, 0, 1, 1, 2] = np.inf
    x[2, 1, 0, 0, 0] = np.nan
    np.testing.assert_array_equal(np.asarray(tokens_finite(jnp.asarray(x))), [True, False, False])


def _write(path, tokens, checked):
    with open_writer(path, encoder={"name": "t"}, preprocessing={}, part="p") as w:
        vw = w.begin_video(VideoRecord("v.mp4", 0, "sha", 30.0, 64, 0.0, 0, 0, "h264"))
        n = len(tokens)
        emb = np.zeros((n, tokens.shape[-1]), np.float32)
        vw.append(tokens, emb, np.arange(n) * 8, 1, 16, np.arange(n) / 3.75, checked=checked)
        vw.commit()


@pytest.mark.parametrize("writeable", [False, True])
def test_device_checked_tokens_are_stored_byte_for_byte_as_host_checked_ones(tmp_path, writeable):
    tokens = writer_input(activation_like(3, (2, 4, 4, 32)), Layout(), coded=True)
    given = tokens.copy() if writeable else tokens
    _write(tmp_path / "host.zarr", given, checked=False)
    _write(tmp_path / "device.zarr", given, checked=True)
    if writeable:
        given[:] = 0  # the store copied writable tokens: changing them now changes nothing
    tokens_dir = tmp_path / "host.zarr" / "parts" / "p" / "tokens" / "c"
    shards = sorted(p for p in tokens_dir.rglob("*") if p.is_file())
    assert shards
    for shard in shards:
        twin = tmp_path / "device.zarr" / shard.relative_to(tmp_path / "host.zarr")
        assert shard.read_bytes() == twin.read_bytes()
    np.testing.assert_array_equal(
        store.open(str(tmp_path / "device.zarr"))["tokens"].values, tokens.astype(np.float32)
    )


def test_unchecked_tokens_are_still_checked(tmp_path):
    tokens = writer_input(activation_like(2, (2, 4, 4, 32)), Layout(), coded=True).copy()
    tokens[1, 0, 0, 0, 3] = np.inf
    with pytest.raises(StoreError, match="window 1 .*not finite"):
        _write(tmp_path / "bad.zarr", tokens, checked=False)


def test_windows_written_into_given_buffers_equal_new_ones():
    """The decode pool's workers write windows into shared-memory slots: same pixels."""
    prep = Preprocessing(frame_size=24, window_stride=8)
    slots = np.zeros((64, 16, 24, 24, 3), np.uint8)
    taken = iter(range(64))
    plain = list(iter_windows(HORSE, prep))
    given = list(iter_windows(HORSE, prep, alloc=lambda channels: slots[next(taken)]))
    assert len(plain) == len(given) == 38
    for a, b in zip(plain, given, strict=True):
        assert b.pixels.base is slots or b.pixels.base is slots.base
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_array_equal(a.frame_indices, b.frame_indices)
