"""The VideoPrism video-text models (LvT, `encoders.FactorizedVideoCLIP`) in flax.

Video tower: the plain `FactorizedEncoder` (reused, under `vision_encoder/`), auxiliary
transformer layers over all T*N tokens, and an attention pooler with one learned query, giving the
contrastive video embedding; the same pooler over each frame's tokens gives frame embeddings.
Text tower: a causal CoCa-style transformer whose class token, appended after the padded
sequence, is the text embedding. Both embeddings are L2-normalised into one space. Parameter names
are the official checkpoints' (`flax_lvt_base_f16r288_repeated.npz`), so a loaded npz is the
variable tree as is. Conventions: shared/golden/videoprism-lvt-tiny/README.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ethoprism.extract.encoder import (
    CONFIGS,
    EncoderConfig,
    FactorizedEncoder,
    HeadProjection,
    LayerNorm,
    Linear,
    OutputProjection,
    StackedTransformer,
    _dot,
)

TEXT_MAX_LEN = 64
C4_EN_URL = "https://storage.googleapis.com/t5-data/vocabs/cc_en.32000/sentencepiece.model"
PROMPT_TEMPLATE = "a video of {}."  # what the official video-text colab wraps queries in


@dataclass(frozen=True)
class LvtConfig:
    """One video-text model: its vision tower's `EncoderConfig` plus the text side."""

    name: str
    vision: EncoderConfig  # named like the model, so stores record the LvT model's name
    num_auxiliary_layers: int
    num_unimodal_layers: int
    vocabulary_size: int
    tokenizer_url: str | None  # the official SentencePiece model, None for the tiny test model


LVT_CONFIGS: dict[str, LvtConfig] = {
    c.name: c
    for c in [
        LvtConfig("videoprism-lvt-b", CONFIGS["videoprism-lvt-b"], 2, 12, 32_000, C4_EN_URL),
        LvtConfig("videoprism-lvt-l", CONFIGS["videoprism-lvt-l"], 2, 12, 32_000, C4_EN_URL),
        # The tiny config of shared/golden/videoprism-lvt-tiny (its own 512-piece tokenizer).
        LvtConfig("videoprism-lvt-tiny", CONFIGS["videoprism-lvt-tiny"], 2, 2, 512, None),
    ]
}


def l2_normalize(x):
    return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + 1e-12)


# ----------------------------------------------------------------------------------- video side


class PerDimScale(nn.Module):
    """Scales the query by 1.442695041 / sqrt(dim) * softplus(per_dim_scale); 1/sqrt(dim) at 0."""

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        per_dim_scale = self.param("per_dim_scale", nn.initializers.zeros, (d,))
        return x * (np.float32(1.442695041 / np.sqrt(d)) * jax.nn.softplus(per_dim_scale))


class PoolingAttention(nn.Module):
    """One learned query attending over tokens: no mask, no logit cap, no residual.

    With `groups` > 1 it also attends within each of `groups` equal runs of the tokens (a
    window's frames) and returns (B, 1 + groups, D): the keys and values are projected once for
    both, where the official code projects every token twice (a tenth of the tower's extra cost).
    """

    num_heads: int
    hidden_dim: int  # 4 x model_dim in the official pooler
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query, tokens, groups: int = 1):
        b, s, d = tokens.shape
        hd = self.hidden_dim // self.num_heads
        q = HeadProjection(self.num_heads, hd, self.dtype, name="query")(query)  # (B, 1, n, hd)
        k = HeadProjection(self.num_heads, hd, self.dtype, name="key")(tokens)
        v = HeadProjection(self.num_heads, hd, self.dtype, name="value")(tokens)
        q = PerDimScale(name="per_dim_scale")(q)

        def attend(q, k, v):
            probs = jax.nn.softmax(_dot("...qnh,...snh->...nqs", q, k, self.dtype), axis=-1)
            return _dot("...nqs,...snh->...qnh", probs, v, self.dtype)

        o = attend(q, k, v)
        if groups > 1:
            per = (b, groups, s // groups, self.num_heads, hd)
            o_groups = attend(q[:, None], k.reshape(per), v.reshape(per))  # (B, G, 1, n, hd)
            o = jnp.concatenate([o, o_groups[:, :, 0]], axis=1)
        return OutputProjection(d, self.dtype, name="post")(o)


class AttentionPooler(nn.Module):
    """tokens (B, S, D) -> (B, D), or with `groups` (B, 1 + groups, D): one learned query,
    attention, its own LayerNorm."""

    num_heads: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, tokens, groups: int = 1):
        b, _, d = tokens.shape
        query = self.param("pooling_attention_query", nn.initializers.lecun_normal(), (1, d))
        x = PoolingAttention(self.num_heads, 4 * d, self.dtype, name="pooling_attention")(
            jnp.broadcast_to(query, (b, 1, d)), tokens, groups
        )
        x = LayerNorm(name="pooling_attention_layer_norm")(x)
        return x if groups > 1 else x[:, 0]


# ------------------------------------------------------------------------------------ text side


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """(length, dim) [sin | cos] halves over timescales 1..1e4 (not interleaved)."""
    n = dim // 2
    increment = math.log(1e4) / max(n - 1, 1)
    inv = np.exp(np.arange(n, dtype=np.float32) * np.float32(-increment)).astype(np.float32)
    t = np.arange(length, dtype=np.float32)[:, None] * inv[None, :]
    return np.pad(np.concatenate([np.sin(t), np.cos(t)], -1), [(0, 0), (0, dim % 2)])


