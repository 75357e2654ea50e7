"""Training many heads at once on windows read lazily from the store.

N heads of one kind (label sets, seeds, few-shot subsets, learning rates) train in one pass: each
minibatch is read once, by a prefetching thread, and fed to all heads, whose parameters and
optimiser states are stacked on a leading axis and stepped with `jax.vmap`.

How heads with different training sets share minibatches: every head trains on a subset (mask)
of one window pool; an epoch walks the pool in an order fixed by `data_seed` alone, and a head
gives weight 0 to windows outside its subset. A head whose subset has no window in a minibatch
takes no step at all (parameters, optimiser state, step count and dropout stream unchanged), and
its cosine schedule runs over the steps in which it does have examples. So a head's result
depends only on the pool, its subset, its seed and its learning rate, never on the other heads:
trained alone on the same pool it comes out the same (tested). The cost of sharing is reading
pool windows that some heads ignore; few-shot runs use the union of their subsets as the pool.

Optimiser: AdamW (optax scale_by_adam + decoupled weight decay, scaled by the learning rate) with
cosine decay, the paper's lr 5e-5 and dropout 0.5 by default; softmax cross-entropy, or sigmoid
cross-entropy for multi-label targets. Early stopping: a head stops stepping after `patience`
epochs without a lower validation loss and keeps its best parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ethoprism import store
from ethoprism.probe.classify.heads import HeadConfig, make_head

Source = Callable[[np.ndarray], np.ndarray]  # window indices -> stacked inputs (numpy)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 5e-5  # the paper's; a head may override it
    weight_decay: float = 1e-4
    epochs: int = 30
    batch_size: int = 32
    warmup_fraction: float = 0.0  # of each head's steps, linear from 0
    balanced: bool = False  # class-balanced loss (inverse class frequency in the head's subset)
    multi_label: bool = False  # sigmoid instead of softmax cross-entropy
    patience: int = 5  # epochs without a better validation loss before a head stops; 0: never
    data_seed: int = 0  # minibatch order
    # minibatches read ahead: one hides a read behind a step (a 16-window base batch reads in
    # ~0.3 s, a 16-head step takes seconds); each more holds another batch (200 MB at 16 x base)
    prefetch: int = 1


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    name: str
    seed: int  # parameter init and dropout
    mask: np.ndarray  # (n_pool,) bool: the head's training windows within the pool
    target: np.ndarray  # (n_pool, C) float32
    learning_rate: float | None = None  # None: TrainConfig.learning_rate


class HeadState(NamedTuple):  # one head; stacked on a leading axis for N heads
    params: Any
    opt_state: Any
    step: jax.Array  # steps this head has taken
    total: jax.Array  # steps it will take if it never stops early
    peak_lr: jax.Array
    seed_key: jax.Array


@dataclasses.dataclass
class TrainResult:
    params: Any  # stacked best parameters (numpy), leading axis = heads
    history: list[list[dict]]  # per head, per epoch: train_loss, val_loss
    best_epoch: list[int]
    epochs_run: int


def store_source(ds, var: str) -> Source:
    """Windows read lazily from a store dataset (`store.read_windows`)."""
    return lambda idx: store.read_windows(ds, idx, var)


def memory_source(array: np.ndarray) -> Source:
    return lambda idx: array[idx]


def prefetch(source: Source, batches: list[np.ndarray], depth: int) -> Iterator[np.ndarray]:
    """Read minibatches in a background thread, at most `depth` ahead of the consumer.

    A read starts only when one of `depth` slots is free (a slot frees when the consumer takes a
    batch), so at most `depth` batches exist beyond the consumer's, counting the one being read.
    """
    q: queue.Queue = queue.Queue()
    slots = threading.Semaphore(max(depth, 1))
    stop = threading.Event()

    def worker():
        try:
            for b in batches:
                while not slots.acquire(timeout=0.1):
                    if stop.is_set():
                        return
                if stop.is_set():
                    return
                q.put(source(b))
            q.put(StopIteration)
        except BaseException as e:  # noqa: BLE001  handed to the consumer
            q.put(e)

    thread = threading.Thread(target=worker, daemon=True, name="probe-prefetch")
    thread.start()
    try:
        while (item := q.get()) is not StopIteration:
            if isinstance(item, BaseException):
                raise item
            slots.release()
            yield item
    finally:
        stop.set()
        thread.join()


def create_learning_rate_fn(peak_lr, total_steps, warmup_steps):
    """Linear warmup then cosine decay to 0; traceable, so every head can have its own numbers."""

    def lr(step):
        warm = peak_lr * (step + 1) / jnp.maximum(warmup_steps, 1)
        done = jnp.clip(
            (step - warmup_steps) / jnp.maximum(total_steps - warmup_steps, 1), 0.0, 1.0
        )
        return jnp.where(step < warmup_steps, warm, 0.5 * peak_lr * (1 + jnp.cos(jnp.pi * done)))

    return lr


def loss_per_example(logits, target, class_weight, multi_label: bool):
    """Cross-entropy per example; class_weight scales each class's (positive) term."""
    if multi_label:
        logp, log1mp = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
        return -(class_weight * target * logp + (1 - target) * log1mp).sum(-1)
    return -(class_weight * target * jax.nn.log_softmax(logits)).sum(-1)


