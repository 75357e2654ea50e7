"""The detector: a simple feature pyramid on the frame's token map and an anchor-free head.

Pyramid (ViTDet's simple feature pyramid, as the paper builds it): from the (h, w, D) token map,
levels at strides 4, 2, 1, 1/2, 1/4 of the token grid (transposed convolutions up, max-pooling
down), each projected to `dim` channels by a 1x1 and a 3x3 convolution with LayerNorm.

Head: CenterNet-style, shared by all levels (as FCOS and RetinaNet share theirs): per cell a
heatmap per class (focal loss around Gaussian peaks), the box size (log, in cells) and the
sub-cell offset of the centre (L1). Each box is taught on the one level where it spans about
`cells_per_box` cells, FCOS's scale assignment. Chosen over the paper's Faster R-CNN because it
has no anchors, proposals or RoI pooling to tune: one dense pass, peaks, and per-class NMS give
the boxes, with the same L_cls + L_reg split as the paper's loss. On the planted-signal tests it
reaches AP50 >= 0.9 on held-out videos within seconds of training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ethoprism.errors import EthoprismError
from ethoprism.probe.localize import boxes as box_ops

SCALES = (4.0, 2.0, 1.0, 0.5, 0.25)
PRIOR = 0.01  # initial heatmap probability (focal-loss bias init)


@dataclass(frozen=True)
class DetectorConfig:
    n_classes: int
    dim: int = 128  # channels of every pyramid level
    head_width: int = 128  # channels of the head's hidden 3x3 convolution
    scales: tuple[float, ...] = SCALES
    cells_per_box: float = 4.0  # a box is taught on the level where its larger side spans this
    max_detections: int = 100  # per frame, after NMS
    nms_iou: float = 0.6


class SimplePyramid(nn.Module):
    dim: int
    scales: tuple[float, ...] = SCALES

    @nn.compact
    def __call__(self, x):
        b, h, w, d = x.shape
        levels = []
        for s in self.scales:
            if s == 4:
                y = nn.ConvTranspose(max(d // 2, 8), (2, 2), (2, 2), name="up4_a")(x)
                y = nn.gelu(nn.LayerNorm(name="up4_ln")(y))
                y = nn.ConvTranspose(max(d // 4, 8), (2, 2), (2, 2), name="up4_b")(y)
            elif s == 2:
                y = nn.ConvTranspose(max(d // 2, 8), (2, 2), (2, 2), name="up2")(x)
            elif s == 1:
                y = x
            else:
                k = round(1 / s)
                y = nn.max_pool(x, (k, k), (k, k))
            tag = f"s{s:g}".replace(".", "_")
            y = nn.LayerNorm(name=f"{tag}_ln1")(nn.Conv(self.dim, (1, 1), name=f"{tag}_lat")(y))
            y = nn.LayerNorm(name=f"{tag}_ln2")(nn.Conv(self.dim, (3, 3), name=f"{tag}_out")(y))
            levels.append(y)
        return levels


class CenterHead(nn.Module):
    n_classes: int
    width: int

    @nn.compact
    def __call__(self, y):
        y = nn.gelu(nn.Conv(self.width, (3, 3), name="hidden")(y))
        bias = -math.log((1 - PRIOR) / PRIOR)
        heat = nn.Conv(
            self.n_classes, (1, 1), bias_init=nn.initializers.constant(bias), name="heat"
        )(y)
        reg = nn.Conv(4, (1, 1), name="reg")(y)  # log w, log h (cells), offset x, y (cells)
        return heat, reg


class Detector(nn.Module):
    config: DetectorConfig

    @nn.compact
    def __call__(self, tokens):
        """(b, h, w, D) token maps -> (outputs per level: (heat logits, reg), {'pyramid': ...})."""
        levels = SimplePyramid(self.config.dim, self.config.scales, name="pyramid")(tokens)
        head = CenterHead(self.config.n_classes, self.config.head_width, name="head")
        return [head(y) for y in levels], {"pyramid": levels}


def level_grids(config: DetectorConfig, h: int, w: int) -> list[tuple[int, int]]:
    """(rows, cols) of each pyramid level for an h x w token map."""
    grids = [
        (int(h * s), int(w * s)) if s >= 1 else (h // round(1 / s), w // round(1 / s))
        for s in config.scales
    ]
    if min(min(g) for g in grids) < 1:
        raise EthoprismError(f"a {h}x{w} token map is too small for pyramid scales {config.scales}")
    return grids


def targets(
    config: DetectorConfig, grids, frame_size: int, boxes, labels
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One frame's training targets per level: heat (gh, gw, C), reg (gh, gw, 4), mask (gh, gw).

    `boxes` (n, 4) xywh in encoder-input pixels (clipped to the input), `labels` (n,) ints.
    """
    out = [
        (
            np.zeros((gh, gw, config.n_classes), np.float32),
            np.zeros((gh, gw, 4), np.float32),
            np.zeros((gh, gw), np.float32),
        )
        for gh, gw in grids
    ]
    cells = [(frame_size / gw, frame_size / gh) for gh, gw in grids]
    for (x, y, bw, bh), c in zip(np.asarray(boxes).reshape(-1, 4), labels, strict=True):
        fit = [abs(math.log2(max(bw / cw, bh / ch) / config.cells_per_box)) for cw, ch in cells]
        lvl = int(np.argmin(fit))
        heat, reg, mask = out[lvl]
        cw, ch = cells[lvl]
        gh, gw = grids[lvl]
        u, v = (x + bw / 2) / cw, (y + bh / 2) / ch
        j, i = min(int(u), gw - 1), min(int(v), gh - 1)
        sx, sy = max(bw / cw / 6, 0.5), max(bh / ch / 6, 0.5)
        jj, ii = np.arange(gw), np.arange(gh)
        g = np.exp(-((jj[None, :] - j) ** 2) / (2 * sx**2) - ((ii[:, None] - i) ** 2) / (2 * sy**2))
        heat[:, :, c] = np.maximum(heat[:, :, c], g)
        reg[i, j] = (math.log(bw / cw), math.log(bh / ch), u - j, v - i)
        mask[i, j] = 1.0
    return out


