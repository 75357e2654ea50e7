"""The encoder against the official VideoPrism outputs (tests/data/golden, tiny config)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from ethoprism.errors import EthoprismError
from ethoprism.extract import CONFIGS, Encoder, EncoderOutput, load_encoder
from ethoprism.extract import encoder as encoder_module
from ethoprism.extract.bench import encoder_flops
from ethoprism.extract.encoder import FactorizedEncoder, param_count, param_shapes, resize_weights

GOLDEN = Path(__file__).parent / "data" / "golden"
CASES = sorted(p.stem for p in GOLDEN.glob("case_*.npz"))
TINY = CONFIGS["videoprism-tiny"]

# bf16 matmuls (8-bit mantissa, f32 accumulation, f32 LayerNorm/softmax) vs float32: measured on
# the golden cases, relative L2 error of the tokens 5-6e-3 and max abs error 0.022-0.032 (tokens
# up to |4|). Bound: 3x the measured values.
BF16_REL_L2 = 2e-2
BF16_MAX_ABS = 0.1


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder("videoprism-tiny", checkpoint=GOLDEN / "checkpoint.npz")


@pytest.fixture(scope="module")
def encoder_bf16(encoder) -> Encoder:
    return Encoder(encoder.config, encoder.params, "bfloat16", encoder.checkpoint_sha256)


# One compiled function per input shape for all parity cases; returns (tokens, intermediates).
apply_tiny = jax.jit(FactorizedEncoder(TINY).apply)


def golden(case: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / f"{case}.npz") as f:
        return dict(f)


def assert_close(ours, ref, what):
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape, what
    excess = np.abs(ours - ref) - (1e-4 + 1e-4 * np.abs(ref))
    assert excess.max() <= 0, f"{what}: max |ours - ref| exceeds tolerance by {excess.max():.2e}"


def test_config_count_and_cases():
    assert len(CASES) == 7
    # the plain models, and the video towers of the video-text models (extract/lvt.py)
    assert set(CONFIGS) == {
        f"videoprism-{m}" for m in ("b", "l", "tiny", "lvt-b", "lvt-l", "lvt-tiny")
    }

    def architecture(name):
        return dataclasses.replace(CONFIGS[name], name="", hf_repo=None, hf_filename=None)

    for size in ("b", "l", "tiny"):
        assert architecture(f"videoprism-lvt-{size}") == architecture(f"videoprism-{size}")


@pytest.mark.parametrize("case", CASES)
def test_golden_parity(encoder, case):
    g = golden(case)
    b, t, h, w, _ = g["inputs"].shape
    tokens, out = apply_tiny(encoder.params, g["inputs"])
    p, d = TINY.patch_size, TINY.model_dim
    assert tokens.shape == (b, t, h // p, w // p, d)
    # The official output is (B, T*N, D), time-major: (B, T, h, w, D) flattens onto it.
    assert_close(tokens.reshape(b, -1, d), g["embeddings"], f"{case} tokens")
    assert_close(
        out["spatial_features"].reshape(b, -1, d), g["spatial_features"], f"{case} spatial"
    )


def test_call_returns_tokens_and_mean_embedding(encoder):
    g = golden("case_b2_t3_r108")
    out = encoder(g["inputs"])
    assert isinstance(out, EncoderOutput)
    assert out.tokens.shape == (2, 3, 6, 6, 64) and out.tokens.dtype == jnp.float32
    assert out.embedding.shape == (2, 64) and out.embedding.dtype == jnp.float32
    assert_close(out.tokens.reshape(2, -1, 64), g["embeddings"], "call tokens")
    np.testing.assert_allclose(out.embedding, g["embeddings"].mean(axis=1), atol=1e-5)
    # apply is the pure function behind __call__, traceable by the caller's own transformations.
    shapes = jax.eval_shape(encoder.apply, encoder.params, g["inputs"])
    assert shapes.tokens.shape == out.tokens.shape and shapes.embedding.shape == out.embedding.shape


def test_bfloat16_agrees_with_float32(encoder_bf16):
    for case in ("case_b1_t4_r72", "case_b2_t3_r108"):
        g = golden(case)
        ref = g["embeddings"]  # the official float32 tokens, which ours match to 1e-4
        bf = encoder_bf16(g["inputs"])
        assert bf.tokens.dtype == jnp.float32 and bf.embedding.dtype == jnp.float32
        diff = np.asarray(bf.tokens).reshape(ref.shape) - ref
        rel = np.linalg.norm(diff) / np.linalg.norm(ref)
        assert 1e-4 < rel <= BF16_REL_L2, (case, rel)  # > 1e-4: the matmuls really ran in bf16
        assert np.abs(diff).max() <= BF16_MAX_ABS, case
    hlo = jax.jit(encoder_bf16.apply).lower(encoder_bf16.params, g["inputs"]).as_text()
    assert "bf16" in hlo and "f32" in hlo


def test_bfloat16_emulation_is_the_same_arithmetic(encoder, monkeypatch):
    """On CPUs without bf16 hardware the bf16-rounded operands are multiplied in float32: the same
    products and float32 accumulation as a native bf16 matmul, so only summation order differs."""
    x = golden("case_b1_t4_r54")["inputs"]
    outputs = {}
    for native in (True, False):
        monkeypatch.setattr(encoder_module, "native_bfloat16", lambda native=native: native)
        outputs[native] = np.asarray(
            jax.jit(FactorizedEncoder(TINY, "bfloat16").apply)(encoder.params, x)[0]
        )
    np.testing.assert_allclose(outputs[False], outputs[True], atol=1e-4, rtol=0)  # measured 1e-6
    ref = golden("case_b1_t4_r54")["embeddings"].reshape(outputs[True].shape)
    # Both are >100x closer to each other than to float32 (0.022).
    assert np.abs(outputs[False] - outputs[True]).max() * 100 < np.abs(outputs[True] - ref).max()


def test_rectangular_frames_and_bad_sizes(encoder):
    x = np.random.default_rng(0).random((1, 5, 36, 90, 3), np.float32)
    assert encoder(x).tokens.shape == (1, 5, 2, 5, 64)
    with pytest.raises(EthoprismError, match="multiples of the patch size 18"):
        encoder(np.zeros((1, 4, 70, 72, 3), np.float32))


@pytest.mark.parametrize(
    "n_in,n_out", [(4, 2), (4, 6), (4, 3), (4, 5), (16, 8), (16, 10), (16, 20), (16, 7)]
)
def test_resize_weights_match_jax_image_resize(n_in, n_out):
    x = np.random.default_rng(n_in * 100 + n_out).standard_normal((n_in, 3)).astype(np.float32)
    ref = jax.image.resize(x, (n_out, 3), "bilinear")  # antialias=True, as the official model
    np.testing.assert_allclose(resize_weights(n_in, n_out) @ x, ref, atol=1e-5)


def test_resize_downsample_by_two_is_antialiased():
    w = resize_weights(16, 8)
    np.testing.assert_allclose(w[3, 5:9], [0.125, 0.375, 0.375, 0.125])
    np.testing.assert_allclose(w[0, :3], np.array([0.375, 0.375, 0.125]) / 0.875, rtol=1e-6)


def test_parameter_counts():
    assert param_count(CONFIGS["videoprism-b"]) == 114_365_184
    assert param_count(TINY) == sum(a.size for a in np.load(GOLDEN / "checkpoint.npz").values())


def test_random_init_is_official_scheme_and_seeded():
    a, b = load_encoder("videoprism-tiny", "random"), load_encoder("videoprism-tiny", "random")
    assert a.checkpoint_sha256 == "random-init-seed-0"
    np.testing.assert_array_equal(
        a.params["params"]["spatial_pos_emb"]["emb_var"],
        b.params["params"]["spatial_pos_emb"]["emb_var"],
    )
    p = a.params["params"]
    assert not np.any(p["spatial_ln"]["scale"]) and not np.any(
        p["patch_projection"]["linear"]["bias"]
    )
    kernel = np.asarray(
        p["patch_projection"]["linear"]["kernel"]
    )  # lecun_normal: std 1/sqrt(fan_in)
    assert abs(kernel.std() * np.sqrt(972) - 1) < 0.05
    query = np.asarray(
        p["spatial_encoder"]["transformers_stack"]["x_layers"]["self_attention"]["query"]["w"]
    )
    assert (
        abs(query.std() * np.sqrt(64 * 4) - 1) < 0.1
    )  # fan_in = D * heads for (D, heads, head_dim)


def test_identity_and_bad_dtype(encoder):
    ident = encoder.identity
    assert ident["name"] == "videoprism-tiny" and ident["dtype"] == "float32"
    assert ident["config"]["pos_emb_shape"] == [4, 4, 4] and len(ident["checkpoint_sha256"]) == 64
    assert (
        json.loads(json.dumps(ident)) == ident
    )  # unchanged by a round trip through store attributes
    with pytest.raises(EthoprismError, match="float16"):
        Encoder(encoder.config, encoder.params, "float16", "x")


def _jaxpr_matmul_flops(jaxpr, repeat=1) -> int:
    """2*m*n*k summed over every dot_general of a jaxpr, scan bodies counted `length` times."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            k = int(np.prod([eqn.invars[0].aval.shape[i] for i in lhs_contract]))
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * k
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _jaxpr_matmul_flops(sub, times)
    return total * repeat


@pytest.mark.parametrize(
    "config,shape", [(TINY, (4, 72, 72)), (CONFIGS["videoprism-b"], (16, 288, 288))]
)
def test_analytic_flops_equal_the_traced_matmuls(config, shape):
    variables = param_shapes(config)
    frames = jax.ShapeDtypeStruct((1, *shape, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(FactorizedEncoder(config).apply)(variables, frames)
    assert _jaxpr_matmul_flops(jaxpr.jaxpr) == encoder_flops(config, *shape)
