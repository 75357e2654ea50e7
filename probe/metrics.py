"""The paper's classification metrics in numpy, equal to scikit-learn's on the same inputs.

mAP is averaged over behaviours of interest only: the background class is left out, as in the
paper (following CalMS21 / task programming), and so is any class with no positive example in
the evaluated set, whose average precision is undefined (scikit-learn returns 0 with a warning;
here it is NaN and named in `absent`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def average_precision(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the step precision-recall curve (scikit-learn's definition, no interpolation).

    y_true (n,) bool, score (n,) float. Tied scores form one threshold. NaN if no positives.
    """
    y_true = np.asarray(y_true, bool)
    score = np.asarray(score, np.float64)
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], y_true[order]
    # one point per distinct threshold: the last index of each run of tied scores
    ends = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tp = np.cumsum(y)[ends]
    precision = tp / (ends + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) int64 counts; rows are true classes, columns predictions."""
    idx = np.asarray(y_true, np.int64) * n_classes + np.asarray(y_pred, np.int64)
    return np.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def f1_per_class(cm: np.ndarray) -> np.ndarray:
    """Per-class F1 from a confusion matrix; 0 where precision and recall are both undefined."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1)
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


@dataclass(frozen=True)
class Metrics:
    classes: list[str]
    mAP: float  # over behaviours of interest present in y_true
    macro_accuracy: float  # mean per-class recall over classes present in y_true
    accuracy: float
    average_precision: list[float]  # per class, NaN where undefined (background or absent)
    f1: list[float]
    confusion: list[list[int]]  # rows true, columns predicted
    absent: list[str]  # classes with no example in y_true
    n: int

    def to_dict(self) -> dict:
        def nan_to_none(v):  # JSON has no NaN
            return None if np.isnan(v) else float(v)

        return {
            "classes": self.classes,
            "mAP": nan_to_none(self.mAP),
            "macro_accuracy": nan_to_none(self.macro_accuracy),
            "accuracy": nan_to_none(self.accuracy),
            "average_precision": {
                c: nan_to_none(v)
                for c, v in zip(self.classes, self.average_precision, strict=False)
            },
            "f1": dict(zip(self.classes, self.f1, strict=False)),
            "confusion": self.confusion,
            "absent": self.absent,
            "n": self.n,
        }


def classification_metrics(
    y_true: np.ndarray, prob: np.ndarray, classes: list[str], background: str | None = None
) -> Metrics:
    """Metrics for single-label (y_true (n,) int) or multi-label (y_true (n, C) bool) targets.

    prob (n, C): class probabilities. Predictions are the argmax. For multi-label targets the
    accuracy-type metrics use the first true class of each row (background if none).
    """
    prob = np.asarray(prob, np.float64)
    n, n_classes = prob.shape
    y_true = np.asarray(y_true)
    if y_true.ndim == 1:
        onehot = np.zeros((n, n_classes), bool)
        onehot[np.arange(n), y_true] = True
        y_single = y_true.astype(np.int64)
    else:
        onehot = y_true.astype(bool)
        bg = classes.index(background) if background in classes else 0
        y_single = np.where(onehot.any(1), onehot.argmax(1), bg)
    y_pred = prob.argmax(1)
    ap = [
        average_precision(onehot[:, c], prob[:, c]) if classes[c] != background else float("nan")
        for c in range(n_classes)
    ]
    cm = confusion_matrix(y_single, y_pred, n_classes)
    support = cm.sum(1)
    recall = np.diag(cm)[support > 0] / support[support > 0]
    defined = [v for v in ap if not np.isnan(v)]
    return Metrics(
        classes=list(classes),
        mAP=float(np.mean(defined)) if defined else float("nan"),
        macro_accuracy=float(recall.mean()) if len(recall) else float("nan"),
        accuracy=float((y_pred == y_single).mean()) if n else float("nan"),
        average_precision=ap,
        f1=f1_per_class(cm).tolist(),
        confusion=cm.tolist(),
        absent=[c for c, k in zip(classes, onehot.sum(0), strict=False) if k == 0],
        n=n,
    )