def train_step(
    model, tx, multi_label, warmup_fraction, state: HeadState, x, target, weight, class_weight
):
    """One AdamW step of one head on a minibatch; no change if it has no example in it."""
    dropout_key = jax.random.fold_in(state.seed_key, state.step)

    def loss_fn(params):
        logits = model.apply({"params": params}, x, train=True, rngs={"dropout": dropout_key})
        per = loss_per_example(logits, target, class_weight, multi_label)
        return (per * weight).sum() / jnp.maximum(weight.sum(), 1e-12)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    warmup = jnp.floor(warmup_fraction * state.total)
    lr = create_learning_rate_fn(state.peak_lr, state.total, warmup)(state.step)
    take = weight.sum() > 0

    def keep(new, old):
        return jnp.where(take, new, old)

    tree = jax.tree_util.tree_map
    params = tree(lambda p, u: keep(p - lr * u, p), state.params, updates)
    new = state._replace(
        params=params,
        opt_state=tree(keep, opt_state, state.opt_state),
        step=state.step + take.astype(state.step.dtype),
    )
    return new, jnp.where(take, loss, jnp.nan)


def eval_step(model, multi_label, params, x):
    """Class probabilities of one head."""
    logits = model.apply({"params": params}, x, train=False)
    return jax.nn.sigmoid(logits) if multi_label else jax.nn.softmax(logits)


def make_optimizer(weight_decay: float) -> optax.GradientTransformation:
    """AdamW without its learning rate, which each head applies itself (it differs per head)."""
    return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay))


@functools.lru_cache(maxsize=16)
def _compiled(head: HeadConfig, multi_label: bool, warmup_fraction: float, weight_decay: float):
    model, tx = make_head(head), make_optimizer(weight_decay)
    step = functools.partial(train_step, model, tx, multi_label, warmup_fraction)
    # the state is donated: parameters and moments are updated in place instead of in fresh
    # memory, whose page faults cost ~0.2 s a step at 16 MAP heads (0.8 GB)
    many_step = jax.jit(jax.vmap(step, in_axes=(0, None, 0, 0, 0)), donate_argnums=0)
    many_eval = jax.jit(
        jax.vmap(functools.partial(eval_step, model, multi_label), in_axes=(0, None))
    )

    def init_one(seed_key, example):
        params = model.init({"params": seed_key}, example, train=False)["params"]
        return params, tx.init(params)

    # all heads drawn in one call, straight into the stacked arrays: initialising them one by one
    # and stacking held two copies of every state, and left 16 heads' worth (1.4 GB at the base
    # width) of ~10 MB buffers in malloc's heap, kept by the process for the rest of the run
    return many_step, many_eval, jax.jit(jax.vmap(init_one, in_axes=(0, None)))


def epoch_batches(n_pool: int, batch_size: int, data_seed: int, epoch: int) -> list[np.ndarray]:
    """Positions in the pool for each minibatch of an epoch; the last one is padded with -1."""
    order = np.random.default_rng([data_seed, epoch]).permutation(n_pool)
    pad = -len(order) % batch_size
    order = np.concatenate([order, np.full(pad, -1)])
    return [np.sort(b) for b in order.reshape(-1, batch_size)]


