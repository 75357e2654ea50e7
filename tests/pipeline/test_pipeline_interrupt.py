"""Ctrl-C and kills inside a long video: the run says how to resume, keeps the video's saved
pieces, and the rerun continues inside the video and equals an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ethoprism import store
from ethoprism.extract.encoder import default_preprocessing
from ethoprism.extract.windows import plan_windows
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract

DATA = Path(__file__).parent.parent / "data"
CHECKPOINT = str(DATA / "golden" / "checkpoint.npz")
WHEEL = str(DATA / "videos" / "mouse_wheel_250fps.mp4")  # 994 frames
FIVE = str(DATA / "videos" / "mouse_cage_5frames.mp4")
PREP = default_preprocessing("videoprism-tiny", frame_size=72, window_stride=16)  # as the CLI
N_WHEEL = len(plan_windows(994, PREP)[0])
ARGS = ["--model", "videoprism-tiny", "--checkpoint", CHECKPOINT, "--frame-size", "72"]
ARGS += ["--stride", "16", "--batch-size", "4", "--decode-workers", "1", "--json"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "s.zarr"
    cfg = RunConfig(model="videoprism-tiny", checkpoint=CHECKPOINT, prep=PREP, batch_size=4)
    run_extract([FIVE, WHEEL], str(path), cfg)
    return store.open(str(path))


def _start(path, *extra):
    cmd = [sys.executable, "-m", "ethoprism", "extract", FIVE, WHEEL, str(path), *ARGS, *extra]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, text=True
    )


def _saved_windows(path) -> int:
    """Windows of the unfinished video in committed pieces, as the part's record says."""
    for meta in Path(path, "parts").glob("*/zarr.json"):
        piece = json.loads(meta.read_text())["attributes"]["ethoprism_part"].get("unfinished")
        if piece:
            return piece["n_windows"]
    return 0


def _wait_for_pieces(proc, path, at_least: int) -> None:
    deadline = time.monotonic() + 240
    while _saved_windows(path) < at_least:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no piece was saved"
        time.sleep(0.05)


def _assert_same(ds, clean) -> None:
    assert list(ds["video_status"].values) == ["complete", "complete"]
    np.testing.assert_array_equal(ds["start_frame"].values, clean["start_frame"].values)
    np.testing.assert_array_equal(ds["video"].values, clean["video"].values)
    np.testing.assert_array_equal(ds["tokens"].values, clean["tokens"].values)
    np.testing.assert_array_equal(ds["embedding"].values, clean["embedding"].values)


@pytest.mark.slow
def test_ctrl_c_saves_the_video_so_far_and_the_rerun_resumes_inside_it(tmp_path, clean):
    path = tmp_path / "s.zarr"
    proc = _start(path, "--save-every", "0")
    _wait_for_pieces(proc, path, 8)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the decode workers get it too
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted: 1 videos complete, rerun the same command to resume")
    assert "Traceback" not in err
    saved = _saved_windows(path)
    assert 8 <= saved < N_WHEEL
    assert store.open(str(path)).sizes["window"] == 1  # the pieces are invisible to readers

    proc = _start(path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    wheel = json.loads(out)["videos"][1]
    assert wheel["status"] == "complete"
    assert wheel["windows"] == N_WHEEL - saved  # only what was not saved is redone
    _assert_same(store.open(str(path)), clean)
    assert store.validate(str(path))["ok"]


@pytest.mark.slow
def test_kill_inside_a_video_loses_at_most_one_piece(tmp_path, clean):
    path = tmp_path / "s.zarr"
    proc = _start(path, "--save-every", "0")
    _wait_for_pieces(proc, path, 8)
    saved = _saved_windows(path)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = _saved_windows(path)
    assert kept >= saved
    proc = _start(path)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert json.loads(out)["videos"][1]["windows"] == N_WHEEL - kept
    _assert_same(store.open(str(path)), clean)
