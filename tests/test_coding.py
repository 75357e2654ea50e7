"""Tokens coded on the accelerator (extract.coding, JAX) equal the store's own coding (numpy)."""

import jax
import numpy as np
import pytest

from ethoprism.extract.coding import code_tokens, float16_round7
from ethoprism.store.bench import activation_like
from ethoprism.store.layout import Layout


def test_round7_is_bit_identical_to_the_store_over_float16s_whole_range():
    rng = np.random.default_rng(0)
    wide = rng.standard_normal(200_000) * np.exp(rng.uniform(-32, 11, 200_000))
    edges = [
        0.0,
        -0.0,
        2**-14,
        -(2**-14),
        2**-14 * (1 - 2**-9),
        2**-24,
        2**-25,
        3 * 2**-22,
        1e-40,
        1 + 2**-8,
        1 + 3 * 2**-8,
        65280.0,
        -65280.0,
        65407.0,
    ]
    x = np.concatenate([wide[np.abs(wide) < 65408], edges]).astype(np.float32)
    got = np.asarray(jax.jit(float16_round7)(x))
    want = Layout().encode(x)["tokens"]
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))


def test_values_the_layout_cannot_hold_become_infinite_or_nan():
    got = np.asarray(float16_round7(np.array([65408, -1e6, np.inf, np.nan, 1.0], np.float32)))
    assert np.isposinf(got[0]) and np.isneginf(got[1]) and np.isposinf(got[2])
    assert np.isnan(got[3]) and got[4] == 1.0


@pytest.mark.parametrize(
    "dtype,pool", [("float16-round7", 1), ("float16-round7", 2), ("float16", 4)]
)
def test_coded_tokens_equal_the_stores_coding(dtype, pool):
    x = activation_like(2, (2, 8, 8, 32))
    got = np.asarray(jax.jit(lambda t: code_tokens(t, Layout(dtype, pool)))(x))
    want = Layout(dtype, pool).encode(x)["tokens"]
    assert got.dtype == np.float16 and got.shape == want.shape
    # pooled means may differ in the last float32 bit (summation order), hence one float16 step
    np.testing.assert_allclose(
        got.astype(np.float32),
        want.astype(np.float32),
        rtol=0 if pool == 1 else 2**-7,
        atol=0 if pool == 1 else 1e-6,
    )


def test_int8_layout_tokens_stay_float32_for_the_host():
    x = activation_like(1, (2, 4, 4, 8))
    np.testing.assert_array_equal(np.asarray(code_tokens(x, Layout("int8", 2))), x)
