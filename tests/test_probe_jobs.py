"""probe.jobs and probe.artifacts: train -> save -> predict -> evaluate on a real on-disk store."""

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from test_probe_fixtures import ENCODER, fake_store, write_store

from ethoprism import store
from ethoprism.probe.artifacts import load_head
from ethoprism.probe.classify import jobs
from ethoprism.probe.classify.heads import HeadConfig

CLASSES = ["none", "run", "sit"]
SEGMENT = 48  # frames per behaviour bout


def bout(video: str, frame: int) -> int:
    """Class index of a frame: bouts of 48 frames cycling none/run/sit, offset per video."""
    return (frame // SEGMENT + int(video[1])) % 3


def planted_tokens(video, start, n_valid, rng):
    """Appearance signal: the centre frame's class shifts channel (class) of a quarter of the
    tokens."""
    x = rng.normal(size=(4, 2, 2, 8))
    x[:, 0, :, bout(video, start + (n_valid - 1) // 2)] += 3.0
    return x


VIDEOS = {f"v{i}.mp4": 200 + 8 * i for i in range(8)}


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_store")
    path = write_store(root / "features.zarr", fake_store(VIDEOS, tokens_fn=planted_tokens))
    rows = ["video,start_frame,end_frame,track,action"]
    for v, n in VIDEOS.items():
        for s in range(0, n, SEGMENT):
            rows.append(f"{v},{s},{min(s + SEGMENT, n) - 1},1,{CLASSES[bout(v, s)]}")
    labels = root / "labels.csv"
    labels.write_text("\n".join(rows) + "\n")
    return path, labels


def test_train_predict_evaluate(real_store, tmp_path):
    path, labels = real_store
    summary = jobs.train_probe(
        path,
        labels,
        tmp_path / "run",
        head="linear",
        learning_rates=(3e-2,),
        epochs=8,
        batch_size=16,
        dropout=0.0,
        test_fraction=0.25,
        val_fraction=0.125,
    )
    assert summary["classes"] == CLASSES
    assert len(summary["test_videos"]) == 2
    test = summary["heads"][0]["test"]
    assert test["accuracy"] > 0.8 and test["mAP"] > 0.8  # chance is 1/3
    head_dir = summary["heads"][0]["dir"]
    saved = load_head(head_dir, HeadConfig)
    assert saved.classes == CLASSES and saved.config.kind == "linear"
    assert load_head(head_dir).config == dataclasses.asdict(saved.config)  # any wing reads it
    assert saved.store_identity == store.identity(store.open(path))
    assert saved.labels["sha256"] and saved.training["split"] == summary["split"]

    pred = jobs.predict_store(
        path, head_dir, tmp_path / "pred", labels=labels, videos=summary["test_videos"]
    )
    first = pred["videos"][0]
    with open(first["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == first["frames"]
    v = first["video"]
    agree = np.mean([r["label"] == CLASSES[bout(v, int(r["frame"]))] for r in rows])
    assert agree > 0.8
    assert Path(first["png"]).read_bytes()[:4] == b"\x89PNG"

    ev = jobs.evaluate_head(path, head_dir, labels, tmp_path / "eval")
    assert ev["videos"] == summary["test_videos"]
    assert ev["mAP"] == pytest.approx(test["mAP"])
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())[
        "accuracy"
    ] == pytest.approx(ev["accuracy"])


def test_few_shot_heads_report_mean_and_std(real_store, tmp_path):
    path, labels = real_store
    summary = jobs.train_probe(
        path,
        labels,
        tmp_path / "fs",
        head="linear",
        shots=(2, 5),
        seeds=3,
        learning_rates=(3e-2,),
        epochs=3,
        batch_size=16,
        dropout=0.0,
    )
    assert [h["name"] for h in summary["heads"]][:2] == [
        "linear_shots2_seed0",
        "linear_shots2_seed1",
    ]
    assert len(summary["heads"]) == 6
    agg = {a["shots"]: a for a in summary["aggregate"]}
    assert agg[5]["n_seeds"] == 3 and agg[5]["mAP"]["std"] >= 0
    accs = [h["test"]["accuracy"] for h in summary["heads"] if h["shots"] == 5]
    assert agg[5]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
    assert load_head(summary["heads"][3]["dir"]).training["n_train_windows"] == 15


def test_head_refused_on_a_store_with_another_encoder(real_store, tmp_path):
    path, labels = real_store
    summary = jobs.train_probe(path, labels, tmp_path / "r", head="linear", epochs=1, batch_size=16)
    other = fake_store(VIDEOS, encoder={**ENCODER, "checkpoint_sha256": "f" * 64})
    with pytest.raises(
        store.StoreIdentityError, match=r"trained on another store.*checkpoint_sha256"
    ):
        jobs.predict_store(other, summary["heads"][0]["dir"], tmp_path / "p")
    # a store of the same features in another token dtype is fine
    same = fake_store(VIDEOS, tokens_fn=planted_tokens)
    same.attrs["layout"] = {"dtype": "int8", "pool": 1}
    jobs.predict_store(same, summary["heads"][0]["dir"], tmp_path / "p", videos=["v0.mp4"])


def test_multi_label_training(real_store, tmp_path):
    path, labels = real_store
    # a second behaviour overlapping the first: "tail" over the first half of every bout
    rows = labels.read_text().splitlines()
    extra = []
    for line in rows[1:]:
        v, s, e = line.split(",")[:3]
        extra.append(f"{v},{s},{min(int(s) + SEGMENT // 2, int(e))},2,tail")
    multi = tmp_path / "multi.csv"
    multi.write_text("\n".join(rows + extra) + "\n")
    summary = jobs.train_probe(
        path,
        multi,
        tmp_path / "m",
        head="linear",
        multi_label=True,
        align="any",
        learning_rates=(3e-2,),
        epochs=4,
        batch_size=16,
        dropout=0.0,
    )
    assert summary["classes"] == ["none", "run", "sit", "tail"]
    test = summary["heads"][0]["test"]
    assert test["average_precision"]["run"] > 0.8 and test["average_precision"]["sit"] > 0.8
    assert load_head(summary["heads"][0]["dir"]).multi_label
