"""The decode pool on its own: each video's windows in order, failures costing one video, a
worker that dies, and the batch renumbering when a video fails mid-batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ethoprism.errors import EthoprismError
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.video import probe_video
from ethoprism.extract.windows import iter_windows
from ethoprism.pipeline.decode import DecodePool, End, Failed, Skip, Start, Windows
from ethoprism.pipeline.run import drop_rows

VIDEOS = Path(__file__).parent / "data" / "videos"
HORSE = str(VIDEOS / "horse_288x162.mp4")  # 308 frames
FIVE = str(VIDEOS / "mouse_cage_5frames.mp4")  # shorter than one window
TRUNCATED = str(VIDEOS / "S2_C2_E394_V0135.TRUNCATED_60pct_moov_ok.mp4")
UNOPENABLE = str(VIDEOS / "centered_pair_small.TRUNCATED_50pct_moov_lost.mp4")
PREP = Preprocessing(frame_size=32, window_stride=16)


def reference(path: str):
    """What decoding the video alone gives: (windows, n_frames, duration) or the error text."""
    try:
        windows, it = [], iter_windows(path, PREP)
        while True:
            try:
                windows.append(next(it))
            except StopIteration as stop:
                return windows, *stop.value
    except EthoprismError as e:
        return str(e)


def by_video(pool: DecodePool) -> list[list]:
    """The events, checked to come video after video, split per video."""
    videos: list[list] = [[] for _ in pool.paths]
    last = 0
    for event in pool.events():
        assert event.index >= last, "events went back to an earlier video"
        last = event.index
        videos[event.index].append(event)
    return videos


def test_windows_arrive_in_order_and_a_broken_video_costs_only_itself(tmp_path):
    paths = [HORSE, UNOPENABLE, FIVE, str(tmp_path / "missing.mp4"), TRUNCATED, HORSE]
    done = probe_video(FIVE).sha256
    # threads, and queues smaller than a video: workers wait for the consumer
    with DecodePool(
        paths, PREP, workers=2, complete=frozenset({done}), queue_windows=4, use_processes=False
    ) as pool:
        videos = by_video(pool)
    for path, events in zip(paths, videos, strict=True):
        want = reference(path)
        if path == FIVE:
            assert [type(e) for e in events] == [Skip] and events[0].info.sha256 == done
            continue
        if isinstance(want, str):  # the video fails alone, with the reason decoding gives
            assert isinstance(events[-1], Failed) and events[-1].reason == want, events[-1]
            assert events[-1].path == path
            continue
        windows, n_frames, duration = want
        assert isinstance(events[0], Start) and events[0].info.path == path
        assert isinstance(events[-1], End)
        assert (events[-1].n_frames, events[-1].duration) == (n_frames, duration)
        got = [w for e in events[1:-1] for w in e.windows]
        assert all(isinstance(e, Windows) for e in events[1:-1])
        assert [w.start_frame for w in got] == [w.start_frame for w in windows]
        for a, b in zip(got, windows, strict=True):
            np.testing.assert_array_equal(a.pixels, b.pixels)
            assert a.start_time == b.start_time
    assert len([w for e in videos[0][1:-1] for w in e.windows]) > 4  # more than a queue holds


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_videos_and_spares_the_others():
    """A decoder process killed (as by the OOM killer) before it decodes anything: each of its
    videos is reported failed, naming the exit code; the other worker's videos complete."""
    paths = [HORSE, FIVE, HORSE, FIVE]
    with DecodePool(paths, PREP, workers=2, use_processes=True) as pool:
        pool._workers[0].terminate()  # worker 0 decodes videos 0 and 2
        videos = by_video(pool)
    for i in (0, 2):
        (failed,) = videos[i]
        assert isinstance(failed, Failed) and failed.path == paths[i] and failed.info is None
        assert failed.reason == "decoder worker died (exit code -15)"
    for i in (1, 3):
        windows, n_frames, _ = reference(FIVE)
        assert isinstance(videos[i][0], Start) and isinstance(videos[i][-1], End)
        assert videos[i][-1].n_frames == n_frames
        assert sum(len(e.windows) for e in videos[i][1:-1]) == len(windows)


def test_a_failed_video_leaves_the_batch_renumbered():
    """Rows of a video that fails while its windows wait for a batch leave the batch; the
    rows of other videos keep their pixels, at their new places."""
    pixels = [np.full(3, k) for k in range(6)]
    ops = [
        ("start", 0, "rec0"),
        ("rows", 0, 0, "w0"),
        ("end", 0, 10, 1.0),
        ("start", 1, "rec1"),
        ("rows", 1, 1, "w1"),
        ("rows", 1, 2, "w2"),
        ("start", 2, "rec2"),
        ("rows", 2, 3, "w3"),
        ("rows", 1, 4, "w4"),
        ("rows", 2, 5, "w5"),
    ]
    kept, kept_pixels = drop_rows(ops, pixels, 1)
    assert [o for o in kept if o[0] != "rows"] == [o for o in ops if o[0] != "rows"]
    rows = [o for o in kept if o[0] == "rows"]
    assert [(o[1], o[3]) for o in rows] == [(0, "w0"), (2, "w3"), (2, "w5")]
    assert [o[2] for o in rows] == [0, 1, 2]  # places in the batch, in order
    original = {o[3]: pixels[o[2]] for o in ops if o[0] == "rows"}
    for o in rows:
        assert kept_pixels[o[2]] is original[o[3]]
    assert len(kept_pixels) == len(rows)
    assert drop_rows(ops, pixels, 7) == (ops, pixels)  # no rows of that video: unchanged
