"""Classification heads on frozen tokens (flax linen). Each returns logits (b, num_classes).

MAP is the paper's classifier (after VideoGLUE / big_vision's MAPHead): one learned query attends
over all t*h*w tokens of a window, then a pre-norm MLP block, dropout and a linear layer. FMAP
pools each frame, adds a learned temporal position embedding and pools over frames. The linear
and MLP probes read the pooled `embedding` instead of the tokens.

Attention pooling with a single query is computed with the query folded into the key projection:
q.(W_k x + b_k) = (W_k^T q).x + const, and softmax-weighted values W_v (sum_i a_i x_i) + b_v.
This is exactly multi-head dot-product attention with one query (tested against flax's) but
costs O(n d heads) per window instead of O(n d^2), so many heads can share one read of the
tokens at the base shape (4096 tokens x 768).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

HEAD_KINDS = ("map", "fmap", "linear", "mlp")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    kind: str = "map"  # map | fmap | linear | mlp
    num_classes: int = 2
    num_heads: int = 12  # attention heads (map, fmap); must divide the token width
    mlp_dim: int | None = (
        None  # map/fmap MLP block width (4x token width); mlp probe hidden width (= width)
    )
    dropout: float = 0.5  # the paper's rate, before the classifier

    def for_width(self, width: int) -> HeadConfig:
        """The largest number of attention heads, up to num_heads, that divides the token width."""
        heads = max(h for h in range(1, self.num_heads + 1) if width % h == 0)
        return dataclasses.replace(self, num_heads=heads)

    @property
    def input_var(self) -> str:
        """Which store variable the head reads."""
        return "tokens" if self.kind in ("map", "fmap") else "embedding"


class AttentionPool(nn.Module):
    """Multi-head attention of one learned query over tokens (b, n, d) -> (b, d)."""

    num_heads: int

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        h = self.num_heads
        dh = d // h
        init = nn.initializers.lecun_normal()
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, d))
        wq = self.param("query_kernel", init, (d, h, dh))
        wk = self.param("key_kernel", init, (d, h, dh))
        wv = self.param("value_kernel", init, (d, h, dh))
        wo = self.param("out_kernel", init, (h, dh, d))
        bq, bv = (
            self.param(k, nn.initializers.zeros, (h, dh)) for k in ("query_bias", "value_bias")
        )
        bo = self.param("out_bias", nn.initializers.zeros, (d,))
        # products and sums, not einsums: as dots under vmap, XLA transposes the stacked kernels
        q = (probe[0][:, None, None] * wq).sum(0) + bq
        # the key bias adds the same logit to every token, so softmax cancels it: not a parameter
        qk = (wk * q).sum(-1) / jnp.sqrt(dh).astype(x.dtype)
        # tokens stay (b, n, d) as the GEMMs read them: logits (b, n, h), not (b, h, n), whose
        # layout made XLA copy a transposed (d, b*n) token tensor every step
        weights = _softmax_over_tokens(jnp.einsum("bnd,dh->bnh", x, qk))
        pooled = jnp.einsum("bnh,bnd->bhd", weights, x)
        v = jnp.einsum("bhd,dhk->bhk", pooled, wv) + bv
        return jnp.einsum("bhk,hkd->bd", v, wo) + bo


def _softmax_over_tokens(logits):
    """Softmax over axis 1 of (b, n, h). Not jax.nn.softmax: its custom_jvp moves vmap's heads
    axis to the front, which costs copies of the (heads, b, n, h) weights in every step."""
    e = jnp.exp(logits - jax.lax.stop_gradient(logits.max(axis=1, keepdims=True)))
    return e / e.sum(axis=1, keepdims=True)


class MlpBlock(nn.Module):
    mlp_dim: int | None = None  # 4x width

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        y = nn.gelu(nn.Dense(self.mlp_dim or 4 * d)(x))
        return nn.Dense(d)(y)


class Classifier(nn.Module):
    num_classes: int
    dropout: float

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="classifier")(x)


class MAPHead(nn.Module):
    num_classes: int
    num_heads: int = 12
    mlp_dim: int | None = None
    dropout: float = 0.5

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        b, t, h, w, d = tokens.shape
        x = AttentionPool(self.num_heads, name="pool")(tokens.reshape(b, t * h * w, d))
        x = x + MlpBlock(self.mlp_dim, name="mlp")(nn.LayerNorm(name="norm")(x))
        return Classifier(self.num_classes, self.dropout, name="head")(x, train)


class FMAPHead(nn.Module):
    num_classes: int
    num_heads: int = 12
    mlp_dim: int | None = None
    dropout: float = 0.5

    @nn.compact
    def __call__(self, tokens, train: bool = False):
        b, t, h, w, d = tokens.shape
        frames = AttentionPool(self.num_heads, name="spatial_pool")(tokens.reshape(b * t, h * w, d))
        frames = frames.reshape(b, t, d)
        pos = self.param("temporal_posemb", nn.initializers.normal(0.02), (t, d))
        x = AttentionPool(self.num_heads, name="temporal_pool")(frames + pos)
        x = x + MlpBlock(self.mlp_dim, name="mlp")(nn.LayerNorm(name="norm")(x))
        return Classifier(self.num_classes, self.dropout, name="head")(x, train)


class LinearProbe(nn.Module):
    num_classes: int
    dropout: float = 0.5

    @nn.compact
    def __call__(self, embedding, train: bool = False):
        return Classifier(self.num_classes, self.dropout, name="head")(embedding, train)


class MLPProbe(nn.Module):
    num_classes: int
    mlp_dim: int | None = None  # hidden width (= input width)
    dropout: float = 0.5

    @nn.compact
    def __call__(self, embedding, train: bool = False):
        x = nn.gelu(nn.Dense(self.mlp_dim or embedding.shape[-1], name="hidden")(embedding))
        return Classifier(self.num_classes, self.dropout, name="head")(x, train)


def make_head(cfg: HeadConfig) -> nn.Module:
    if cfg.kind == "map":
        return MAPHead(cfg.num_classes, cfg.num_heads, cfg.mlp_dim, cfg.dropout)
    if cfg.kind == "fmap":
        return FMAPHead(cfg.num_classes, cfg.num_heads, cfg.mlp_dim, cfg.dropout)
    if cfg.kind == "linear":
        return LinearProbe(cfg.num_classes, cfg.dropout)
    if cfg.kind == "mlp":
        return MLPProbe(cfg.num_classes, cfg.mlp_dim, cfg.dropout)
    raise ValueError(f"unknown head kind {cfg.kind!r}; choose one of {', '.join(HEAD_KINDS)}")


@functools.partial(jax.jit, static_argnums=(0,))
def _init(model: nn.Module, rng, example):
    return model.init({"params": rng}, example, train=False)["params"]


def init_params(cfg: HeadConfig, seed: int, example) -> dict:
    """Parameters of one head for inputs shaped like `example` (one window, batch axis first)."""
    return _init(make_head(cfg), jax.random.key(seed), example)
