"""The probe's three jobs, each one call for the CLI: train heads, predict ethograms, evaluate.

Evaluation follows the paper: per-frame predictions (window probabilities averaged over the
windows covering each frame) against per-frame expert labels for segment tables; for per-clip
tables one prediction per clip (the mean over its frames). mAP leaves out the background class.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import xarray as xr

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.probe import defaults
from ethoprism.probe import labels as L
from ethoprism.probe.artifacts import SavedHead, check_store, load_head, save_head
from ethoprism.probe.classify.heads import HEAD_KINDS, HeadConfig
from ethoprism.probe.classify.predict import (
    frame_labels,
    video_frame_probabilities,
    video_windows,
    write_frame_csv,
)
from ethoprism.probe.classify.train import (
    HeadSpec,
    TrainConfig,
    predict_many,
    predictor,
    store_source,
    train_heads,
)
from ethoprism.probe.metrics import classification_metrics
from ethoprism.probe.report import confusion_png, ethogram_png
from ethoprism.store import geometry


def _open(source: str | xr.Dataset, storage_options: dict | None = None) -> xr.Dataset:
    return source if isinstance(source, xr.Dataset) else store.open(str(source), storage_options)


def _per_video_probs(
    ds, params, head: HeadConfig, multi_label: bool, videos: list[str], batch_size: int
) -> dict[str, np.ndarray]:
    """{video: (N, n_windows, C)} for stacked heads, each window read once for all heads."""
    windows = {v: video_windows(ds, v) for v in videos}
    every = np.concatenate(list(windows.values()))
    prob = predict_many(
        predictor(head, multi_label), params, store_source(ds, head.input_var), every, batch_size
    )
    out, at = {}, 0
    for v, w in windows.items():
        out[v] = prob[:, at : at + len(w)]
        at += len(w)
    return out


def _truth(
    table: L.LabelTable, video: str, n_frames: int, multi_label: bool, classes: list[str]
) -> np.ndarray:
    """(n_frames, len(classes)) bool expert labels in the head's class order."""
    t = L.frame_targets(table, video, n_frames, multi_label)
    idx = {c: i for i, c in enumerate(table.classes)}
    return np.stack([t[:, idx[c]] if c in idx else np.zeros(n_frames, bool) for c in classes], 1)


def _eval_units(
    ds,
    table: L.LabelTable,
    classes: list[str],
    multi_label: bool,
    video: str,
    prob: np.ndarray,
    n_frames: int,
):
    """(y_true, prob) of one video's evaluated units: covered frames, or the clip."""
    frame_prob, count = video_frame_probabilities(ds, video_windows(ds, video), prob, n_frames)
    truth = _truth(table, video, n_frames, multi_label, classes)
    # leave out frames whose only class the head does not know (e.g. background it never saw)
    known = truth.any(1) & (count > 0)
    y, p = truth[known], frame_prob[known]
    if table.per_clip:
        y, p = y[:1], p.mean(0, keepdims=True)
    return (y if multi_label else y.argmax(1)), p


def _evaluate(
    ds, table, classes, background, multi_label, videos, probs_by_video, store_rows
) -> list:
    """Metrics for each of N stacked heads over the given videos."""
    n_heads = next(iter(probs_by_video.values())).shape[0]
    results = []
    for h in range(n_heads):
        ys, ps = zip(
            *(
                _eval_units(
                    ds,
                    table,
                    classes,
                    multi_label,
                    v,
                    probs_by_video[v][h],
                    store_rows[v]["n_frames"],
                )
                for v in videos
            ),
            strict=False,
        )
        results.append(
            classification_metrics(
                np.concatenate(ys),
                np.concatenate(ps),
                classes,
                background=background if background in classes else None,
            )
        )
    return results


def _aggregate(rows: list[dict]) -> list[dict]:
    """mean and std of the test metrics over seeds, per (shots, learning rate)."""
    groups = defaultdict(list)
    for r in rows:
        if r["test"]:
            groups[(r["shots"], r["learning_rate"])].append(r["test"])
    out = []
    for (shots, lr), ms in sorted(groups.items(), key=lambda kv: (kv[0][0] or 0, kv[0][1])):
        agg = {"shots": shots, "learning_rate": lr, "n_seeds": len(ms)}
        for key in ("mAP", "macro_accuracy", "accuracy"):
            vals = np.array([m[key] for m in ms if m[key] is not None])
            agg[key] = {
                "mean": float(vals.mean()) if len(vals) else None,
                "std": float(vals.std()) if len(vals) else None,
            }
        out.append(agg)
    return out


