"""End to end, honestly: synthetic videos with a planted behaviour -> real extraction with the tiny
random-weight encoder -> MAP head -> per-frame metrics on held-out videos.

The planted behaviour is APPEARANCE, which random weights carry: a bright square on a noisy grey
floor is large ("stand", 30 px) or small ("lie", 12 px) and wanders slowly; frames without it are
background ("none"). Direction of motion of a small object is not carried by random weights, so it
is not what we plant. The same pipeline with the labels shuffled between bouts does not beat chance.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ethoprism.extract.preprocess import Preprocessing
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract
from ethoprism.probe.classify import jobs

SIZE, FPS, BOUT = 72, 24, 32
SIDE = {"none": 0, "stand": 30, "lie": 12}
N_VIDEOS, N_FRAMES = 8, 128


def bouts(video: int) -> list[str]:
    """The behaviour of each 32-frame bout: every class in every video, in a video-specific
    order."""
    rng = np.random.default_rng(100 + video)
    return list(rng.permutation(["none", "stand", "lie", rng.choice(["stand", "lie"])]))


def write_video(path: Path, video: int) -> None:
    import av

    rng = np.random.default_rng(video)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"crf": "18"})
        stream.width = stream.height = SIZE
        stream.pix_fmt = "yuv420p"
        pos = rng.uniform(20, 52, 2)
        for f in range(N_FRAMES):
            side = SIDE[bouts(video)[f // BOUT]]
            img = np.clip(rng.normal(110, 20, (SIZE, SIZE)), 0, 255)
            pos = np.clip(pos + rng.normal(0, 1.0, 2), side / 2, SIZE - side / 2)
            if side:
                y0, x0 = (pos - side / 2).astype(int)
                img[y0 : y0 + side, x0 : x0 + side] = 235
            frame = av.VideoFrame.from_ndarray(
                np.repeat(img.astype(np.uint8)[..., None], 3, 2), format="rgb24"
            )
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def write_labels(path: Path, shuffle_seed: int | None = None) -> None:
    rows = [
        (f"v{v}.mp4", b * BOUT, (b + 1) * BOUT - 1, lab)
        for v in range(N_VIDEOS)
        for b, lab in enumerate(bouts(v))
    ]
    if shuffle_seed is not None:
        labs = np.random.default_rng(shuffle_seed).permutation([r[3] for r in rows])
        rows = [(*r[:3], lab) for r, lab in zip(rows, labs, strict=False)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "start_frame", "end_frame", "action"])
        w.writerows(rows)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    videos = []
    for v in range(N_VIDEOS):
        write_video(root / f"v{v}.mp4", v)
        videos.append(str(root / f"v{v}.mp4"))
    cfg = RunConfig(
        model="videoprism-tiny",
        checkpoint="random",
        prep=Preprocessing(frame_size=SIZE, window_stride=8),
        batch_size=8,
        decode_workers=1,
    )
    summary = run_extract(videos, str(root / "features.zarr"), cfg)
    assert summary.count("complete") == N_VIDEOS
    split = root / "split.csv"
    split.write_text(
        "video,split\n"
        + "".join(f"v{v}.mp4,{'test' if v >= 6 else 'train'}\n" for v in range(N_VIDEOS))
    )
    return root, split


def train_and_test(root: Path, split: Path, labels: Path, true_labels: Path, name: str) -> dict:
    summary = jobs.train_probe(
        str(root / "features.zarr"),
        labels,
        root / name,
        head="map",
        split=split,
        learning_rates=(5e-3,),
        epochs=25,
        batch_size=16,
    )
    return jobs.evaluate_head(
        str(root / "features.zarr"), summary["heads"][0]["dir"], true_labels, root / f"{name}_eval"
    )


def test_map_head_learns_the_planted_behaviour_and_not_shuffled_labels(extracted):
    root, split = extracted
    write_labels(root / "labels.csv")
    write_labels(root / "shuffled.csv", shuffle_seed=3)
    real = train_and_test(root, split, root / "labels.csv", root / "labels.csv", "real")
    shuffled = train_and_test(root, split, root / "shuffled.csv", root / "labels.csv", "shuffled")
    assert real["videos"] == ["v6.mp4", "v7.mp4"]
    print(
        f"held-out per-frame accuracy {real['accuracy']:.3f}, mAP {real['mAP']:.3f}; "
        f"shuffled labels {shuffled['accuracy']:.3f}, mAP {shuffled['mAP']:.3f}"
    )
    assert real["accuracy"] > 0.75 and real["mAP"] > 0.85  # chance: accuracy ~1/3, mAP ~0.4
    # at or below chance: a handful of shuffled bouts can even teach a wrong association
    assert shuffled["accuracy"] < 0.55 and shuffled["mAP"] < 0.6
