"""The VideoPrism FactorizedEncoder (google-deepmind/videoprism) in flax.

A spatial ViT over each frame's patches, then a temporal transformer over each patch position's
frames. Parameter names and shapes are those of the official "repeated" checkpoints, so a loaded
npz is the variable tree as is (see `weights.py`). Written from
shared/reference/videoprism-architecture.md; section numbers below refer to it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ethoprism.errors import EthoprismError
from ethoprism.extract.preprocess import Preprocessing

Array = jax.Array
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class EncoderConfig:
    """One VideoPrism encoder architecture; JSON-able via `dataclasses.asdict`."""

    name: str
    patch_size: int
    pos_emb_shape: tuple[
        int, int, int
    ]  # (frames, rows, cols) the position embeddings were trained at
    model_dim: int
    num_spatial_layers: int
    num_temporal_layers: int
    num_heads: int
    mlp_dim: int
    atten_logit_cap: float
    num_frames: int  # the trained input shape: num_frames x image_size x image_size
    image_size: int
    hf_repo: str | None  # where the public weights live on the Hugging Face hub
    hf_filename: str | None

    @property
    def window_length(self) -> int:
        """Frames per window the encoder was trained on: what extraction takes by default."""
        return self.num_frames

    @property
    def frame_size(self) -> int:
        """Side of the square frames the encoder was trained on."""
        return self.image_size


CONFIGS: dict[str, EncoderConfig] = {
    c.name: c
    for c in [
        EncoderConfig(
            "videoprism-b",
            18,
            (16, 16, 16),
            768,
            12,
            4,
            12,
            3072,
            50.0,
            16,
            288,
            "google/videoprism-base-f16r288",
            "flax_base_f16r288_repeated.npz",
        ),
        EncoderConfig(
            "videoprism-l",
            18,
            (8, 16, 16),
            1024,
            24,
            4,
            16,
            4096,
            50.0,
            8,
            288,
            "google/videoprism-large-f8r288",
            "flax_large_f8r288_repeated.npz",
        ),
        # The official `videoprism_v1_tiny_test` config that the golden outputs were made with.
        EncoderConfig("videoprism-tiny", 18, (4, 4, 4), 64, 2, 1, 4, 128, 50.0, 4, 72, None, None),
    ]
}

# The video towers of the video-text (LvT) models: the same architectures with their own weights
# (the text side is in `lvt.py`). Their tokens are what a plain model of that size gives.
for _name, _base, _repo, _file in [
    ("lvt-b", "b", "lvt-base-f16r288", "lvt_base_f16r288"),
    ("lvt-l", "l", "lvt-large-f8r288", "lvt_large_f8r288"),
    ("lvt-tiny", "tiny", None, None),
]:
    CONFIGS[f"videoprism-{_name}"] = dataclasses.replace(
        CONFIGS[f"videoprism-{_base}"],
        name=f"videoprism-{_name}",
        hf_repo=_repo and f"google/videoprism-{_repo}",
        hf_filename=_file and f"flax_{_file}_repeated.npz",
    )


def get_config(name: str) -> EncoderConfig:
    if name not in CONFIGS:
        raise EthoprismError(f"unknown encoder {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]


def default_preprocessing(name: str, **fields) -> Preprocessing:
    """Preprocessing for encoder `name`: its window length and frame size unless `fields`
    (Preprocessing's, None meaning the default) say otherwise."""
    config = get_config(name)
    given = {k: v for k, v in fields.items() if v is not None}
    return Preprocessing(
        **{"window_length": config.window_length, "frame_size": config.frame_size, **given}
    )


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise EthoprismError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    return dtype


# --------------------------------------------------------------------------------------- layers


@functools.cache
def native_bfloat16() -> bool:
    """Whether bf16 matmuls have hardware support: any accelerator, or a CPU with
    AVX512-BF16 / AMX."""
    if jax.default_backend() != "cpu":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _dot(equation: str, x: Array, w: Array, dtype) -> Array:
    """einsum of operands rounded to `dtype`, accumulated and returned in float32."""
    x, w = x.astype(dtype), w.astype(dtype)
    if dtype != jnp.float32 and not native_bfloat16():
        # Without bf16 hardware XLA:CPU's bf16 dot runs ~0.8x as fast as float32. Multiplying the
        # bf16-rounded operands in float32 is the same arithmetic (a product of two 8-bit
        # mantissas is exact in float32, accumulation is float32 either way) at float32 speed.
        x, w = x.astype(jnp.float32), w.astype(jnp.float32)
    return jnp.einsum(equation, x, w, preferred_element_type=jnp.float32)


class LayerNorm(nn.Module):
    """LayerNorm with the scale stored as an offset from 1 (zero-initialised), eps 1e-6, in f32."""

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        scale = self.param("scale", nn.initializers.zeros, (d,))
        bias = self.param("bias", nn.initializers.zeros, (d,))
        x = x.astype(jnp.float32)
        mu = x.mean(-1, keepdims=True)
        var = jnp.square(x - mu).mean(-1, keepdims=True)
        return (x - mu) * jax.lax.rsqrt(var + 1e-6) * (1.0 + scale) + bias


class Dense(nn.Module):
    """x @ kernel + bias, kernel (in, out)."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return _dot("...i,io->...o", x, kernel, self.dtype) + bias


class Linear(nn.Module):
    """The official tree nests each dense layer one level deeper, as
    `<name>/linear/{kernel,bias}`."""

    features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return Dense(self.features, self.dtype, name="linear")(x)


class HeadProjection(nn.Module):
    """(..., D) -> (..., heads, head_dim) with weights (D, heads, head_dim)
    and bias (heads, head_dim)."""

    num_heads: int
    head_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        shape = (x.shape[-1], self.num_heads, self.head_dim)
        w = self.param("w", nn.initializers.lecun_normal(), shape)
        b = self.param("b", nn.initializers.zeros, shape[1:])
        return _dot("...d,dnh->...nh", x, w, self.dtype) + b


class OutputProjection(nn.Module):
    """(..., heads, head_dim) -> (..., D); the weight is stored (D, heads, head_dim)."""

    dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        w = self.param("w", nn.initializers.lecun_normal(), (self.dim, *x.shape[-2:]))
        b = self.param("b", nn.initializers.zeros, (self.dim,))
        return _dot("...nh,dnh->...d", x, w, self.dtype) + b


class SelfAttention(nn.Module):
    """Multi-head self-attention, logits capped as cap * tanh(logits / cap) before the softmax."""

    num_heads: int
    logit_cap: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        d = x.shape[-1]
        hd = d // self.num_heads
        q, k, v = (
            HeadProjection(self.num_heads, hd, self.dtype, name=n)(x)
            for n in ("query", "key", "value")
        )
        q = q * hd**-0.5  # after the bias, as the official code does
        # Head-major batched matmuls: XLA:CPU runs 'bnts,bnsh' far faster than 'bnts,bsnh'.
        q, k, v = (a.swapaxes(-2, -3) for a in (q, k, v))
        logits = _dot("...nth,...nsh->...nts", q, k, self.dtype)
        logits = self.logit_cap * jnp.tanh(logits / self.logit_cap)
        probs = jax.nn.softmax(logits, axis=-1)  # float32 whatever the matmul dtype
        o = _dot("...nts,...nsh->...nth", probs, v, self.dtype).swapaxes(-2, -3)
        return OutputProjection(d, self.dtype, name="post")(o)


def gelu(x):
    """Exact (erf) GELU. jax.nn.gelu(approximate=False) uses erfc(-x/sqrt 2), the same function up
    to float32 rounding but ~7x slower on XLA:CPU, where it took a tenth of the encoder's time."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * np.float32(np.sqrt(0.5))))


class FeedForward(nn.Module):
    """Pre-LN MLP with exact (erf) GELU; the residual is added by the caller."""

    mlp_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = LayerNorm(name="layer_norm")(x)
        h = gelu(Linear(self.mlp_dim, self.dtype, name="ffn_layer1")(h))
        return Linear(x.shape[-1], self.dtype, name="ffn_layer2")(h)


class TransformerLayer(nn.Module):
    """One pre-LN layer; (carry, _) -> (carry, None) so that nn.scan can stack it."""

    num_heads: int
    mlp_dim: int
    logit_cap: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, _):
        x = x + SelfAttention(self.num_heads, self.logit_cap, self.dtype, name="self_attention")(
            LayerNorm(name="layer_norm")(x)
        )
        x = x + FeedForward(self.mlp_dim, self.dtype, name="ff_layer")(x)
        return x, None


