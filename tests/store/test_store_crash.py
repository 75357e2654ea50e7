"""Writers killed with SIGKILL at random instants, and several writer processes at once."""

import multiprocessing
import os
import random
import time

import numpy as np
import pytest

from ethoprism import store
from ethoprism.store import Layout, VideoRecord
from ethoprism.store.writer import open_writer  # imported before forking, as the store was

ENCODER = {"name": "videoprism-tiny", "checkpoint_sha256": "random-init-seed-0", "dtype": "float32"}
PREP = {"frame_size": 16, "window_length": 4, "window_stride": 2}
SHAPE = (2, 2, 2, 8)
CTX = multiprocessing.get_context("fork")  # no re-import per child: trials stay short


def video_data(i):
    """Video i: 1..6 windows of deterministic tokens (its content is a function of i only)."""
    n = 1 + i % 6
    x = np.random.default_rng(i).standard_normal((n, *SHAPE)).astype(np.float32)
    return VideoRecord(
        f"/v/clip{i:03d}.mp4", 10 * i + 1, f"{i:064x}", 30.0, 2 * n + 2, n / 15, 8, 8, "h264"
    ), x


def write_videos(path, part, videos, layout):
    """The child's work: write each video not yet complete, in batches of 2, committing each."""
    with open_writer(
        path, encoder=ENCODER, preprocessing=PREP, layout=layout, part=part, windows_per_shard=4
    ) as w:
        for i in videos:
            rec, x = video_data(i)
            if w.is_complete(rec.sha256):
                continue
            if i % 11 == 5:
                w.record_failure(rec, f"bad input {i}")
                continue
            vw = w.begin_video(rec)
            for b in range(0, len(x), 2):
                starts = 2 * np.arange(b, min(b + 2, len(x)))
                vw.append(
                    x[b : b + 2], x[b : b + 2].mean(axis=(1, 2, 3)), starts, 1, 4, starts / 30
                )
            vw.commit()


def _child(path, part, videos, layout):
    write_videos(path, part, videos, layout)
    os._exit(0)


def check_store(path, layout, expect_all=None):
    """Validates; every visible video is complete and bit-identical; returns the visible ids."""
    report = store.validate(path)
    assert report["ok"], report["problems"]
    ds = store.open(path)
    tokens, embedding = ds.tokens.values, ds.embedding.values
    seen = []
    for row in range(ds.sizes["videos"]):
        i = int(ds.video_path.values[row][len("/v/clip") : -4])
        rec, x = video_data(i)
        assert ds.video_sha256.values[row] == rec.sha256
        if ds.video_status.values[row] == "failed":
            assert i % 11 == 5
            continue
        first, n = int(ds.video_first_window.values[row]), int(ds.video_n_windows.values[row])
        assert n == len(x), f"video {i}: {n} windows visible, {len(x)} written"
        want = layout.decode(layout.encode(x))
        np.testing.assert_array_equal(tokens[first : first + n], want)
        np.testing.assert_array_equal(embedding[first : first + n], x.mean(axis=(1, 2, 3)))
        np.testing.assert_array_equal(ds.start_frame.values[first : first + n], 2 * np.arange(n))
        assert (ds.video.values[first : first + n] == row).all()
        seen.append(i)
    assert len(seen) == len(set(seen)), "a video appears twice"
    if expect_all is not None:
        assert sorted(seen) == [i for i in expect_all if i % 11 != 5]
    return set(seen)


@pytest.mark.parametrize("layout", [Layout("float16-round7"), Layout("int8")])
def test_sigkill_at_random_instants_then_resume(tmp_path, layout):
    path = str(tmp_path / "s.zarr")
    videos = list(range(40))
    rng = random.Random(1234)
    committed = set()
    kills = 0
    # Kill instants scale with how long a whole run takes here: fixed ones let a quiet machine
    # finish every video before the last kill (and a loaded one do almost nothing).
    t0 = time.perf_counter()
    whole = CTX.Process(target=_child, args=(str(tmp_path / "timing.zarr"), "w", videos, layout))
    whole.start()
    whole.join()
    run_seconds = time.perf_counter() - t0
    for trial in range(12):
        p = CTX.Process(target=_child, args=(path, "worker-0", videos, layout))
        p.start()
        time.sleep(rng.uniform(0.0, run_seconds / 12))
        p.kill()
        p.join()
        kills += p.exitcode == -9
        now = check_store(path, layout)
        assert committed <= now, f"trial {trial}: committed videos lost: {committed - now}"
        committed = now
    assert kills >= 8  # most trials really were killed mid-run
    assert len(committed) < 36  # and the kills happened before the end
    write_videos(path, "worker-0", videos, layout)  # reopening the part resumes and finishes
    check_store(path, layout, expect_all=videos)
    leftovers = [f for _, _, fs in os.walk(path) for f in fs if f.endswith((".partial", ".tmp"))]
    assert not leftovers


def test_four_writer_processes_write_one_store(tmp_path):
    path = str(tmp_path / "s.zarr")
    layout = Layout()
    procs = [
        CTX.Process(target=_child, args=(path, f"worker-{k}", range(k, 48, 4), layout))
        for k in range(4)
    ]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):  # readers meanwhile see only whole, committed videos
        if os.path.exists(os.path.join(path, "zarr.json")):
            check_store(path, layout)
            reads += 1
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * 4
    assert reads >= 1
    seen = check_store(path, layout, expect_all=list(range(48)))
    ds = store.open(path)
    assert ds.attrs["parts"] == [f"worker-{k}" for k in range(4)]
    assert ds.sizes["window"] == sum(len(video_data(i)[1]) for i in seen)
