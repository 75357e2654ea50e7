"""Box geometry: original-frame pixels <-> encoder-input pixels, IoU and non-maximum suppression.

Boxes are (x, y, w, h) float64 arrays, top-left corner and size, in pixels with the COCO
convention (pixel k covers [k, k+1)). The mapping between an original width x height frame and
the square encoder input is `store.framing`'s, the one the extraction placed the pixels with:
the picture is scaled to scaled_w x scaled_h (each axis by its own factor, as libswscale does)
and placed with its top-left corner at (x0, y0). Both directions are affine, so a round trip is
exact up to float64 rounding, for every resize mode and any frame size.
"""

from __future__ import annotations

import numpy as np

from ethoprism.store.framing import frame_transform


def to_input(boxes, width: int, height: int, frame_size: int, resize: str) -> np.ndarray:
    """Original-frame boxes (n, 4) xywh -> encoder-input boxes (not clipped to the input)."""
    ax, ay, x0, y0 = frame_transform(width, height, frame_size, resize)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([b[:, 0] * ax + x0, b[:, 1] * ay + y0, b[:, 2] * ax, b[:, 3] * ay], 1)


def to_original(boxes, width: int, height: int, frame_size: int, resize: str) -> np.ndarray:
    """Encoder-input boxes (n, 4) xywh -> original-frame boxes; the inverse of `to_input`."""
    ax, ay, x0, y0 = frame_transform(width, height, frame_size, resize)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.stack([(b[:, 0] - x0) / ax, (b[:, 1] - y0) / ay, b[:, 2] / ax, b[:, 3] / ay], 1)


def clip(boxes, width: float, height: float) -> np.ndarray:
    """Boxes cut to [0, width] x [0, height]; a box wholly outside gets zero width or height."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    x1 = np.clip(b[:, 0], 0, width)
    y1 = np.clip(b[:, 1], 0, height)
    x2 = np.clip(b[:, 0] + b[:, 2], 0, width)
    y2 = np.clip(b[:, 1] + b[:, 3], 0, height)
    return np.stack([x1, y1, x2 - x1, y2 - y1], 1)


def iou(a, b) -> np.ndarray:
    """(n, m) intersection over union of xywh boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix = np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2]) - np.maximum(
        a[:, None, 0], b[None, :, 0]
    )
    iy = np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3]) - np.maximum(
        a[:, None, 1], b[None, :, 1]
    )
    inter = np.clip(ix, 0, None) * np.clip(iy, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes, scores, labels, threshold: float = 0.6) -> np.ndarray:
    """Indices kept by greedy per-class non-maximum suppression, best score first."""
    boxes, scores, labels = np.asarray(boxes), np.asarray(scores), np.asarray(labels)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    overlaps = iou(boxes, boxes)
    suppressed = np.zeros(len(scores), bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= (overlaps[i] > threshold) & (labels == labels[i])
    return np.asarray(keep, np.int64)
