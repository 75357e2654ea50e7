"""The feature store's float16 token coding, in JAX, to run on the accelerator after the encoder.

Coding where the tokens are made halves what travels to the host (float16 instead of float32)
and takes the rounding off the host's CPU, which otherwise spends more on it than on writing.
The results are bit-identical to `ethoprism.store.codecs` (the store's own numpy coding, the
reference; tested), so a store never depends on where its tokens were coded. The grid, the
overflow limit and the spatial pooling are the store's (`store.codecs`), not restated here.

float16-round7 rounds each value half-to-even to 7 mantissa bits (bfloat16's grid), in integer
arithmetic on the float32 bits: accelerators and XLA's CPU backend flush subnormal floats to
zero, and the numpy reference keeps float16's subnormal range on a 2**-21 grid.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from ethoprism.store.codecs import (
    DROPPED_BITS,
    MANTISSA_BITS,
    MAX_ROUNDED,
    MIN_NORMAL,
    SUBNORMAL_STEP,
    bfloat16_bits,
    pool_spatial,
)

_MIN_NORMAL32 = int(np.array(MIN_NORMAL, np.float32).view(np.uint32))  # 0x38800000
_MAX_ROUNDED_BF16 = bfloat16_bits(MAX_ROUNDED)  # 0x477F
_CUT = 23 - MANTISSA_BITS  # float32 mantissa bits rounded away (16: bfloat16's bits remain)
_REBIAS = (127 - 15) << MANTISSA_BITS  # float32's exponent bias minus float16's, in place
_INF16, _NAN16 = 0x7C00, 0x7E00


def float16_round7(x):
    """float32 -> float16 holding x rounded half-to-even to 7 mantissa bits. Values beyond
    float16's range become infinity (NaN stays NaN), which the store refuses by name."""
    u = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    sign = (u >> 16).astype(jnp.uint16) & 0x8000
    a = u & 0x7FFFFFFF
    half = (1 << (_CUT - 1)) - 1
    rounded = (a + half + ((a >> _CUT) & 1)) >> _CUT  # magnitude on the grid, as bfloat16 bits
    normal = ((rounded - _REBIAS) << DROPPED_BITS).astype(jnp.uint16)
    # below MIN_NORMAL: multiples of SUBNORMAL_STEP, i.e. float16 subnormal bits, low bits zero
    steps = jnp.round(lax.bitcast_convert_type(a, jnp.float32) * (1 / SUBNORMAL_STEP))
    tiny = steps.astype(jnp.uint16) << DROPPED_BITS
    bits = jnp.where(a < _MIN_NORMAL32, tiny, normal)
    bits = jnp.where(rounded > _MAX_ROUNDED_BF16, jnp.uint16(_INF16), bits)
    bits = jnp.where(a > 0x7F800000, jnp.uint16(_NAN16), bits)
    return lax.bitcast_convert_type(bits | sign, jnp.float16)


def code_tokens(tokens, layout):
    """Full-resolution float32 tokens -> what store layout `layout` (a `store.Layout`) takes
    from the device: float16 coded at the stored resolution where the layout is coded on the
    device, else the tokens as they are (the int8 layout quantises on the host)."""
    if not layout.coded_on_device:
        return tokens
    x = pool_spatial(tokens.astype(jnp.float32), layout.pool)
    return float16_round7(x) if layout.round7 else x.astype(jnp.float16)


def tokens_finite(coded):
    """(n,) bool per window: every coded value finite, which with the coding above is all the
    store checks (round7 values are on the 7-bit grid by construction). Computed on the device,
    so the host need not read the tokens a second time to check them."""
    return jnp.isfinite(coded).reshape(coded.shape[0], -1).all(axis=1)
