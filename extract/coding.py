"""The feature store's float16 token coding, in JAX, to run on the accelerator after the encoder.

Coding where the tokens are made halves what travels to the host (float16 instead of float32)
and takes the rounding off the host's CPU, which otherwise spends more on it than on writing.
The results are bit-identical to `ethoprism.store.codecs` (the store's own numpy coding, the
reference; tested), so a store never depends on where its tokens were coded.

float16-round7 rounds each value half-to-even to 7 mantissa bits (bfloat16's grid), in integer
arithmetic on the float32 bits: accelerators and XLA's CPU backend flush subnormal floats to
zero, and the numpy reference keeps float16's subnormal range on a 2**-21 grid.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

FLOAT16_LAYOUTS = ("float16-round7", "float16")
_MIN_NORMAL16 = 0x38800000  # float32 bits of 2**-14, float16's smallest normal number
_MAX_ROUNDED = 0x477F  # bfloat16 bits of 65280, the largest float16 with 7 mantissa bits
_INF16, _NAN16 = 0x7C00, 0x7E00


def pool_spatial(tokens, pool: int):
    """Average-pool (n, t, h, w, c) tokens over non-overlapping pool x pool spatial blocks."""
    if pool == 1:
        return tokens
    n, t, h, w, c = tokens.shape
    return tokens.reshape(n, t, h // pool, pool, w // pool, pool, c).mean(axis=(3, 5))


def float16_round7(x):
    """float32 -> float16 holding x rounded half-to-even to 7 mantissa bits. Values beyond
    float16's range become infinity (NaN stays NaN), which the store refuses by name."""
    u = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    sign = (u >> 16).astype(jnp.uint16) & 0x8000
    a = u & 0x7FFFFFFF
    bf16 = (a + 0x7FFF + ((a >> 16) & 1)) >> 16  # magnitude rounded to bfloat16, as bits
    normal = ((bf16 - (112 << 7)) << 3).astype(jnp.uint16)  # exponent bias 127 -> 15
    # below 2**-14: multiples of 2**-21, i.e. float16 subnormal bits with 3 low zeros
    tiny = jnp.round(lax.bitcast_convert_type(a, jnp.float32) * 2.0**21).astype(jnp.uint16) << 3
    bits = jnp.where(a < _MIN_NORMAL16, tiny, normal)
    bits = jnp.where(bf16 > _MAX_ROUNDED, jnp.uint16(_INF16), bits)
    bits = jnp.where(a > 0x7F800000, jnp.uint16(_NAN16), bits)
    return lax.bitcast_convert_type(bits | sign, jnp.float16)


def code_tokens(tokens, layout_dtype: str, pool: int):
    """Full-resolution float32 tokens -> what a store layout takes: float16 coded at the stored
    resolution for the float16 layouts; the int8 layout quantises on the host (float32 out)."""
    if layout_dtype not in FLOAT16_LAYOUTS:
        return tokens
    x = pool_spatial(tokens.astype(jnp.float32), pool)
    return float16_round7(x) if layout_dtype == "float16-round7" else x.astype(jnp.float16)


def tokens_finite(coded):
    """(n,) bool per window: every coded value finite, which with the coding above is all the
    store checks (round7 values are on the 7-bit grid by construction). Computed on the device,
    so the host need not read the tokens a second time to check them."""
    return jnp.isfinite(coded).reshape(coded.shape[0], -1).all(axis=1)
