"""probe.train: many heads at once equal heads alone; a planted signal is learned, shuffled labels
are not."""

import time

import numpy as np
import pytest

from ethoprism.probe.classify.heads import HeadConfig
from ethoprism.probe.classify.train import (
    HeadSpec,
    TrainConfig,
    create_learning_rate_fn,
    memory_source,
    predict_many,
    predictor,
    prefetch,
    train_heads,
)

SHAPE = (4, 2, 2, 8)
HEAD = HeadConfig(
    "map", num_classes=3, num_heads=4, dropout=0.2
)  # one head config: one compilation


def planted(n, n_classes=3, seed=0):
    """Tokens whose class shows as a shift of channel `class` in a quarter of the tokens
    (appearance)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    x = rng.normal(size=(n, *SHAPE)).astype(np.float32)
    x[np.arange(n), :, 0, :, y] += 2.5
    return x, y


def leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_heads_together_equal_heads_alone():
    x, y = planted(96)
    target = np.eye(3, dtype=np.float32)[y]
    rng = np.random.default_rng(1)
    specs = [
        HeadSpec("a", 0, np.ones(96, bool), target),
        HeadSpec(
            "b", 1, rng.random(96) < 0.3, target, learning_rate=3e-3
        ),  # a few-shot-like subset
        HeadSpec("c", 2, np.ones(96, bool), target[rng.permutation(96)], learning_rate=1e-2),
    ]
    cfg = TrainConfig(learning_rate=1e-3, epochs=2, batch_size=16)
    together = train_heads(memory_source(x), np.arange(96), specs, HEAD, cfg)
    for i, spec in enumerate(specs):
        alone = train_heads(memory_source(x), np.arange(96), [spec], HEAD, cfg)
        for t, a in zip(leaves(together.params), leaves(alone.params), strict=False):
            np.testing.assert_allclose(t[i], a[0], rtol=2e-5, atol=2e-6)
    # different seeds and subsets really gave different heads
    assert not np.allclose(leaves(together.params)[0][0], leaves(together.params)[0][1])


def test_planted_signal_is_learned_and_shuffled_labels_stay_at_chance():
    x, y = planted(480)
    train, test = np.arange(360), np.arange(360, 480)
    target = np.eye(3, dtype=np.float32)[y]
    shuffled = target[np.random.default_rng(5).permutation(480)]
    specs = [
        HeadSpec("true", 0, np.ones(360, bool), target[train]),
        HeadSpec("shuffled", 0, np.ones(360, bool), shuffled[train]),
        HeadSpec("true-seed1", 1, np.ones(360, bool), target[train]),
    ]
    cfg = TrainConfig(learning_rate=3e-3, epochs=6, batch_size=16)
    src = memory_source(x)
    result = train_heads(src, train, specs, HEAD, cfg)
    prob = predict_many(predictor(HEAD, False), result.params, src, test, 16)
    acc = (prob.argmax(2) == y[test]).mean(1)
    assert acc[0] > 0.9 and acc[2] > 0.9
    assert acc[1] < 0.5  # chance is 1/3


def test_linear_probe_with_early_stopping_and_balanced_loss():
    x, y = planted(300)
    emb = x.mean((1, 2, 3))
    emb[np.arange(300), y] += 1.0
    target = np.eye(3, dtype=np.float32)[y]
    head = HeadConfig("linear", num_classes=3, dropout=0.0)
    cfg = TrainConfig(learning_rate=5e-2, epochs=40, batch_size=50, balanced=True, patience=2)
    # validation labels that disagree with training: its loss rises once the head learns
    val = (memory_source(emb), np.arange(200, 300), np.roll(target[200:], 1, axis=1))
    result = train_heads(
        memory_source(emb),
        np.arange(200),
        [HeadSpec("h", 0, np.ones(200, bool), target[:200])],
        head,
        cfg,
        val=val,
    )
    losses = [e["val_loss"] for e in result.history[0]]
    assert result.epochs_run == result.best_epoch[0] + 3 < 40  # stopped after patience 2
    assert result.best_epoch[0] == int(np.argmin(losses))


def test_training_is_deterministic_for_a_seed():
    x, y = planted(64)
    spec = HeadSpec("h", 7, np.ones(64, bool), np.eye(3, dtype=np.float32)[y])
    head = HeadConfig("linear", num_classes=3)
    emb = x.mean((1, 2, 3))
    runs = [
        train_heads(
            memory_source(emb), np.arange(64), [spec], head, TrainConfig(epochs=2, batch_size=16)
        )
        for _ in range(2)
    ]
    for a, b in zip(leaves(runs[0].params), leaves(runs[1].params), strict=False):
        np.testing.assert_array_equal(a, b)


def test_cosine_schedule():
    lr = create_learning_rate_fn(1.0, 10, 2)
    np.testing.assert_allclose(
        [float(lr(s)) for s in (0, 1, 2, 7, 12)],
        [0.5, 1.0, 1.0, 0.5 * (1 + np.cos(np.pi * 5 / 8)), 0.0],
        atol=1e-6,
    )


def test_prefetch_bounds_and_errors():
    reads = []

    def source(idx):
        reads.append(int(idx[0]))
        if idx[0] == 3:
            raise OSError("disk on fire at window 3")
        return idx

    it = prefetch(source, [np.array([i]) for i in range(6)], depth=1)
    assert int(next(it)[0]) == 0
    time.sleep(0.5)  # time for the reader to run ahead, if it would
    assert reads in ([0], [0, 1])  # depth 1: one read beyond the consumer's batch, no more
    with pytest.raises(OSError, match="window 3"):
        list(it)


def test_class_balanced_weights_are_inverse_frequency_within_the_head_subset():
    from ethoprism.probe.classify.train import class_weights

    y = np.array([0] * 6 + [1] * 2 + [2] * 2 + [1] * 10)
    mask = np.arange(20) < 10  # the head's own subset: 6, 2, 2
    spec = HeadSpec("h", 0, mask, np.eye(3, dtype=np.float32)[y])
    np.testing.assert_allclose(
        class_weights(spec, TrainConfig(balanced=True)), [10 / 18, 10 / 6, 10 / 6]
    )
    np.testing.assert_allclose(class_weights(spec, TrainConfig()), [1, 1, 1])
    # multi-label: positives weighted by negatives / positives
    np.testing.assert_allclose(
        class_weights(spec, TrainConfig(balanced=True, multi_label=True)), [4 / 6, 8 / 2, 8 / 2]
    )


def test_bench_probe_runs_small(tmp_path):
    from ethoprism.probe.classify.bench import bench_probe

    stages = []
    r = bench_probe(
        windows=16,
        heads=3,
        batch_size=4,
        shape=(2, 4, 4, 32),
        directory=str(tmp_path),
        num_classes=3,
        repeats=1,
        stage=stages.append,
    )
    assert stages[0].startswith("writing 16 windows") and len(stages) == 7  # progress shown
    assert set(r["epoch_seconds"]) == {"store_1", "memory_1", "store_3", "memory_3"}
    assert all(t > 0 for t in r["epoch_seconds"].values())
    assert r["many_vs_one"] > 0 and r["many_vs_one_first_epoch"] > 0 and r["store_vs_memory"] > 0
    assert r["attention_heads"] == 8  # the most attention heads, up to 12, that divide width 32
