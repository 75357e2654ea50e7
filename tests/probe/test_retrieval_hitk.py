"""mean Hit@K on hand-computed examples; the random baseline against simulation; label files."""

from math import comb

import numpy as np
import pytest
from test_retrieval import write_store

from ethoprism.probe.retrieve import hitk


def test_class_hits_by_hand():
    query = np.array([1, 1, 2, 0])
    neighbours = np.array([[1, 2, 2], [0, 2, 1], [1, 0, 0], [0, 0, 0]])
    per = hitk.class_hits(query, neighbours, ks=(1, 2, 3), background=0)
    assert per == {1: {1: 0.5, 2: 0.0}, 2: {1: 0.5, 2: 0.0}, 3: {1: 1.0, 2: 0.0}}
    assert hitk.mean_hit_at_k(query, neighbours, ks=(1, 2, 3), background=0) == {
        1: 0.25,
        2: 0.25,
        3: 0.5,
    }
    # without a background class, class 0's query counts too (and hits at 1)
    assert hitk.mean_hit_at_k(query, neighbours, ks=(1,), background=None) == {
        1: pytest.approx(0.5)
    }


def test_evaluate_searches_and_scores_by_hand():
    index = np.array([[0.0], [1], [2], [5], [6], [10], [8.4]], np.float32)
    index_labels = np.array([1, 0, 2, 2, 1, 0, -1])  # the last row is not in the index
    queries = np.array([[0.4], [5.4], [8.5], [1.1]], np.float32)
    query_labels = np.array([1, 2, 1, 0])  # the background query is not scored
    report = hitk.evaluate(
        queries, query_labels, index, index_labels, class_names=("none", "a", "b"), ks=(1, 2)
    )
    assert report.mean_hit == {1: 0.75, 2: 1.0}
    assert report.per_class == {"a": {1: 0.5, 2: 1.0}, "b": {1: 1.0, 2: 1.0}}
    assert report.n_queries == 3 and report.n_index == 6 and report.index_count == {"a": 2, "b": 2}
    n = 6
    assert report.random[1] == pytest.approx(
        np.mean([1 - comb(n - 2, 1) / comb(n, 1), 1 - comb(n - 2, 1) / comb(n, 1)])
    )


def test_random_baseline_matches_its_closed_form_in_expectation():
    rng = np.random.default_rng(0)
    index_labels = np.array(
        [0] * 30 + [1] * 5 + [2] * 12 + [3] * 3
    )  # N = 50; class 3 is never queried
    query_labels = np.repeat([1, 2, 0], 3000)
    ks = (1, 5, 10)
    closed = hitk.random_hit_at_k(query_labels, index_labels, ks, background=0)
    for k in ks:
        expect = np.mean([1 - comb(50 - 5, k) / comb(50, k), 1 - comb(50 - 12, k) / comb(50, k)])
        assert closed[k] == pytest.approx(expect)
    simulated = hitk.mean_hit_at_k(
        query_labels,
        hitk.random_neighbours(len(query_labels), index_labels, 10, rng),
        ks,
        background=0,
    )
    for k in ks:
        assert simulated[k] == pytest.approx(closed[k], abs=0.02)


def test_subsampled_runs_average_the_per_run_scores():
    rng = np.random.default_rng(1)
    index = rng.normal(size=(300, 4)).astype(np.float32)
    index_labels = rng.integers(0, 4, 300)
    queries = rng.normal(size=(200, 4)).astype(np.float32)
    query_labels = rng.integers(0, 4, 200)
    full = hitk.evaluate(queries, query_labels, index, index_labels, class_names="wxyz")
    again = hitk.evaluate(
        queries, query_labels, index, index_labels, class_names="wxyz", fraction=1.0, runs=2
    )
    assert again.mean_hit == full.mean_hit and again.std_hit == {1: 0.0, 5: 0.0, 10: 0.0}
    sub = hitk.evaluate(
        queries, query_labels, index, index_labels, class_names="wxyz", fraction=0.1, runs=3, seed=7
    )
    scored = np.flatnonzero(query_labels != 0)
    assert sub.n_queries == len(scored) and sub.n_queries_per_run == round(0.1 * len(scored))
    # the same three draws, scored by hand
    draw = np.random.default_rng(7)
    found = hitk.exact_search(queries, index, 10).windows
    per_run = []
    for _ in range(3):
        s = np.sort(draw.choice(scored, sub.n_queries_per_run, replace=False))
        per_run.append(hitk.mean_hit_at_k(query_labels[s], index_labels[found[s]], background=0)[5])
    assert sub.mean_hit[5] == pytest.approx(np.mean(per_run))
    assert sub.std_hit[5] == pytest.approx(np.std(per_run))


def test_evaluate_stores_splits_labelled_videos(tmp_path):
    rng = np.random.default_rng(2)
    centre = {"walk": rng.normal(size=8) * 5, "eat": rng.normal(size=8) * 5, "none": np.zeros(8)}
    # 10 windows per video: windows start every 8 frames; the first 5 walk, the rest eat
    videos, rows = {}, ["video,start_frame,end_frame,action"]
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        videos[f"/videos/{name}"] = np.stack(
            [centre["walk" if i < 5 else "eat"] + rng.normal(size=8) * 0.1 for i in range(10)]
        )
        rows += [f"{name},0,46,walk", f"{name},47,87,eat"]  # centre frames 8i + 7
    path = tmp_path / "s.zarr"
    write_store(path, videos)
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "split.csv").write_text("video,split\na.mp4,train\nb.mp4,train\nc.mp4,test\n")
    report = hitk.evaluate_stores(
        str(path), str(tmp_path / "labels.csv"), split=str(tmp_path / "split.csv")
    )
    assert report.mean_hit[1] == 1.0 and set(report.classes) == {"walk", "eat"}
    assert report.n_index == 20 and report.n_queries == 10


def test_evaluate_stores_with_a_separate_index_store(tmp_path):
    rng = np.random.default_rng(3)
    centre = {"walk": rng.normal(size=8) * 5, "eat": rng.normal(size=8) * 5}

    def video():
        return np.stack(
            [centre["walk" if i < 5 else "eat"] + rng.normal(size=8) * 0.1 for i in range(10)]
        )

    write_store(tmp_path / "train.zarr", {"/videos/a.mp4": video(), "/videos/b.mp4": video()})
    write_store(tmp_path / "test.zarr", {"/videos/c.mp4": video()})
    (tmp_path / "labels.csv").write_text(
        "video,start_frame,end_frame,action\n"
        + "".join(f"{n}.mp4,0,46,walk\n{n}.mp4,47,87,eat\n" for n in "abc")
    )
    report = hitk.evaluate_stores(
        str(tmp_path / "test.zarr"),
        str(tmp_path / "labels.csv"),
        index_store=str(tmp_path / "train.zarr"),
        ks=(1,),
    )
    assert report.mean_hit == {1: 1.0} and report.n_index == 20 and report.n_queries == 10
    assert report.random[1] == pytest.approx(0.5)
