"""Interpolation "area-lowres": MJPEG sources at least twice the frame size are shrunk by their
decoder (FFmpeg's `lowres`) before the area filter; other sources are untouched; the store
records it as its own preprocessing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from clips import transcode

from ethoprism.extract.decoders import NvdecSupport, choose_decoder
from ethoprism.extract.preprocess import Preprocessing, decoder_lowres
from ethoprism.extract.video import iter_raw
from ethoprism.extract.windows import iter_windows
from ethoprism.store.framing import resize_geometry

HORSE = Path(__file__).parent.parent / "data" / "videos" / "horse_288x162.mp4"
AREA = Preprocessing(frame_size=36, window_stride=8)
LOWRES = Preprocessing(frame_size=36, window_stride=8, interpolation="area-lowres")


@pytest.mark.parametrize(
    "codec,width,height,prep,expected",
    [
        ("mjpeg", 1280, 720, Preprocessing(interpolation="area-lowres"), 1),
        ("mjpeg", 1920, 1080, Preprocessing(interpolation="area-lowres"), 1),
        ("mjpeg", 2560, 1440, Preprocessing(interpolation="area-lowres"), 2),
        ("mjpeg", 574, 720, Preprocessing(interpolation="area-lowres"), 0),  # 574 < 2x288
        ("mjpeg", 4096, 4096, Preprocessing(interpolation="area-lowres"), 3),  # FFmpeg's limit
        ("mjpeg", 1280, 720, Preprocessing(interpolation="area"), 0),  # not asked for
        ("h264", 1280, 720, Preprocessing(interpolation="area-lowres"), 0),  # cannot
        # pad keeps the aspect: 1280x720 becomes 288x162, which 1/4 size (320x180) still covers
        ("mjpeg", 1280, 720, Preprocessing(interpolation="area-lowres", resize="pad"), 2),
    ],
)
def test_decoder_lowres_never_shrinks_below_the_resized_picture(
    codec, width, height, prep, expected
):
    assert decoder_lowres(prep, codec, width, height) == expected


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_a_shrunk_picture_is_placed_in_the_frame_exactly_as_the_full_size_one(mode):
    # boxes map through the full-size placement: 1154x720 padded is 288x180 at full size but
    # 289x180 at 1/4 size would give 288x179, so that source is decoded at 1/2 size only
    prep = Preprocessing(interpolation="area-lowres", resize=mode)
    assert decoder_lowres(prep, "mjpeg", 1154, 720) == 1
    shrunk = total = 0
    for width in range(576, 2000, 2):
        for height in (480, 540, 600, 720, 768, 1080):
            k = decoder_lowres(prep, "mjpeg", width, height)
            small = (-(-width >> k), -(-height >> k))
            assert resize_geometry(*small, 288, mode) == resize_geometry(width, height, 288, mode)
            shrunk, total = shrunk + (k > 0), total + 1
    assert shrunk > total // 2  # and most sources are still decoded smaller


def test_an_mjpeg_source_is_decoded_smaller_and_resized_to_nearly_the_same_pixels(tmp_path):
    path = transcode(tmp_path / "clip.avi", "mjpeg", "yuvj420p", frames=20)
    _, _, frame = next(iter_raw(path, 0, LOWRES))
    assert (frame.width, frame.height) == (72, 41)  # 1/4 size: still covers 36x36
    _, _, frame = next(iter_raw(path, 0, AREA))
    assert (frame.width, frame.height) == (288, 162)
    area = np.stack([w.pixels for w in iter_windows(path, AREA)]).astype(int)
    lowres = np.stack([w.pixels for w in iter_windows(path, LOWRES)]).astype(int)
    assert area.shape == lowres.shape == (2, 16, 36, 36, 3)
    assert not np.array_equal(area, lowres)  # other pixels: hence its own identity
    # the same pictures, filtered otherwise (at 1/4 size: the decoder keeps 2x2 of each 8x8 DCT)
    assert np.corrcoef(area.ravel(), lowres.ravel())[0, 1] > 0.97


def test_other_sources_are_untouched_by_area_lowres():
    area = np.stack([w.pixels for w in iter_windows(HORSE, AREA)])
    lowres = np.stack([w.pixels for w in iter_windows(HORSE, LOWRES)])
    np.testing.assert_array_equal(area, lowres)


def test_area_lowres_is_recorded_and_keeps_the_hardware_decoder_away():
    d = LOWRES.to_dict()
    assert d["interpolation"] == "area-lowres"
    assert Preprocessing.from_dict(d) == LOWRES != AREA
    assert choose_decoder("auto", NvdecSupport(True, True), "area-lowres") == "cpu"
