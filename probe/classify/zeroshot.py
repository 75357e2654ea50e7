"""Zero-shot ethograms: every window scored against one text prompt per class, with no head.

A window's class probabilities are the official video-text colab's: softmax over the classes of
cosine / 0.01 between its text-aligned video embedding and each class prompt. From there on it is
a trained head's path: probabilities averaged over the windows covering each frame, argmax, the
same ethogram CSV/PNG, and with labels the same metrics as `probe eval`. The per-frame labels are
also written as a label file (video, start_frame, end_frame, action) to seed annotation.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.extract.lvt import PROMPT_TEMPLATE
from ethoprism.probe import labels as L
from ethoprism.probe.classify.predict import (
    frame_labels,
    video_frame_probabilities,
    video_windows,
    write_frame_csv,
)
from ethoprism.probe.classify.scoring import evaluate_heads, expert_frames
from ethoprism.probe.report import confusion_png, ethogram_png
from ethoprism.probe.text import ALIGNED_VAR, TEMPERATURE, encode_prompts, require_aligned
from ethoprism.store import geometry

NAME = "zero-shot"


def window_probabilities(video_embedding: np.ndarray, text_embedding: np.ndarray) -> np.ndarray:
    """(n, C) softmax over classes of cosine / TEMPERATURE (both inputs L2-normalised)."""
    logits = np.asarray(video_embedding, np.float64) @ np.asarray(text_embedding, np.float64).T
    logits /= TEMPERATURE
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)


def write_label_file(path: str | os.PathLike, per_video: dict[str, np.ndarray], classes) -> Path:
    """Runs of equal per-frame labels as a segment label file (`probe train` reads it)."""
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "start_frame", "end_frame", "action"])
        for video, labels in per_video.items():
            edges = np.flatnonzero(np.diff(labels)) + 1
            for start, end in zip(np.r_[0, edges], np.r_[edges, len(labels)], strict=True):
                if labels[start] >= 0:
                    w.writerow([video, int(start), int(end - 1), classes[labels[start]]])
    return path


def zero_shot(
    store_source: str | xr.Dataset,
    classes: list[str],
    out: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    column: str = "action",
    background: str = "none",
    template: str = PROMPT_TEMPLATE,
    checkpoint: str | None = None,
    tokenizer: str | None = None,
    videos: list[str] | None = None,
    storage_options: dict | None = None,
) -> dict:
    """`ethoprism probe zero-shot`: out/<video>.csv and .png per video, out/labels.csv, and with
    `labels` out/metrics.json and out/confusion.png (the metrics of `probe eval`)."""
    classes = _class_names(classes)
    ds = store_source
    if not isinstance(ds, xr.Dataset):
        ds = store.open(store_source, storage_options)
    require_aligned(ds)
    rows, wanted = L.complete_videos(ds, videos)
    table = L.read_labels(labels, column, background) if labels else None
    if table is not None:
        L.check_videos(ds, table)
    text = encode_prompts(
        ds, classes, template=template, checkpoint=checkpoint, tokenizer=tokenizer
    )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probs, written, per_frame = {}, [], {}
    for v in wanted:
        windows = video_windows(ds, v)
        probs[v] = window_probabilities(ds[ALIGNED_VAR].isel(window=windows).values, text)
        per_frame[v], entry = _write_video(ds, v, windows, probs[v], rows[v], classes, table, out)
        written.append(entry)
    result = {
        "head": NAME,
        "classes": classes,
        "prompts": [template.format(c) for c in classes],
        "videos": written,
        "labels_file": str(write_label_file(out / "labels.csv", per_frame, classes)),
    }
    if table is not None:
        result["metrics"] = _score(ds, table, classes, background, wanted, probs, rows, out)
    return result


def _class_names(classes: list[str]) -> list[str]:
    classes = [c.strip() for c in classes if c.strip()]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise EthoprismError(f"--classes needs two or more distinct class names, got {classes}")
    return classes


def _write_video(ds, v, windows, probs, row, classes, table, out: Path) -> tuple[np.ndarray, dict]:
    """Video `v`'s ethogram CSV and PNG (with its expert labels where `table` has them); its
    per-frame labels and its entry in the result's "videos"."""
    n_frames = row["n_frames"]
    frame_prob, _ = video_frame_probabilities(ds, windows, probs, n_frames)
    per_frame = frame_labels(frame_prob)
    stem = Path(v).stem
    times = geometry.video_frame_times(ds, row["row"])  # the stored frame times
    csv_path = write_frame_csv(out / f"{stem}.csv", frame_prob, classes, times)
    expert = None
    if table is not None and v in table.videos:
        truth = expert_frames(table, v, n_frames, False, classes)
        expert = np.where(truth.any(1), truth.argmax(1), -1)
    png = ethogram_png(
        out / f"{stem}.png", classes, per_frame, expert, row["fps"], title=f"{v}: {NAME}"
    )
    return per_frame, {"video": v, "csv": str(csv_path), "png": str(png), "frames": n_frames}


def _score(ds, table, classes, background, wanted, probs, rows, out: Path) -> dict:
    """The metrics of `probe eval` over the labelled videos, written as out/metrics.json and
    out/confusion.png."""
    chosen = [v for v in wanted if v in table.videos]
    if not chosen:
        raise EthoprismError(f"{table.path}: labels none of the videos classified")
    metrics = evaluate_heads(
        ds, table, classes, background, False, chosen, {v: probs[v][None] for v in chosen}, rows
    )[0]
    scored = {"head": NAME, "videos": chosen, **metrics.to_dict()}
    (out / "metrics.json").write_text(json.dumps(scored, indent=1))
    confusion_png(out / "confusion.png", np.array(metrics.confusion), classes, title=NAME)
    return {**scored, "confusion_png": str(out / "confusion.png")}
