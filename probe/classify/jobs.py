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
from ethoprism.probe.artifacts import SavedHead, check_store, save_head
from ethoprism.probe.classify.heads import HEAD_KINDS, HeadConfig
from ethoprism.probe.classify.predict import (
    frame_labels,
    video_frame_probabilities,
    video_windows,
    write_frame_csv,
)
from ethoprism.probe.classify.scoring import (
    EVAL_VIDEOS,
    HELD_OUT,
    TRAINING,
    evaluate_heads,
    expert_frames,
    figure_title,
    frame_mask,
    held_out,
    video_role,
)
from ethoprism.probe.classify.train import (
    HeadSpec,
    TrainConfig,
    predict_many,
    predictor,
    store_source,
    train_heads,
)
from ethoprism.probe.report import confusion_png, ethogram_png
from ethoprism.probe.split import choose_split
from ethoprism.store import geometry
from ethoprism.store.cache import split_cache
from ethoprism.store.provenance import weights_warning
from ethoprism.store.stream import return_freed_buffers


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


LR_SWEEP = (5e-5, 3e-4, 1e-3, 3e-3)  # the paper's 5e-5 and larger steps for small label sets
SWEEP_VAL_FRACTION = 0.2  # held out to choose the learning rate when none is given


def _choose_learning_rates(plan: list, result) -> tuple[list[int], dict[int, dict]]:
    """Per (shots, seed), the head with the lowest validation loss among the learning rates.

    Returns the kept head positions and, for each, {"chosen", "by", "candidates"}.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (_name, k, seed, _lr, _subset) in enumerate(plan):
        groups[(k, seed)].append(i)
    kept, choice = [], {}
    for members in groups.values():
        loss = {
            i: result.history[i][result.best_epoch[i]]["val_loss"] for i in members
        }  # val loss of the parameters each head keeps
        best = min(members, key=lambda i: np.inf if loss[i] is None else loss[i])
        kept.append(best)
        choice[best] = {
            "chosen": plan[best][3],
            "by": "lowest validation loss",
            "candidates": {f"{plan[i][3]:g}": loss[i] for i in members},
        }
    return sorted(kept), choice


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
    learning_rates: tuple[float, ...] | None = None,
    epochs: int = 30,
    batch_size: int = 32,
    dropout: float = 0.5,
    weight_decay: float = 1e-4,
    balanced: bool = False,
    patience: int = 5,
    test_fraction: float = 0.25,
    val_fraction: float | None = None,
    split: str | os.PathLike | None = None,
    split_seed: int = 0,
    storage_options: dict | None = None,
    progress: Callable[[dict], None] | None = None,
) -> dict:
    """Train heads (shots x seeds x learning rates) in one pass, test them per frame, save them.

    learning_rates None: each head is trained with every rate of LR_SWEEP (extra heads in the
    same pass) and the one with the lowest validation loss is kept; validation windows are then
    held out (val_fraction None: SWEEP_VAL_FRACTION, else 0). The split is `probe.split`'s.
    Writes out/<name>/{params.npz, head.json} and out/summary.json; returns the summary.
    """
    if head not in HEAD_KINDS:
        raise EthoprismError(f"unknown head {head!r}; choose one of {', '.join(HEAD_KINDS)}")
    return_freed_buffers()
    sweep = learning_rates is None
    lrs = LR_SWEEP if sweep else tuple(learning_rates)
    val_fraction = _val_fraction(val_fraction, sweep, split)
    ds = _open(store_source_, storage_options)
    table = L.read_labels(labels, label_column, background)
    wl = L.align(ds, table, how=align, multi_label=multi_label)
    chosen_split = choose_split(
        ds,
        wl,
        test_fraction=test_fraction,
        val_fraction=val_fraction,
        seed=split_seed,
        split_file=split,
    )
    part = chosen_split.part
    train_pos = np.flatnonzero(part == "train")
    val_pos = np.flatnonzero(part == "val")
    if sweep and not len(val_pos) and len(lrs) > 1:
        raise EthoprismError(
            "choosing the learning rate needs validation windows: pass --val-fraction > 0, "
            "a --split file with val videos, or a fixed --lr"
        )
    cfg = TrainConfig(
        learning_rate=lrs[0],
        weight_decay=weight_decay,
        epochs=epochs,
        batch_size=batch_size,
        balanced=balanced,
        multi_label=multi_label,
        patience=patience if len(val_pos) else 0,
    )
    plan = _plan_heads(head, wl, train_pos, shots, seeds, lrs, sweep)
    head_cfg = HeadConfig(head, num_classes=len(wl.classes), dropout=dropout).for_width(
        ds.sizes["c"]
    )
    result = _train(ds, wl, plan, head_cfg, cfg, val_pos, progress)
    kept, lr_choice = (
        _choose_learning_rates(plan, result) if sweep else (list(range(len(plan))), {})
    )
    kept_params = jax.tree_util.tree_map(lambda a: np.asarray(a)[kept], result.params)
    test_videos, tests = _test_heads(
        ds, table, wl, chosen_split, kept_params, head_cfg, background, multi_label, batch_size
    )
    out = Path(out)
    common = SavedHead(
        name="",
        config=head_cfg,
        classes=list(wl.classes),
        background=background if background in wl.classes else None,
        multi_label=multi_label,
        params=None,
        store_identity=store.identity(ds),
        labels={
            "path": str(labels),
            "sha256": table.sha256,
            "column": label_column,
            "align": align,
        },
        training=dataclasses.asdict(cfg),
        metrics={},
    )
    split_record = {
        "n_val_windows": len(val_pos),
        "split": chosen_split.videos,
        "split_how": chosen_split.how,
        "test_frames": chosen_split.test_frames,
        "align": align,
    }
    rows = _save_heads(out, common, split_record, plan, kept, kept_params, result, lr_choice, tests)
    summary = {
        "store": str(store_source_) if not isinstance(store_source_, xr.Dataset) else None,
        "labels": str(labels),
        "label_column": label_column,
        "classes": list(wl.classes),
        "head": head,
        "split": chosen_split.videos,
        "split_how": chosen_split.how,
        "test_frames": chosen_split.test_frames,
        "n_windows": {p: int((part == p).sum()) for p in ("train", "val", "test", "gap")},
        "test_videos": test_videos,
        "metrics_on": HELD_OUT if test_videos else "none (no test windows held out)",
        "weights": weights_warning(store.identity(ds)),
        "heads": rows,
        "aggregate": _aggregate(rows),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _save_heads(
    heads_dir: Path,
    common: SavedHead,
    split_record: dict,
    plan: list[tuple],
    kept: list[int],
    kept_params,
    result,
    lr_choice: dict,
    tests: list[dict],
) -> list[dict]:
    """Each kept head saved as heads_dir/<name> (what it shares with the others in `common`);
    returns the summary's row of each."""
    rows = []
    for j, i in enumerate(kept):
        name, k, seed, lr, subset = plan[i]
        test = tests[j] if tests else None
        training = {
            **common.training,
            "learning_rate": lr,
            "learning_rate_choice": lr_choice.get(i),
            "seed": seed,
            "shots": k,
            "n_train_windows": len(subset),
            **split_record,
            "best_epoch": result.best_epoch[i],
            "epochs_run": result.epochs_run,
            "history": result.history[i],
        }
        params = jax.tree_util.tree_map(lambda a, j=j: np.asarray(a[j]), kept_params)
        save_head(
            heads_dir / name,
            dataclasses.replace(
                common, name=name, params=params, training=training, metrics={"test": test}
            ),
        )
        rows.append(
            {
                "name": name,
                "shots": k,
                "seed": seed,
                "learning_rate": lr,
                "learning_rate_choice": lr_choice.get(i),
                "dir": str(heads_dir / name),
                "best_epoch": result.best_epoch[i],
                "test": test,
            }
        )
    return rows


