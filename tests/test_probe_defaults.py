"""Probing with defaults learns on the bundled MammAlps data and says what each metric was
measured on: the learning rate is chosen on validation windows, a split that would leave a class
untrainable is repaired, and scores on training videos say "training (not held out)"."""

from pathlib import Path

import numpy as np
import pytest
from test_probe_fixtures import fake_store
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.errors import EthoprismError
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract
from ethoprism.probe import labels as L
from ethoprism.probe.classify import jobs, scoring
from ethoprism.probe.split import choose_split

ROOT = Path(__file__).resolve().parents[1]
VIDEOS = [str(ROOT / "data" / "S1_C1_E115_V0342.mp4"), str(ROOT / "data" / "S2_C2_E394_V0135.mp4")]
LABELS = ROOT / "data" / "labels_segments.csv"
CHECKPOINT = str(ROOT / "tests" / "data" / "golden" / "checkpoint.npz")
runner = CliRunner()


@pytest.fixture(scope="module")
def mammalps(tmp_path_factory):
    """The bundled clips through the tiny golden encoder (72 px frames: its trained size)."""
    path = str(tmp_path_factory.mktemp("mammalps") / "s.zarr")
    cfg = RunConfig(
        model="videoprism-tiny",
        checkpoint=CHECKPOINT,
        prep=Preprocessing(frame_size=72, window_stride=4),
    )
    summary = run_extract(VIDEOS, path, cfg)
    assert summary.windows == 146 and not summary.failed
    return path


@pytest.mark.slow
def test_defaults_learn_and_training_scores_say_so(mammalps, tmp_path):
    summary = jobs.train_probe(mammalps, LABELS, tmp_path / "run", test_fraction=0)
    (head,) = summary["heads"]
    choice = head["learning_rate_choice"]
    assert set(choice["candidates"]) == {"5e-05", "0.0003", "0.001", "0.003"}
    losses = {float(k): v for k, v in choice["candidates"].items()}
    assert choice["chosen"] == min(losses, key=losses.get)
    assert summary["metrics_on"].startswith("none") and head["test"] is None

    r = runner.invoke(
        app, ["probe", "eval", mammalps, head["dir"], str(LABELS), "--out", str(tmp_path / "ev")]
    )
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "training (not held out)" in text and "random weights" not in text
    m = jobs.evaluate_head(mammalps, head["dir"], LABELS, tmp_path / "ev")
    assert m["evaluated_on"] == scoring.TRAINING and "training" in m["note"]
    # the single-class baseline: predicting the commonest class for every frame
    truth = np.asarray(m["confusion"]).sum(1)
    baseline = truth.max() / truth.sum()
    assert m["accuracy"] > 1.6 * baseline, (m["accuracy"], baseline)
    assert m["macro_accuracy"] > 2.5 / len(truth), m["macro_accuracy"]


def test_split_of_two_single_behaviour_videos_is_by_time_and_leak_free(mammalps):
    ds = store.open(mammalps)
    wl = L.align(ds, L.read_labels(LABELS))
    split = choose_split(ds, wl, test_fraction=0.25, val_fraction=0.2)
    assert split.how == "by time within video"
    assert (wl.target[split.part == "train"].sum(0) > 0).all()  # every class trainable
    assert {"train", "val", "test"} <= set(split.part)
    start = ds.start_frame.values[wl.window]
    end = start + ds.n_valid_frames.values[wl.window] - 1
    for held in ("val", "test"):
        for i in np.flatnonzero(split.part == held):
            near = (wl.video == wl.video[i]) & (start <= end[i]) & (end >= start[i])
            assert not (near & (split.part == "train")).any(), (held, i)
    # test frames are exactly the frames of test windows
    for v, ranges in split.test_frames.items():
        mask = scoring.frame_mask(ranges, 500)
        for i in np.flatnonzero((split.part == "test") & (wl.video == v)):
            assert mask[start[i] : end[i] + 1].all()


def _table(tmp_path, rows):
    path = tmp_path / "labels.csv"
    path.write_text("video,start_frame,end_frame,action\n" + "".join(f"{r}\n" for r in rows))
    return L.read_labels(path)


def test_split_keeps_a_video_of_every_class_in_training(tmp_path):
    # "dig" is filmed only in c.mp4: a random split by video could send c.mp4 to test
    videos = {f"{n}.mp4": 64 for n in "abcdefgh"}
    ds = fake_store(videos)
    rows = [f"{v},0,63,walk" for v in videos if v != "c.mp4"] + ["c.mp4,0,63,dig"]
    table = _table(tmp_path, rows)
    wl = L.align(ds, table)
    for seed in range(8):
        split = choose_split(ds, wl, test_fraction=0.25, val_fraction=0.25, seed=seed)
        assert split.videos["c.mp4"] == "train"
        assert split.how in ("by video", "by video within class")
        assert sum(p == "test" for p in split.videos.values()) == 2


def test_split_file_without_a_training_video_of_a_class_names_the_fix(tmp_path):
    ds = fake_store({"a.mp4": 64, "b.mp4": 64})
    wl = L.align(ds, _table(tmp_path, ["a.mp4,0,63,walk", "b.mp4,0,63,dig"]))
    (tmp_path / "split.csv").write_text("video,split\na.mp4,train\nb.mp4,test\n")
    with pytest.raises(L.LabelError, match="class 'dig' has no example.*edit the split file"):
        choose_split(ds, wl, split_file=tmp_path / "split.csv")


def test_eval_videos_option_rejects_invalid_values(tmp_path):
    r = runner.invoke(
        app, ["probe", "eval", "s.zarr", "head", "labels.csv", "--out", "x", "--videos", "bogus"]
    )
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "'bogus' is not one of 'test', 'all'" in " ".join(r.output.replace("│", " ").split())
    with pytest.raises(EthoprismError, match="choose one of test, all"):
        jobs.evaluate_head("s.zarr", "head", "labels.csv", tmp_path, videos="bogus")
