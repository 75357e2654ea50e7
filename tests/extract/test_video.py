"""Decoding: real videos against an independent full decode, every pixel format and container the
issue names (clips encoded here with PyAV), the bad files, resizing geometry, Preprocessing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ethoprism.errors import EthoprismError
from ethoprism.extract.decode_bench import measure_decode
from ethoprism.extract.preprocess import (
    Preprocessing,
    PreprocessingError,
    Resizer,
    resize,
    to_float,
)
from ethoprism.extract.video import VideoError, iter_frames, iter_raw, probe_video
from ethoprism.store.framing import resize_geometry

VIDEOS = Path(__file__).parent.parent / "data" / "videos"
HORSE = VIDEOS / "horse_288x162.mp4"  # 308 frames, 24 fps, 288x162 (not divisible by 16)
FIVE = VIDEOS / "mouse_cage_5frames.mp4"  # 5 frames, 30 fps, 800x600
WHEEL = VIDEOS / "mouse_wheel_250fps.mp4"  # 994 frames, 250 fps, 396x406
TRUNCATED = VIDEOS / "S2_C2_E394_V0135.TRUNCATED_60pct_moov_ok.mp4"  # claims 110 frames, 87 decode
UNOPENABLE = VIDEOS / "centered_pair_small.TRUNCATED_50pct_moov_lost.mp4"  # index lost

LEFT, RIGHT = (200, 60, 30), (30, 220, 120)  # the two halves of every colour test picture


def picture(width: int, height: int) -> np.ndarray:
    img = np.empty((height, width, 3), np.uint8)
    img[:, : width // 2] = LEFT
    img[:, width // 2 :] = RIGHT
    return img


def encode_clip(
    path,
    n_frames: int,
    *,
    width=64,
    height=48,
    codec="libx264",
    pix_fmt="yuv420p",
    rate=Fraction(30),
    gray=False,
    audio=False,
    options=None,
    frame=None,
):
    """Encode a clip with PyAV. Frames are `picture()` (or gray level 30 + 7*i mod 190 when gray),
    or `frame(i)` when given; `audio` adds a silent AAC stream interleaved with the video."""
    with av.open(str(path), "w") as container:
        video = container.add_stream(codec, rate=rate)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.options = options or {}
        sound = container.add_stream("aac", rate=48000) if audio else None
        still = picture(width, height)
        for i in range(n_frames):
            if frame is not None:
                vf = av.VideoFrame.from_ndarray(frame(i), format="rgb24")
            elif gray:
                vf = av.VideoFrame.from_ndarray(
                    np.full((height, width), 30 + (7 * i) % 190, np.uint8), format="gray"
                )
            else:
                vf = av.VideoFrame.from_ndarray(still, format="rgb24")
            container.mux(video.encode(vf))
            if sound is not None:
                af = av.AudioFrame.from_ndarray(
                    np.zeros((1, 1600), np.float32), format="fltp", layout="mono"
                )
                af.sample_rate, af.pts = 48000, i * 1600
                container.mux(sound.encode(af))
        container.mux(video.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))
    return path


def reference_decode(path):
    """An independent full decode: PyAV's high-level API, no threads, full-size RGB per frame."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            yield float(frame.pts * stream.time_base), frame.to_ndarray(format="rgb24")


def ffprobe_times(path) -> list[float]:
    """Frame pts times from the ffprobe CLI (a separate FFmpeg build): its packets' pts in
    presentation order, which is what frames get when every packet is one frame (no decoding)."""
    out = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time",
            "-of",
            "csv=p=0",
            str(path),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sorted(float(line) for line in out.split())


# --- real videos ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path, n_frames, fps", [(HORSE, 308, 24), (FIVE, 5, 30)])
@pytest.mark.parametrize("threads", [0, 1])
def test_frames_match_reference_decode(path, n_frames, fps, threads):
    ours = iter_frames(path, threads=threads)
    n = 0
    for n, (frame, (time, rgb)) in enumerate(zip(ours, reference_decode(path), strict=True), 1):
        assert frame.index == n - 1
        assert frame.time == time
        np.testing.assert_array_equal(frame.rgb, rgb)
    assert n == n_frames
    assert frame.time == pytest.approx((n_frames - 1) / fps)


