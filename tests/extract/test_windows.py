"""Windows: the plan (which starts, how many valid frames), streaming assembly, and exact frame and
timestamp alignment of every window against an independent full decode of real videos."""

from __future__ import annotations

import itertools
import shutil
import tracemalloc
from fractions import Fraction

import av
import numpy as np
import pytest
from test_video import FIVE, HORSE, TRUNCATED, WHEEL, encode_clip, ffprobe_times

from ethoprism.extract.preprocess import Preprocessing, resize
from ethoprism.extract.video import VideoError
from ethoprism.extract.windows import WindowAssembler, iter_windows, plan_windows


def brute_force_plan(n_frames, prep):
    """Starts 0, S, 2S, ... inside the video, up to the first window that reaches the last frame."""
    starts, valid = [], []
    start = 0
    while start < n_frames:
        frames = [start + j * prep.frame_step for j in range(prep.window_length)]
        starts.append(start)
        valid.append(sum(f < n_frames for f in frames))
        if frames[-1] >= n_frames - 1:
            break
        start += prep.window_stride
    return starts, valid


def collect(path, prep, threads=0):
    """All windows of `path` and iter_windows' return value (n_frames, duration)."""
    windows, gen = [], iter_windows(path, prep, threads=threads)
    while True:
        try:
            windows.append(next(gen))
        except StopIteration as end:
            return windows, end.value


SHAPES = list(itertools.product([1, 2, 5, 16], [1, 3, 8, 16, 40], [1, 2, 3]))


@pytest.mark.parametrize("n_frames", [0, 1, 2, 5, 15, 16, 17, 31, 32, 33, 100])
def test_plan_matches_brute_force(n_frames):
    for length, stride, step in SHAPES:
        prep = Preprocessing(window_length=length, window_stride=stride, frame_step=step)
        starts, valid = plan_windows(n_frames, prep)
        assert (list(starts), list(valid)) == brute_force_plan(n_frames, prep), (
            length,
            stride,
            step,
        )


def test_plan_examples():
    prep = Preprocessing()  # 16 frames, stride 8, step 1
    starts, valid = plan_windows(308, prep)
    assert list(starts) == list(range(0, 297, 8)) and valid[-1] == 12 and (valid[:-1] == 16).all()
    assert [list(a) for a in plan_windows(5, prep)] == [[0], [5]]
    assert [list(a) for a in plan_windows(16, prep)] == [[0], [16]]
    assert [list(a) for a in plan_windows(17, prep)] == [[0, 8], [16, 9]]
    # one window for a 10-hour 250 fps recording is computed without a loop
    assert len(plan_windows(9_000_000, prep)[0]) == 1_124_999


@pytest.mark.parametrize("n_frames", [1, 5, 16, 17, 33, 100])
def test_assembler_streams_the_plan(n_frames):
    for length, stride, step in SHAPES:
        prep = Preprocessing(
            frame_size=2, window_length=length, window_stride=stride, frame_step=step
        )
        assembler = WindowAssembler(prep)
        windows = []
        for i in range(n_frames):
            rgb = np.full((2, 2, 3), i, np.uint8) if assembler.needs(i) else None
            windows += assembler.push(i, i / 10, rgb)
        windows += assembler.finish()
        starts, valid = plan_windows(n_frames, prep)
        assert [w.start_frame for w in windows] == list(starts)
        for w, n_valid in zip(windows, valid, strict=False):
            real = w.start_frame + np.arange(n_valid) * step
            expected = np.concatenate(
                [real, np.full(length - n_valid, real[-1])]
            )  # pad: repeat last
            np.testing.assert_array_equal(w.frame_indices, expected)
            np.testing.assert_array_equal(w.pixels[:, 0, 0, 0], expected)
            assert (w.n_valid_frames, w.frame_step, w.start_time) == (
                n_valid,
                step,
                w.start_frame / 10,
            )


def test_assembler_rejects_frames_out_of_order():
    assembler = WindowAssembler(Preprocessing(frame_size=2))
    assembler.push(0, 0.0, np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="expected 1, got 2"):
        assembler.push(2, 0.1, np.zeros((2, 2, 3), np.uint8))


# --- real videos, every window against an independent decode --------------------------------------


def reference_frames(path, prep):
    """Independent full decode: PyAV's high-level API, no threads; (times, resized frames)."""
    times, frames = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            times.append(float(frame.pts * stream.time_base))
            frames.append(resize(frame, prep))
    return np.array(times), np.stack(frames)


def odd_rate_clip(tmp_path):
    """1000000/33333 fps, each frame a different pattern (so a misaligned frame cannot pass)."""
    rng = np.random.default_rng(0)
    return encode_clip(
        tmp_path / "odd_rate.mp4",
        70,
        rate=Fraction(1_000_000, 33_333),
        options={"qp": "0"},
        frame=lambda i: rng.integers(0, 256, (48, 64, 3), np.uint8),
    )


