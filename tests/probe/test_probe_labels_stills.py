"""Still images in classification: PNG stills extracted beside a video (one-frame videos, fps 0,
one window repeating the picture) take labels at frame 0, per segment or per clip; their one
window carries the still's label through alignment, training, prediction and evaluation; a row
giving a still any other frame is refused, naming the file and row."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
from clips import HORSE, transcode
from PIL import Image
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.probe import labels as L
from ethoprism.probe.classify import jobs

CHECKPOINT = str(Path(__file__).parent.parent / "data" / "golden" / "checkpoint.npz")
N_FRAMES = 40  # of the horse clip: windows start at 0, 8, 16, 24 (stride 8), centres 7 .. 31
STILLS = {"a.png": 5, "b.png": 30}  # still -> the horse frame it is made of
SEGMENTS = (
    "video,start_frame,end_frame,action\n"
    "v.mp4,0,19,walk\nv.mp4,20,39,stand\na.png,0,0,walk\nb.png,0,0,stand\n"
)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """A video and two stills cut from it, extracted by the CLI with the tiny golden encoder."""
    root = tmp_path_factory.mktemp("label_stills")
    transcode(root / "v.mp4", "libx264", "yuv420p", N_FRAMES)
    with av.open(str(HORSE)) as src:
        frames = [f.to_ndarray(format="rgb24") for f in src.decode(video=0)]
    for name, frame in STILLS.items():
        Image.fromarray(frames[frame]).save(root / name)
    inputs = [str(root / n) for n in ("v.mp4", *STILLS)]
    args = ["extract", *inputs, str(root / "s.zarr"), "--model", "videoprism-tiny"]
    args += ["--checkpoint", CHECKPOINT, "--window-length", "16", "--frame-size", "72"]
    args += ["--layout", "float16", "--batch-size", "8", "--decode-workers", "1", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    (root / "labels.csv").write_text(SEGMENTS)
    return root


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def label_of(wl: L.WindowLabels, window: int) -> str:
    (i,) = np.flatnonzero(wl.window == window)
    return wl.classes[int(wl.target[i].argmax())]


def test_each_still_window_carries_its_label(extracted, tmp_path):
    ds = store.open(str(extracted / "s.zarr"))
    assert set(ds.video_codec.values) == {"h264", "image"} and 0.0 in ds.video_fps.values
    still = {}
    for name in STILLS:
        (still[name],) = np.flatnonzero(ds.video_name.values == name)  # its one window
        assert (int(ds.start_frame[still[name]]), int(ds.n_valid_frames[still[name]])) == (0, 1)
    per_clip = write(tmp_path / "clips.csv", "video,action\na.png,walk\nb.png,stand\n")
    for table in (L.read_labels(extracted / "labels.csv"), L.read_labels(per_clip)):
        wl = L.align(ds, table)
        assert label_of(wl, still["a.png"]) == "walk" and label_of(wl, still["b.png"]) == "stand"
    wl = L.align(ds, L.read_labels(extracted / "labels.csv"))
    video = np.flatnonzero(ds.video_name.values == "v.mp4")
    # centre frames 7, 15, 23, 31 of the video's windows; the stills' windows beside them
    assert [label_of(wl, w) for w in video] == ["walk", "walk", "stand", "stand"]
    assert sorted(wl.window.tolist()) == sorted([*video.tolist(), *still.values()])


def test_a_head_trains_predicts_and_scores_with_stills(extracted, tmp_path):
    path, labels = str(extracted / "s.zarr"), extracted / "labels.csv"
    split = write(tmp_path / "split.csv", "video,split\nv.mp4,train\na.png,train\nb.png,test\n")
    summary = jobs.train_probe(
        path,
        labels,
        tmp_path / "run",
        head="linear",
        learning_rates=(3e-2,),
        epochs=3,
        batch_size=4,
        dropout=0.0,
        split=split,
    )
    assert summary["classes"] == ["stand", "walk"]
    assert summary["test_videos"] == ["b.png"]
    assert summary["n_windows"]["train"] == 5 and summary["n_windows"]["test"] == 1
    head = summary["heads"][0]["dir"]

    pred = jobs.predict_store(path, head, tmp_path / "pred", labels=labels, videos=list(STILLS))
    for entry in pred["videos"]:
        assert entry["frames"] == 1
        with open(entry["csv"]) as f:
            (row,) = list(csv.DictReader(f))
        assert (row["frame"], float(row["time"])) == ("0", 0.0)
        assert row["label"] in ("stand", "walk")
        assert Path(entry["png"]).read_bytes()[:4] == b"\x89PNG"

    # the held-out still is scored as one frame of "stand"; all videos: 40 + 1 + 1 frames,
    # each class's expert frames counted once (20 of the video's and one still's)
    test = jobs.evaluate_head(path, head, labels, tmp_path / "test")
    assert test["videos"] == ["b.png"] and test["n"] == 1
    assert np.array(test["confusion"]).sum(1).tolist() == [1, 0]
    every = jobs.evaluate_head(path, head, labels, tmp_path / "all", videos="all")
    assert every["n"] == N_FRAMES + 2
    assert np.array(every["confusion"]).sum(1).tolist() == [21, 21]
    saved = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert saved["videos"] == ["a.png", "b.png", "v.mp4"]


def test_a_still_given_another_frame_is_refused_naming_file_and_row(extracted, tmp_path):
    ds = store.open(str(extracted / "s.zarr"))
    for frames in ("0,3", "2,2"):
        bad = write(tmp_path / "bad.csv", SEGMENTS + f"b.png,{frames},walk\n")
        with pytest.raises(L.LabelError) as e:
            L.align(ds, L.read_labels(bad))
        assert str(e.value) == (
            f"{bad} row 6: video 'b.png' is a still image, one frame: label it as frame 0 "
            f"(start_frame 0, end_frame 0), not {frames.replace(',', '..')}"
        )
    r = CliRunner().invoke(
        app, ["probe", "train", str(extracted / "s.zarr"), str(bad), "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "bad.csv row 6: video 'b.png' is a still image" in " ".join(r.output.split())
