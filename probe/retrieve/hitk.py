"""Retrieval evaluation as in Sun et al. 2024 (Table 4): mean Hit@K over behaviour classes.

The test set's windows are the queries and the train set's windows the index. A query hits at K
when one of its K nearest index windows (L2 on the pooled embedding) carries its class. Hit@K
is averaged over the queries of each class, then over classes (mean Hit@K), so rare
behaviours count as much as common ones. Background windows are not queries but stay in the
index. Queries may be subsampled (the paper: 10%, three runs, averaged). Random retrieval,
K index windows drawn without replacement, hits class c with probability
1 - C(N - n_c, K) / C(N, K) (n_c of the N index windows carry c).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from ethoprism import store
from ethoprism.probe import defaults
from ethoprism.probe import labels as label_io
from ethoprism.probe.retrieve.knn import RetrievalError, exact_search
from ethoprism.store.provenance import weights_warning

DEFAULT_KS = (1, 5, 10)


def _classes(query_labels, background):
    return [int(c) for c in np.unique(query_labels) if c >= 0 and c != background]


def class_hits(
    query_labels, neighbour_labels, ks=DEFAULT_KS, background=None
) -> dict[int, dict[int, float]]:
    """{K: {class: fraction of that class's queries with the class among their K nearest}}.

    query_labels (q,) int; neighbour_labels (q, >= max K) int, nearest first (-1 = no neighbour).
    Queries of the background class (and unlabelled ones, -1) are not scored.
    """
    query_labels = np.asarray(query_labels)
    neighbour_labels = np.asarray(neighbour_labels)
    if neighbour_labels.shape[1] < max(ks):
        raise RetrievalError(
            f"Hit@{max(ks)} needs {max(ks)} neighbours per query, got {neighbour_labels.shape[1]}"
        )
    same = neighbour_labels == query_labels[:, None]
    out = {}
    for k in ks:
        hit = same[:, :k].any(1)
        out[k] = {
            c: float(hit[query_labels == c].mean()) for c in _classes(query_labels, background)
        }
    return out


def mean_hit_at_k(
    query_labels, neighbour_labels, ks=DEFAULT_KS, background=None
) -> dict[int, float]:
    """{K: Hit@K averaged over the query classes (background excluded)}."""
    return {
        k: float(np.mean(list(v.values()))) if v else float("nan")
        for k, v in class_hits(query_labels, neighbour_labels, ks, background).items()
    }


def random_hit_at_k(query_labels, index_labels, ks=DEFAULT_KS, background=None) -> dict[int, float]:
    """Closed-form mean Hit@K of random retrieval: mean over query classes of
    1 - C(N-n_c,K)/C(N,K)."""
    index_labels = np.asarray(index_labels)
    index_labels = index_labels[index_labels >= 0]
    n = len(index_labels)
    classes = _classes(query_labels, background)
    out = {}
    for k in ks:
        per = []
        for c in classes:
            n_c = int((index_labels == c).sum())
            # C(N-n_c, K)/C(N, K) = prod_{i<K} (N-n_c-i)/(N-i), zero once a factor is
            miss = np.prod([max(0, n - n_c - i) / (n - i) for i in range(min(k, n))]) if n else 1.0
            per.append(1.0 - miss)
        out[k] = float(np.mean(per)) if per else float("nan")
    return out


def random_neighbours(n_queries: int, index_labels, k: int, rng) -> np.ndarray:
    """Labels of k index windows drawn without replacement for each query (empirical baseline)."""
    index_labels = np.asarray(index_labels)
    index_labels = index_labels[index_labels >= 0]
    picks = np.argsort(rng.random((n_queries, len(index_labels))), axis=1)[:, :k]
    return index_labels[picks]


@dataclass(frozen=True)
class HitReport:
    ks: tuple[int, ...]
    classes: tuple[str, ...]  # the scored (query) classes
    mean_hit: dict[int, float]  # mean Hit@K, averaged over runs
    std_hit: dict[int, float]  # its standard deviation over runs
    per_class: dict[str, dict[int, float]]  # Hit@K of each class, averaged over runs
    index_count: dict[str, int]  # index windows of each scored class (0: it can never be hit)
    random: dict[int, float]  # closed-form random-retrieval mean Hit@K
    n_queries: int  # non-background labelled query windows
    n_queries_per_run: int
    n_index: int
    runs: int
    fraction: float
    absent: tuple[str, ...] = ()  # scored classes with no index window: Hit@K 0 by construction
    weights: str | None = None  # the random-weights mark of the stores searched, if any

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(
    query_vectors,
    query_labels,
    index,
    index_labels,
    *,
    class_names,
    ks=DEFAULT_KS,
    background: int | None = 0,
    fraction: float = 1.0,
    runs: int = 1,
    seed: int = 0,
    scheduler=None,
) -> HitReport:
    """mean Hit@K of the queries against the index rows that carry a label.

    query_vectors (q, D); query_labels (q,) int, -1 for unlabelled; index: dataset or (n, D)
    array; index_labels (n,) int, -1 for rows that are not in the index. fraction/runs: score
    a random `fraction` of the queries, `runs` times, and average.
    """
    ks = _check_ks(ks, fraction, runs)
    query_labels, index_labels = np.asarray(query_labels), np.asarray(index_labels)
    scored = _scored_queries(query_labels, background)
    absent = _absent_classes(query_labels[scored], index_labels, ks, background, class_names)
    samples = _draw_queries(scored, fraction, runs, seed)
    needed = np.unique(np.concatenate(samples))  # searched once, however many runs draw it
    found = _neighbour_labels(np.asarray(query_vectors)[needed], index, index_labels, ks, scheduler)
    results = [
        class_hits(query_labels[s], found[np.searchsorted(needed, s)], ks, background)
        for s in samples
    ]
    classes = sorted({c for r in results for c in r[ks[0]]})
    means = np.array([[np.mean(list(r[k].values())) for k in ks] for r in results])
    return HitReport(
        ks=ks,
        classes=tuple(class_names[c] for c in classes),
        mean_hit={k: float(m) for k, m in zip(ks, means.mean(0), strict=False)},
        std_hit={k: float(s) for k, s in zip(ks, means.std(0), strict=False)},
        per_class=_per_class(results, classes, ks, class_names),
        index_count={class_names[c]: int((index_labels == c).sum()) for c in classes},
        random=random_hit_at_k(query_labels[scored], index_labels, ks, background),
        n_queries=len(scored),
        n_queries_per_run=len(samples[0]),
        n_index=int((index_labels >= 0).sum()),
        runs=runs,
        fraction=fraction,
        absent=tuple(class_names[c] for c in absent),
    )


def _check_ks(ks, fraction: float, runs: int) -> tuple[int, ...]:
    """The Ks, sorted and unique, once they and the sampling are valid."""
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise RetrievalError(f"K must be positive integers, got {ks}")
    if not 0 < fraction <= 1 or runs < 1:
        raise RetrievalError(
            f"query fraction must be in (0, 1] and runs >= 1, got {fraction}, {runs}"
        )
    return ks


def _scored_queries(query_labels: np.ndarray, background: int | None) -> np.ndarray:
    """Positions of the labelled, non-background queries."""
    scored = query_labels >= 0
    if background is not None:
        scored &= query_labels != background
    scored = np.flatnonzero(scored)
    if not len(scored):
        raise RetrievalError("no labelled non-background query windows to evaluate")
    return scored


def _absent_classes(scored_labels, index_labels, ks, background, class_names) -> list[int]:
    """The query classes with no window in the index, refused when that is all of them (or
    when the index holds fewer labelled windows than the largest K)."""
    in_index = int((index_labels >= 0).sum())
    if in_index < max(ks):
        raise RetrievalError(
            f"the index holds {in_index} labelled windows, fewer than K = {max(ks)}"
        )
    query_classes = _classes(scored_labels, background)
    absent = [c for c in query_classes if not (index_labels == c).any()]
    if len(absent) == len(query_classes):
        raise RetrievalError(
            f"no query class has a window in the index ({', '.join(class_names[c] for c in absent)}"
            "): every Hit@K would be 0; use a split (--split, --test-fraction or --index-store) "
            "whose index holds the classes queried"
        )
    return absent


def _draw_queries(scored: np.ndarray, fraction: float, runs: int, seed: int) -> list[np.ndarray]:
    """Each run's queries: a seeded random `fraction` of the scored ones, sorted."""
    per_run = len(scored) if fraction == 1 else max(1, round(fraction * len(scored)))
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(scored, per_run, replace=False)) for _ in range(runs)]


