"""`bench host` code paths on tiny real inputs (figures are measured, never asserted)."""

from pathlib import Path

import numpy as np
import pytest
from clips import transcode

from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.video import demux_times, iter_frames, probe_video
from ethoprism.pipeline.host_bench import STAGES, bench_host, cores, make_clips, token_shape

VIDEOS = Path(__file__).parent.parent / "data" / "videos"
HORSE = VIDEOS / "horse_288x162.mp4"
CAGE = VIDEOS / "mouse_cage_5frames.mp4"


def test_make_clips_transcodes_720p_h264_and_mjpeg(tmp_path):
    clips = make_clips(tmp_path, frames=3, source_384=HORSE)
    assert list(clips) == ["384p h264", "720p h264", "720p mjpeg", "720p gray", "1080p h264"]
    for label, codec, pix_fmt in (
        ("720p h264", "h264", "yuv420p"),
        ("720p mjpeg", "mjpeg", "yuvj420p"),
        ("720p gray", "ffv1", "gray"),
    ):
        info = probe_video(clips[label])
        assert (info.codec, info.pix_fmt, info.width, info.height) == (codec, pix_fmt, 1280, 720)
        assert sum(1 for _ in iter_frames(clips[label])) == 3


def test_demux_times_equal_decoded_frame_times():
    """The hardware decoder takes its times from the demuxer: they must be the decoder's."""
    decoded = [f.time for f in iter_frames(HORSE, prep=Preprocessing(frame_size=8))]
    np.testing.assert_array_equal(demux_times(HORSE), decoded)


@pytest.mark.slow
def test_bench_host_reports_every_stage_and_the_cores(tmp_path):
    prep = Preprocessing(frame_size=72)
    gray = transcode(tmp_path / "gray.mkv", "ffv1", "gray", frames=6)
    r = bench_host(
        model="videoprism-tiny",
        prep=prep,
        frames=6,
        windows=4,
        repeats=2,
        rate=100.0,
        clips={"horse": HORSE, "cage": CAGE, "gray": gray},
        directory=tmp_path,
    )
    # a gray source is measured kept gray (one channel) and as the RGB path takes it
    assert list(r["clips"]) == ["horse", "cage", "gray", "gray as RGB"]
    assert [c["channels"] for c in r["clips"].values()] == [3, 3, 1, 3]
    for stride, x in r["strides"].items():
        assert (
            r["clips"]["gray"]["strides"][stride]["stages_ms"]["batching"]
            == (x["batching_gray_ms"])
        )
        assert (
            r["clips"]["gray as RGB"]["strides"][stride]["stages_ms"]["batching"]
            == (x["batching_ms"])
        )
    assert r["token_shape"] == list(token_shape("videoprism-tiny", prep)) == [16, 4, 4, 64]
    assert r["accelerator"]["windows_per_s"] == 100.0  # no accelerator here: the stated rate
    assert set(r["strides"]) == {"8", "16"}
    for clip in r["clips"].values():
        assert clip["decode_ms_per_frame"] > 0 and clip["demux_ms_per_frame"] >= 0
        # the ratio is the median of two pairs' ratios: between them, and what the figures say
        low, high = clip["decode_convert_vs_decode_range"]
        assert low <= clip["decode_convert_vs_decode"] <= high
        assert clip["decode_convert_ms_per_frame"] == pytest.approx(
            clip["decode_ms_per_frame"] * clip["decode_convert_vs_decode"]
        )
        assert 0 < clip["worker_thread_ms_per_frame"] < float("inf")
        for stride, x in clip["strides"].items():
            assert list(x["stages_ms"]) == list(STAGES)
            assert x["total_ms"] == pytest.approx(sum(x["stages_ms"].values()))
            assert x["stages_ms"]["decode"] == pytest.approx(
                int(stride) * clip["decode_ms_per_frame"]
            )
            assert x["cores_per_accelerator"] == pytest.approx(x["total_ms"] * 100.0 / 1e3)
            assert x["cores_per_100_windows_per_s"] == pytest.approx(x["total_ms"] / 10)
            assert x["nvdec_estimate_ms"] < x["total_ms"]
            assert x["one_video_windows_per_s"] == pytest.approx(
                1e3
                / (int(stride) * clip["worker_thread_ms_per_frame"] + x["stages_ms"]["batching"])
            )
    # the tiny tokens really went through the store: 16*4*4*64 float16 values, compressed
    assert 0 < r["store"]["bytes_per_window"] < 16 * 4 * 4 * 64 * 2 * 1.1


def test_cores():
    assert cores(20.0, 450.0) == pytest.approx(9.0)
