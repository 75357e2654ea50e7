"""Committed pieces of an unfinished video, so that a run interrupted inside a long video
resumes inside it (SPEC.md, "Pieces of an unfinished video").

A writer may make the windows of the video it is writing durable before the video ends, and
record them in the part's commit record under `unfinished`, without counting them in
`n_windows`: readers, which read windows [0, n_windows) only, never see them. A later writer of
the same part that begins the same video (same sha256) keeps them and continues after them; one
that begins any other video drops them. This module owns that attribute.
"""

from __future__ import annotations

KEY = "unfinished"


def windows_of(state: dict, sha256: str | None = None) -> int:
    """Windows held in committed pieces (of the video with this sha256, if given)."""
    piece = state.get(KEY)
    if not piece or (sha256 is not None and piece["sha256"] != sha256):
        return 0
    return int(piece["n_windows"])


def row_of(state: dict) -> int | None:
    """The video-table row the pieces' windows name in their `video` coordinate."""
    piece = state.get(KEY)
    return None if not piece else int(piece["row"])


def record(state: dict, path: str, sha256: str, first: int, n: int, row: int) -> dict:
    """The commit record with windows [first, first + n) held as pieces of this video."""
    piece = {"path": path, "sha256": sha256, "first_window": first, "n_windows": n, "row": row}
    return {**state, KEY: piece}


def without(state: dict) -> dict:
    """The commit record without pieces (the video was committed whole or given up)."""
    return {k: v for k, v in state.items() if k != KEY}
