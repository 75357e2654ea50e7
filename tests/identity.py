"""Store identities for test stores written by hand (tests/ is on sys.path, like servers.py)."""

from __future__ import annotations


def encoder(model_dim: int, checkpoint: str = "random-init-seed-0", **config) -> dict:
    """The root `encoder` attribute of a tiny-encoder store."""
    return {
        "name": "videoprism-tiny",
        "config": {"model_dim": model_dim, **config},
        "checkpoint_sha256": checkpoint,
        "dtype": "float32",
    }


def preprocessing(frame_size: int, window_length: int, window_stride: int) -> dict:
    """The root `preprocessing` attribute (squash, every frame, pixels in [0, 1])."""
    return {
        "frame_size": frame_size,
        "resize": "squash",
        "window_length": window_length,
        "window_stride": window_stride,
        "frame_step": 1,
        "pixel_range": [0.0, 1.0],
    }