class Layers(nn.Module):
    """`num_layers` TransformerLayers scanned, so each weight has a leading layer axis."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    logit_cap: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        layers = nn.scan(
            TransformerLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=self.num_layers,
        )
        x, _ = layers(self.num_heads, self.mlp_dim, self.logit_cap, self.dtype, name="x_layers")(
            x, None
        )
        return x


class StackedTransformer(nn.Module):
    """The official tree nests the layers as `<encoder>/transformers_stack/x_layers/...`."""

    num_layers: int
    num_heads: int
    mlp_dim: int
    logit_cap: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return Layers(
            self.num_layers,
            self.num_heads,
            self.mlp_dim,
            self.logit_cap,
            self.dtype,
            name="transformers_stack",
        )(x)


def resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) matrix of `jax.image.resize(..., 'bilinear', antialias=True)` along one axis.

    A triangle filter at half-pixel centres, widened by 1/scale when downsampling, each row
    renormalised at the borders (spec §4). Built explicitly so the rule is visible and testable.
    """
    s = n_out / n_in
    sample = (np.arange(n_out) + 0.5) / s - 0.5
    width = max(1.0 / s, 1.0)
    w = np.maximum(0.0, 1.0 - np.abs(sample[:, None] - np.arange(n_in)[None, :]) / width)
    return (w / w.sum(1, keepdims=True)).astype(np.float32)