def focal_loss(logits, target):
    """CenterNet's penalty-reduced focal loss, summed (alpha 2, beta 4)."""
    p = jax.nn.sigmoid(logits)
    log_p, log_1p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    pos = target >= 1.0 - 1e-4
    pos_loss = -((1 - p) ** 2) * log_p
    neg_loss = -((1 - target) ** 4) * p**2 * log_1p
    return jnp.sum(jnp.where(pos, pos_loss, neg_loss))


def loss_fn(outputs, level_targets):
    """L_cls (focal, per object) + L_reg (L1 on size and offset at box centres)."""
    cls, reg, n = 0.0, 0.0, 0.0
    for (heat, pred), (t_heat, t_reg, t_mask) in zip(outputs, level_targets, strict=True):
        cls = cls + focal_loss(heat, t_heat)
        reg = reg + jnp.sum(jnp.abs(pred - t_reg).sum(-1) * t_mask)
        n = n + t_mask.sum()
    n = jnp.maximum(n, 1.0)
    return (cls + reg) / n, {"cls": cls / n, "reg": reg / n}


def peaks(outputs, frame_size: int, k: int):
    """Top-k heatmap peaks of every level: (b, L*k) scores, classes and input-pixel xywh boxes."""
    scores, classes, boxes = [], [], []
    for heat, reg in outputs:
        b, gh, gw, c = heat.shape
        cw, ch = frame_size / gw, frame_size / gh
        p = jax.nn.sigmoid(heat)
        top = nn.max_pool(p, (3, 3), (1, 1), padding="SAME")
        p = jnp.where(p == top, p, 0.0)
        kk = min(k, gh * gw * c)
        s, idx = jax.lax.top_k(p.reshape(b, -1), kk)
        cell, cls = idx // c, idx % c
        i, j = cell // gw, cell % gw
        r = jnp.take_along_axis(reg.reshape(b, gh * gw, 4), cell[..., None], axis=1)
        w, h = jnp.exp(r[..., 0]) * cw, jnp.exp(r[..., 1]) * ch
        cx, cy = (j + r[..., 2]) * cw, (i + r[..., 3]) * ch
        scores.append(s)
        classes.append(cls)
        boxes.append(jnp.stack([cx - w / 2, cy - h / 2, w, h], -1))
    return jnp.concatenate(scores, 1), jnp.concatenate(classes, 1), jnp.concatenate(boxes, 1)


def select(config: DetectorConfig, scores, classes, boxes, frame_size: int, min_score=1e-3):
    """One frame's peaks -> (scores, classes, input-pixel boxes) after clipping and NMS."""
    scores, classes = np.asarray(scores, np.float64), np.asarray(classes, np.int64)
    boxes = box_ops.clip(np.asarray(boxes, np.float64), frame_size, frame_size)
    ok = (scores > min_score) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
    scores, classes, boxes = scores[ok], classes[ok], boxes[ok]
    keep = box_ops.nms(boxes, scores, classes, config.nms_iou)[: config.max_detections]
    return scores[keep], classes[keep], boxes[keep]
