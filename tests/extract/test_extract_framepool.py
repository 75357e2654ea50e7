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
from ethoprism.extract.packets import MjpegTables, jpeg_tables, parallel_packets
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.video import VideoError, iter_raw
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
    "codec, pix_fmt",
    [("h264", None), ("mjpeg", "yuvj420p"), ("ffv1", "gray"), ("rawvideo", "gray")],
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


def _without(data: bytes, marker: int) -> bytes:
    """A JPEG picture without its `marker` segments (before the scan)."""
    out, i = bytearray(data[:2]), 2
    while data[i + 1] != 0xDA:
        end = i + 2 + (data[i + 2] << 8 | data[i + 3])
        if data[i + 1] != marker:
            out += data[i:end]
        i = end
    return bytes(out + data[i:])


def _abbreviated(source: Path, target: Path, marker: int) -> Path:
    """`source` (MJPEG) with `marker`'s tables in its first picture only, as some cameras and
    encoders write it: FFmpeg's decoder keeps them for the pictures after."""
    with av.open(str(source)) as src, av.open(str(target), "w") as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        for k, packet in enumerate(p for p in src.demux(stream) if p.size):
            data = bytes(packet) if k == 0 else _without(bytes(packet), marker)
            copy = av.Packet(data)
            copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
            copy.is_keyframe, copy.stream = True, out
            dst.mux(copy)
    return target


def test_mjpeg_tables_defined_once_reach_every_threads_decoder(tmp_path):
    """Quantisation tables in the first picture only; Huffman tables the same way (FFmpeg's
    encoder writes the standard ones, which a decoder assumes anyway: see the unit test)."""
    marker, name = 0xDB, "quantisation"
    mjpeg = transcode(tmp_path / "c.avi", "mjpeg", "yuvj420p", 30)
    with av.open(str(mjpeg)) as c:  # the encoder writes both kinds in every picture
        first = bytes(next(p for p in c.demux(video=0) if p.size))
    assert set(jpeg_tables(first)) == {0xDB, 0xC4}
    once = _abbreviated(mjpeg, tmp_path / f"{name}.avi", marker)
    with av.open(str(once)) as c:
        later = [bytes(p) for p in c.demux(video=0) if p.size][1:]
    assert later and all(marker not in jpeg_tables(p) for p in later)
    serial, pooled = _raw(once, 1, None), _raw(once, 3, None)
    assert [f[:4] for f in serial[0]] == [f[:4] for f in pooled[0]]
    assert max(f[4] for f in pooled[0]) > 1  # decoded on the pool
    # and the tables mattered: decoding without them gives other pixels (or fails)
    with av.open(str(once)) as c:
        fresh = av.CodecContext.create("mjpeg", "r")
        packets = [p for p in c.demux(video=0) if p.size]
        try:
            alone = b"".join(bytes(pl) for pl in fresh.decode(packets[5])[0].planes)
        except av.FFmpegError:
            alone = None
    assert alone != serial[0][5][3]


def test_jpeg_tables_reads_segments_and_refuses_what_is_not_jpeg():
    picture = bytes.fromhex("ffd8 ffdb0004aabb ffe00004cccc ffc40005010203 ffda0002") + b"scan"
    assert jpeg_tables(picture) == {
        0xDB: bytes.fromhex("ffdb0004aabb"),
        0xC4: bytes.fromhex("ffc40005010203"),
    }
    assert jpeg_tables(b"\x00\x00\x00\x00\x00") is None
    assert jpeg_tables(picture[:9]) is None  # cut before the scan


def test_mjpeg_tables_are_put_in_front_of_pictures_that_lack_them():
    def packet(hexes, pts):
        p = av.Packet(bytes.fromhex("ffd8" + hexes + "ffda0002") + b"scan")
        p.pts = p.dts = pts
        return p

    dqt1, dht1, dqt2 = "ffdb0004aabb", "ffc40005010203", "ffdb0004ccdd"
    tables = MjpegTables()
    first = packet(dqt1 + dht1, 0)
    assert tables.complete(first) is first  # defines both: nothing to add
    bare = tables.complete(packet("", 1))  # relies on both
    assert bytes(bare) == bytes.fromhex("ffd8" + dqt1 + dht1 + "ffda0002") + b"scan"
    assert (bare.pts, bare.dts) == (1, 1)
    requant = tables.complete(packet(dqt2, 2))  # new quantisation, the old Huffman tables
    assert bytes(requant) == bytes.fromhex("ffd8" + dht1 + dqt2 + "ffda0002") + b"scan"
    assert bytes(tables.complete(packet("", 3)))[2:8] == bytes.fromhex(dqt2)  # the last ones
    odd = av.Packet(b"not a jpeg")
    assert tables.complete(odd) is odd


def test_interlaced_mjpeg_keeps_its_field_order_on_every_thread(tmp_path):
    """Two field pictures per packet (analog capture cards): which comes first, FFmpeg's MJPEG
    decoder reads from the container (codec tag, field order), which each thread's decoder
    must be given."""
    from fractions import Fraction

    def jpeg(img):
        enc = av.CodecContext.create("mjpeg", "w")
        enc.width, enc.height, enc.pix_fmt = img.shape[1], img.shape[0], "yuvj420p"
        enc.time_base = Fraction(1, 25)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuvj420p")
        return b"".join(bytes(p) for p in enc.encode(frame) + enc.encode(None))

    path = tmp_path / "interlaced.avi"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuvj420p"
        for i in range(8):
            img = np.zeros((64, 96, 3), np.uint8)
            img[::2, :, 1] = 200  # the top field green, the bottom one not
            img[:, i * 8 : i * 8 + 16, 2] = 255
            packet = av.Packet(jpeg(img[0::2]) + jpeg(img[1::2]))
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base = Fraction(1, 25)
            out.mux(packet)
    serial, pooled = _raw(path, 1, None), _raw(path, 3, None)
    assert [f[:4] for f in serial[0]] == [f[:4] for f in pooled[0]]
    assert serial[0][0][2] == 96