def _val_fraction(val_fraction: float | None, sweep: bool, split) -> float:
    """The fraction held out for validation; None: enough to choose a learning rate when one is
    to be chosen and no split file says which videos validate, else none."""
    if val_fraction is not None:
        return val_fraction
    return SWEEP_VAL_FRACTION if sweep and not split else 0.0


def _plan_heads(head: str, wl, train_pos, shots, seeds: int, lrs, sweep: bool) -> list[tuple]:
    """One (name, shots, seed, learning rate, training windows) per head to train."""
    plan = []
    for k in shots or (None,):
        for seed in range(seeds):
            subset = train_pos if k is None else L.sample_shots(wl, train_pos, k, seed)
            for lr in lrs:
                named_lr = len(lrs) > 1 and not sweep  # a sweep keeps one head per (shots, seed)
                plan.append(
                    (_head_name(head, k, seed, lr if named_lr else None), k, seed, lr, subset)
                )
    return plan


def _head_name(head: str, shots: int | None, seed: int, lr: float | None) -> str:
    parts = (
        head,
        f"shots{shots}" if shots else "",
        f"seed{seed}",
        f"lr{lr:g}" if lr is not None else "",
    )
    return "_".join(x for x in parts if x)


def _train(ds, wl, plan, head_cfg: HeadConfig, cfg: TrainConfig, val_pos, progress):
    """All the plan's heads in one pass over the union of their training windows."""
    pool = np.unique(np.concatenate([p[4] for p in plan]))
    specs = [
        HeadSpec(name, seed, np.isin(pool, subset), wl.target[pool], lr)
        for name, k, seed, lr, subset in plan
    ]
    src = store_source(ds, head_cfg.input_var)
    val = (src, wl.window[val_pos], wl.target[val_pos]) if len(val_pos) else None
    return train_heads(src, wl.window[pool], specs, head_cfg, cfg, val=val, progress=progress)


