"""probe.heads: attention pooling equals flax's multi-head attention; shapes and parameter
counts."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ethoprism.probe.classify.heads import AttentionPool, HeadConfig, make_head


def test_attention_pool_equals_flax_multihead_attention_with_one_query():
    b, n, d, h = 3, 10, 16, 4
    x = jax.random.normal(jax.random.key(1), (b, n, d))
    pool = AttentionPool(h)
    rng = np.random.default_rng(2)
    shapes = jax.eval_shape(pool.init, jax.random.key(2), x)["params"]
    p = jax.tree_util.tree_map(
        lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape), jnp.float32), shapes
    )
    ref = nn.MultiHeadDotProductAttention(num_heads=h)
    key_bias = jax.random.normal(jax.random.key(3), (h, d // h))  # cancels in the softmax
    rp = {
        "query": {"kernel": p["query_kernel"], "bias": p["query_bias"]},
        "key": {"kernel": p["key_kernel"], "bias": key_bias},
        "value": {"kernel": p["value_kernel"], "bias": p["value_bias"]},
        "out": {"kernel": p["out_kernel"], "bias": p["out_bias"]},
    }
    q = jnp.broadcast_to(p["probe"][None], (b, 1, d))
    expected = jax.jit(ref.apply)({"params": rp}, q, x)[:, 0]
    np.testing.assert_allclose(
        jax.jit(pool.apply)({"params": p}, x), expected, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "kind,expected_params",
    [
        # map: pool 5 d^2 + 3 d ... with d=16: query/key/value/out kernels 4*256 + probe 16 +
        # biases 16+16+16, LayerNorm 32, MLP 16*64+64 + 64*16+16, classifier 16*3+3
        ("map", 4 * 256 + 16 + 48 + 32 + (1024 + 64) + (1024 + 16) + 51),
        ("linear", 16 * 3 + 3),
        ("mlp", 16 * 16 + 16 + 51),
    ],
)
def test_parameter_counts(kind, expected_params):
    cfg = HeadConfig(kind=kind, num_classes=3, num_heads=4)
    example = jnp.zeros((1, 4, 2, 2, 16)) if cfg.input_var == "tokens" else jnp.zeros((1, 16))
    shapes = jax.eval_shape(lambda: make_head(cfg).init(jax.random.key(0), example))["params"]
    assert sum(x.size for x in jax.tree_util.tree_leaves(shapes)) == expected_params


@pytest.mark.parametrize("kind", ["fmap", "mlp"])  # map and linear train in test_probe_train
def test_heads_give_logits_and_dropout_only_in_training(kind):
    cfg = HeadConfig(kind=kind, num_classes=5, num_heads=4)
    x = jax.random.normal(
        jax.random.key(0), (2, 4, 2, 2, 16) if cfg.input_var == "tokens" else (2, 16)
    )
    model = make_head(cfg)
    # random parameters from numpy (compiling an init is slow), a non-zero classifier so dropout
    # shows
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes
    )
    apply = jax.jit(model.apply, static_argnames="train")
    out = apply({"params": params}, x)
    assert out.shape == (2, 5) and np.isfinite(out).all()
    np.testing.assert_array_equal(out, apply({"params": params}, x))
    trained = apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(1)})
    assert not np.allclose(out, trained)


def test_heads_divide_the_token_width():
    assert HeadConfig(num_heads=12).for_width(64).num_heads == 8
    assert HeadConfig(num_heads=12).for_width(768).num_heads == 12
