"""A loaded video-text (LvT) model: an `Encoder` for extraction that also gives the contrastive
video embedding, and the text tower for queries.

The extraction interface is `Encoder`'s (`config`, `params`, `dtype`, `apply`, `identity`), so
the pipeline runs an LvT model like a plain one; its output adds the text-aligned embeddings,
which the store keeps as named per-window arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ethoprism.errors import EthoprismError
from ethoprism.extract.encoder import EncoderConfig, check_dtype
from ethoprism.extract.lvt import LVT_CONFIGS, PROMPT_TEMPLATE, TEXT_MAX_LEN, LvtConfig, VideoText
from ethoprism.extract.textcache import TextCache, default_root, encode_cached
from ethoprism.extract.tokenizer import Tokenizer, load_tokenizer
from ethoprism.extract.weights import (
    RANDOM,
    RANDOM_SHA256,
    CheckpointError,
    download,
    load_checkpoint,
    resolve_checkpoint,
)
from ethoprism.store.schema import file_sha256

Array = jax.Array


class VideoTextOutput(NamedTuple):
    tokens: Array  # (B, T, h, w, D) float32: the video encoder's tokens, as a plain model's
    embedding: Array  # (B, D) the mean of the tokens (what moment queries use)
    video_embedding: Array  # (B, D) normalised, text-aligned
    frame_embeddings: Array  # (B, T, D) normalised, text-aligned


# The text-aligned arrays an LvT extraction adds to the store (name -> dims after `window`).
ALIGNED_ARRAYS = {"video_embedding": ("c",), "frame_embeddings": ("t", "c")}


def get_lvt_config(name: str) -> LvtConfig:
    if name not in LVT_CONFIGS:
        raise CheckpointError(
            f"{name!r} is not a video-text model; known: {', '.join(LVT_CONFIGS)}"
        )
    return LVT_CONFIGS[name]


@functools.cache
def _video_fns(config: LvtConfig, dtype: str):
    module = VideoText(config, dtype)

    def apply(params, frames):
        video, out = module.apply(params, frames, method=VideoText.video)
        tokens = out["tokens"]
        return VideoTextOutput(tokens, tokens.mean(axis=(1, 2, 3)), video, out["frame_embeddings"])

    return apply, jax.jit(apply)


@functools.cache
def _text_fn(config: LvtConfig):
    module = VideoText(config)

    def embed(params, ids, paddings):
        return module.apply(params, ids, paddings, method=VideoText.text)[0]

    return jax.jit(embed)


@dataclass(frozen=True)
class VideoTextEncoder:
    """An LvT model with its weights; call it on frames (B, T, H, W, 3) float32 in [0, 1]."""

    lvt: LvtConfig
    params: Any  # flax variables {"params": ...} of the whole model
    dtype: str
    checkpoint_sha256: str

    def __post_init__(self):
        check_dtype(self.dtype)

    @property
    def config(self) -> EncoderConfig:
        return self.lvt.vision

    def __call__(self, frames) -> VideoTextOutput:
        return _video_fns(self.lvt, self.dtype)[1](self.params, frames)

    def apply(self, params, frames) -> VideoTextOutput:
        """Pure and traceable: for the caller's own jit / sharding."""
        return _video_fns(self.lvt, self.dtype)[0](params, frames)

    @property
    def identity(self) -> dict:
        config = dataclasses.asdict(self.config)
        config["video_text"] = {
            k: v for k, v in dataclasses.asdict(self.lvt).items() if k not in ("name", "vision")
        }
        return json.loads(
            json.dumps(
                {
                    "name": self.lvt.name,
                    "config": config,
                    "checkpoint_sha256": self.checkpoint_sha256,
                    "dtype": self.dtype,
                    "aligned_arrays": ALIGNED_ARRAYS,
                }
            )
        )

    def encode_texts(
        self, texts: list[str], tokenizer: Tokenizer, batch_size: int = 256
    ) -> np.ndarray:
        """(n, D) normalised text embeddings, float32, in the order of `texts`.

        The embedding does not depend on how far a text is padded (padded keys are masked and the
        class token comes last), so each batch is cut to the next power of two >= its longest
        text: a short prompt costs ~9 positions, not 65, and at most 4 shapes ever compile.
        """
        ids, paddings = tokenizer(list(texts), TEXT_MAX_LEN)
        n = len(ids)
        out = np.zeros((n, self.config.model_dim), np.float32)
        order = np.argsort((paddings == 0).sum(1), kind="stable")  # similar lengths together
        fn = _text_fn(self.lvt)
        for lo in range(0, n, batch_size):
            rows = order[lo : lo + batch_size]
            longest = int((paddings[rows] == 0).sum(1).max())
            length = min(TEXT_MAX_LEN, 1 << max(longest - 1, 0).bit_length())
            b_ids, b_pad = ids[rows, :length], paddings[rows, :length]
            if len(rows) < batch_size:  # one batch shape per length
                extra = batch_size - len(rows)
                b_ids = np.concatenate([b_ids, np.zeros((extra, length), np.int32)])
                b_pad = np.concatenate([b_pad, np.ones((extra, length), np.float32)])
            out[rows] = np.asarray(fn(self.params, b_ids, b_pad))[: len(rows)]
        return out