@pytest.mark.skipif(
    shutil.which("ffprobe") is None, reason="ffprobe CLI not installed (apt-get install ffmpeg)"
)
def test_times_match_ffprobe():
    for path in (HORSE, FIVE):
        times = [t for _, t, _ in iter_raw(path)]
        np.testing.assert_allclose(
            times, ffprobe_times(path), rtol=0, atol=1e-6
        )  # ffprobe prints µs


def test_probe_video_reads_metadata_and_fingerprint():
    info = probe_video(HORSE)
    data = HORSE.read_bytes()
    assert info.path == str(HORSE)
    assert (info.size_bytes, info.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert (info.fps, info.n_frames, info.width, info.height) == (24.0, 308, 288, 162)
    assert info.duration == pytest.approx(308 / 24)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")


def test_fsspec_url_decodes_like_the_local_file():
    import fsspec

    url = "memory://ethoprism-test/five.mp4"
    with fsspec.open(url, "wb") as f:
        f.write(FIVE.read_bytes())
    try:
        assert probe_video(url).sha256 == probe_video(FIVE).sha256
        for a, b in zip(iter_frames(url), iter_frames(FIVE), strict=True):
            assert (a.index, a.time) == (b.index, b.time)
            np.testing.assert_array_equal(a.rgb, b.rgb)
    finally:
        fsspec.filesystem("memory").rm(url)


# --- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [0, 1])
def test_truncated_file_fails_at_the_cut_naming_file_and_frame(threads):
    seen = []
    with pytest.raises(VideoError) as err:
        for frame in iter_frames(TRUNCATED, threads=threads):
            seen.append(frame.index)
    assert seen == list(
        range(87)
    )  # every frame before the cut came out, even from the threaded decoder
    assert err.value.frame == 87
    assert str(TRUNCATED) in str(err.value)
    assert "decode error at frame 87" in err.value.reason
    assert isinstance(err.value, EthoprismError)


@pytest.mark.parametrize("threads", [0, 1])
def test_damage_inside_the_file_fails_near_the_damaged_frame(tmp_path, threads):
    with av.open(str(HORSE)) as container:
        packets = [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]
    pos, size = packets[100]  # the 101st packet in decode order: zero its payload, keep its length
    data = bytearray(HORSE.read_bytes())
    data[pos + 4 : pos + size] = bytes(size - 4)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(data)
    n = 0
    with pytest.raises(VideoError, match="decode error at frame") as err:
        for _ in iter_frames(damaged, threads=threads):
            n += 1
    assert (
        err.value.frame == n and 96 <= n <= 106
    )  # where the decoder was (frame threads lag a little)


def test_video_error_survives_pickling_between_processes():
    import pickle

    err = pickle.loads(pickle.dumps(VideoError("a.mp4", "decode error at frame 3: x", frame=3)))
    assert (str(err), err.reason, err.frame) == (
        "a.mp4: decode error at frame 3: x",
        "decode error at frame 3: x",
        3,
    )


def test_unopenable_file():
    for call in (probe_video, lambda p: next(iter_frames(p))):
        with pytest.raises(VideoError, match="not a video or unreadable") as err:
            call(UNOPENABLE)
        assert str(UNOPENABLE) in str(err.value)


def test_not_a_video_missing_file_and_directory(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    cases = [
        (text, "not a video"),
        (tmp_path / "missing.mp4", "file not found"),
        (tmp_path, "directory"),
    ]
    for path, message in cases:
        with pytest.raises(VideoError, match=message) as err:
            probe_video(path)
        assert str(path) in str(err.value)


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "sound.m4a"
    with av.open(str(path), "w") as container:
        sound = container.add_stream("aac", rate=48000)
        af = av.AudioFrame.from_ndarray(
            np.zeros((1, 4800), np.float32), format="fltp", layout="mono"
        )
        af.sample_rate, af.pts = 48000, 0
        container.mux(sound.encode(af))
        container.mux(sound.encode(None))
    for call in (probe_video, lambda p: next(iter_frames(p))):
        with pytest.raises(VideoError, match=r"no video stream \(streams: audio\)"):
            call(path)


def test_zero_frame_video(tmp_path):
    path = tmp_path / "empty.avi"  # MP4 drops an empty track; AVI keeps it
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=30)
        video.width, video.height = 64, 48
        container.start_encoding()
    with pytest.raises(VideoError, match="zero frames"):
        probe_video(path)
    with pytest.raises(VideoError, match="zero frames"):
        next(iter_frames(path))


# --- formats and containers ----------------------------------------------------------------------

LOSSLESS = {"qp": "0"}  # x264 lossless: only the RGB <-> YUV rounding remains


@pytest.mark.parametrize(
    "name, kwargs, colour_tol",
    [
        ("yuv444p.mp4", {"pix_fmt": "yuv444p", "options": LOSSLESS}, 2),
        ("yuvj420p_full_range.mp4", {"pix_fmt": "yuvj420p", "options": LOSSLESS}, 3),
        ("odd_rate.mp4", {"rate": Fraction(1_000_000, 33_333), "options": LOSSLESS}, 3),
        (
            "odd_size_201x157.mp4",
            {"width": 201, "height": 157, "pix_fmt": "yuv444p", "options": LOSSLESS},
            2,
        ),
        ("mjpeg.avi", {"codec": "mjpeg", "pix_fmt": "yuvj420p", "rate": Fraction(25)}, 4),
        (
            "mjpeg_odd_size.avi",
            {"codec": "mjpeg", "pix_fmt": "yuvj420p", "width": 201, "height": 157},
            4,
        ),
        ("mpeg4_part2.avi", {"codec": "mpeg4", "rate": Fraction(25)}, 4),
        ("with_audio.mp4", {"audio": True, "options": LOSSLESS}, 3),
    ],
)
def test_formats_decode_to_the_right_count_size_colour_and_time(tmp_path, name, kwargs, colour_tol):
    n = 24
    path = encode_clip(tmp_path / name, n, **kwargs)
    width, height = kwargs.get("width", 64), kwargs.get("height", 48)
    rate = kwargs.get("rate", Fraction(30))
    frames = list(iter_frames(path))
    assert [f.index for f in frames] == list(range(n))
    # pts times: i / rate exactly up to the container's time base (1/1000000 for the odd rate)
    np.testing.assert_allclose(
        [f.time for f in frames], [float(i / rate) for i in range(n)], atol=1e-6
    )
    assert probe_video(path).n_frames == n
    for f in frames:
        assert f.rgb.shape == (height, width, 3) and f.rgb.dtype == np.uint8
        # the interiors of the two halves keep their colours (edges blur: 4:2:0 chroma, JPEG blocks)
        left, right = f.rgb[4:-4, 4 : width // 2 - 16], f.rgb[4:-4, width // 2 + 16 : -4]
        assert np.abs(left.astype(int) - LEFT).max() <= colour_tol
        assert np.abs(right.astype(int) - RIGHT).max() <= colour_tol


def test_full_range_is_not_read_as_limited_range(tmp_path):
    # Levels 30 and 220 read with the wrong range come out as 16 and 237: far outside the tolerance.
    levels = np.array([30, 220], np.uint8)
    img = np.repeat(np.repeat(levels[None, :, None], 32, axis=1), 48, axis=0).repeat(3, axis=2)
    path = encode_clip(
        tmp_path / "full.mp4", 3, pix_fmt="yuvj420p", options=LOSSLESS, frame=lambda i: img
    )
    rgb = next(iter_frames(path)).rgb
    assert abs(int(rgb[24, 10, 0]) - 30) <= 2 and abs(int(rgb[24, 54, 0]) - 220) <= 2
    small = next(
        iter_frames(path, prep=Preprocessing(frame_size=32))
    ).rgb  # through the resizer too
    assert abs(int(small[16, 5, 0]) - 30) <= 2 and abs(int(small[16, 27, 0]) - 220) <= 2


def test_grayscale_stored_as_yuv420p(tmp_path):
    path = encode_clip(tmp_path / "gray.mp4", 20, gray=True, options=LOSSLESS)
    assert probe_video(path).pix_fmt == "yuv420p"
    for f in iter_frames(path):
        expected = 30 + (7 * f.index) % 190
        assert np.abs(f.rgb.astype(int) - expected).max() <= 1  # gray: R = G = B = Y, range-scaled
    resized = next(iter_frames(path, prep=Preprocessing(frame_size=16))).rgb
    assert resized.shape == (16, 16, 3) and np.abs(resized.astype(int) - 30).max() <= 1


# --- resizing ------------------------------------------------------------------------------------


def test_resize_geometry():
    assert resize_geometry(288, 162, 288, "squash") == (288, 288, 0, 0)
    assert resize_geometry(288, 162, 288, "pad") == (288, 162, 0, 63)
    assert resize_geometry(288, 162, 288, "crop") == (512, 288, -112, 0)
    assert resize_geometry(396, 406, 288, "pad") == (281, 288, 3, 0)
    assert resize_geometry(396, 406, 288, "crop") == (288, 295, 0, -3)
    assert resize_geometry(100, 100, 288, "pad") == (288, 288, 0, 0)
    assert resize_geometry(396, 406, 48, "crop") == (48, 49, 0, 0)  # one row cut, at the bottom


def stripes(width: int, height: int) -> np.ndarray:
    """Columns: red left quarter, green middle half, blue right quarter."""
    img = np.zeros((height, width, 3), np.uint8)
    img[:, : width // 4, 0] = 255
    img[:, width // 4 : 3 * width // 4, 1] = 255
    img[:, 3 * width // 4 :, 2] = 255
    return img


def test_pad_letterboxes_with_black_bars():
    out = resize(stripes(128, 64), Preprocessing(frame_size=64, resize="pad"))
    assert out.shape == (64, 64, 3)
    assert not out[:16].any() and not out[48:].any()  # 16-row black bars above and below
    assert (out[16:48].max(axis=2) > 100).all()  # the picture fills the middle rows, edge to edge
    np.testing.assert_array_equal(out[20, 2], [255, 0, 0])
    np.testing.assert_array_equal(out[20, 32], [0, 255, 0])
    np.testing.assert_array_equal(out[20, 61], [0, 0, 255])


def test_crop_keeps_the_centre():
    out = resize(stripes(256, 64), Preprocessing(frame_size=64, resize="crop"))
    # the middle half of the picture is green: the centre square holds nothing else
    assert (out[..., 1] >= 250).all() and (out[..., [0, 2]] <= 5).all()
    tall = resize(
        stripes(256, 64).transpose(1, 0, 2).copy(), Preprocessing(frame_size=64, resize="crop")
    )
    assert (tall[..., 1] >= 250).all()


def test_squash_keeps_everything():
    out = resize(stripes(256, 64), Preprocessing(frame_size=64, resize="squash"))
    np.testing.assert_array_equal(out[32, 4], [255, 0, 0])
    np.testing.assert_array_equal(out[32, 32], [0, 255, 0])
    np.testing.assert_array_equal(out[32, 60], [0, 0, 255])


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_resizing_decoded_frames_equals_resizing_their_rgb(mode):
    """The fast path (scale in YUV, then convert) agrees with resizing the full-size RGB frame."""
    prep = Preprocessing(frame_size=96, resize=mode)
    for rgb_frame, small_frame in zip(
        iter_frames(HORSE), iter_frames(HORSE, prep=prep), strict=False
    ):
        if rgb_frame.index >= 3:
            break
        expected = Resizer(prep)(rgb_frame.rgb).astype(int)
        assert small_frame.rgb.shape == (96, 96, 3)
        assert np.abs(small_frame.rgb.astype(int) - expected).mean() < 2.0


# --- Preprocessing, to_float, measure_decode ------------------------------------------------------


def test_preprocessing_round_trips_through_json():
    prep = Preprocessing(
        frame_size=144, resize="pad", window_stride=4, frame_step=2, pixel_range=(-1, 1)
    )
    d = json.loads(json.dumps(prep.to_dict()))
    assert d == prep.to_dict()
    assert Preprocessing.from_dict(d) == prep
    assert prep.window_span == 31


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"frame_size": 0}, "frame_size"),
        ({"window_stride": 2.5}, "window_stride"),
        ({"frame_step": True}, "frame_step"),
        ({"window_length": -1}, "window_length"),
        ({"resize": "stretch"}, "resize"),
        ({"interpolation": "nearest"}, "interpolation"),
        ({"pixel_range": (1, 0)}, "pixel_range"),
        ({"pixel_range": "ab"}, "pixel_range"),
    ],
)
def test_preprocessing_rejects_bad_fields_by_name(kwargs, field):
    with pytest.raises(PreprocessingError, match=field):
        Preprocessing(**kwargs)


def test_preprocessing_from_dict_names_unknown_fields():
    with pytest.raises(PreprocessingError, match="stride"):
        Preprocessing.from_dict({"frame_size": 288, "stride": 8})


def test_to_float():
    pixels = np.array([0, 51, 255], np.uint8)
    np.testing.assert_allclose(to_float(pixels), [0, 0.2, 1], rtol=1e-6)
    out = to_float(pixels, (-1.0, 1.0))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1, -0.6, 1], rtol=1e-6)


