"""Exact search agrees with a float64 numpy brute force on ids, except between true ties, and the
approximate index probed in full reads recall 1.0 when the store holds duplicate windows."""

import numpy as np

from ethoprism.probe import retrieve as retrieval
from ethoprism.probe.retrieve import ann

RTOL = 1e-6  # a distance gap below this (relative) is a true tie


def brute_force(queries, index, k):
    """float64 distances, ids sorted by (distance, id)."""
    d = np.sqrt(
        ((queries.astype(np.float64)[:, None] - index.astype(np.float64)[None]) ** 2).sum(-1)
    )
    order = np.lexsort((np.broadcast_to(np.arange(len(index)), d.shape), d), axis=1)[:, :k]
    return order, d


def hard_embeddings(rng, n=3000, dim=32):
    """Tight clusters far from the origin (the float32 expanded form |x|^2 - 2 q.x cancels
    badly there), with exact duplicates and near-duplicates, as static camera-trap footage
    gives."""
    centres = 100 + rng.normal(size=(30, dim))
    x = centres[rng.integers(0, 30, n)] + 1e-2 * rng.normal(size=(n, dim))
    x[100:200] = x[0:100]  # exact duplicates
    x[200:300] = x[0:100] + 1e-5 * rng.normal(size=(100, dim))  # near-duplicates
    return x.astype(np.float32)


def test_exact_search_agrees_with_float64_brute_force_except_true_ties():
    rng = np.random.default_rng(0)
    x = hard_embeddings(rng)
    queries = np.concatenate([x[rng.choice(len(x), 60, replace=False)], x[:20]])
    k = 10
    got = retrieval.exact_search(queries, x, k, block_rows=700)  # several blocks
    want, d = brute_force(queries, x, k)
    rows = np.arange(len(queries))[:, None]
    # distances reported are the float64 ones
    np.testing.assert_allclose(got.distances, d[rows, got.windows], rtol=1e-9)
    # where ids differ, the two windows are tied: their distances differ by < RTOL relative
    differ = got.windows != want
    gap = np.abs(d[rows, got.windows] - d[rows, want]) / np.maximum(d[rows, want], 1e-30)
    assert (gap[differ] < RTOL).all(), gap[differ].max()
    # and the k-th distance is the brute force's
    np.testing.assert_allclose(got.distances[:, -1], d[rows[:, 0], want[:, -1]], rtol=RTOL)


def test_full_probe_recall_is_one_with_duplicate_windows():
    rng = np.random.default_rng(1)
    x = hard_embeddings(rng, n=4000)
    x[100:1600] = np.tile(x[:100], (15, 1))  # each query has 15 exact copies: 10 of them tie
    queries, own = x[:100], np.arange(100)
    exact = retrieval.exact_search(queries, x, 10, index_groups=np.arange(len(x)), query_groups=own)
    nlist = ann.default_nlist(len(x))
    index = ann.build_ivf(x, x[ann.training_rows(len(x), nlist)], nlist)
    nprobe, recall = ann.tune_nprobe(
        index,
        queries,
        exact.windows,
        10,
        target=1.0,
        exclude=own,
        truth_dist=exact.distances,
        vectors=lambda ids: x[ids],
    )
    assert recall == 1.0
    # ties are what make it 1: the other copies of each query (which of the tied copies comes
    # back is arbitrary) score 0.5 by plain set recall and 1.0 when ties count
    swapped = exact.windows.copy()
    swapped[:, 5:] = own[:, None] + 100 * np.arange(11, 16)
    assert not np.isin(swapped[:, 5:], exact.windows).any()
    assert ann.recall_at_k(swapped, exact.windows) == 0.5
    found_dist = ann.exact_distances(queries, swapped, lambda ids: x[ids])
    assert ann.recall_at_k(swapped, exact.windows, found_dist, exact.distances) == 1.0
