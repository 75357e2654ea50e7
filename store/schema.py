"""Names, version and identity rules of the feature store (schema v1, see SPEC.md)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass

from ethoprism.store.errors import StoreError, StoreIdentityError
from ethoprism.store.layout import TOKEN_ARRAY_DIMS, Layout

SCHEMA = "ethoprism.features"
SCHEMA_VERSION = 1
PARTS = "parts"  # group holding one sub-group per writer
PART_ATTR = "ethoprism_part"  # a part group's commit record (its only attribute)

WINDOW_COORDS = ("video", "start_frame", "frame_step", "n_valid_frames", "start_time")
WINDOW_COORD_DTYPES = {
    "video": "int64",
    "start_frame": "int64",
    "frame_step": "int64",
    "n_valid_frames": "int64",
    "start_time": "float64",
}
# Each window frame's presentation time, (window, frame) seconds: written by extraction since
# this array was added; a part without it reads with nominal times (store.geometry).
FRAME_TIME = "frame_time"
IDENTITY_KEYS = ("encoder", "preprocessing", "layout")


@dataclass(frozen=True)
class VideoRecord:
    """One row of the per-video table: what the video is, independent of how it was encoded."""

    path: str
    size_bytes: int
    sha256: str
    fps: float
    n_frames: int
    duration: float
    width: int
    height: int
    codec: str  # STILL_CODEC for a still image
    abs_path: str = ""  # the path made absolute when recorded (URLs as given); "" in old stores

    @classmethod
    def of(cls, info) -> VideoRecord:
        """From any object with these fields but abs_path (e.g. extract's VideoInfo)."""
        fields = {
            f.name: getattr(info, f.name) for f in dataclasses.fields(cls) if f.name != "abs_path"
        }
        return cls(**fields, abs_path=absolute_path(fields["path"]))


def absolute_path(path: str) -> str:
    """The absolute form of a local path; URLs (anything with "://") as given."""
    path = str(path)
    return path if "://" in path else os.path.abspath(path)


# The codec a still image's row records (PNG, JPEG, ...: a video of one frame, fps 0; SPEC.md).
STILL_CODEC = "image"

VIDEO_FIELDS = tuple(f.name for f in dataclasses.fields(VideoRecord))
# Per-video table columns as the reader exposes them (prefixed "video_" on dim `videos`).
VIDEO_COLUMNS = VIDEO_FIELDS + ("status", "reason", "first_window", "n_windows")


def jsonable(obj):
    """Normalise to what a JSON round trip gives back (tuples -> lists), for comparisons."""
    return json.loads(json.dumps(obj))


def _flatten(d, prefix=""):
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def identity_of_attrs(attrs: dict) -> dict:
    return {k: attrs.get(k) for k in IDENTITY_KEYS}


def identity(ds) -> dict:
    """{"encoder", "preprocessing", "layout"} of a dataset from `ethoprism.store.open`."""
    missing = [k for k in IDENTITY_KEYS if k not in ds.attrs]
    if missing:
        raise StoreError(
            f"dataset has no {', '.join(missing)} attribute(s): not from an ethoprism store"
        )
    return identity_of_attrs(ds.attrs)


def identity_differences(a: dict, b: dict) -> list[str]:
    """Dotted names of every field where identities a and b differ, with both values."""
    fa, fb = _flatten(jsonable(a)), _flatten(jsonable(b))
    return [
        f"{k} ({fa.get(k, '<absent>')!r} vs {fb.get(k, '<absent>')!r})"
        for k in sorted(set(fa) | set(fb))
        if fa.get(k, "<absent>") != fb.get(k, "<absent>")
    ]


def check_same_identity(a: dict, b: dict, what: str) -> None:
    """Raise StoreIdentityError naming each field where identities a and b differ."""
    diffs = identity_differences(a, b)
    if diffs:
        raise StoreIdentityError(f"{what}: identity differs in {'; '.join(diffs)}")


def check_schema(attrs: dict, where: str) -> None:
    """Refuse groups that are not ethoprism stores or are of a newer schema version."""
    if attrs.get("schema") != SCHEMA:
        raise StoreError(
            f"{where} is not an ethoprism feature store "
            f"(no schema {SCHEMA!r} in its root attributes)"
        )
    version = attrs.get("schema_version")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise StoreError(
            f"{where} has schema version {version!r}, newer than this ethoprism reads "
            f"({SCHEMA_VERSION}); upgrade ethoprism to read it"
        )


# Arrays of a part, with their dimension names (stored as zarr v3 dimension_names).
ARRAY_DIMS = {
    **TOKEN_ARRAY_DIMS,  # each layout's (store.layout)
    "embedding": ("window", "c"),
    **{name: ("window",) for name in WINDOW_COORDS},
    FRAME_TIME: ("window", "frame"),
}


def part_arrays(layout: Layout) -> tuple[str, ...]:
    return layout.arrays + ("embedding",) + WINDOW_COORDS


def aligned_arrays(encoder: dict) -> dict[str, tuple[str, ...]]:
    """The text-aligned embeddings a store of this encoder holds (a video-text model's, SPEC.md),
    with their dimension names: what the encoder identity names under `aligned_arrays`."""
    return {name: ("window", *dims) for name, dims in encoder.get("aligned_arrays", {}).items()}


def window_arrays(encoder: dict) -> tuple[str, ...]:
    """The per-window data variables `read_windows` reads straight from the stored chunks."""
    return ("tokens", "embedding", *aligned_arrays(encoder))


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a local file: a video's content fingerprint, a checkpoint's identity."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def content_key(row: dict) -> str:
    """What makes two video rows the same video: the file's sha256, else its path."""
    return row["sha256"] or f"path:{row['path']}"