def _neighbour_labels(vectors, index, index_labels, ks, scheduler) -> np.ndarray:
    """(q, max K) labels of each query's nearest labelled index windows, nearest first (-1 =
    no neighbour)."""
    found = exact_search(vectors, index, max(ks), mask=index_labels >= 0, scheduler=scheduler)
    return np.where(found.windows >= 0, index_labels[np.maximum(found.windows, 0)], -1)


def _per_class(results, classes, ks, class_names) -> dict[str, dict[int, float]]:
    """Hit@K of each class averaged over the runs that drew a query of it."""
    return {
        class_names[c]: {k: float(np.mean([r[k][c] for r in results if c in r[k]])) for k in ks}
        for c in classes
    }


# ------------------------------------------------------------------ from stores and label files


def table_for_store(ds, table):
    """The label table's rows for the videos of `ds`, and only the classes those rows carry
    (alignment refuses a class without windows)."""
    mine = {os.path.basename(str(p)) for p in ds["video_path"].values}
    segments = tuple(s for s in table.segments if s.video in mine)
    return dataclasses.replace(
        table,
        segments=segments,
        classes=(table.background, *sorted({lab for s in segments for lab in s.labels})),
    )


def window_classes(ds, table, classes: tuple[str, ...], how: str = "centre") -> np.ndarray:
    """(n_windows,) class index into `classes` of every window of `ds`, -1 where unlabelled."""
    table = table_for_store(ds, table)
    out = np.full(ds.sizes["window"], -1, np.int64)
    if not table.segments:
        return out
    aligned = label_io.align(ds, table, how=how)
    code = np.array([classes.index(c) for c in aligned.classes])
    out[aligned.window] = code[aligned.target.argmax(1)]
    return out


