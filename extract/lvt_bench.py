"""What a video-text (LvT) model costs beyond the plain encoder: prompts encoded per second, and
the extra time and FLOPs per window of its video tower (auxiliary layers and attention pooler).

Weights are the seeded random init (speed does not depend on their values). Both towers are
timed in the same run, back to back, so the ratio is what the figures mean on a shared machine.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ethoprism.extract.bench import encoder_flops
from ethoprism.extract.encoder import FactorizedEncoder
from ethoprism.extract.lvt import LVT_CONFIGS, TextTower
from ethoprism.extract.models import load_encoder
from ethoprism.extract.textcache import TextCache, encode_cached
from ethoprism.extract.videotext import VideoTextEncoder, _video_fns
from ethoprism.extract.weights import RANDOM_SHA256

WORDS = [
    "mouse", "rat", "fly", "fish", "larva", "rearing",
    "grooming", "walking", "running", "turning", "fighting", "sniffing",
]  # fmt: skip


def random_prompts(n: int, seed: int = 0) -> list[str]:
    """Behaviour-like prompts of 2-7 words (typical queries: ~10 tokens with the template)."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(2, 8))) for _ in range(n)]


class _CountingTokenizer:
    """Ids without a vocabulary file: one id per word and the final '.', as SentencePiece gives
    for common words; the timing depends only on the sequence lengths."""

    def __call__(self, texts, max_length=64):
        ids = np.zeros((len(texts), max_length), np.int32)
        paddings = np.ones((len(texts), max_length), np.float32)
        for i, t in enumerate(texts):
            n = min(max_length, len(t.split()) + 1)
            ids[i, :n] = np.arange(3, 3 + n)
            paddings[i, :n] = 0
        return ids, paddings


def bench_prompts(model: str = "videoprism-lvt-b", n: int = 1000, batch_size: int = 256) -> dict:
    """Prompts per second through the text embedding cache: cold (each encoded by the text tower,
    after compiling, and written) and warm (each read back), on this machine."""
    config = LVT_CONFIGS[model]
    ids = jnp.zeros((1, 2), jnp.int32)
    text = jax.jit(TextTower(config).init)(jax.random.key(0), ids, jnp.zeros((1, 2)))
    params = {"params": {"text_encoder": text["params"]}}  # the text tower is all it runs
    encoder = VideoTextEncoder(config, params, "float32", RANDOM_SHA256)
    texts, tok = random_prompts(n), _CountingTokenizer()
    encoder.encode_texts(texts, tok, batch_size)  # compile every length bucket used
    with tempfile.TemporaryDirectory(prefix="ethoprism-bench-text-cache-") as tmp:
        cache = TextCache(Path(tmp), model, RANDOM_SHA256, "counting-tokenizer")
        d = config.vision.model_dim
        t0, c0 = time.perf_counter(), time.process_time()
        cold = encode_cached(cache, texts, d, lambda t: encoder.encode_texts(t, tok, batch_size))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        warm = encode_cached(cache, texts, d, _refuse)
        warm_seconds = time.perf_counter() - t0
    assert warm.tobytes() == cold.tobytes()
    # the text tower's matmuls per position: q, k, v, post and a 4D-wide ReLU FFN, every layer
    d = config.vision.model_dim
    per_position = 2 * config.num_unimodal_layers * (4 * d * d + 2 * d * 4 * d)
    return {
        "model": model,
        "prompts": n,
        "prompt_s": seconds,
        "prompts_per_s": n / seconds,
        "prompts_per_cpu_s": n / cpu,  # steadier on a shared machine (time others take is out)
        "prompts_per_s_warm_cache": n / warm_seconds,  # encoded before: read from the cache
        "gflop_per_position": per_position / 1e9,
    }


def _refuse(missing: list[str]) -> np.ndarray:
    raise AssertionError(f"{len(missing)} prompts missed a warm cache")


def lvt_extra_flops(model: str, num_frames: int, size: int) -> tuple[int, int]:
    """(plain encoder FLOPs, extra FLOPs of the LvT video tower) per window."""
    c = LVT_CONFIGS[model]
    v = c.vision
    tokens = num_frames * (size // v.patch_size) ** 2
    d, f, h = v.model_dim, v.mlp_dim, 4 * v.model_dim
    aux = 2 * tokens * d * d * 4 + 2 * tokens * d * f * 2 + 2 * 2 * tokens * tokens * d
    # keys and values projected once for the video and its frames; two single-query attentions
    pooler = 2 * tokens * d * h * 2 + 2 * 2 * 2 * tokens * h
    return encoder_flops(v, num_frames, size, size), c.num_auxiliary_layers * aux + pooler


def bench_video_tower(model: str = "videoprism-lvt-b", rounds: int = 1) -> dict:
    """Seconds per window of the plain encoder and of the LvT video tower at the trained shape."""
    lvt = load_encoder(model, checkpoint="random")
    v = lvt.config
    shape = (1, v.num_frames, v.image_size, v.image_size, 3)
    frames = jnp.asarray(np.random.default_rng(0).random(shape, np.float32))
    plain_params = {"params": lvt.params["params"]["vision_encoder"]}
    plain = jax.jit(FactorizedEncoder(v).apply)
    tower = _video_fns(lvt.lvt, "float32")[1]
    jax.block_until_ready(plain(plain_params, frames))
    jax.block_until_ready(tower(lvt.params, frames))
    t_plain, t_lvt = [], []
    for _ in range(rounds):
        for fn, params, out in ((plain, plain_params, t_plain), (tower, lvt.params, t_lvt)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, frames))
            out.append(time.perf_counter() - t0)
    base, extra = lvt_extra_flops(model, v.num_frames, v.image_size)
    return {
        "model": model,
        "input_shape": [1, v.num_frames, v.image_size, v.image_size, 3],
        "plain_s_per_window": min(t_plain),
        "lvt_s_per_window": min(t_lvt),
        "lvt_extra_time": min(t_lvt) / min(t_plain) - 1,
        "plain_gflop": base / 1e9,
        "lvt_extra_gflop": extra / 1e9,
        "lvt_extra_flops": extra / base,
    }