class PositionalEmbedding(nn.Module):
    """Learned embedding on a `grid` (flattened row-major), resized separably to another grid."""

    grid: tuple[int, ...]

    @nn.compact
    def __call__(self, out_grid: tuple[int, ...], dim: int):
        emb = self.param("emb_var", nn.initializers.lecun_normal(), (int(np.prod(self.grid)), dim))
        emb = emb.reshape(*self.grid, dim)
        for axis, (n_in, n_out) in enumerate(zip(self.grid, out_grid, strict=False)):
            if n_in != n_out:
                w = jnp.asarray(resize_weights(n_in, n_out))
                emb = jnp.moveaxis(
                    jnp.tensordot(w, emb, axes=(1, axis), precision="highest"), 0, axis
                )
        return emb.reshape(-1, dim)


# -------------------------------------------------------------------------------------- encoder


class FactorizedEncoder(nn.Module):
    """frames (B, T, H, W, 3) in [0, 1] -> (tokens (B, T, h, w, D),
    {"spatial_features": same shape})."""

    config: EncoderConfig
    dtype: str = "float32"  # matmul dtype; LayerNorm, softmax and outputs are always float32

    @nn.compact
    def __call__(self, frames):
        c, dtype = self.config, jnp.dtype(self.dtype)
        b, t, height, width, ch = frames.shape
        p = c.patch_size
        if height % p or width % p or ch != 3:
            raise EthoprismError(
                f"frames of shape {frames.shape}: expected (B, T, H, W, 3) with H and W "
                f"multiples of the patch size {p}"
            )
        m, n = height // p, width // p
        stack = functools.partial(
            StackedTransformer,
            num_heads=c.num_heads,
            mlp_dim=c.mlp_dim,
            logit_cap=c.atten_logit_cap,
            dtype=dtype,
        )

        # Patch vectors are (row-in-patch, column-in-patch, channel), channel fastest; tokens
        # row-major.
        x = frames.astype(jnp.float32).reshape(b * t, m, p, n, p, ch).transpose(0, 1, 3, 2, 4, 5)
        x = Linear(c.model_dim, dtype, name="patch_projection")(x.reshape(b * t, m * n, p * p * ch))
        x = x + PositionalEmbedding(c.pos_emb_shape[1:], name="spatial_pos_emb")(
            (m, n), c.model_dim
        )
        x = stack(c.num_spatial_layers, name="spatial_encoder")(x)
        x = LayerNorm(name="spatial_ln")(x)
        out = {"spatial_features": x.reshape(b, t, m, n, -1)}

        # Regroup (b t) n d -> (b n) t d: the temporal layers see each patch position's frames.
        x = x.reshape(b, t, m * n, -1).transpose(0, 2, 1, 3).reshape(b * m * n, t, -1)
        x = x + PositionalEmbedding(c.pos_emb_shape[:1], name="temporal_pos_emb")((t,), c.model_dim)
        x = stack(c.num_temporal_layers, name="temporal_encoder")(x)
        x = LayerNorm(name="temporal_ln")(x)
        x = x.reshape(b, m, n, t, -1).transpose(0, 3, 1, 2, 4)  # time-major, as the official output
        return x, out