@pytest.mark.parametrize(
    "video, fps, n_frames, prep",
    [
        (HORSE, 24, 308, Preprocessing(frame_size=64)),
        (HORSE, 24, 308, Preprocessing(frame_size=64, resize="pad", window_stride=5, frame_step=2)),
        (WHEEL, 250, 994, Preprocessing(frame_size=48, resize="crop", window_stride=16)),
        (FIVE, 30, 5, Preprocessing(frame_size=64)),
        (
            "odd_rate",
            1_000_000 / 33_333,
            70,
            Preprocessing(frame_size=32, window_stride=4, frame_step=3),
        ),
    ],
    ids=["horse-24fps", "horse-K2-S5-pad", "wheel-250fps-crop", "five-frames-30fps", "odd-rate-K3"],
)
def test_every_window_aligned_with_full_decode(tmp_path, video, fps, n_frames, prep):
    path = odd_rate_clip(tmp_path) if video == "odd_rate" else video
    times, frames = reference_frames(path, prep)
    assert len(frames) == n_frames
    windows, (decoded, duration) = collect(path, prep)
    assert decoded == n_frames and duration == pytest.approx(n_frames / fps, rel=1e-4)
    starts, valid = plan_windows(n_frames, prep)
    assert [w.start_frame for w in windows] == list(starts)
    assert [w.n_valid_frames for w in windows] == list(valid)
    for w in windows:
        grid = w.start_frame + np.arange(prep.window_length) * prep.frame_step
        np.testing.assert_array_equal(w.frame_indices, np.minimum(grid, grid[w.n_valid_frames - 1]))
        assert w.start_time == times[w.start_frame]
        np.testing.assert_array_equal(w.pixels, frames[w.frame_indices])
    if shutil.which("ffprobe"):  # a separate FFmpeg build agrees on every window's start time
        probed = np.array(ffprobe_times(path))
        np.testing.assert_allclose([w.start_time for w in windows], probed[starts], atol=1e-6)


def test_five_frame_clip_is_one_window_padded_by_repetition():
    prep = Preprocessing(frame_size=64)
    (window,), (n_frames, _) = collect(FIVE, prep)
    assert (window.start_frame, window.n_valid_frames, window.start_time, n_frames) == (
        0,
        5,
        0.0,
        5,
    )
    np.testing.assert_array_equal(window.frame_indices, [0, 1, 2, 3, 4] + [4] * 11)
    assert window.pixels.shape == (16, 64, 64, 3) and window.pixels.dtype == np.uint8
    assert (window.pixels[5:] == window.pixels[4]).all()


def test_frame_step_picks_the_right_frames(tmp_path):
    # frame i is a flat gray of level 2*i: its pixels say which frame a window slot holds
    path = encode_clip(
        tmp_path / "levels.mp4",
        100,
        pix_fmt="yuv444p",
        options={"qp": "0"},
        frame=lambda i: np.full((48, 64, 3), 2 * i, np.uint8),
    )
    prep = Preprocessing(frame_size=16, window_length=8, window_stride=5, frame_step=3)
    windows, _ = collect(path, prep, threads=1)
    assert [w.start_frame for w in windows] == list(plan_windows(100, prep)[0])
    for w in windows:
        levels = w.pixels[:, 8, 8].astype(int).mean(axis=1)
        np.testing.assert_allclose(levels, 2 * w.frame_indices, atol=1)


def test_truncated_video_yields_the_windows_before_the_cut_then_fails():
    prep = Preprocessing(frame_size=32)
    starts = []
    with pytest.raises(VideoError, match="decode error at frame 87") as err:
        for w in iter_windows(TRUNCATED, prep):
            starts.append(w.start_frame)
    assert starts == list(range(0, 72, 8))  # the full windows that end before frame 87
    assert str(TRUNCATED) in str(err.value) and err.value.frame == 87


# --- memory does not grow with the video ---------------------------------------------------------


def levels_clip(path, n_frames):
    return encode_clip(
        path,
        n_frames,
        codec="mpeg4",
        width=32,
        height=32,
        frame=lambda i: np.full((32, 32, 3), i % 256, np.uint8),
    )


def test_window_buffer_is_one_span_whatever_the_length(tmp_path):
    prep = Preprocessing(frame_size=32, window_stride=8, frame_step=2)
    assembler = WindowAssembler(prep)
    assert assembler.push(0, 0.0, np.zeros((32, 32, 3), np.uint8)) == []  # the ring is made now
    assert assembler.buffer.shape == (prep.window_span, 32, 32, 3) == (31, 32, 32, 3)
    ring = assembler.buffer
    n_windows = 0
    for i in range(1, 5000):
        n_windows += len(
            assembler.push(
                i, i / 30, np.zeros((32, 32, 3), np.uint8) if assembler.needs(i) else None
            )
        )
    n_windows += len(assembler.finish())
    assert assembler.buffer is ring and ring.shape == (31, 32, 32, 3)  # same ring, never grown
    assert n_windows == len(plan_windows(5000, prep)[0])


def test_iter_windows_memory_independent_of_video_length(tmp_path):
    prep = Preprocessing(frame_size=32, window_stride=4)
    peaks = {}
    for n_frames in (300, 3000):
        path = levels_clip(tmp_path / f"long_{n_frames}.avi", n_frames)
        tracemalloc.start()
        n_windows = sum(1 for _ in iter_windows(path, prep))
        peaks[n_frames] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert n_windows == len(plan_windows(n_frames, prep)[0])
    # 10x the frames, (almost) the same peak of Python-side memory: nothing accumulates per frame
    assert peaks[3000] < 1.2 * peaks[300] + 64 * 1024, peaks