def class_weights(spec: HeadSpec, cfg: TrainConfig) -> np.ndarray:
    n_classes = spec.target.shape[1]
    if not cfg.balanced:
        return np.ones(n_classes, np.float32)
    t = spec.target[spec.mask]
    pos = t.sum(0)
    if cfg.multi_label:
        return ((len(t) - pos) / np.maximum(pos, 1)).astype(np.float32)
    return (len(t) / (n_classes * np.maximum(pos, 1))).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What every epoch reads: the pool's windows, each epoch's minibatches (positions in the
    pool, -1 padding), and each head's weights, targets and class weights on the pool."""

    pool: np.ndarray  # (n_pool,) window indices
    batches: list[list[np.ndarray]]  # per epoch
    mask: np.ndarray  # (N, n_pool) float32
    target: np.ndarray  # (N, n_pool, C) float32
    class_weight: jax.Array  # (N, C)


def _plan(pool: np.ndarray, specs: list[HeadSpec], cfg: TrainConfig) -> _Plan:
    return _Plan(
        pool,
        [epoch_batches(len(pool), cfg.batch_size, cfg.data_seed, e) for e in range(cfg.epochs)],
        np.stack([s.mask for s in specs]).astype(np.float32),
        np.stack([s.target for s in specs]).astype(np.float32),
        jnp.asarray(np.stack([class_weights(s, cfg) for s in specs])),
    )


def _initial_state(
    init, example: jax.Array, specs: list[HeadSpec], cfg: TrainConfig, plan: _Plan
) -> HeadState:
    """The stacked heads before their first step."""
    # each head's schedule spans exactly the steps in which it has examples
    total = np.array(
        [sum(int(m[b[b >= 0]].any()) for ep in plan.batches for b in ep) for m in plan.mask]
    )
    keys = jnp.stack([jax.random.key(s.seed) for s in specs])
    params, opt_state = init(keys, example)
    return HeadState(
        params,
        opt_state,
        jnp.zeros(len(specs), jnp.int32),
        jnp.asarray(total, jnp.float32),
        jnp.asarray([s.learning_rate or cfg.learning_rate for s in specs], jnp.float32),
        keys,
    )


def _train_epoch(
    many_step,
    state: HeadState,
    plan: _Plan,
    epoch: int,
    active: np.ndarray,
    read: Source,
    depth: int,
    progress: Callable[[dict], None] | None,
) -> tuple[HeadState, np.ndarray]:
    """One epoch of steps of the active heads; the state after it and each head's mean loss."""
    batches = plan.batches[epoch]
    losses = []
    reads = [plan.pool[np.maximum(b, 0)] for b in batches]
    for i, (b, x) in enumerate(zip(batches, prefetch(read, reads, depth), strict=False)):
        at = np.maximum(b, 0)
        w = np.where(b >= 0, plan.mask[:, at], 0.0) * active[:, None]
        state, loss = many_step(
            state,
            x,
            jnp.asarray(plan.target[:, at]),
            jnp.asarray(w, jnp.float32),
            plan.class_weight,
        )
        losses.append(loss)  # left on the device: no wait for the step unless someone watches
        if progress:
            progress(
                {
                    "epoch": epoch,
                    "step": i + 1,
                    "steps": len(plan.batches[0]),
                    "loss": _nanmean(np.asarray(loss)),
                }
            )
    return state, _nanmean(np.stack([np.asarray(v) for v in losses]), axis=0)


@dataclasses.dataclass
class _EarlyStop:
    """Each head's lowest validation loss so far, its epoch and parameters then, the epochs
    since, and whether the head still steps."""

    params: Any  # stacked numpy copies; None without validation
    loss: np.ndarray
    epoch: list[int]
    stale: np.ndarray
    active: np.ndarray

    @classmethod
    def start(cls, params, n_heads: int) -> _EarlyStop:
        # a copy: on the CPU device_get gives views of the state, which would stop its donation
        copy = jax.tree_util.tree_map(np.array, params) if params is not None else None
        return cls(
            copy,
            np.full(n_heads, np.inf),
            [0] * n_heads,
            np.zeros(n_heads, int),
            np.ones(n_heads, bool),
        )

    def update(self, epoch: int, val_loss: np.ndarray, params, patience: int) -> None:
        improved = (val_loss < self.loss) & self.active
        # no name kept for the fetched parameters: numpy views of the state stop its donation
        self.params = jax.tree_util.tree_map(
            lambda c, b, m=improved: np.where(m.reshape((-1,) + (1,) * (c.ndim - 1)), c, b),
            jax.device_get(params),
            self.params,
        )
        for h in np.flatnonzero(improved):
            self.loss[h], self.epoch[h] = val_loss[h], epoch
        self.stale = np.where(improved, 0, self.stale + 1)
        if patience:
            self.active &= self.stale < patience


