"""Still images in localization: PNG and JPEG stills named by a COCO file (`file_name`, no video)
are extracted as one-frame videos whose one window repeats the still 16 times (the paper's
stills), marked as such in the video table, and served to train / eval / predict from the
window's centre, alongside real videos in the same store."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.extract import load_encoder
from ethoprism.extract.preprocess import Preprocessing, resize, to_float
from ethoprism.probe.localize import annotations as ann_io
from ethoprism.probe.localize import features, train

CHECKPOINT = str(Path(__file__).parent.parent / "data" / "golden" / "checkpoint.npz")
SHAPES = {"square": (14, 14, 235), "bar": (24, 8, 200)}  # w, h, grey level
# still -> (width, height, shapes); odd sizes, both formats
STILLS = {
    "s0.png": (70, 50, ["square"]),
    "s1.png": (61, 45, ["bar"]),
    "s2.png": (57, 73, ["square", "bar"]),
    "s3.png": (80, 60, ["bar", "square"]),
    "s4.jpg": (66, 52, ["square"]),
    "s5.jpg": (75, 49, ["bar", "square"]),
}
VIDEOS = {"v0.mp4": ["square", "bar"], "v1.mp4": ["bar"]}
V_WIDTH, V_HEIGHT, V_FRAMES, EVERY = 80, 60, 24, 4


def place(rng, width, height, names) -> list[tuple[str, list[float]]]:
    out = []
    for name in names:
        w, h, _ = SHAPES[name]
        out.append(
            (name, [int(rng.integers(0, width - w)), int(rng.integers(0, height - h)), w, h])
        )
    return out


def draw(rng, width, height, boxes) -> np.ndarray:
    img = np.clip(rng.normal(100, 15, (height, width)), 0, 255)
    for name, (x, y, w, h) in boxes:
        img[y : y + h, x : x + w] = SHAPES[name][2]
    return np.repeat(img.astype(np.uint8)[..., None], 3, 2)


def make_data(root: Path) -> dict:
    """The stills and videos under root/, and their boxes per (file name, frame)."""
    rng = np.random.default_rng(3)
    truth = {}
    (root / "stills").mkdir()
    for name, (width, height, shapes) in STILLS.items():
        truth[(name, 0)] = place(rng, width, height, shapes)
        Image.fromarray(draw(rng, width, height, truth[(name, 0)])).save(
            root / "stills" / name, quality=95
        )
    for name, shapes in VIDEOS.items():
        with av.open(str(root / name), "w") as out:
            stream = out.add_stream("libx264", rate=24, options={"crf": "18"})
            stream.width, stream.height, stream.pix_fmt = V_WIDTH, V_HEIGHT, "yuv420p"
            for f in range(V_FRAMES):
                truth[(name, f)] = place(rng, V_WIDTH, V_HEIGHT, shapes)
                frame = av.VideoFrame.from_ndarray(
                    draw(rng, V_WIDTH, V_HEIGHT, truth[(name, f)]), format="rgb24"
                )
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
    return truth


def write_coco(path: Path, truth: dict) -> Path:
    """Stills by `file_name` alone, video frames by `video` and `frame` (every EVERY-th)."""
    categories = [{"id": k + 1, "name": n} for k, n in enumerate(SHAPES)]
    images, boxes = [], []
    for (name, frame), placed in sorted(truth.items()):
        if name in STILLS:
            images.append({"id": len(images) + 1, "file_name": f"stills/{name}"})
        elif frame % EVERY == 0:
            images.append({"id": len(images) + 1, "video": name, "frame": frame})
        else:
            continue
        for label, bbox in placed:
            category = next(c["id"] for c in categories if c["name"] == label)
            boxes.append(
                {"id": len(boxes) + 1, "image_id": images[-1]["id"], "category_id": category}
                | {"bbox": bbox}
            )
    path.write_text(json.dumps({"images": images, "annotations": boxes, "categories": categories}))
    return path


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("stills")
    truth = make_data(root)
    coco = write_coco(root / "boxes.json", truth)
    args = ["extract", str(root), str(root / "s.zarr"), "--model", "videoprism-tiny"]
    args += ["--checkpoint", CHECKPOINT, "--window-length", "16", "--frame-size", "72"]
    args += ["--resize", "pad", "--layout", "float16", "--batch-size", "8"]
    args += ["--decode-workers", "1", "--frames-from", str(coco), "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    return root, coco, truth


def test_a_still_is_one_frame_whose_window_repeats_it(extracted):
    root, _, _ = extracted
    ds = store.open(str(root / "s.zarr"))
    names = [Path(p).name for p in ds.video_path.values]
    assert sorted(names) == sorted([*STILLS, *VIDEOS])  # directories give annotated stills too
    encoder = load_encoder("videoprism-tiny", CHECKPOINT)
    prep = Preprocessing.from_dict(ds.attrs["preprocessing"])
    for row, name in enumerate(names):
        windows = np.flatnonzero(ds.video.values == row)
        if name in VIDEOS:
            assert ds.video_codec.values[row] == "h264" and len(windows) == 4  # 0, 1, 5, 8
            continue
        width, height, _ = STILLS[name]
        assert (ds.video_codec.values[row], int(ds.video_n_frames.values[row])) == ("image", 1)
        assert ds.video_fps.values[row] == 0 and ds.video_duration.values[row] == 0
        assert (ds.video_width.values[row], ds.video_height.values[row]) == (width, height)
        (w,) = windows
        assert ds.start_frame.values[w] == 0 and ds.n_valid_frames.values[w] == 1
        np.testing.assert_array_equal(ds.frame_time.values[w], np.zeros(16))
        if name.endswith(".png"):  # lossless: the pixels are known here without FFmpeg
            still = resize(np.asarray(Image.open(root / "stills" / name)), prep)
            want = encoder(to_float(np.repeat(still[None, None], 16, axis=1)))
            np.testing.assert_allclose(
                ds.embedding.values[w], np.asarray(want.embedding[0]), rtol=1e-4, atol=1e-4
            )
            np.testing.assert_allclose(
                ds.tokens.values[w].astype(np.float32),
                np.asarray(want.tokens[0]),
                rtol=2e-3,
                atol=2e-3,
            )
    # a still is served from the centre of its window, as a video's frame of interest is
    refs = features.locate(ds, [(n, 0) for n in STILLS])
    assert list(refs.t) == [7] * len(STILLS)


def test_still_annotations_read_and_checked(extracted, tmp_path):
    root, coco, _ = extracted
    ann = ann_io.read(coco)
    assert {(v, f) for v, f in ann.frames if v in STILLS} == {(n, 0) for n in STILLS}
    videos = features.video_table(store.open(str(root / "s.zarr")))
    assert {v: videos[v]["still"] for v in [*STILLS, *VIDEOS]} == {
        **dict.fromkeys(STILLS, True),
        **dict.fromkeys(VIDEOS, False),
    }
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "video,frame,track,class,x,y,w,h\ns1.png,0,,bar,1,2,10,5\ns1.png,3,,bar,1,2,10,5\n"
    )
    with pytest.raises(ann_io.AnnotationError) as e:
        ann_io.check_videos(ann_io.read(bad), videos)
    assert str(e.value) == (
        f"{bad} row 3: field 'frame': video 's1.png' is a still image, one frame: "
        "label it as frame 0, not 3"
    )
    # in COCO, an image that names a still as its video and a frame other than 0
    bad = tmp_path / "bad_still.json"
    images = [{"id": 1, "file_name": "stills/s2.png"}, {"id": 2, "video": "s2.png", "frame": 5}]
    boxes = [{"id": 7 + i, "image_id": i, "category_id": 1, "bbox": [1, 2, 10, 5]} for i in (1, 2)]
    categories = [{"id": 1, "name": "square"}]
    bad.write_text(json.dumps({"images": images, "annotations": boxes, "categories": categories}))
    with pytest.raises(ann_io.AnnotationError) as e:
        ann_io.check_videos(ann_io.read(bad), videos)
    assert "annotation id 9: field 'frame': video 's2.png' is a still image" in str(e.value)
    assert str(e.value).endswith("label it as frame 0, not 5")
    # a video's frame past its end keeps its own message
    bad = tmp_path / "past_end.csv"
    bad.write_text("video,frame,track,class,x,y,w,h\nv0.mp4,24,,bar,1,2,10,5\n")
    with pytest.raises(ann_io.AnnotationError, match=r"row 2: field 'frame': 24 is beyond the end"):
        ann_io.check_videos(ann_io.read(bad), videos)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 4}], "annotations": [], "categories": []}))
    with pytest.raises(ann_io.AnnotationError, match=r"image id 4: .*'file_name' alone"):
        ann_io.read(bad)


@pytest.mark.slow  # 80 training steps and three compilations: most of a minute on a busy CPU
def test_train_eval_and_predict_on_stills_and_videos(extracted):
    root, coco, truth = extracted
    s = str(root / "s.zarr")
    fast = train.TrainConfig(epochs=40, batch_size=10, learning_rate=5e-3, weight_decay=1e-4)
    summary = train.train_detector(s, str(coco), str(root / "det"), fast, dim=32)
    assert summary["frames"] == len(STILLS) + len(VIDEOS) * V_FRAMES // EVERY
    r = CliRunner().invoke(
        app,
        ["localize", "eval", s, str(root / "det"), str(coco), "--out", str(root / "ev")]
        + ["--json"],
    )
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    print(f"training-set AP {metrics['AP']:.3f} AP50 {metrics['AP50']:.3f}")
    assert metrics["AP50"] >= 0.8  # the head fits its stills and frames where they are

    r = CliRunner().invoke(
        app,
        ["localize", "predict", s, str(root / "det"), "--video", "s3.png"]
        + ["--out", str(root / "pred"), "--json"],
    )
    assert r.exit_code == 0, r.output
    with open(root / "pred" / "boxes.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {int(row["frame"]) for row in rows} == {0}
    best = max(rows, key=lambda row: float(row["score"]))
    from ethoprism.probe.localize.boxes import iou

    want = [b for _, b in truth[("s3.png", 0)]]
    assert iou([float(best[k]) for k in "xywh"], want).max() > 0.5
    assert (root / "pred" / "strip.png").stat().st_size > 1000
