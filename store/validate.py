"""Checking a store end to end (`validate`) and summarising it (`info`)."""

from __future__ import annotations

import numpy as np

from ethoprism.store.handle import open_handle
from ethoprism.store.parts import read_pool
from ethoprism.store.reader import merge_tables
from ethoprism.store.remote import stored_bytes
from ethoprism.store.schema import FRAME_TIME, WINDOW_COORDS, aligned_arrays


def _values_problem(name: str, values: np.ndarray) -> str | None:
    if not np.all(np.isfinite(values)):
        return f"{name} not finite"
    if not np.any(values):
        return f"{name} all zeros (a missing chunk reads as zeros)"
    return None


def _block_problems(part, start: int, stop: int, names: tuple[str, ...]) -> dict[int, list[str]]:
    """Read windows [start, stop) of a part (one shard); {window: problems} for the bad ones.

    The whole block is read at once; only if that fails is each window read alone, to name it.
    """
    found: dict[int, list[str]] = {}
    for name in names:
        arr = part.arrays[name]
        try:
            blocks = [(start, arr[start:stop])]
        except Exception:  # noqa: BLE001 (a decode or I/O failure is a finding, not a crash)
            blocks = []
            for w in range(start, stop):
                try:
                    blocks.append((w, arr[w : w + 1]))
                except Exception as e:  # noqa: BLE001
                    found.setdefault(w, []).append(f"{name} unreadable ({type(e).__name__}: {e})")
        for first, values in blocks:
            for k, window in enumerate(values):
                problem = _values_problem(name, window)
                if problem:
                    found.setdefault(first + k, []).append(problem)
    return found


def _part_table_problems(part, window_length: int | None) -> list[str]:
    """Video table vs window arrays: contiguous ranges covering [0, n_windows), coords sane."""
    n = part.n_windows
    where = f"part {part.name!r}"
    problems, expected = [], 0
    rows = part.state["videos"]
    for _r, row in enumerate(rows):
        if row["status"] == "failed":
            if row["n_windows"] != 0:
                problems.append(
                    f"{where} video {row['path']}: failed but has {row['n_windows']} windows"
                )
            continue
        if row["first_window"] != expected or row["n_windows"] < 1:
            problems.append(
                f"{where} video {row['path']}: window range starts at {row['first_window']} "
                f"with {row['n_windows']} windows; expected to start at {expected}"
            )
        expected = row["first_window"] + row["n_windows"]
    if expected != n:
        problems.append(f"{where}: video table covers {expected} windows but n_windows is {n}")
    if n == 0:
        return problems
    for name, arr in part.arrays.items():
        if arr.shape[0] < n:
            problems.append(
                f"{where} array {name}: {arr.shape[0]} windows, fewer than the {n} committed"
            )
    if problems:
        return problems
    coords = {name: part.arrays[name][:n] for name in WINDOW_COORDS}
    row_of_window = np.full(n, -1)
    for r, row in enumerate(rows):
        if row["status"] == "complete":
            row_of_window[row["first_window"] : row["first_window"] + row["n_windows"]] = r
    checks = {
        "video index does not match the video table": coords["video"] != row_of_window,
        "frame_step < 1": coords["frame_step"] < 1,
        "start_frame < 0": coords["start_frame"] < 0,
        "start_time not finite": ~np.isfinite(coords["start_time"]),
        "n_valid_frames < 1": coords["n_valid_frames"] < 1,
    }
    if window_length:
        checks[f"n_valid_frames > window_length {window_length}"] = (
            coords["n_valid_frames"] > window_length
        )
    if FRAME_TIME in part.arrays:
        times = part.arrays[FRAME_TIME][:n]
        checks["frame_time not finite"] = ~np.isfinite(times).all(axis=1)
        checks["frame_time of frame 0 is not start_time"] = times[:, 0] != coords["start_time"]
        checks["frame_time decreases"] = (np.diff(times, axis=1) < 0).any(axis=1)
    for what, bad in checks.items():
        for w in np.flatnonzero(bad)[:5]:
            problems.append(f"{where} window {w} ({_video_of(rows, row_of_window[w])}): {what}")
    return problems


def _video_of(rows, r: int) -> str:
    return f"video {rows[r]['path']}" if r >= 0 else "no video"


def validate(path_or_url, storage_options: dict | None = None) -> dict:
    """Read every committed window and check counts, finiteness and the video tables.

    Returns {"ok", "problems" (each naming part, window and video), "parts", "videos",
    "windows"}. Raises StoreError only if `path_or_url` is not a readable store at all.
    """
    handle = open_handle(path_or_url, storage_options)
    window_length = (handle.attrs.get("preprocessing") or {}).get("window_length")
    names = handle.layout.arrays + ("embedding",)
    problems = []
    for part in handle.parts:
        problems += _part_table_problems(part, window_length)
        if part.n_windows == 0:
            continue
        row_of_window = {}
        for row in part.state["videos"]:
            for k in range(row["n_windows"]):
                row_of_window[row["first_window"] + k] = (row["path"], k)
        per_shard = part.arrays["tokens"].shards[0]
        starts = range(0, part.n_windows, per_shard)
        blocks = read_pool().map(
            lambda a, part=part, per_shard=per_shard: _block_problems(
                part, a, min(a + per_shard, part.n_windows), names
            ),
            starts,
        )
        for found in blocks:
            for w, window_problems in sorted(found.items()):
                path, k = row_of_window.get(w, ("<no video>", -1))
                problems += [
                    f"part {part.name!r} window {w} (video {path}, its window {k}): {p}"
                    for p in window_problems
                ]
    rows, runs = merge_tables(handle.parts)
    return {
        "ok": not problems,
        "problems": problems,
        "parts": len(handle.parts),
        "videos": sum(r["status"] == "complete" for r in rows),
        "windows": sum(stop - start for _, start, stop in runs),
    }


def info(path_or_url, storage_options: dict | None = None) -> dict:
    """Identity, videos complete and failed, windows, bytes on disk and per window, layout."""
    handle = open_handle(path_or_url, storage_options)
    rows, runs = merge_tables(handle.parts)
    windows = sum(stop - start for _, start, stop in runs)
    stored = sum(stored_bytes(arr) for part in handle.parts for arr in part.arrays.values())
    token_shape = next(
        (p.state["token_shape"] for p in handle.parts if p.state.get("token_shape")), None
    )
    attrs = handle.attrs
    return {
        "source": handle.source,
        "schema": attrs["schema"],
        "schema_version": attrs["schema_version"],
        "encoder": attrs["encoder"],
        "preprocessing": attrs["preprocessing"],
        "layout": attrs["layout"],
        "software_version": attrs.get("software_version"),
        "created": attrs.get("created"),
        "parts": [
            {"name": p.name, "windows": p.n_windows, "videos": len(p.state["videos"])}
            for p in handle.parts
        ],
        "videos_complete": sum(r["status"] == "complete" for r in rows),
        "videos_failed": [
            {"path": r["path"], "reason": r["reason"]} for r in rows if r["status"] == "failed"
        ],
        "windows": windows,
        "token_shape": token_shape,
        # what retrieval can search: the pooled embedding, plus a video-text model's text-aligned
        "embeddings": ["embedding", *aligned_arrays(attrs["encoder"])],
        "bytes_on_disk": stored,
        "bytes_per_window": stored / windows if windows else None,
    }
