"""Token coding round trips on activation-like data, judged by numpy/ml_dtypes references."""

import numpy as np
import pytest

from ethoprism.store.bench import activation_like
from ethoprism.store.codecs import (
    encode_int8,
    pool_spatial,
)
from ethoprism.store.layout import Layout


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def x():
    return activation_like(3, shape=(4, 8, 8, 256), seed=3)


def test_activation_like_has_outlier_channels_and_heavy_tails(x):
    rms = np.sqrt((x.reshape(-1, x.shape[-1]) ** 2).mean(0))
    assert rms.max() > 20 * np.median(rms)
    z = (x - x.mean(axis=(0, 1, 2, 3))) / x.std(axis=(0, 1, 2, 3))
    assert (z**4).mean() > 4  # kurtosis above a Gaussian's 3


def reference_round7(v):
    """Round half to even at mantissa bit 7, by integer arithmetic on the float32 bits."""
    u = v.astype(np.float32).view(np.uint32).astype(np.uint64)
    keep, rest = u >> 16, u & 0xFFFF
    up = (rest > 0x8000) | ((rest == 0x8000) & (keep & 1 == 1))
    return ((keep + up) << 16).astype(np.uint32).view(np.float32)


def test_float16_round7_is_exactly_7_mantissa_bits():
    v = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * 100
    v[:4] = [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 0.0]  # ties: round half to even
    stored = Layout().encode(v.reshape(1, 1, 1, 1, -1))["tokens"]
    assert stored.dtype == np.float16
    np.testing.assert_array_equal(stored.astype(np.float32).ravel(), reference_round7(v))
    assert not np.any(stored.view(np.uint16) & 0b111)  # the 3 dropped float16 bits are zero


def test_float16_round7_tiny_values_and_range():
    """Below float16's normal range values land on multiples of 2**-21 (bfloat16's subnormal
    grid, rebased); anything rounding past 65504 is refused, not stored as inf."""
    rng = np.random.default_rng(1)
    v = (rng.uniform(-1, 1, 10_000) * 2.0**-14).astype(np.float32)
    v[:3] = [0.0, 2.0**-24, -(2.0**-14)]
    stored = Layout().encode(v.reshape(1, 1, 1, 1, -1))["tokens"]
    got = stored.astype(np.float64).ravel()
    np.testing.assert_array_equal(got * 2.0**21, np.round(got * 2.0**21))
    assert np.abs(got - v).max() <= 2.0**-22 * (1 + 1e-6)
    assert np.array_equal(np.signbit(got[v != 0]), np.signbit(v[v != 0]))
    top = np.float32(65280.0)  # the largest 7-bit value within float16 range
    ok = Layout().encode(np.array([top, -top]).reshape(1, 1, 1, 1, 2))
    np.testing.assert_array_equal(ok["tokens"].ravel(), [top, -top])
    for big in (65504.0, -65450.0, 1e6):
        with pytest.raises(ValueError, match="exceeds the float16 range"):
            Layout().encode(np.full((1, 1, 1, 1, 2), big, np.float32))


@pytest.mark.parametrize(
    "dtype,bound", [("float16-round7", 2e-3), ("float16", 5e-4), ("int8", 2e-2)]
)
def test_round_trip_error(x, dtype, bound):
    stored = Layout(dtype, 1).encode(x)
    assert {a.dtype.name for a in stored.values()} <= {"float16", "int8", "float32"}
    err = rel_l2(Layout(dtype).decode(stored), x)
    assert err <= bound, err
    # decoding what was stored gives the same values again (the coding is idempotent)
    again = Layout(dtype, 1).encode(Layout(dtype).decode(stored))
    assert rel_l2(Layout(dtype).decode(again), Layout(dtype).decode(stored)) < bound / 4


def test_int8_prescale_is_what_makes_it_accurate(x):
    """Without the per-channel RMS the outlier channels set every token's step (DESIGN.md)."""
    peak = np.abs(x).max(axis=-1, keepdims=True) / 127
    plain = np.rint(x / peak) * peak
    c = x.shape[-1]
    normal = (
        np.sqrt((x.reshape(-1, c) ** 2).mean(0))
        < np.median(np.sqrt((x.reshape(-1, c) ** 2).mean(0))) * 5
    )
    q, ts, cs = encode_int8(x)
    ours = Layout("int8").decode({"tokens": q, "token_scale": ts, "channel_scale": cs})
    assert (
        rel_l2(ours[..., normal], x[..., normal]) < rel_l2(plain[..., normal], x[..., normal]) / 3
    )


@pytest.mark.parametrize("pool", [2, 4])
def test_pooling_is_the_block_mean(x, pool):
    n, t, h, w, c = x.shape
    ref = np.zeros((n, t, h // pool, w // pool, c), np.float64)
    for i in range(h // pool):
        for j in range(w // pool):
            ref[:, :, i, j] = (
                x[:, :, i * pool : (i + 1) * pool, j * pool : (j + 1) * pool]
                .astype(np.float64)
                .mean(axis=(2, 3))
            )
    np.testing.assert_allclose(pool_spatial(x, pool), ref, rtol=1e-5, atol=1e-5)
    for dtype, bound in [("float16-round7", 2e-3), ("int8", 2e-2)]:
        assert rel_l2(Layout(dtype).decode(Layout(dtype, pool).encode(x)), ref) <= bound


def test_float16_overflow_is_refused():
    with pytest.raises(ValueError, match="int8 layout"):
        Layout().encode(np.full((1, 1, 1, 1, 4), 1e6, np.float32))
    q = Layout("int8").encode(np.full((1, 1, 1, 1, 4), 1e6, np.float32))
    np.testing.assert_allclose(Layout("int8").decode(q), 1e6, rtol=1e-2)
