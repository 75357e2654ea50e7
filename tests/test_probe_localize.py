"""Localization end to end, honestly: synthetic videos with moving bright shapes of two classes at
known boxes -> real extraction with the tiny random-weight encoder -> pyramid + detection head ->
COCO AP on held-out videos (pycocotools as the judge).

Shapes are APPEARANCE, which random weights carry: a bright square ("square") and a bright
horizontal bar ("bar") wander over a noisy grey floor, one or two per video. The same training
with boxes shuffled between frames learns nothing about where the animals are.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from ethoprism.extract.preprocess import Preprocessing
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract
from ethoprism.probe.localize import evaluate, predict, train

WIDTH, HEIGHT, FPS, N_FRAMES, FRAME_SIZE = 120, 90, 24, 64, 144
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
    boxes = {(v, f): [(n, b[f]) for n, b in tracks(v).items()] for v in videos for f in range(N_FRAMES)}
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
    root = tmp_path_factory.mktemp("localize")
    for v in VIDEOS:
        write_video(root / v)
    cfg = RunConfig(
        model="videoprism-tiny",
        checkpoint="random",
        prep=Preprocessing(frame_size=FRAME_SIZE, resize="pad", window_stride=1),
        batch_size=16,
        decode_workers=1,
    )
    summary = run_extract([str(root / v) for v in VIDEOS], str(root / "features.zarr"), cfg)
    assert summary.count("complete") == len(VIDEOS)
    return root


FAST = train.TrainConfig(epochs=40, batch_size=32, learning_rate=3e-3, weight_decay=1e-4)


def train_eval(root: Path, train_csv: Path, name: str) -> dict:
    store = str(root / "features.zarr")
    train.train_detector(store, str(train_csv), str(root / name), FAST, dim=32)
    test_csv = write_annotations(root / "test.csv", TEST, every=2)
    return evaluate.evaluate(store, str(root / name), str(test_csv), str(root / f"{name}_eval"))


def test_detector_finds_the_shapes_on_held_out_videos_and_not_with_shuffled_boxes(extracted):
    root = extracted
    real = train_eval(root, write_annotations(root / "train.csv", TRAIN), "real")
    shuffled = train_eval(
        root, write_annotations(root / "shuffled.csv", TRAIN, shuffle_seed=1), "shuffled"
    )
    print(f"held-out AP {real['AP']:.3f} AP50 {real['AP50']:.3f} AP75 {real['AP75']:.3f}; "
          f"shuffled AP50 {shuffled['AP50']:.3f}")
    assert real["AP50"] >= 0.9
    assert shuffled["AP50"] < 0.5 * real["AP50"]
