"""Which model a name means: each encoder loaded with its weights, and the list of them all.

The plain VideoPrism encoders (`encoder`) and the video-text ones (`videotext`, with a text tower
and a variable tree of their own) load from the same checkpoint files (`weights`); this is the one
place that tells them apart by name.
"""

from __future__ import annotations

import os
from pathlib import Path

from ethoprism.extract.encoder import (
    CONFIGS,
    Encoder,
    EncoderConfig,
    check_dtype,
    get_config,
    init_params,
    param_count,
)
from ethoprism.extract.videotext import load_video_text
from ethoprism.extract.videotext import param_count as video_text_params
from ethoprism.extract.weights import (
    RANDOM,
    RANDOM_SHA256,
    download,
    load_checkpoint,
    resolve_checkpoint,
    weights_available,
)
from ethoprism.store.schema import file_sha256


def load_encoder(
    name: str, checkpoint: str | os.PathLike | None = None, dtype: str = "float32"
) -> Encoder:
    """The encoder `name` with its weights.

    checkpoint: a path to an official npz; None -> $ETHOPRISM_CHECKPOINT if set, else the file
    from the Hugging Face hub (cached by huggingface_hub, downloaded on first use);
    "random" -> the official initialisation with seed 0 (for demos and tests without weights).
    """
    config, dtype = get_config(name), check_dtype(dtype)
    checkpoint = resolve_checkpoint(checkpoint)
    if name.startswith("videoprism-lvt"):  # the video-text models: their own variable tree
        return load_video_text(name, checkpoint, dtype)
    if isinstance(checkpoint, str) and checkpoint == RANDOM:
        params, sha = init_params(config, seed=0), RANDOM_SHA256
    else:
        path = Path(checkpoint).expanduser() if checkpoint is not None else download(config)
        params, sha = load_checkpoint(path, config), file_sha256(path)
    return Encoder(config=config, params=params, dtype=dtype, checkpoint_sha256=sha)


def _param_count(config: EncoderConfig) -> int:
    if config.name.startswith("videoprism-lvt"):  # both towers
        return video_text_params(config.name)
    return param_count(config)


def list_models() -> list[dict]:
    """Each encoder config with its size and where its weights are, if they are on this machine."""
    return [
        {
            "name": c.name,
            "frames": c.num_frames,
            "image_size": c.image_size,
            "model_dim": c.model_dim,
            "spatial_layers": c.num_spatial_layers,
            "temporal_layers": c.num_temporal_layers,
            "params": _param_count(c),
            "hf_repo": c.hf_repo,
            "hf_filename": c.hf_filename,
            "weights": weights_available(c.name),
        }
        for c in CONFIGS.values()
    ]
