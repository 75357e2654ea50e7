"""Coding of window tokens for storage: spatial pooling, float16 rounding, int8 quantisation.

Pure numpy, so the store itself needs only zarr v3 spec codecs and standard dtypes. Every
`encode_*` has a `decode_*`; `decode(encode(x))` is tested against the error bounds in SPEC.md.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

FLOAT16_MAX = float(np.finfo(np.float16).max)
# The float16-round7 grid, the one definition (`extract.coding` derives its bit constants from
# it): bfloat16's 7 of float16's 10 mantissa bits; below float16's smallest normal number,
# multiples of SUBNORMAL_STEP; values that round past MAX_ROUNDED (the overflow limit) refused.
MANTISSA_BITS = 7
DROPPED_BITS = 10 - MANTISSA_BITS  # low float16 mantissa bits that are always zero
MIN_NORMAL = 2.0**-14
SUBNORMAL_STEP = MIN_NORMAL * 2.0**-MANTISSA_BITS  # 2**-21
MAX_ROUNDED = (2 - 2.0**-MANTISSA_BITS) * 2.0**15  # 65280, the largest float16 on the grid


def bfloat16_bits(x: float) -> int:
    """The bits of x (exactly representable in bfloat16) as a bfloat16."""
    return int(np.array(x, np.float32).view(np.uint32)) >> 16


def stored_token_shape(token_shape, pool: int) -> tuple[int, ...]:
    """(t, h, w, c) of full-resolution tokens -> the (t, h, w, c) a layout with `pool` stores."""
    t, h, w, c = token_shape
    if h % pool or w % pool:
        raise ValueError(f"token map {h}x{w} is not divisible by the pooling factor {pool}")
    return t, h // pool, w // pool, c


def pool_spatial(tokens: np.ndarray, pool: int) -> np.ndarray:
    """Average-pool (n, t, h, w, c) tokens over non-overlapping pool x pool spatial blocks.
    Works on numpy and JAX arrays alike (the extraction pools on the device with it)."""
    if pool == 1:
        return tokens
    n = tokens.shape[0]
    t, h, w, c = stored_token_shape(tokens.shape[1:], pool)
    blocks = tokens.reshape(n, t, h, pool, w, pool, c)
    return blocks.mean(axis=(3, 5), dtype=np.float32)


def _check_finite(x: np.ndarray) -> None:
    if not np.isfinite(x).all():
        raise ValueError("not finite (NaN or infinity)")


def _check_float16_range(x: np.ndarray) -> None:
    peak = max(float(x.max()), -float(x.min())) if x.size else 0.0
    if not peak <= FLOAT16_MAX:  # NaN compares false
        _check_finite(x)
        raise ValueError(
            f"token magnitude {peak:.4g} exceeds the float16 range ({FLOAT16_MAX:g}); "
            "use the int8 layout, which scales every token"
        )


# float16-round7: each value rounded (half to even) to 7 mantissa bits, bfloat16's grid; the 3
# zeroed low float16 bits are what the store's compressor finds (5.1 vs 6.3 MB per base window,
# relative error 1.7e-3). Done in bit arithmetic, 2x faster than casting to bfloat16 then float16:
# x * 2**-112 moves float16's exponent range onto the bottom of float32's (bias 127 -> 15), so
# that value's bfloat16 bits are the float16 bits shifted right by 3, sign apart. Below 2**-14
# the grid is bfloat16's subnormal one, multiples of 2**-21; there the product is a float32
# subnormal, already rounded once, so those few values are rounded again from x itself
# (`extract.coding` does the same on the accelerator, bit for bit).
_REBIAS = np.float32(2.0**-112)
_MAX_REBIASED = bfloat16_bits(MAX_ROUNDED * 2.0**-112)  # 0x0F7F
_MIN_NORMAL_REBIASED = bfloat16_bits(MIN_NORMAL * 2.0**-112)  # 0x0080
_BLOCK = 1 << 16  # elements per pass: temporaries stay in the CPU cache


def _float16_round7(x: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    result = np.empty(np.shape(x), np.float16)
    out = result.view(np.uint16).reshape(-1)
    scaled = np.empty(min(_BLOCK, flat.size), np.float32)
    sign = np.empty(scaled.shape, np.uint16)
    peak = 0
    for i in range(0, flat.size, _BLOCK):
        k = min(_BLOCK, flat.size - i)
        np.multiply(flat[i : i + k], _REBIAS, out=scaled[:k])
        bits = scaled[:k].astype(ml_dtypes.bfloat16).view(np.uint16)
        # the largest magnitude: max over positives (as int16) and negatives (as uint16)
        peak = max(peak, int(bits.view(np.int16).max()), int(bits.max()) - 0x8000)
        np.left_shift(bits, DROPPED_BITS, out=out[i : i + k])
        np.bitwise_and(bits, 0x8000, out=sign[:k])
        out[i : i + k] |= sign[:k]
        np.bitwise_and(bits, 0x7FFF, out=sign[:k])
        tiny = np.flatnonzero(sign[:k] <= _MIN_NORMAL_REBIASED)
        if tiny.size:
            v = flat[i + tiny]
            steps = np.round(np.abs(v) * np.float32(1 / SUBNORMAL_STEP)).astype(np.uint16)
            exact = steps << DROPPED_BITS
            out[i + tiny] = exact | np.where(np.signbit(v), 0x8000, 0).astype(np.uint16)
    if peak > _MAX_REBIASED:  # NaN and infinity land here too
        _check_finite(flat)
        big = float(np.max(np.abs(flat)))
        raise ValueError(
            f"token magnitude {big:.6g} exceeds the float16 range ({FLOAT16_MAX:g}) once "
            "rounded to 7 mantissa bits; use the int8 layout, which scales every token"
        )
    return result


def encode_float16(x: np.ndarray, round7: bool) -> np.ndarray:
    """float32 -> float16, first rounded to 7 mantissa bits if `round7` (exact in float16)."""
    if round7:
        return _float16_round7(x)
    _check_float16_range(x)
    return x.astype(np.float16)


def decode_float16(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32)


def encode_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Quantise (n, t, h, w, c) tokens to int8, one scale per token after a per-channel prescale.

    Returns (q int8 (n,t,h,w,c), token_scale float32 (n,t,h,w), channel_scale float32 (n,c)).
    channel_scale is each window's per-channel RMS: dividing by it first evens out the channels,
    so the few outlier channels of transformer activations no longer set every token's step.
    """
    x = np.asarray(x, dtype=np.float32)
    _check_finite(x)
    n, c = x.shape[0], x.shape[-1]
    rms = np.sqrt(np.mean(np.square(x.reshape(n, -1, c)), axis=1, dtype=np.float32))
    channel_scale = np.where(rms > 0, rms, 1.0).astype(np.float32)
    y = x / channel_scale[:, None, None, None, :]
    peak = np.max(np.abs(y), axis=-1)
    token_scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    q = np.rint(y / token_scale[..., None]).astype(np.int8)
    return q, token_scale, channel_scale


