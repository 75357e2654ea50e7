"""Retrieval readouts that mean what they say: Hit@K refuses classes missing from the index, a
query is not its own answer, and sheet captions carry the table's times."""

import json

import numpy as np
import pytest
from test_retrieval import write_store
from typer.testing import CliRunner

from ethoprism.cli import app
from ethoprism.probe import retrieve as retrieval
from ethoprism.probe.retrieve import hitk
from ethoprism.probe.retrieve.knn import RetrievalError

runner = CliRunner()


def _walk_eat_store(tmp_path, test_classes=("walk", "eat"), train_classes=("walk",)):
    rng = np.random.default_rng(2)
    videos, rows = {}, ["video,start_frame,end_frame,action"]
    for name, classes in (
        ("a.mp4", train_classes),
        ("b.mp4", train_classes),
        ("c.mp4", test_classes),
    ):
        videos[f"/videos/{name}"] = rng.normal(size=(10, 8))
        half = 46 if len(classes) == 2 else 87
        rows.append(f"{name},0,{half},{classes[0]}")
        if len(classes) == 2:
            rows.append(f"{name},47,87,{classes[1]}")
    write_store(tmp_path / "s.zarr", videos)
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "split.csv").write_text("video,split\na.mp4,train\nb.mp4,train\nc.mp4,test\n")
    return str(tmp_path / "s.zarr"), str(tmp_path / "labels.csv"), str(tmp_path / "split.csv")


def test_hit_at_k_with_a_class_absent_from_the_index_warns_and_fails(tmp_path):
    path, labels, split = _walk_eat_store(tmp_path)
    report = hitk.evaluate_stores(path, labels, split=split)
    assert report.absent == ("eat",) and report.index_count["eat"] == 0
    r = runner.invoke(app, ["retrieve", "eval", path, labels, "--split", split])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "eat have no window in the index" in " ".join(r.output.split())


def test_hit_at_k_with_no_queried_class_in_the_index_is_an_error(tmp_path):
    path, labels, split = _walk_eat_store(tmp_path, test_classes=("eat",), train_classes=("walk",))
    with pytest.raises(RetrievalError, match="no query class has a window in the index"):
        hitk.evaluate_stores(path, labels, split=split)


def test_query_window_and_its_overlapping_neighbours_are_not_results(tmp_path):
    rng = np.random.default_rng(0)
    # smooth embeddings: neighbouring windows are each other's nearest, as in real footage
    walk = np.cumsum(rng.normal(size=(40, 8)), 0)
    ds = write_store(tmp_path / "s.zarr", {"/videos/a.mp4": walk, "/videos/b.mp4": walk + 0.5})
    path = str(tmp_path / "s.zarr")
    result = retrieval.run_query(path, windows=[10, 45], k=5)
    # windows are 16 frames every 8: window 10 shares frames with 9, 10 and 11 only
    start = ds.start_frame.values
    for q, w in enumerate([10, 45]):
        got = result.found.windows[q]
        same_video = ds.video.values[got] == ds.video.values[w]
        overlaps = same_video & (np.abs(start[got] - start[w]) < 16)
        assert w not in got and not overlaps.any(), got
        assert (result.found.distances[q] > 0).all() and len(got) == 5
    # the exclusion is exact: the answer is brute force over the windows left
    emb = ds.embedding.values.astype(np.float64)
    allowed = np.ones(len(emb), bool)
    allowed[[9, 10, 11]] = False
    d = np.linalg.norm(emb - emb[10], axis=1)
    d[~allowed] = np.inf
    np.testing.assert_array_equal(result.found.windows[0], np.argsort(d, kind="stable")[:5])
    # with the flag they come back, the query first at distance 0
    result = retrieval.run_query(path, windows=[10], k=3, include_overlapping=True)
    assert result.found.windows[0][0] == 10 and result.found.distances[0][0] == 0
    r = runner.invoke(app, ["retrieve", "query", path, "--window", "10", "-k", "3", "--json"])
    assert r.exit_code == 0 and 10 not in [row["window"] for row in json.loads(r.stdout)]


def test_sheet_captions_show_the_tables_start_times(tmp_path):
    from ethoprism.probe.retrieve.contact_sheet import caption

    rng = np.random.default_rng(3)
    ds = write_store(tmp_path / "s.zarr", {"/videos/a.mp4": rng.normal(size=(30, 8))})
    result = retrieval.run_query(str(tmp_path / "s.zarr"), windows=[4], k=3)
    for row in result.table():
        text = caption(ds, row["window"], row["rank"], row["distance"])
        assert f"a.mp4@{row['start_time']:.3f}s #{row['start_frame']}" in text
    assert f"@{float(ds.start_time.values[4]):.3f}s #32" in result.query.names[0]
