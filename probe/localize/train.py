"""Training a detector on the token maps of annotated frames (optax AdamW, warm-up then cosine).

The paper's recipe: AdamW, learning rate warmed up linearly from 0 over the first 10% of
training then decayed to 0 on a cosine, weight decay 1e-5, batch 64, no augmentation (Calico).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ethoprism import store
from ethoprism.errors import EthoprismError
from ethoprism.probe.localize import annotations as ann_io
from ethoprism.probe.localize import boxes as box_ops
from ethoprism.probe.localize import features, saved
from ethoprism.probe.localize.model import Detector, DetectorConfig, level_grids, loss_fn, targets
from ethoprism.store.schema import file_sha256

CACHE_BYTES = 2 << 30  # token maps up to this size are read once and kept in memory


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-4
    weight_decay: float = 1e-5
    warmup_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise EthoprismError(
                    f"training field {name!r} must be >= 1, not {getattr(self, name)}"
                )


def learning_rate_fn(cfg: TrainConfig, total_steps: int) -> optax.Schedule:
    warmup = max(1, int(cfg.warmup_fraction * total_steps))
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup, max(total_steps, warmup + 1), 0.0
    )


def make_train_step(model: Detector, tx: optax.GradientTransformation):
    @jax.jit
    def train_step(params, opt_state, tokens, level_targets):
        def loss(p):
            outputs, _ = model.apply({"params": p}, tokens)
            return loss_fn(outputs, level_targets)

        (value, parts), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value, parts

    return train_step


@dataclass
class FrameSet:
    """Annotated frames with their token maps (lazy) and training targets in encoder pixels."""

    refs: features.FrameRefs
    level_targets: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # stacked over frames
    maps: np.ndarray | None  # all token maps when they fit CACHE_BYTES

    def tokens(self, ds, index) -> np.ndarray:
        if self.maps is not None:
            return self.maps[index]
        return features.read_maps(ds, self.refs, index)

    def batch_targets(self, index):
        return [tuple(a[index] for a in level) for level in self.level_targets]


def input_boxes(ds, ann: ann_io.Annotations, classes: list[str]):
    """Per annotated frame: (boxes in encoder-input pixels, clipped; class indices)."""
    prep = ds.attrs["preprocessing"]
    videos = features.video_table(ds)
    out = []
    for (video, _), frame_boxes in ann.by_frame().items():
        v = videos[video]
        xywh = np.array([b.xywh for b in frame_boxes], np.float64).reshape(-1, 4)
        b = box_ops.to_input(xywh, v["width"], v["height"], prep["frame_size"], prep["resize"])
        b = box_ops.clip(b, prep["frame_size"], prep["frame_size"])
        keep = (b[:, 2] > 0) & (b[:, 3] > 0)  # "crop" can cut a box away entirely
        out.append((b[keep], np.array([classes.index(x.label) for x in frame_boxes])[keep]))
    return out


def frame_set(ds, ann: ann_io.Annotations, config: DetectorConfig, classes) -> FrameSet:
    refs = features.locate(ds, ann.frames)
    h, w, d = features.map_shape(ds)
    grids = level_grids(config, h, w)
    size = int(ds.attrs["preprocessing"]["frame_size"])
    per_frame = [targets(config, grids, size, b, c) for b, c in input_boxes(ds, ann, classes)]
    stacked = [
        tuple(np.stack([f[lvl][k] for f in per_frame]) for k in range(3))
        for lvl in range(len(grids))
    ]
    cached = None
    if len(ann.frames) * h * w * d * 4 <= CACHE_BYTES:
        cached = features.read_maps(ds, refs)
    return FrameSet(refs, stacked, cached)


def train_detector(
    store_path: str,
    annotations: str,
    out: str,
    cfg: TrainConfig = TrainConfig(),  # noqa: B008 (frozen)
    *,
    dim: int = 128,
    class_field: str = "species",
    progress: Callable[[int, int, float], None] | None = None,
) -> dict:
    """Train a detector for every class of `annotations` on `store_path`; save it in `out`.

    Returns a summary (classes, frames, boxes, steps, final loss, seconds, warnings).
    """
    t0 = time.perf_counter()
    ds = store.open(store_path)
    features.check_layout(ds)
    ann = ann_io.check_videos(ann_io.read(annotations, class_field), features.video_table(ds))
    classes = ann.classes
    if not classes:
        raise EthoprismError(f"{annotations}: no box to learn from (only empty frames)")
    config = DetectorConfig(n_classes=len(classes), dim=dim, head_width=dim)
    data = frame_set(ds, ann, config, classes)
    n = len(ann.frames)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = -(-n // batch)
    total = cfg.epochs * steps_per_epoch
    model = Detector(config)
    rng = np.random.default_rng(cfg.seed)
    h, w, d = features.map_shape(ds)
    # jitted: eagerly, flax compiles every op of the pyramid separately (seconds, not ms)
    params = jax.jit(model.init)(jax.random.PRNGKey(cfg.seed), jnp.zeros((1, h, w, d)))["params"]
    tx = optax.adamw(learning_rate_fn(cfg, total), weight_decay=cfg.weight_decay)
    opt_state = tx.init(params)
    step_fn = make_train_step(model, tx)
    loss = float("nan")
    step = 0
    for _ in range(cfg.epochs):
        order = rng.permutation(n)
        for k in range(steps_per_epoch):
            # full batches only (the last wraps around), so the step compiles once
            index = np.sort(np.take(order, np.arange(k * batch, (k + 1) * batch), mode="wrap"))
            params, opt_state, value, _ = step_fn(
                params, opt_state, data.tokens(ds, index), data.batch_targets(index)
            )
            step += 1
            if progress is not None and (step % 20 == 0 or step == total):
                loss = float(value)
                progress(step, total, loss)
    loss = float(value)
    summary = {
        "classes": classes,
        "frames": n,
        "boxes": len(ann.boxes),
        "steps": total,
        "loss": loss,
        "seconds": time.perf_counter() - t0,
        "warnings": ann.warnings,
    }
    saved.save(
        out,
        saved.SavedDetector(
            config,
            classes,
            jax.tree_util.tree_map(np.asarray, params),
            store.identity(ds),
            (h, w, d),
            {
                "config": dataclasses.asdict(cfg),
                "annotations": {"path": str(annotations), "sha256": file_sha256(annotations)},
                "loss": loss,
                "steps": total,
            },
        ),
    )
    summary["out"] = str(out)
    return summary
