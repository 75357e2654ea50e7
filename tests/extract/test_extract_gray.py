"""Grayscale sources stay one channel from the decoder to the device, and give the tokens of the
RGB path: their pixels equal each RGB channel, and the device repeats them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from clips import transcode

from ethoprism import store
from ethoprism.extract import load_encoder
from ethoprism.extract.decoders import open_backend
from ethoprism.extract.encode import ShardedEncoder
from ethoprism.extract.preprocess import Preprocessing, Resizer
from ethoprism.extract.windows import WindowAssembler, iter_windows, stack_windows
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.run import extract_local
from ethoprism.store import Layout

DATA = Path(__file__).parent.parent / "data"
HORSE = DATA / "videos" / "horse_288x162.mp4"
CAGE = DATA / "videos" / "mouse_cage_5frames.mp4"
CHECKPOINT = str(DATA / "golden" / "checkpoint.npz")
PREP = Preprocessing(frame_size=72, window_stride=8)


def rgb_windows(path, prep: Preprocessing) -> list[np.ndarray]:
    """The windows of `path` through the RGB path (three channels whatever the source)."""
    decode, _, _ = open_backend("cpu", prep)
    assembler, resize, out = WindowAssembler(prep), Resizer(prep), []
    decoded = decode(path)
    for index, time, frame in decoded:
        out += assembler.push(index, time, resize(frame) if assembler.needs(index) else None)
    out += assembler.finish()
    return [w.pixels for w in out]


@pytest.mark.parametrize(
    "pix_fmt,resize", [("gray", "squash"), ("gray", "pad"), ("gray16le", "crop")]
)
def test_gray_windows_have_one_channel_equal_to_the_rgb_ones(tmp_path, pix_fmt, resize):
    path = transcode(tmp_path / "gray.mkv", "ffv1", pix_fmt, frames=30)
    prep = Preprocessing(frame_size=72, window_stride=8, resize=resize)
    gray = [w.pixels for w in iter_windows(path, prep)]
    rgb = rgb_windows(path, prep)
    assert len(gray) == len(rgb) == 3
    for g, c in zip(gray, rgb, strict=True):
        assert g.shape == (16, 72, 72, 1) and c.shape == (16, 72, 72, 3)
        assert g.std() > 10  # a real picture, not black
        np.testing.assert_array_equal(np.repeat(g, 3, axis=-1), c)


def test_colour_windows_keep_three_channels():
    windows = list(iter_windows(HORSE, PREP))
    assert {w.pixels.shape for w in windows} == {(16, 72, 72, 3)}


def test_a_batch_of_gray_and_colour_windows_repeats_the_gray_channel():
    gray = np.arange(16 * 4 * 4, dtype=np.uint8).reshape(16, 4, 4, 1)
    colour = np.zeros((16, 4, 4, 3), np.uint8)
    assert stack_windows([gray, gray]).shape == (2, 16, 4, 4, 1)
    mixed = stack_windows([gray, colour])
    assert mixed.shape == (2, 16, 4, 4, 3)
    np.testing.assert_array_equal(mixed[0], np.repeat(gray, 3, axis=-1))


def test_assembler_widens_to_three_channels_when_colour_follows_gray():
    prep = Preprocessing(frame_size=4, window_length=2, window_stride=2)
    assembler = WindowAssembler(prep)
    assert assembler.push(0, 0.0, np.full((4, 4, 1), 7, np.uint8)) == []
    (window,) = assembler.push(1, 0.1, np.full((4, 4, 3), 9, np.uint8))
    assert window.pixels.shape == (2, 4, 4, 3)
    assert (window.pixels[0] == 7).all() and (window.pixels[1] == 9).all()


@pytest.mark.slow
def test_gray_tokens_equal_the_rgb_paths_and_an_extracted_store_holds_them(tmp_path):
    """One channel to the device, three made there: the same tokens (as the store codes them)
    and embeddings, bit for bit; and a real run (decode worker process, shared-memory slots)
    stores those tokens for a gray video, in a batch shared with a colour video's window."""
    path = transcode(tmp_path / "gray.mkv", "ffv1", "gray", frames=30)
    gray = np.stack([w.pixels for w in iter_windows(path, PREP)])
    rgb = np.stack(rgb_windows(path, PREP))
    encoder = load_encoder("videoprism-tiny", CHECKPOINT)
    sharded = ShardedEncoder(encoder, 4, PREP.pixel_range, store_layout=Layout())
    from_gray, from_rgb = sharded(gray), sharded(rgb)
    assert from_gray.tokens.dtype == np.float16
    np.testing.assert_array_equal(from_gray.tokens, from_rgb.tokens)
    np.testing.assert_array_equal(from_gray.embedding, from_rgb.embedding)

    cfg = RunConfig(
        model="videoprism-tiny", checkpoint=CHECKPOINT, prep=PREP, batch_size=4, decode_workers=1
    )
    summary = extract_local([str(path), str(CAGE)], str(tmp_path / "gray.zarr"), cfg, part="p")
    assert summary.windows == 4  # 3 gray and 1 colour: one batch
    ds = store.open(str(tmp_path / "gray.zarr"))
    np.testing.assert_array_equal(ds["tokens"].values[:3], from_rgb.tokens.astype(np.float32))
    (cage,) = [w.pixels for w in iter_windows(CAGE, PREP)]
    np.testing.assert_array_equal(
        ds["tokens"].values[3], sharded(cage[None]).tokens[0].astype(np.float32)
    )