def train_probe(
    store_source_: str | xr.Dataset,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    *,
    label_column: str = defaults.LABEL_COLUMN,
    background: str = defaults.BACKGROUND,
    head: str = "map",
    align: str = "centre",
    multi_label: bool = False,
    shots: tuple[int, ...] = (),
    seeds: int = 1,
    learning_rates: tuple[float, ...] = (5e-5,),
    epochs: int = 30,
    batch_size: int = 32,
    dropout: float = 0.5,
    weight_decay: float = 1e-4,
    balanced: bool = False,
    patience: int = 5,
    test_fraction: float = 0.25,
    val_fraction: float = 0.0,
    split: str | os.PathLike | None = None,
    split_seed: int = 0,
    storage_options: dict | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train heads (shots x seeds x learning rates) in one pass, test them per frame, save them.

    Writes out/heads/<name>/{params.npz, head.json} and out/summary.json; returns the summary.
    """
    if head not in HEAD_KINDS:
        raise EthoprismError(f"unknown head {head!r}; choose one of {', '.join(HEAD_KINDS)}")
    ds = _open(store_source_, storage_options)
    table = L.read_labels(labels, label_column, background)
    wl = L.align(ds, table, how=align, multi_label=multi_label)
    videos = sorted(set(wl.video))
    parts = (
        L.read_split(split, videos)
        if split
        else L.split_by_video(videos, test_fraction, val_fraction, split_seed)
    )
    part = np.array([parts.get(v, "unused") for v in wl.video])
    train_pos = np.flatnonzero(part == "train")
    L.check_has_examples(wl, part == "train", "training set")
    cfg = TrainConfig(
        learning_rate=learning_rates[0],
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        balanced=balanced,
        multi_label=multi_label,
        patience=patience if "val" in parts.values() else 0,
    )
    # heads: one per (shots, seed, learning rate); their pool is the union of their subsets
    plan = []
    for k in shots or (None,):
        for seed in range(seeds):
            subset = train_pos if k is None else L.sample_shots(wl, train_pos, k, seed)
            for lr in learning_rates:
                name = "_".join(
                    x
                    for x in (
                        head,
                        f"shots{k}" if k else "",
                        f"seed{seed}",
                        f"lr{lr:g}" if len(learning_rates) > 1 else "",
                    )
                    if x
                )
                plan.append((name, k, seed, lr, subset))
    pool = np.unique(np.concatenate([p[4] for p in plan]))
    specs = [
        HeadSpec(name, seed, np.isin(pool, subset), wl.target[pool], lr)
        for name, k, seed, lr, subset in plan
    ]
    head_cfg = HeadConfig(head, num_classes=len(wl.classes), dropout=dropout).for_width(
        ds.sizes["c"]
    )
    src = store_source(ds, head_cfg.input_var)
    val_pos = np.flatnonzero(part == "val")
    val = (src, wl.window[val_pos], wl.target[val_pos]) if len(val_pos) else None
    result = train_heads(src, wl.window[pool], specs, head_cfg, cfg, val=val, progress=progress)

    test_videos = sorted(v for v, p in parts.items() if p == "test")
    store_rows = L.store_videos(ds)
    tests = [None] * len(specs)
    if test_videos:
        probs = _per_video_probs(ds, result.params, head_cfg, multi_label, test_videos, batch_size)
        tests = [
            m.to_dict()
            for m in _evaluate(
                ds, table, list(wl.classes), background, multi_label, test_videos, probs, store_rows
            )
        ]
    out = Path(out)
    rows = []
    for i, ((name, k, seed, lr, subset), _spec) in enumerate(zip(plan, specs, strict=False)):
        params = jax.tree_util.tree_map(lambda a, i=i: np.asarray(a[i]), result.params)
        training = {
            **dataclasses.asdict(cfg),
            "learning_rate": lr,
            "seed": seed,
            "shots": k,
            "n_train_windows": len(subset),
            "split": parts,
            "align": align,
            "best_epoch": result.best_epoch[i],
            "epochs_run": result.epochs_run,
            "history": result.history[i],
        }
        save_head(
            out / "heads" / name,
            SavedHead(
                name,
                head_cfg,
                list(wl.classes),
                background if background in wl.classes else None,
                multi_label,
                params,
                store.identity(ds),
                {
                    "path": str(labels),
                    "sha256": table.sha256,
                    "column": label_column,
                    "align": align,
                },
                training,
                {"test": tests[i]},
            ),
        )
        rows.append(
            {
                "name": name,
                "shots": k,
                "seed": seed,
                "learning_rate": lr,
                "dir": str(out / "heads" / name),
                "best_epoch": result.best_epoch[i],
                "test": tests[i],
            }
        )
    summary = {
        "store": str(store_source_) if not isinstance(store_source_, xr.Dataset) else None,
        "labels": str(labels),
        "label_column": label_column,
        "classes": list(wl.classes),
        "head": head,
        "split": parts,
        "test_videos": test_videos,
        "heads": rows,
        "aggregate": _aggregate(rows),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _head_and_store(store_source_, head_dir, storage_options):
    head = load_head(head_dir, HeadConfig)
    ds = _open(store_source_, storage_options)
    check_store(head, ds, f" (head {head_dir})")
    stacked = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], head.params)
    return head, ds, stacked


def predict_store(
    store_source_: str | xr.Dataset,
    head_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    labels: str | os.PathLike | None = None,
    videos: list[str] | None = None,
    batch_size: int = 32,
    storage_options: dict | None = None,
) -> dict:
    """Per-frame ethogram of every complete video (or `videos`): out/<video>.csv and .png.

    With `labels`, the PNG draws the expert strip above the predictions.
    """
    head, ds, stacked = _head_and_store(store_source_, head_dir, storage_options)
    rows = {k: r for k, r in L.store_videos(ds).items() if r["status"] == "complete"}
    wanted = videos or sorted(rows)
    for v in wanted:
        if v not in rows:
            raise EthoprismError(f"video {v!r} is not a complete video of the store")
    table = (
        L.read_labels(labels, head.labels["column"], head.background or defaults.BACKGROUND)
        if labels
        else None
    )
    if table is not None:
        L.check_videos(ds, table)
    probs = _per_video_probs(ds, stacked, head.config, head.multi_label, wanted, batch_size)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for v in wanted:
        n_frames, fps = rows[v]["n_frames"], rows[v]["fps"]
        frame_prob, _ = video_frame_probabilities(ds, video_windows(ds, v), probs[v][0], n_frames)
        stem = Path(v).stem
        times = geometry.video_frame_times(ds, rows[v]["row"])
        csv_path = write_frame_csv(out / f"{stem}.csv", frame_prob, head.classes, times)
        expert = None
        if table is not None and v in table.videos:
            truth = _truth(table, v, n_frames, head.multi_label, head.classes)
            expert = np.where(truth.any(1), truth.argmax(1), -1)
        png = ethogram_png(
            out / f"{stem}.png",
            head.classes,
            frame_labels(frame_prob),
            expert,
            fps,
            title=f"{v}: {head.name}",
            background=head.background,
        )
        written.append({"video": v, "csv": str(csv_path), "png": str(png), "frames": n_frames})
    return {"head": head.name, "videos": written}


def evaluate_head(
    store_source_: str | xr.Dataset,
    head_dir: str | os.PathLike,
    labels: str | os.PathLike,
    out: str | os.PathLike,
    *,
    videos: str = "test",
    batch_size: int = 32,
    storage_options: dict | None = None,
) -> dict:
    """Metrics of a saved head against labels, on its test videos ("test") or every labelled video
    ("all").

    Writes out/metrics.json and out/confusion.png; returns the metrics.
    """
    head, ds, stacked = _head_and_store(store_source_, head_dir, storage_options)
    table = L.read_labels(labels, head.labels["column"], head.background or defaults.BACKGROUND)
    L.check_videos(ds, table)
    split = head.training.get("split") or {}
    chosen = (
        sorted(v for v in table.videos if split.get(v) == "test")
        if videos == "test"
        else table.videos
    )
    if not chosen:
        chosen = table.videos  # the head kept no test videos that these labels cover
    probs = _per_video_probs(ds, stacked, head.config, head.multi_label, chosen, batch_size)
    metrics = _evaluate(
        ds,
        table,
        head.classes,
        head.background,
        head.multi_label,
        chosen,
        probs,
        L.store_videos(ds),
    )[0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"head": head.name, "videos": chosen, **metrics.to_dict()}
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    confusion_png(out / "confusion.png", np.array(metrics.confusion), head.classes, title=head.name)
    result["confusion_png"] = str(out / "confusion.png")
    return result