def train_heads(
    source: Source,
    pool: np.ndarray,
    specs: list[HeadSpec],
    head: HeadConfig,
    cfg: TrainConfig = TrainConfig(),
    val: tuple[Source, np.ndarray, np.ndarray] | None = None,
    progress: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train len(specs) heads together on windows `pool` (indices for `source`).

    val: (source, window indices, targets (n, C)) for early stopping, shared by all heads.
    progress(event) is called after each step with {"epoch", "step", "steps", "loss"} and after
    each epoch with {"epoch", "val_loss"}.
    """
    pool = np.asarray(pool, np.int64)
    n_heads = len(specs)
    many_step, many_eval, init = _compiled(
        head, cfg.multi_label, cfg.warmup_fraction, cfg.weight_decay
    )
    example = jnp.asarray(source(pool[:1]))

    # batches go to the device in the prefetch thread: for a (16, 4096, 768) float32 batch that
    # copy took ~0.3 s of the training thread per step
    def on_device(idx):
        return jax.device_put(source(idx))

    plan = _plan(pool, specs, cfg)
    state = _initial_state(init, example, specs, cfg, plan)
    stop = _EarlyStop.start(state.params if val is not None else None, n_heads)
    history: list[list[dict]] = [[] for _ in specs]
    epochs_run = 0
    for epoch in range(cfg.epochs):
        state, train_loss = _train_epoch(
            many_step, state, plan, epoch, stop.active, on_device, cfg.prefetch, progress
        )
        epochs_run = epoch + 1
        if val is None:  # every head keeps its last epoch's parameters
            val_loss = np.full(n_heads, np.nan)
            stop.epoch = [epoch] * n_heads
        else:
            val_loss = _val_losses(many_eval, state.params, val, cfg)
            stop.update(epoch, val_loss, state.params, cfg.patience)
        for h in range(n_heads):
            history[h].append(
                {"epoch": epoch, "train_loss": _num(train_loss[h]), "val_loss": _num(val_loss[h])}
            )
        if progress:
            progress({"epoch": epoch, "val_loss": [_num(v) for v in val_loss]})
        if not stop.active.any():
            break
    best = jax.device_get(state.params) if val is None else stop.params
    return TrainResult(best, history, stop.epoch, epochs_run)


def _nanmean(a: np.ndarray, axis=None):
    """Mean over the finite entries (NaN marks a head that took no step); NaN if there are none."""
    finite = np.isfinite(a)
    return np.where(finite, a, 0).sum(axis) / np.maximum(finite.sum(axis), 1) + np.where(
        finite.any(axis), 0, np.nan
    )


def _num(v) -> float | None:
    return None if not np.isfinite(v) else float(v)


def _val_losses(
    many_eval, params, val: tuple[Source, np.ndarray, np.ndarray], cfg: TrainConfig
) -> np.ndarray:
    """Each head's validation loss."""
    probs = predict_many(many_eval, params, val[0], val[1], cfg.batch_size, cfg.prefetch)
    return np.array([_val_loss(p, val[2], cfg.multi_label) for p in probs])


def _val_loss(prob: np.ndarray, target: np.ndarray, multi_label: bool) -> float:
    p = np.clip(prob, 1e-7, 1 - 1e-7)
    if multi_label:
        return float(-(target * np.log(p) + (1 - target) * np.log(1 - p)).sum(1).mean())
    return float(-(target * np.log(p)).sum(1).mean())


def predict_many(
    many_eval, params, source: Source, windows: np.ndarray, batch_size: int, depth: int = 2
) -> np.ndarray:
    """(N, n, C) probabilities of N stacked heads on `windows`, each batch read once."""
    windows = np.asarray(windows, np.int64)
    if not len(windows):
        raise ValueError("no windows to predict")
    chunks = [windows[i : i + batch_size] for i in range(0, len(windows), batch_size)]
    out = []
    for c, x in zip(chunks, prefetch(source, chunks, depth), strict=False):
        if len(c) < batch_size:  # pad to the compiled batch shape
            x = np.concatenate([x, np.repeat(x[-1:], batch_size - len(c), 0)])
        out.append(np.asarray(many_eval(params, jnp.asarray(x)))[:, : len(c)])
    return np.concatenate(out, axis=1)


def predictor(head: HeadConfig, multi_label: bool) -> Callable:
    """The compiled stacked-heads eval function, for `predict_many` on saved heads."""
    return _compiled(head, multi_label, 0.0, 0.0)[1]
