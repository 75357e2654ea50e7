"""Localization end to end, honestly: synthetic videos with moving bright shapes of two classes at
known boxes -> real extraction with the tiny random-weight encoder -> pyramid + detection head ->
COCO AP on held-out videos (pycocotools as the judge).

Shapes are APPEARANCE, which random weights carry: a bright square ("square") and a bright
horizontal bar ("bar") wander over a noisy grey floor, one or two per video. The same training
with boxes shuffled between frames learns nothing about where the animals are.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.probe.localize import train

# extraction and two trainings: about a minute of CPU, far more on a loaded machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

WIDTH, HEIGHT, FPS, N_FRAMES, FRAME_SIZE = 120, 90, 24, 64, 72
SHAPES = {"square": (22, 22, 235), "bar": (36, 12, 200)}
# video -> shapes it holds; v0-v5 train, v6-v7 held out
VIDEOS = {
    "v0.mp4": ["square"],
    "v1.mp4": ["bar"],
    "v2.mp4": ["square", "bar"],
    "v3.mp4": ["bar", "square"],
    "v4.mp4": ["square", "bar"],
    "v5.mp4": ["bar", "square"],
    "v6.mp4": ["square", "bar"],
    "v7.mp4": ["bar"],
}
TRAIN, TEST = [f"v{k}.mp4" for k in range(6)], ["v6.mp4", "v7.mp4"]


def tracks(video: str) -> dict[str, np.ndarray]:
    """Per shape, its (N_FRAMES, 4) boxes (x, y, w, h): a bouncing walk inside the frame."""
    rng = np.random.default_rng(int(video[1]) + 10)
    out = {}
    for name in VIDEOS[video]:
        w, h, _ = SHAPES[name]
        pos = rng.uniform([0, 0], [WIDTH - w, HEIGHT - h])
        vel = rng.uniform(-4, 4, 2)
        boxes = []
        for _ in range(N_FRAMES):
            boxes.append([int(pos[0]), int(pos[1]), w, h])
            pos = pos + vel
            for k, hi in ((0, WIDTH - w), (1, HEIGHT - h)):
                if not 0 <= pos[k] <= hi:
                    vel[k] = -vel[k]
                    pos[k] = np.clip(pos[k], 0, hi)
        out[name] = np.array(boxes, np.float64)
    return out


def write_video(path: Path) -> None:
    import av

    rng = np.random.default_rng(int(path.name[1]))
    boxes = tracks(path.name)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "18"})
        stream.width, stream.height = WIDTH, HEIGHT
        stream.pix_fmt = "yuv420p"
        for f in range(N_FRAMES):
            img = np.clip(rng.normal(100, 15, (HEIGHT, WIDTH)), 0, 255)
            for name, b in boxes.items():
                x, y, w, h = b[f].astype(int)
                img[y : y + h, x : x + w] = SHAPES[name][2]
            rgb = np.repeat(img.astype(np.uint8)[..., None], 3, 2)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_annotations(path: Path, videos, every: int = 1, shuffle_seed: int | None = None):
    """CSV annotations of every `every`-th frame; shuffled: each frame gets another's boxes."""
    keys = [(v, f) for v in videos for f in range(0, N_FRAMES, every)]
    boxes = {
        (v, f): [(n, b[f]) for n, b in tracks(v).items()] for v in videos for f in range(N_FRAMES)
    }
    source = list(keys)
    if shuffle_seed is not None:
        source = [keys[i] for i in np.random.default_rng(shuffle_seed).permutation(len(keys))]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video", "frame", "track", "class", "x", "y", "w", "h"])
        for (v, f), src in zip(keys, source, strict=True):
            for t, (name, b) in enumerate(boxes[src]):
                w.writerow([v, f, t, name, *b])
    return path


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """The videos, extracted through the CLI with --frames-from (only the annotated frames'
    windows, every second frame), letterboxed into 72 px frames (a 4x4 token map)."""
    root = tmp_path_factory.mktemp("localize")
    for v in VIDEOS:
        write_video(root / v)
    frames = write_annotations(root / "all.csv", list(VIDEOS), every=2)
    r = CliRunner().invoke(
        app,
        [
            "extract",
            str(root),
            str(root / "features.zarr"),
            "--model",
            "videoprism-tiny",
            "--checkpoint",
            "random",
            "--window-length",
            "16",
            "--frame-size",
            str(FRAME_SIZE),
            "--resize",
            "pad",
            "--batch-size",
            "16",
            "--decode-workers",
            "1",
            "--frames-from",
            str(frames),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    return root


FAST = train.TrainConfig(epochs=25, batch_size=16, learning_rate=3e-3, weight_decay=1e-4)


def train_eval(root: Path, train_csv: Path, name: str) -> dict:
    store = str(root / "features.zarr")
    train.train_detector(store, str(train_csv), str(root / name), FAST, dim=32)
    test_csv = write_annotations(root / "test.csv", TEST, every=2)
    r = CliRunner().invoke(
        app,
        [
            "localize",
            "eval",
            store,
            str(root / name),
            str(test_csv),
            "--out",
            str(root / f"{name}_eval"),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_store_holds_only_the_centred_windows(extracted):
    ds = store.open(str(extracted / "features.zarr"))
    assert ds.attrs["windows"]["centred_on"] == "annotated frames"
    for v in VIDEOS:
        starts = ds.start_frame.values[ds.video_name.values == v]
        want = sorted({max(0, min(f - 7, N_FRAMES - 16)) for f in range(0, N_FRAMES, 2)})
        assert sorted(starts) == want


@pytest.fixture(scope="module")
def trained(extracted):
    root = extracted
    real = train_eval(root, write_annotations(root / "train.csv", TRAIN), "real")
    return root, real


def test_detector_finds_the_shapes_on_held_out_videos_and_not_with_shuffled_boxes(trained):
    root, real = trained
    shuffled = train_eval(
        root, write_annotations(root / "shuffled.csv", TRAIN, shuffle_seed=1), "shuffled"
    )
    print(
        f"held-out AP {real['AP']:.3f} AP50 {real['AP50']:.3f} AP75 {real['AP75']:.3f}; "
        f"shuffled boxes AP50 {shuffled['AP50']:.3f}"
    )
    assert real["AP50"] >= 0.9
    assert shuffled["AP50"] < 0.3


def test_ap_printed_equals_pycocotools_on_the_same_detections(trained):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root, real = trained
    gt = COCO(str(root / "real_eval" / "ground_truth.json"))
    dt = gt.loadRes(json.loads((root / "real_eval" / "detections.json").read_text()))
    e = COCOeval(gt, dt, "bbox")
    e.evaluate()
    e.accumulate()
    e.summarize()
    assert (real["AP"], real["AP50"], real["AP75"]) == tuple(float(v) for v in e.stats[:3])
    # the ground truth is the annotation file's, in original pixels
    boxes = {(a["image_id"], tuple(a["bbox"])) for a in gt.dataset["annotations"]}
    ids = {(i["video"], i["frame"]): i["id"] for i in gt.dataset["images"]}
    truth = tracks("v6.mp4")
    assert (ids[("v6.mp4", 10)], tuple(truth["square"][10])) in boxes
    assert (root / "real_eval" / "pr_curves.png").stat().st_size > 1000


def test_predict_writes_boxes_for_every_frame_and_a_strip(trained):
    root, _ = trained
    out = root / "pred"
    r = CliRunner().invoke(
        app,
        [
            "localize",
            "predict",
            str(root / "features.zarr"),
            str(root / "real"),
            "--video",
            "v7.mp4",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    with open(out / "boxes.csv") as f:
        rows = list(csv.DictReader(f))
    assert {int(row["frame"]) for row in rows} == set(range(N_FRAMES))
    # the best box of each frame is the bar, where it is (odd frames too: never annotated)
    truth = tracks("v7.mp4")["bar"]
    best = {}
    for row in rows:
        f = int(row["frame"])
        if f not in best or float(row["score"]) > float(best[f]["score"]):
            best[f] = row
    from ethoprism.probe.localize.boxes import iou

    hits = [iou([float(best[f][k]) for k in "xywh"], truth[f])[0, 0] > 0.5 for f in range(N_FRAMES)]
    assert np.mean(hits) >= 0.75
    assert np.mean([best[f]["class"] == "bar" for f in range(N_FRAMES)]) >= 0.9
    assert (out / "strip.png").stat().st_size > 1000
    results = json.loads((out / "detections.json").read_text())
    assert len(results) == len(rows) and {"image_id", "category_id", "bbox", "score"} <= set(
        results[0]
    )


def one_line(result) -> str:
    """The CLI's message with rich's wrapping at the terminal width undone."""
    return " ".join(result.output.split())


def test_bad_input_through_the_cli_is_one_clear_line(trained):
    root, _ = trained
    store, detector, out = str(root / "features.zarr"), str(root / "real"), str(root / "x")
    bad = root / "vole.csv"

    def evaluate(row: str):
        bad.write_text(f"video,frame,track,class,x,y,w,h\n{row}\n")
        args = ["localize", "eval", store, detector, str(bad), "--out", out]
        return CliRunner().invoke(app, args)

    r = evaluate("v6.mp4,4,0,vole,1,2,10,10")
    assert r.exit_code == 1
    assert "vole.csv row 2: field 'class' 'vole' was not in the training set" in one_line(r)
    r = evaluate("v6.mp4,64,0,bar,1,2,10,10")
    assert r.exit_code == 1 and "field 'frame': 64 is beyond the end of 'v6.mp4'" in one_line(r)
    r = CliRunner().invoke(
        app, ["localize", "predict", store, detector, "--video", "v9.mp4", "--out", out]
    )
    assert r.exit_code == 1 and "'v9.mp4' is not a complete video" in one_line(r)