def test_measure_decode_reports_both_rates():
    result = measure_decode(HORSE, Preprocessing(frame_size=64), seconds=0.05, repeats=1)
    assert result["frames"] >= 1
    assert result["raw_fps"] > 0 and result["resize_fps"] > 0
    assert result["ratio"] == pytest.approx(result["resize_fps"] / result["raw_fps"])


def test_area_interpolation_averages_source_pixels():
    """The default filter, shrinking by exactly 2, is the 2x2 box mean (a numpy judge)."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), np.uint8)
    prep = Preprocessing(frame_size=32)
    assert prep.interpolation == "area"
    box = img.reshape(32, 2, 32, 2, 3).mean(axis=(1, 3))
    assert np.abs(resize(img, prep).astype(float) - box).max() <= 1.0


@pytest.mark.parametrize("suffix", ["png", "jpg"])
def test_a_still_image_is_a_one_frame_video_repeated_in_its_window(tmp_path, suffix):
    from PIL import Image

    from ethoprism.extract.windows import iter_windows

    path = tmp_path / f"still.{suffix}"
    Image.fromarray(picture(61, 45)).save(path, quality=95)
    info = probe_video(path)
    assert (info.codec, info.n_frames, info.fps, info.duration) == ("image", 1, 0.0, 0.0)
    assert (info.width, info.height) == (61, 45)
    prep = Preprocessing(frame_size=36, resize="pad")
    windows = iter_windows(path, prep)
    (window,) = list(windows)
    assert (window.start_frame, window.n_valid_frames) == (0, 1)
    np.testing.assert_array_equal(window.frame_indices, np.zeros(16))
    np.testing.assert_array_equal(window.frame_times, np.zeros(16))
    still = next(iter_frames(path, prep=prep)).rgb
    np.testing.assert_array_equal(window.pixels, np.repeat(still[None], 16, axis=0))
    if suffix == "png":  # lossless and decoded as RGB: the saved picture, resized
        np.testing.assert_array_equal(still, resize(picture(61, 45), prep))
