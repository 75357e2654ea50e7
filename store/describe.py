"""What makes a store explain itself to someone with only zarr or xarray: a README attribute at
the root, CF-style attributes on every array, and consolidated metadata (SPEC.md)."""

from __future__ import annotations

import json
from pathlib import Path

from ethoprism.store.schema import PART_ATTR, PARTS

README = (
    "An ethoprism feature store (https://github.com/ethoprism): frozen video-model tokens of "
    "every 16-frame window of a video archive. The data are in one sub-group per writer, "
    "parts/<name> (the root attribute 'parts' lists them). Each opens with plain xarray: "
    "xarray.open_zarr(STORE, group='parts/<name>') gives tokens (window, t, h, w, c), "
    "embedding (window, c) and the per-window coordinates; only windows below n_windows of "
    f"the part's '{PART_ATTR}' attribute are committed, and that attribute's 'videos' table "
    "says which video each window range belongs to (the 'video' array indexes it). With "
    "zarr: zarr.open_group(STORE)['parts/<name>/embedding']. ethoprism.store.open(STORE) "
    "merges every part into one xarray.Dataset with video and time coordinates and decoded "
    "tokens. Full format: store/SPEC.md in ethoprism."
)

# CF-style (long_name, units, description) of each array of a part; units in UDUNITS terms,
# "1" for dimensionless values.
ARRAY_ATTRS = {
    "tokens": {
        "long_name": "encoder tokens",
        "units": "1",
        "description": "the frozen encoder's output tokens per window (time, height, width, "
        "channel), coded as the root attribute 'layout' says (int8: multiply by token_scale "
        "and channel_scale)",
    },
    "token_scale": {
        "long_name": "per-token scale of int8 tokens",
        "units": "1",
        "description": "tokens * token_scale * channel_scale are the decoded tokens",
    },
    "channel_scale": {
        "long_name": "per-channel scale of int8 tokens",
        "units": "1",
        "description": "RMS of each channel over the window, applied before token_scale",
    },
    "embedding": {
        "long_name": "window embedding",
        "units": "1",
        "description": "mean of the window's tokens before coding, float32 (used for retrieval)",
    },
    "video": {
        "long_name": "video row",
        "units": "1",
        "description": f"row of the part's video table ('{PART_ATTR}' attribute, 'videos') "
        "that the window belongs to",
    },
    "start_frame": {
        "long_name": "first frame of the window",
        "units": "frames",
        "description": "decode-order index of the window's first frame in its video",
    },
    "frame_step": {
        "long_name": "frame step",
        "units": "frames",
        "description": "the window holds frames start_frame + j * frame_step",
    },
    "n_valid_frames": {
        "long_name": "valid frames",
        "units": "frames",
        "description": "frames of the window inside the video; later ones repeat the last",
    },
    "frame_time": {
        "long_name": "frame times",
        "units": "seconds",
        "description": "presentation time of each frame of the window, as decoded",
    },
    "start_time": {
        "long_name": "start time",
        "units": "seconds",
        "description": "presentation time of the window's first frame from the video's start",
    },
    # text-aligned arrays: video-text (LvT) models only (the encoder's 'aligned_arrays')
    "video_embedding": {
        "long_name": "text-aligned window embedding",
        "units": "1",
        "description": "attention-pooled output of the video-text model's auxiliary layers over "
        "the window's tokens, in the text encoder's space (compare with cosine similarity)",
    },
    "frame_embeddings": {
        "long_name": "text-aligned frame embeddings",
        "units": "1",
        "description": "the same pooler over each frame's tokens (window, t, c), in the text "
        "encoder's space",
    },
}


def array_attrs(name: str) -> dict:
    """An array's CF-style attributes (a generic description for an array not listed)."""
    return ARRAY_ATTRS.get(name, {"long_name": name, "units": "1", "description": name})


def _read(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def consolidated(root: Path, parts: list[str]) -> dict:
    """The root's `consolidated_metadata` (zarr-python's inline form) for the listed parts:
    the zarr.json of every group and array below the root, as they are now."""
    metadata = {PARTS: _read(root / PARTS / "zarr.json")}
    for part in parts:
        part_dir = root / PARTS / part
        metadata[f"{PARTS}/{part}"] = _read(part_dir / "zarr.json")
        for meta in sorted(part_dir.glob("*/zarr.json")):
            metadata[f"{PARTS}/{part}/{meta.parent.name}"] = _read(meta)
    return {"kind": "inline", "must_understand": False, "metadata": metadata}