def decode_int8(q: np.ndarray, token_scale: np.ndarray, channel_scale: np.ndarray) -> np.ndarray:
    """Inverse of `encode_int8` (up to the quantisation step); works on numpy or dask arrays."""
    cs = channel_scale[:, None, None, None, :]
    return q.astype(np.float32) * token_scale[..., None] * cs


def check_float16_tokens(q: np.ndarray, round7: bool, copy: bool = True) -> np.ndarray:
    """Tokens already in a float16 layout (coded on the accelerator), checked: finite, and on
    the 7-mantissa-bit grid if `round7`. Raises ValueError saying what is wrong. Returns a copy
    made as it checks (`copy`), or `q` itself.

    Four float16 values at a time as uint64 lanes, a cache-sized block at a time. Each value
    is masked to its exponent field and (for round7) its 3 lowest bits, then 1 is added to the
    exponent: an exponent of all ones (infinity, NaN) carries into the sign bit, which the mask
    cleared, and the low bits stay as they were. One OR over all of them tells both.
    """
    source = np.ascontiguousarray(q, np.float16)
    copy = copy and np.may_share_memory(source, q)  # else `source` is a new array already
    result = np.empty_like(source) if copy else source
    src, dst = source.reshape(-1).view(np.uint16), result.reshape(-1).view(np.uint16)
    whole = src.size - src.size % 4  # the values past it are checked in a zero-padded lane
    if copy:
        dst[whole:] = src[whole:]
    leftover = np.zeros(4, np.uint16)
    leftover[: src.size - whole] = src[whole:]
    step = 2 * _BLOCK  # uint16 values, a multiple of 4
    blocks = [
        (src[i : min(i + step, whole)], dst[i : min(i + step, whole)])
        for i in range(0, whole, step)
    ]
    scratch = np.empty(step // 4, np.uint64)
    lane = 0x7C00 | ((1 << DROPPED_BITS) - 1 if round7 else 0)  # exponent, dropped bits
    mask = np.uint64(lane * 0x0001000100010001)
    found = np.uint64(0)
    for s, d in [*blocks, (leftover, leftover)]:
        if copy:
            np.copyto(d, s)  # then checked from the copy, in cache
        masked = scratch[: d.size // 4]
        np.bitwise_and(d.view(np.uint64), mask, out=masked)
        masked += np.uint64(0x0400040004000400)
        found |= np.bitwise_or.reduce(masked)
    if found & np.uint64(0x8000800080008000):
        raise ValueError("not finite (NaN or infinity), or beyond the float16 range")
    if found & np.uint64(((1 << DROPPED_BITS) - 1) * 0x0001000100010001):
        raise ValueError(
            "float16 values not rounded to 7 mantissa bits, as the float16-round7 layout "
            "stores them; pass float32 tokens to have the store round them"
        )
    return result
