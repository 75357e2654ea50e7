"""What a head's scores were measured on, and the scoring itself: per-frame units of the
evaluated videos (only the held-out frames of videos split by time), metrics per stacked head,
and the words figures and reports use ("held-out (test)" or "training (not held out)", the
random-weights mark).
"""

from __future__ import annotations

import numpy as np

from ethoprism.probe import labels as L
from ethoprism.probe.artifacts import SavedHead
from ethoprism.probe.classify.predict import video_frame_probabilities, video_windows
from ethoprism.probe.metrics import classification_metrics
from ethoprism.store.provenance import weights_warning

# what a metric was measured on, written beside every metric (text, JSON, figures)
HELD_OUT = "held-out (test)"
TRAINING = "training (not held out)"
EVAL_VIDEOS = ("test", "all")


def expert_frames(
    table: L.LabelTable, video: str, n_frames: int, multi_label: bool, classes: list[str]
) -> np.ndarray:
    """(n_frames, len(classes)) bool expert labels in the head's class order."""
    t = L.frame_targets(table, video, n_frames, multi_label)
    idx = {c: i for i, c in enumerate(table.classes)}
    return np.stack([t[:, idx[c]] if c in idx else np.zeros(n_frames, bool) for c in classes], 1)


def frame_mask(ranges: list[list[int]] | None, n_frames: int) -> np.ndarray | None:
    """(n_frames,) bool of inclusive [first, last] frame ranges; None (every frame) for None."""
    if ranges is None:
        return None
    mask = np.zeros(n_frames, bool)
    for a, b in ranges:
        mask[a : b + 1] = True
    return mask


def eval_units(
    ds,
    table: L.LabelTable,
    classes: list[str],
    multi_label: bool,
    video: str,
    prob: np.ndarray,
    n_frames: int,
    frames: np.ndarray | None = None,
):
    """(y_true, prob) of one video's evaluated units: covered frames (only `frames` if given),
    or the clip."""
    frame_prob, count = video_frame_probabilities(ds, video_windows(ds, video), prob, n_frames)
    truth = expert_frames(table, video, n_frames, multi_label, classes)
    # leave out frames whose only class the head does not know (e.g. background it never saw)
    known = truth.any(1) & (count > 0)
    if frames is not None:
        known &= frames
    y, p = truth[known], frame_prob[known]
    if table.per_clip:
        y, p = y[:1], p.mean(0, keepdims=True)
    return (y if multi_label else y.argmax(1)), p


def evaluate_heads(
    ds, table, classes, background, multi_label, videos, probs_by_video, store_rows, frames=None
) -> list:
    """Metrics for each of N stacked heads over the given videos (`frames`: {video: mask} to
    evaluate only some frames of a video)."""
    n_heads = next(iter(probs_by_video.values())).shape[0]
    results = []
    for h in range(n_heads):
        ys, ps = zip(
            *(
                eval_units(
                    ds,
                    table,
                    classes,
                    multi_label,
                    v,
                    probs_by_video[v][h],
                    store_rows[v]["n_frames"],
                    (frames or {}).get(v),
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


def held_out(head: SavedHead, videos: list[str]) -> tuple[list[str], dict[str, list]]:
    """The head's held-out videos among `videos` (test videos, videos it never saw, videos split
    by time) and, for videos split by time, their test frame ranges."""
    split = head.training.get("split") or {}
    frames = head.training.get("test_frames") or {}
    if not split:  # no record of what the head trained on: nothing counts as held out
        return [], {}
    held = [v for v in videos if split.get(v) == "test" or v not in split or v in frames]
    return held, {v: frames[v] for v in held if v in frames}


def video_role(head: SavedHead, video: str) -> str:
    """What a video was to the head, for a figure of its predictions."""
    held, frames = held_out(head, [video])
    if video in frames:
        return "test frames held out, the rest training"
    return HELD_OUT if held else TRAINING


def figure_title(head: SavedHead, what: str, evaluated_on: str | None = None) -> str:
    """A figure title in the user's words: label column and classes, head kind, what was scored,
    and the random-weights mark when the store's weights are not a real checkpoint."""
    config = head.config if isinstance(head.config, dict) else vars(head.config)
    parts = [f"{head.labels.get('column', 'label')} ({config.get('kind', '?')} head): {what}"]
    if evaluated_on:
        parts.append(evaluated_on)
    warning = weights_warning(head.store_identity)
    return " — ".join(parts) + (f"\n{warning.upper()}" if warning else "")
