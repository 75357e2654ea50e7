"""One video's frames converted on several threads: the same windows as on one thread, in order,
and errors where the serial path puts them."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest
from clips import HORSE, transcode

from ethoprism.extract.framepool import PerThread, conversion_threads, ordered_map
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.video import VideoError, iter_raw, parallel_packets
from ethoprism.extract.windows import iter_windows

VIDEOS = Path(__file__).parents[1] / "data" / "videos"
TRUNCATED = VIDEOS / "S2_C2_E394_V0135.TRUNCATED_60pct_moov_ok.mp4"


def _items(n, fail_at=None):
    for i in range(n):
        if i == fail_at:
            raise VideoError("clip.mp4", f"decode error at frame {i}", frame=i)
        yield i
    return ("done", n)


def _drain(gen):
    out = []
    while True:
        try:
            out.append(next(gen))
        except StopIteration as end:
            return out, end.value


@pytest.mark.parametrize("threads", [1, 3])
def test_ordered_map_keeps_order_and_the_return_value(threads):
    seen = set()

    def slow_square(i):
        seen.add(threading.current_thread().name)
        if i % 5 == 0:  # early items finish last: order must not follow completion
            threading.Event().wait(0.01)
        return i * i

    out, value = _drain(ordered_map(slow_square, _items(40), threads))
    assert out == [i * i for i in range(40)]
    assert value == ("done", 40)
    assert (len(seen) > 1) == (threads > 1)


@pytest.mark.parametrize("threads", [1, 3])
def test_a_decoding_error_comes_after_the_frames_before_it(threads):
    gen = ordered_map(lambda i: i, _items(20, fail_at=13), threads)
    got = []
    with pytest.raises(VideoError, match="frame 13"):
        for x in gen:
            got.append(x)
    assert got == list(range(13))


@pytest.mark.parametrize("threads", [1, 3])
def test_a_conversion_error_comes_in_its_frames_place(threads):
    def convert(i):
        if i == 7:
            raise ValueError("frame 7 cannot be converted")
        return i

    got = []
    with pytest.raises(ValueError, match="frame 7"):
        for x in ordered_map(convert, _items(30), threads):
            got.append(x)
    assert got == list(range(7))


def test_a_consumer_that_stops_early_stops_the_work():
    converted = []
    gen = ordered_map(converted.append, _items(10_000), 3)
    next(gen)
    gen.close()  # must neither hang nor go on converting the whole video
    assert len(converted) < 100


def test_per_thread_makes_one_value_per_thread():
    made = []

    def make():
        made.append(threading.current_thread().name)
        return object()

    per_thread = PerThread(make)
    mine = per_thread.get()
    assert per_thread.get() is mine
    other = []
    t = threading.Thread(target=lambda: other.append(per_thread.get()), name="other")
    t.start()
    t.join()
    assert other[0] is not mine
    assert made == [threading.current_thread().name, "other"]


def test_conversion_threads():
    assert conversion_threads(1) == 1  # the decoder on the calling thread: so is conversion
    assert conversion_threads(3) == 3
    assert 1 <= conversion_threads(0) <= 8


def _windows(path, prep, threads):
    return list(iter_windows(path, prep, threads=threads))


@pytest.mark.parametrize(
    "codec, pix_fmt", [("h264", None), ("mjpeg", "yuvj420p"), ("ffv1", "gray")]
)
def test_windows_are_identical_on_one_thread_and_several(tmp_path, codec, pix_fmt):
    path = HORSE if pix_fmt is None else transcode(tmp_path / f"c.{codec}.mkv", codec, pix_fmt, 40)
    prep = Preprocessing(frame_size=64, window_length=8, window_stride=3)
    serial, pooled = _windows(path, prep, 1), _windows(path, prep, 3)
    assert len(serial) == len(pooled) > 5
    for a, b in zip(serial, pooled, strict=True):
        assert (a.start_frame, a.n_valid_frames, a.start_time) == (
            b.start_frame,
            b.n_valid_frames,
            b.start_time,
        )
        np.testing.assert_array_equal(a.frame_times, b.frame_times)
        assert a.pixels.shape == b.pixels.shape  # gray stays one channel on both
        np.testing.assert_array_equal(a.pixels, b.pixels)


def test_resumed_and_centred_windows_are_identical_too():
    prep = Preprocessing(frame_size=48, window_length=8, window_stride=4)
    for kwargs in ({"first_window": 3}, {"centres": (5, 30, 31, 70)}):
        serial = list(iter_windows(HORSE, prep, threads=1, **kwargs))
        pooled = list(iter_windows(HORSE, prep, threads=3, **kwargs))
        assert [w.start_frame for w in serial] == [w.start_frame for w in pooled]
        for a, b in zip(serial, pooled, strict=True):
            np.testing.assert_array_equal(a.pixels, b.pixels)


def test_a_damaged_video_fails_at_the_same_frame_after_the_same_windows():
    prep = Preprocessing(frame_size=32, window_length=8, window_stride=8)

    def until_error(threads):
        got = []
        with pytest.raises(VideoError) as err:
            for w in iter_windows(TRUNCATED, prep, threads=threads):
                got.append(w.start_frame)
        return got, str(err.value)

    pooled, serial = until_error(3), until_error(1)
    assert pooled == serial
    assert len(serial[0]) > 5 and "frame" in serial[1]  # windows came before the damage


def _frames_threads() -> int:
    return sum(t.name.startswith("ethoprism-frames") for t in threading.enumerate())


def _raw(path, threads, prep):
    out, gen = [], iter_raw(path, threads, prep)
    while True:
        try:
            index, time, frame = next(gen)
        except StopIteration as end:
            return out, end.value
        pixels = b"".join(bytes(plane) for plane in frame.planes)
        out.append((index, time, frame.width, pixels, _frames_threads()))


def test_mjpeg_packets_are_decoded_on_several_threads_identically(tmp_path):
    """MJPEG has no decoder threads in FFmpeg: its packets (whole pictures) are decoded on the
    pool, each thread with a decoder of its own that takes the stream's options (lowres)."""
    mjpeg = transcode(tmp_path / "c.avi", "mjpeg", "yuvj420p", 30)
    with av.open(str(mjpeg)) as c:
        assert parallel_packets(c.streams.video[0].codec_context)
    with av.open(str(HORSE)) as c:  # H.264 decodes on FFmpeg's own threads
        assert not parallel_packets(c.streams.video[0].codec_context)
    for prep in (None, Preprocessing(frame_size=64, interpolation="area-lowres")):
        serial, pooled = _raw(mjpeg, 1, prep), _raw(mjpeg, 3, prep)
        assert [f[:4] for f in serial[0]] == [f[:4] for f in pooled[0]]
        assert serial[1] == pooled[1]  # (n_frames, duration)
        assert max(f[4] for f in pooled[0]) > 1 and max(f[4] for f in serial[0]) == 0
    assert pooled[0][0][2] == 144  # decoded at half width: every thread's decoder took lowres
    assert _raw(HORSE, 3, None)[0][-1][4] == 0  # H.264: no packet threads


def test_a_damaged_mjpeg_fails_alike_on_one_thread_and_several(tmp_path):
    whole = transcode(tmp_path / "c.avi", "mjpeg", "yuvj420p", 40).read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(whole[: int(len(whole) * 0.6)])

    def until_error(threads):
        got = []
        with pytest.raises(VideoError) as err:
            for index, time, frame in iter_raw(cut, threads):
                got.append((index, time, frame.to_ndarray().tobytes()))
        return got, str(err.value)

    serial = until_error(1)
    assert until_error(3) == serial
    assert len(serial[0]) > 10