def evaluate_stores(
    query_store: str,
    labels: str,
    *,
    index_store: str | None = None,
    split: str | None = None,
    test_fraction: float = 0.25,
    column: str = defaults.LABEL_COLUMN,
    background: str = defaults.BACKGROUND,
    align: str = "centre",
    ks=DEFAULT_KS,
    fraction: float = 1.0,
    runs: int = 1,
    seed: int = 0,
    scheduler: str | None = None,
    storage_options: dict | None = None,
) -> HitReport:
    """`ethoprism retrieve eval`: labelled test windows as queries, labelled train windows as index.

    With `index_store`, the query store is the test set and the index store the train set (the
    label file covers the videos of both). Otherwise one store is split by video: a split file
    (video, split) or a random `test_fraction` of the labelled videos (seeded).
    """
    table = label_io.read_labels(labels, column=column, background=background)
    qds = store.open(query_store, storage_options)
    ids = store.open(index_store, storage_options) if index_store else qds
    if index_store:
        store.check_same_identity(
            store.identity(qds), store.identity(ids), "query store vs index store"
        )
    q_lab = window_classes(qds, table, table.classes, align)
    i_lab = q_lab if ids is qds else window_classes(ids, table, table.classes, align)
    if ids is qds:
        labelled = sorted({s.video for s in table.segments})
        parts = (
            label_io.read_split(split, labelled)
            if split
            else label_io.split_by_video(labelled, test_fraction=test_fraction, seed=seed)
        )
        names = np.asarray(qds["video_name"].values).astype(str)
        test = np.isin(names, [v for v, p in parts.items() if p == "test"])
        train = np.isin(names, [v for v, p in parts.items() if p == "train"])
        q_lab, i_lab = np.where(test, q_lab, -1), np.where(train, i_lab, -1)
    queries = np.flatnonzero(q_lab >= 0)
    vectors = store.read_windows(qds, queries, var="embedding")
    report = evaluate(
        vectors,
        q_lab[queries],
        ids,
        i_lab,
        class_names=table.classes,
        ks=ks,
        background=0,
        fraction=fraction,
        runs=runs,
        seed=seed,
        scheduler=scheduler,
    )
    return dataclasses.replace(report, weights=weights_warning(store.identity(ids)))
