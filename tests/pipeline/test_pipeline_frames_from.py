"""`extract --frames-from` as a run: the dry run counts only the centred windows it would encode,
and a run interrupted inside a video resumes there and ends equal to an uninterrupted one."""

from __future__ import annotations

import dataclasses
import json
import signal
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.extract.encoder import default_preprocessing
from ethoprism.extract.windows import centred_starts
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract
from ethoprism.pipeline.run import ExtractInterrupted, Reporter

DATA = Path(__file__).parent.parent / "data"
CHECKPOINT = str(DATA / "golden" / "checkpoint.npz")
WHEEL = str(DATA / "videos" / "mouse_wheel_250fps.mp4")  # 994 frames
FIVE = str(DATA / "videos" / "mouse_cage_5frames.mp4")
HORSE = str(DATA / "videos" / "horse_288x162.mp4")  # in the archive, annotated nowhere
PREP = default_preprocessing("videoprism-tiny", frame_size=72, window_length=16)
# 5 and 0 share a window, so do 990 and 993 (clamped at the end): 8 windows of the wheel
WHEEL_FRAMES = [0, 5, 120, 121, 300, 500, 640, 800, 990, 993]
N_WHEEL = len(centred_starts(WHEEL_FRAMES, 994, PREP))


@pytest.fixture(scope="module")
def annotations(tmp_path_factory) -> Path:
    """Annotated frames without boxes (empty class and box): what --frames-from reads."""
    path = tmp_path_factory.mktemp("ann") / "frames.csv"
    rows = [f"mouse_wheel_250fps.mp4,{f},,,,,," for f in WHEEL_FRAMES]
    rows += ["mouse_cage_5frames.mp4,2,,,,,,", "mouse_wheel_250fps.mp4,1200,,,,,,"]  # past the end
    path.write_text("video,frame,track,class,x,y,w,h\n" + "\n".join(rows) + "\n")
    return path


def config(annotations: Path) -> RunConfig:
    centres = {"mouse_wheel_250fps.mp4": (*WHEEL_FRAMES, 1200), "mouse_cage_5frames.mp4": (2,)}
    return RunConfig(
        model="videoprism-tiny",
        checkpoint=CHECKPOINT,
        prep=PREP,
        batch_size=2,
        decode_workers=1,
        piece_seconds=0,  # save the open video after every batch
        centres=tuple(centres.items()),
        frames_from=str(annotations),
    )


@pytest.fixture(scope="module")
def clean(annotations, tmp_path_factory):
    path = tmp_path_factory.mktemp("clean") / "s.zarr"
    summary = run_extract([FIVE, WHEEL, HORSE], str(path), config(annotations))
    assert [v.windows for v in summary.videos] == [1, N_WHEEL]  # the horse is not annotated
    return store.open(str(path))


def test_dry_run_counts_only_the_centred_windows(annotations, clean, tmp_path):
    assert N_WHEEL == 8
    path = tmp_path / "s.zarr"
    args = [FIVE, WHEEL, HORSE, str(path), "--model", "videoprism-tiny", "--checkpoint"]
    args += [CHECKPOINT, "--frame-size", "72", "--window-length", "16"]
    r = CliRunner().invoke(
        app, ["extract", *args, "--frames-from", str(annotations), "--dry-run", "--json"]
    )
    assert r.exit_code == 0, r.output
    plan = json.loads(r.stdout)
    assert [(Path(v["path"]).name, v["windows"]) for v in plan["videos"]] == [
        ("mouse_cage_5frames.mp4", 1),
        ("mouse_wheel_250fps.mp4", N_WHEEL),
    ]
    assert plan["windows"] == clean.sizes["window"] == 1 + N_WHEEL
    assert not path.exists()


class InterruptAfter(Reporter):
    """Ctrl-C, as a terminal sends it, once `batches` batches have gone to the encoder."""

    def __init__(self, batches: int):
        self.left = batches

    def input_wait(self, share: float) -> None:  # called on the main thread at each batch
        self.left -= 1
        if self.left == 0:
            signal.raise_signal(signal.SIGINT)


def test_interrupted_run_resumes_inside_the_video_and_equals_a_clean_run(
    annotations, clean, tmp_path
):
    path = str(tmp_path / "s.zarr")
    cfg = config(annotations)
    with pytest.raises(ExtractInterrupted, match="continues after its"):
        run_extract([FIVE, WHEEL], path, cfg, reporter=InterruptAfter(2))
    part = next(Path(path, "parts").glob("*/zarr.json"))
    saved = json.loads(part.read_text())["attributes"]["ethoprism_part"]["unfinished"]["n_windows"]
    assert 0 < saved < N_WHEEL
    assert store.open(path).sizes["window"] == 1  # only the complete video is visible

    summary = run_extract([FIVE, WHEEL], path, dataclasses.replace(cfg, piece_seconds=30.0))
    assert [(v.status, v.windows) for v in summary.videos] == [
        ("skipped", 0),
        ("complete", N_WHEEL - saved),  # only the windows not saved are redone
    ]
    ds = store.open(path)
    assert ds.attrs["windows"] == clean.attrs["windows"]
    for name in ("video", "start_frame", "n_valid_frames", "frame_time", "tokens", "embedding"):
        np.testing.assert_array_equal(ds[name].values, clean[name].values, err_msg=name)
    assert store.validate(path)["ok"]