class MaskedSelfAttention(nn.Module):
    """Self-attention with logits capped, then masked (`mask` True = may attend)."""

    num_heads: int
    logit_cap: float

    @nn.compact
    def __call__(self, x, mask):
        d = x.shape[-1]
        hd = d // self.num_heads
        q, k, v = (HeadProjection(self.num_heads, hd, name=n)(x) for n in ("query", "key", "value"))
        logits = jnp.einsum("btnh,bsnh->bnts", q * hd**-0.5, k)
        logits = self.logit_cap * jnp.tanh(logits / self.logit_cap)
        # A fully masked (padded) query row attends uniformly: garbage that no unpadded row sees.
        logits = jnp.where(mask, logits, -0.7 * np.finfo(np.float32).max)
        o = jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, axis=-1), v)
        return OutputProjection(d, name="post")(o)


class TextFeedForward(nn.Module):
    """Pre-LN ReLU FFN whose hidden and output rows are zeroed at padded positions."""

    hidden_dim: int

    @nn.compact
    def __call__(self, x, keep):
        h = LayerNorm(name="layer_norm")(x)
        h = jax.nn.relu(Linear(self.hidden_dim, name="ffn_layer1")(h)) * keep
        return Linear(x.shape[-1], name="ffn_layer2")(h) * keep


class TextLayer(nn.Module):
    """One pre-LN causal layer; the carry (x, mask, keep) is scan-shaped."""

    num_heads: int
    logit_cap: float

    @nn.compact
    def __call__(self, carry, _):
        x, mask, keep = carry  # mask (B, 1, L, L) True = may attend; keep (B, L, 1) 0 = padded
        x = x + MaskedSelfAttention(self.num_heads, self.logit_cap, name="self_attention")(
            LayerNorm(name="layer_norm")(x), mask
        )
        x = x + TextFeedForward(4 * x.shape[-1], name="ff_layer")(x, keep)
        return (x, mask, keep), None


class TextLayers(nn.Module):
    num_layers: int
    num_heads: int
    logit_cap: float

    @nn.compact
    def __call__(self, x, mask, keep):
        layers = nn.scan(
            TextLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.num_layers,
        )
        layer = layers(self.num_heads, self.logit_cap, name="x_layers")
        (x, _, _), _ = layer((x, mask, keep), None)
        return x


class TokenEmbedding(nn.Module):
    vocabulary_size: int
    dim: int

    @nn.compact
    def __call__(self, ids):
        table = self.param("emb_var", nn.initializers.normal(1.0), (self.vocabulary_size, self.dim))
        return jnp.take(table, ids, axis=0) * np.float32(self.dim**0.5)


class TextTower(nn.Module):
    """ids (B, L) int32, paddings (B, L) float (1 = pad) -> (text embedding (B, D), out).

    `out` holds `text_features` (B, L+1, D, after `unimodal_ln`; position L is the class token)
    and `text_embedding_unnormalized`.
    """

    config: LvtConfig

    @nn.compact
    def __call__(self, ids, paddings):
        c = self.config
        d, (b, n) = c.vision.model_dim, ids.shape
        x = TokenEmbedding(c.vocabulary_size, d, name="token_emb")(ids)
        x = x + jnp.asarray(sinusoidal_positions(n, d))
        cls = self.param("cls_emb", nn.initializers.normal(d**-0.5), (1, 1, d))
        x = jnp.concatenate([x, jnp.broadcast_to(cls * np.float32(d**0.5), (b, 1, d))], axis=1)
        valid = jnp.concatenate([paddings == 0, jnp.ones((b, 1), bool)], axis=1)
        causal = np.tril(np.ones((n + 1, n + 1), bool))
        mask = valid[:, None, None, :] & valid[:, None, :, None] & causal
        keep = valid[..., None].astype(jnp.float32)
        x = TextLayers(
            c.num_unimodal_layers,
            c.vision.num_heads,
            c.vision.atten_logit_cap,
            name="unimodal_transformer",
        )(x, mask, keep)
        x = LayerNorm(name="unimodal_ln")(x)
        text = x[:, -1]
        return l2_normalize(text), {"text_features": x, "text_embedding_unnormalized": text}


class VideoText(nn.Module):
    """Both towers under the official top-level names: call `video`, `text`, or both (init)."""

    config: LvtConfig
    dtype: str = "float32"  # the video tower's matmul dtype; the text tower is float32

    def setup(self):
        c, dtype = self.config.vision, jnp.dtype(self.dtype)
        self.vision_encoder = FactorizedEncoder(c, self.dtype)
        self.auxiliary_encoder = StackedTransformer(
            self.config.num_auxiliary_layers, c.num_heads, c.mlp_dim, c.atten_logit_cap, dtype
        )
        self.contrastive_vision_pooler = AttentionPooler(c.num_heads, dtype)
        self.text_encoder = TextTower(self.config)

    def video(self, frames):
        """frames (B, T, H, W, 3) in [0, 1] -> (video embedding (B, D) normalised, out).

        `out` holds the encoder's intermediates plus `tokens` (B, T, h, w, D: what the store
        keeps), `auxiliary_features` (B, T*N, D), `video_embedding_unnormalized` and
        `frame_embeddings` (B, T, D normalised: the same pooler over each frame's tokens).
        """
        tokens, out = self.vision_encoder(frames)
        b, t, h, w, d = tokens.shape
        x = self.auxiliary_encoder(tokens.reshape(b, t * h * w, d))
        pooled = self.contrastive_vision_pooler(x, groups=t)  # tokens are time-major
        video, per_frame = pooled[:, 0], pooled[:, 1:]
        out.update(
            tokens=tokens,
            auxiliary_features=x,
            video_embedding_unnormalized=video,
            frame_embeddings=l2_normalize(per_frame),
        )
        return l2_normalize(video), out

    def text(self, ids, paddings):
        return self.text_encoder(ids, paddings)

    def __call__(self, frames, ids, paddings):
        return self.video(frames), self.text(ids, paddings)
