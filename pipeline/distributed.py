"""Across hosts: the same run spread over a Dask distributed cluster, one store part per worker.

The scheduler address is all a user adds. Videos are dealt to workers by size (largest first,
each to the least-loaded worker), every worker runs the ordinary one-host runner on its share
and writes its own part of the store, so no two writers ever share a shard. The store path must
be one that every worker can reach (a shared filesystem).
"""

from __future__ import annotations

import os

from ethoprism.errors import EthoprismError
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.run import ExtractSummary, extract_local


def deal_by_size(paths: list[str], n: int) -> list[list[str]]:
    """Greedy balance of total bytes: largest video first, to the least-loaded share."""
    shares: list[list[str]] = [[] for _ in range(n)]
    load = [0] * n
    for path in sorted(paths, key=lambda p: -os.path.getsize(p)):
        k = load.index(min(load))
        shares[k].append(path)
        load[k] += os.path.getsize(path)
    order = {p: i for i, p in enumerate(paths)}
    return [sorted(s, key=order.__getitem__) for s in shares]


def _run_share(paths: list[str], store_path: str, cfg: RunConfig, part: str) -> ExtractSummary:
    return extract_local(paths, store_path, cfg, part=part)


def extract_distributed(
    paths: list[str], store_path: str, cfg: RunConfig, scheduler: str
) -> ExtractSummary:
    from dask.distributed import Client

    store_path = os.path.abspath(store_path)
    try:
        client = Client(scheduler, timeout="30s")
    except OSError as e:
        raise EthoprismError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
    with client:
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise EthoprismError(f"the Dask cluster at {scheduler} has no workers")
        shares = deal_by_size(paths, len(workers))
        futures = [
            client.submit(_run_share, share, store_path, cfg, f"dask-{k}", workers=[w], pure=False)
            for k, (w, share) in enumerate(zip(workers, shares, strict=False))
            if share
        ]
        summaries = client.gather(futures)

    merged = ExtractSummary(store_path, summaries[0].model, summaries[0].checkpoint_sha256, 0)
    for s in summaries:
        merged.devices += s.devices
        merged.videos += s.videos
        merged.seconds = max(merged.seconds, s.seconds)
    merged.videos.sort(key=lambda r: paths.index(r.path))
    return merged
