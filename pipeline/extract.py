"""`ethoprism extract`: the whole run, on this host or spread over a Dask cluster."""

from __future__ import annotations

import os

from ethoprism.errors import EthoprismError
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.distributed import extract_distributed
from ethoprism.pipeline.inputs import IMAGE_SUFFIXES, VIDEO_SUFFIXES, find_videos
from ethoprism.pipeline.run import ExtractSummary, Reporter, ensure_store_parent, extract_local


def run_paths(inputs: list[str], cfg: RunConfig) -> list[str]:
    """The videos a run covers: those `inputs` name, and with `--frames-from` only the annotated
    ones (still images included: directories then contribute image files too)."""
    if not cfg.frames_from:
        return find_videos(inputs)
    paths = find_videos(inputs, VIDEO_SUFFIXES | IMAGE_SUFFIXES)
    paths = [p for p in paths if os.path.basename(p) in dict(cfg.centres)]
    if not paths:
        raise EthoprismError(f"none of the videos given is annotated in {cfg.frames_from}")
    return paths


def run_extract(
    inputs: list[str],
    store_path: str,
    cfg: RunConfig | None = None,
    *,
    scheduler: str | None = None,
    reporter: Reporter | None = None,
    part: str | None = None,
) -> ExtractSummary:
    """Extract every video named by `inputs` (files, directories, globs) into `store_path`.

    Re-running the same command resumes: complete videos are skipped, the rest are redone.
    A video that cannot be decoded is recorded as failed and the run goes on.
    """
    cfg = cfg or RunConfig()
    paths = run_paths(inputs, cfg)
    ensure_store_parent(store_path)
    if scheduler:
        return extract_distributed(paths, store_path, cfg, scheduler)
    return extract_local(paths, store_path, cfg, part=part, reporter=reporter)