def _test_heads(
    ds, table, wl, chosen_split, params, head_cfg, background, multi_label, batch_size
) -> tuple[list[str], list[dict | None]]:
    """The test videos, and each kept head's metrics on their held-out frames (none if nothing
    is held out)."""
    store_rows = L.store_videos(ds)
    test_frames = {
        v: frame_mask(chosen_split.test_frames.get(v), store_rows[v]["n_frames"])
        for v in chosen_split.test_frames
    }
    test_videos = sorted(
        {v for v, p in chosen_split.videos.items() if p == "test"} | set(test_frames)
    )
    if not test_videos:
        return test_videos, []
    probs = _per_video_probs(ds, params, head_cfg, multi_label, test_videos, batch_size)
    metrics = evaluate_heads(
        ds,
        table,
        list(wl.classes),
        background,
        multi_label,
        test_videos,
        probs,
        store_rows,
        test_frames,
    )
    return test_videos, [{**m.to_dict(), "evaluated_on": HELD_OUT} for m in metrics]


def _head_and_store(store_source_, head_dir, storage_options):
    from ethoprism.probe.share import load_any_head  # a head dir or a published head's URL

    head = load_any_head(head_dir, split_cache(storage_options)[1], HeadConfig)
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
    rows, wanted = L.complete_videos(ds, videos)
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
            truth = expert_frames(table, v, n_frames, head.multi_label, head.classes)
            expert = np.where(truth.any(1), truth.argmax(1), -1)
        png = ethogram_png(
            out / f"{stem}.png",
            head.classes,
            frame_labels(frame_prob),
            expert,
            fps,
            title=figure_title(head, f"ethogram of {v}", video_role(head, v)),
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
    """Metrics of a saved head against labels, on its held-out videos and frames ("test") or
    every labelled video ("all").

    With "test" and nothing held out among the labelled videos, the training videos are scored
    and the result says so: every metric carries `evaluated_on`, HELD_OUT or TRAINING.
    Writes out/metrics.json and out/confusion.png; returns the metrics.
    """
    if videos not in EVAL_VIDEOS:
        raise EthoprismError(f"videos {videos!r}: choose one of {', '.join(EVAL_VIDEOS)}")
    head, ds, stacked = _head_and_store(store_source_, head_dir, storage_options)
    table = L.read_labels(labels, head.labels["column"], head.background or defaults.BACKGROUND)
    rows = L.check_videos(ds, table)
    held, test_frames = held_out(head, table.videos)
    note = None
    if videos == "test" and held:
        chosen, evaluated_on = held, HELD_OUT
        frames = {v: frame_mask(r, rows[v]["n_frames"]) for v, r in test_frames.items()}
    else:
        chosen, frames = table.videos, None
        whole = set(held) - set(test_frames)
        evaluated_on = HELD_OUT if set(chosen) <= whole else TRAINING
        if videos == "test":
            note = "no test videos or frames held out among these labels: scored on training videos"
    probs = _per_video_probs(ds, stacked, head.config, head.multi_label, chosen, batch_size)
    metrics = evaluate_heads(
        ds,
        table,
        head.classes,
        head.background,
        head.multi_label,
        chosen,
        probs,
        rows,
        frames,
    )[0]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "head": head.name,
        "videos": chosen,
        "evaluated_on": evaluated_on,
        "note": note,
        "weights": weights_warning(head.store_identity),
        **metrics.to_dict(),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    confusion_png(
        out / "confusion.png",
        np.array(metrics.confusion),
        head.classes,
        title=figure_title(head, "confusion matrix", evaluated_on),
    )
    result["confusion_png"] = str(out / "confusion.png")
    return result
