"""`ethoprism bench retrieve`: exact search vs FAISS IndexFlatL2, and the IVF index vs exact.

Both exact searches run on the same in-memory embeddings (n x D float32, clustered like real
window embeddings: neighbouring windows of a video sit close together) and the same queries,
on all cores of this machine; the figures are ratios taken in one run.
"""

from __future__ import annotations

import time

import faiss
import numpy as np

from ethoprism.probe.retrieve import ann
from ethoprism.probe.retrieve.knn import exact_search


def clustered_embeddings(n: int, dim: int, n_clusters: int, rng, block: int = 65536) -> np.ndarray:
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)
    out = np.empty((n, dim), np.float32)
    for i0 in range(0, n, block):
        rows = out[i0 : i0 + block]
        rng.standard_normal(rows.shape, dtype=np.float32, out=rows)
        rows *= 0.5
        rows += centres[rng.integers(0, n_clusters, len(rows))]
    return out


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def bench_retrieve(
    n: int = 250_000,
    dim: int = 768,
    queries: int = 500,
    k: int = 10,
    clusters: int = 1000,
    seed: int = 0,
) -> dict:
    rng = np.random.default_rng(seed)
    data = clustered_embeddings(n + queries, dim, clusters, rng)
    index_rows, q = data[:n], data[n:]

    ours, t_exact = _timed(lambda: exact_search(q, index_rows, k))
    flat = faiss.IndexFlatL2(dim)
    flat.add(index_rows)
    t0 = time.perf_counter()
    _, flat_ids = flat.search(q, k)
    t_flat = time.perf_counter() - t0
    flat.reset()  # frees its copy of the embeddings before the IVF index makes another

    nlist = ann.default_nlist(n)
    ivf, t_build = _timed(
        lambda: ann.build_ivf(index_rows, index_rows[ann.training_rows(n, nlist, seed)], nlist)
    )
    tune = min(100, queries)
    nprobe, _ = ann.tune_nprobe(ivf, q[:tune], ours.windows[:tune], k)
    ivf.nprobe = nprobe
    (_, ivf_ids), t_ivf = _timed(lambda: ivf.search(q, k))
    return {
        "n": n,
        "dim": dim,
        "queries": queries,
        "k": k,
        "threads": faiss.omp_get_max_threads(),
        "exact_s": t_exact,
        "faiss_flat_s": t_flat,
        "exact_queries_per_s": queries / t_exact,
        "faiss_flat_queries_per_s": queries / t_flat,
        "exact_vs_faiss_flat": t_flat / t_exact,
        "same_ids_as_faiss": float((flat_ids == ours.windows).mean()),
        "ivf_nlist": nlist,
        "ivf_nprobe": nprobe,
        "ivf_build_s": t_build,
        "ivf_s": t_ivf,
        "ivf_speedup_vs_exact": t_exact / t_ivf,
        "ivf_recall_at_10": ann.recall_at_k(ivf_ids, ours.windows),
    }


def bench_text_search(
    n: int = 250_000, dim: int = 768, queries: int = 100, k: int = 20, seed: int = 0
) -> dict:
    """Text queries/s over n L2-normalised embeddings (what an LvT store's `video_embedding`
    holds), exact and with an IVF-Flat index; the prompts' encoding is timed separately."""
    rng = np.random.default_rng(seed)
    data = clustered_embeddings(n + queries, dim, 1000, rng)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index_rows, q = data[:n], data[n:]
    exact, t_exact = _timed(lambda: exact_search(q, index_rows, k))
    nlist = ann.default_nlist(n)
    ivf = ann.build_ivf(index_rows, index_rows[ann.training_rows(n, nlist, seed)], nlist)
    nprobe, _ = ann.tune_nprobe(ivf, q, exact.windows, k)
    ivf.nprobe = nprobe
    (_, ivf_ids), t_ivf = _timed(lambda: ivf.search(q, k))
    return {
        "text_n": n,
        "text_queries": queries,
        "text_k": k,
        "text_exact_queries_per_s": queries / t_exact,
        "text_ivf_queries_per_s": queries / t_ivf,
        "text_ivf_nprobe": nprobe,
        "text_ivf_recall": ann.recall_at_k(ivf_ids, exact.windows),
    }