def prompts(texts: list[str], template: str = PROMPT_TEMPLATE) -> list[str]:
    """Queries wrapped as the official colab does ("a video of {}."); "{}" alone keeps them."""
    if "{}" not in template:
        raise EthoprismError(f"prompt template {template!r} has no '{{}}' for the text")
    return [template.format(t) for t in texts]


@functools.cache
def _init(config: LvtConfig):
    p = config.vision.patch_size
    frames = jnp.zeros((1, 1, p, p, 3), jnp.float32)
    ids, pad = jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2), jnp.float32)
    return VideoText(config).init, (frames, ids, pad)


def param_shapes(config: LvtConfig) -> dict:
    init, args = _init(config)
    return jax.eval_shape(init, jax.random.key(0), *args)


def param_count(name: str) -> int:
    shapes = param_shapes(get_lvt_config(name))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes))


def load_video_text(
    name: str, checkpoint: str | os.PathLike | None = None, dtype: str = "float32"
) -> VideoTextEncoder:
    """The LvT model `name` with its weights: an official npz path, None (the Hugging Face
    hub), or "random" (seed 0, for tests and demos)."""
    config, dtype = get_lvt_config(name), check_dtype(dtype)
    if isinstance(checkpoint, str) and checkpoint == RANDOM:
        init, args = _init(config)
        params, sha = jax.jit(init)(jax.random.key(0), *args), RANDOM_SHA256
    else:
        path = Path(checkpoint).expanduser() if checkpoint is not None else download(config.vision)
        params = load_checkpoint(path, config.vision, param_shapes(config))
        sha = file_sha256(path)
    return VideoTextEncoder(config, params, dtype, sha)


def encode_prompts_for(
    identity: dict,
    texts: list[str],
    *,
    template: str = PROMPT_TEMPLATE,
    checkpoint: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | None = None,
    cache: bool = True,
) -> np.ndarray:
    """(n, D) text embeddings of `texts` (wrapped in `template`) in the space of a store made with
    the encoder `identity`; weights other than the store's are refused. `checkpoint` None:
    $ETHOPRISM_CHECKPOINT if set (as for extraction), else the Hugging Face cache.

    Prompts encoded before with the store's checkpoint and this tokenizer come from the text
    cache (`extract.textcache`); when every prompt does, no weights are read at all.
    """
    config = get_lvt_config(identity["name"])
    store_sha = str(identity.get("checkpoint_sha256"))
    checkpoint = resolve_checkpoint(checkpoint)  # $ETHOPRISM_CHECKPOINT, as extraction reads it
    if checkpoint is not None:  # a checkpoint named is checked even when no prompt needs it
        _same_weights(_checkpoint_sha256(checkpoint), store_sha)
    tok = load_tokenizer(tokenizer, config.tokenizer_url)
    text_cache = (
        TextCache(default_root(), config.name, store_sha, file_sha256(tok.path)) if cache else None
    )

    def encode(missing: list[str]) -> np.ndarray:
        model = load_video_text(config.name, checkpoint)
        _same_weights(model.checkpoint_sha256, store_sha)
        return model.encode_texts(missing, tok)

    return encode_cached(text_cache, prompts(texts, template), config.vision.model_dim, encode)


def _checkpoint_sha256(checkpoint: str | os.PathLike) -> str:
    if isinstance(checkpoint, str) and checkpoint == RANDOM:
        return RANDOM_SHA256
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return file_sha256(path)


def _same_weights(given: str, store_sha: str) -> None:
    if given != store_sha:
        raise CheckpointError(
            f"the checkpoint given (sha256 {given[:12]}) is not the one the store was extracted "
            f"with (sha256 {store_sha[:12]}); pass that checkpoint with --checkpoint"
        )