class EncoderOutput(NamedTuple):
    tokens: Array  # (B, T, h, w, D) float32
    embedding: Array  # (B, D) float32, the mean over all T*h*w tokens


@functools.cache
def _jitted_apply(config: EncoderConfig, dtype: str):
    module = FactorizedEncoder(config, dtype)

    def apply(params, frames):
        tokens, _ = module.apply(params, frames)
        return EncoderOutput(tokens, tokens.mean(axis=(1, 2, 3)))

    return apply, jax.jit(apply)


@dataclass(frozen=True)
class Encoder:
    """A frozen encoder with its weights; call it on frames (B, T, H, W, 3) float32 in [0, 1]."""

    config: EncoderConfig
    params: Any  # flax variables {"params": ...} as jax arrays
    dtype: str  # "float32" | "bfloat16": the matmul dtype
    checkpoint_sha256: str  # of the checkpoint file, or "random-init-seed-0"

    def __post_init__(self):
        check_dtype(self.dtype)

    def __call__(self, frames) -> EncoderOutput:
        return _jitted_apply(self.config, self.dtype)[1](self.params, frames)

    def apply(self, params, frames) -> EncoderOutput:
        """Pure and traceable: for the caller's own jit / sharding."""
        return _jitted_apply(self.config, self.dtype)[0](params, frames)

    @property
    def module(self) -> FactorizedEncoder:
        return FactorizedEncoder(self.config, self.dtype)

    @property
    def identity(self) -> dict:
        """What the store records; plain JSON types (lists, not tuples) so it equals itself read
        back."""
        return json.loads(
            json.dumps(
                {
                    "name": self.config.name,
                    "config": dataclasses.asdict(self.config),
                    "checkpoint_sha256": self.checkpoint_sha256,
                    "dtype": self.dtype,
                }
            )
        )


def _example_frames(config: EncoderConfig) -> jax.ShapeDtypeStruct:
    p = config.patch_size
    return jax.ShapeDtypeStruct((1, 1, p, p, 3), jnp.float32)  # the variables do not depend on it


@functools.cache
def _jitted_init(config: EncoderConfig):
    return jax.jit(FactorizedEncoder(config).init)


def init_params(config: EncoderConfig, seed: int = 0) -> dict:
    """The official initialisation: lecun_normal kernels and embeddings, zero LayerNorm and
    biases."""
    return _jitted_init(config)(
        jax.random.key(seed), jnp.zeros(_example_frames(config).shape, jnp.float32)
    )


def param_shapes(config: EncoderConfig) -> dict:
    """The variable tree's shapes and dtypes, computed without allocating or running anything."""
    return jax.eval_shape(
        FactorizedEncoder(config).init, jax.random.key(0), _example_frames(config)
    )


def param_count(config: EncoderConfig) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(param_shapes(config)))
