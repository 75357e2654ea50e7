"""Encoder throughput against this machine's matmul peak, measured in the same run.

FLOPs are counted analytically, 2*m*n*k for every matmul of the forward pass: the patch
projection, the q/k/v/output projections and both MLP matmuls of every layer, and attention's
score (q.k) and value (p.v) matmuls. LayerNorm, softmax, logit cap, GELU, biases and the
positional-embedding resize are not counted (they are < 1% of the matmul FLOPs of the base model).

The peak is the best rate of a jit-compiled float32 2048x2048 @ 2048x2048 `jnp.dot`. The machine
may be shared, so each round times the peak and one encoder batch back to back and the ratio is
taken per round; the summary is the median round by that ratio (its windows/s, GFLOP/s, peak and
ratio together, so the printed ratio is the printed GFLOP/s over the printed peak) and the best
round. `cpu_ratio` is
the same ratio per CPU second of this process instead of per wall second: time slices taken by
other processes do not count against either side, so it is the steadier figure on a busy machine.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from ethoprism.extract.encoder import Encoder, EncoderConfig, get_config
from ethoprism.extract.models import load_encoder

PEAK_SIZE = 2048


def encoder_flops(config: EncoderConfig, num_frames: int, height: int, width: int) -> int:
    """Matmul FLOPs of one window (one batch element) of `num_frames` x `height` x `width`
    frames."""
    t, n = num_frames, (height // config.patch_size) * (width // config.patch_size)
    d, f = config.model_dim, config.mlp_dim
    tokens = t * n
    per_layer = 2 * tokens * d * d * 4 + 2 * tokens * d * f * 2  # q, k, v, post; ffn in and out
    spatial_attention = (
        2 * 2 * t * n * n * d
    )  # per frame: scores and values over n tokens, all heads
    temporal_attention = 2 * 2 * n * t * t * d
    return (
        2 * tokens * config.patch_size**2 * 3 * d
        + config.num_spatial_layers * (per_layer + spatial_attention)
        + config.num_temporal_layers * (per_layer + temporal_attention)
    )


def _seconds(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - wall, time.process_time() - cpu


def matmul_peak(reps: int = 5) -> tuple[float, float]:
    """GFLOP/s per wall second and per CPU second: the best of `reps` float32 square matmuls."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((PEAK_SIZE, PEAK_SIZE), np.float32))
    dot = jax.jit(jnp.dot)
    jax.block_until_ready(dot(a, a))
    times = [_seconds(dot, a, a) for _ in range(reps)]
    return 2 * PEAK_SIZE**3 / min(t[0] for t in times) / 1e9, 2 * PEAK_SIZE**3 / min(
        t[1] for t in times
    ) / 1e9


def bench_encoder(
    model: str = "videoprism-b", batch: int = 1, dtype: str = "float32", rounds: int = 3
) -> dict:
    """Compile, warm up, then `rounds` x (matmul peak, one encoder batch) at the trained input
    shape; for bfloat16 each round also times the float32 encoder (`speedup_vs_float32`).

    Weights are the seeded random init: speed does not depend on their values.
    """
    config = get_config(model)
    encoder = load_encoder(model, checkpoint="random", dtype=dtype)
    shape = (batch, config.num_frames, config.image_size, config.image_size, 3)
    frames = jnp.asarray(np.random.default_rng(0).random(shape, np.float32))
    flops = batch * encoder_flops(config, *shape[1:4])

    # Another dtype is compared with float32 in the same rounds: across runs the load differs.
    reference = (
        Encoder(config, encoder.params, "float32", encoder.checkpoint_sha256)
        if dtype != "float32"
        else None
    )
    compile_s = _seconds(encoder, frames)[0]  # compiles and runs once
    warmup_s = _seconds(encoder, frames)[0]
    if reference is not None:
        _seconds(reference, frames)
    per_round = []
    for _ in range(rounds):
        peak, peak_cpu = matmul_peak()
        seconds, cpu_seconds = _seconds(encoder, frames)
        per_round.append(
            {
                "seconds": seconds,
                "windows_per_s": batch / seconds,
                "gflops": flops / seconds / 1e9,
                "peak_gflops": peak,
                "ratio": flops / seconds / 1e9 / peak,
                "cpu_ratio": flops / cpu_seconds / 1e9 / peak_cpu,
            }
        )
        if reference is not None:
            per_round[-1]["float32_seconds"] = seconds32 = _seconds(reference, frames)[0]
            per_round[-1]["speedup_vs_float32"] = seconds32 / seconds

    def median(key):
        return statistics.median(r[key] for r in per_round)

    # one round's figures, not medians of each column, which need not come from the same round
    middle = sorted(per_round, key=lambda r: r["ratio"])[(len(per_round) - 1) // 2]

    return {
        "model": model,
        "dtype": dtype,
        "batch": batch,
        "input_shape": list(shape),
        "gflop_per_window": flops / batch / 1e9,
        "compile_s": compile_s - warmup_s,
        "warmup_s": warmup_s,
        "median_round": per_round.index(middle) + 1,
        "windows_per_s": middle["windows_per_s"],
        "gflops": middle["gflops"],
        "peak_gflops": middle["peak_gflops"],
        "ratio": middle["ratio"],
        "best_ratio": max(r["ratio"] for r in per_round),
        "cpu_ratio": median("cpu_ratio"),
        "speedup_vs_float32": median("speedup_vs_float32") if reference is not None else 1.0,
        "rounds": per_round,
        "devices": [str(d) for d in jax.devices()],
        "flops": (
            "analytic: 2*m*n*k per matmul (patch projection, q/k/v/post, MLP, attention scores "
            "and values); elementwise ops not counted"
        ),
        "peak": (
            f"best of 5 jit-compiled float32 {PEAK_SIZE}x{PEAK_SIZE} jnp.dot, measured each round"
        ),
    }
