"""Approximate index: recall against exact search, saved beside the store, stale and foreign
refused."""

import shutil

import numpy as np
import pytest
from test_retrieval import ENCODER, write_store

from ethoprism.probe import retrieve as retrieval
from ethoprism.probe.retrieve import ann
from ethoprism.probe.retrieve.ann import AnnError


def clustered(n, dim, n_clusters, rng):
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    return (centres[rng.integers(0, n_clusters, n)] + 0.5 * rng.normal(size=(n, dim))).astype(
        np.float32
    )


def test_ivf_recall_at_10_on_100k_clustered_embeddings():
    rng = np.random.default_rng(0)
    data = clustered(101_000, 64, 200, rng)
    index_rows, queries = data[:100_000], data[100_000:100_200]  # held-out queries
    nlist = ann.default_nlist(len(index_rows))
    index = ann.build_ivf(index_rows, index_rows[ann.training_rows(len(index_rows), nlist)], nlist)
    truth = retrieval.exact_search(queries, index_rows, 10).windows
    nprobe, recall = ann.tune_nprobe(index, queries, truth, 10, target=0.95)
    assert recall >= 0.95 and nprobe < nlist
    # the index answers through AnnIndex.search, the same shape of answer as exact search
    info = ann.AnnInfo("IVFFlat", nlist, nprobe, len(index_rows), 64, recall, 200, "", {}, 0.0)
    found = ann.AnnIndex(index, info).search(queries, 10)
    assert ann.recall_at_k(found.windows, truth) >= 0.95
    exact_d = retrieval.exact_search(queries, index_rows, 10).distances
    hit = found.windows == truth
    np.testing.assert_allclose(found.distances[hit], exact_d[hit], rtol=1e-4)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    rng = np.random.default_rng(1)
    videos = {f"/videos/v{i}.mp4": clustered(400, 16, 8, rng) for i in range(3)}
    path = tmp_path_factory.mktemp("ann") / "s.zarr"
    ds = write_store(path, videos)
    return path, ds, ann.build_index(path, nlist=16)


def test_build_saves_beside_the_store_and_searches_with_exclusion(small_store):
    path, ds, info = small_store
    assert (path.parent / "s.zarr.ann" / "meta.json").exists()
    assert not any(p.name.endswith(".faiss") for p in path.rglob("*"))  # nothing inside the store
    assert info.n_windows == 1200 and info.recall_at_10 >= 0.95 and 1 <= info.nprobe <= 16
    index = ann.load_index(path, ds)
    query = retrieval.query_windows(ds, [5, 700])
    found = retrieval.search(
        ds, query, 10, exclude_same_video=True, videos=["v0.mp4", "v1.mp4"], ann=index
    )
    video = ds["video"].values
    assert (video[found.windows[0]] == 1).all()  # v0's query: only v1 is left
    assert (video[found.windows[1]] == 0).all()
    exact = retrieval.search(ds, query, 10, exclude_same_video=True, videos=["v0.mp4", "v1.mp4"])
    assert ann.recall_at_k(found.windows, exact.windows) >= 0.9


def test_stale_index_is_refused(small_store, tmp_path):
    path, _, _ = small_store
    copy = tmp_path / "s.zarr"
    shutil.copytree(path, copy)
    shutil.copytree(path.parent / "s.zarr.ann", tmp_path / "s.zarr.ann")
    ann.load_index(copy)  # the copy is the same store
    write_store(
        copy, {"/videos/late.mp4": clustered(50, 16, 2, np.random.default_rng(2))}
    )  # appends
    with pytest.raises(AnnError, match=r"stale: built for 1200 windows, the store now holds 1250"):
        ann.load_index(copy)


def test_foreign_index_is_refused(small_store, tmp_path):
    path, _, _ = small_store
    other = tmp_path / "o.zarr"
    write_store(
        other,
        {"/videos/v0.mp4": np.zeros((3, 16))},
        encoder={**ENCODER, "checkpoint_sha256": "e" * 64},
    )
    shutil.copytree(path.parent / "s.zarr.ann", tmp_path / "o.zarr.ann")
    with pytest.raises(AnnError, match=r"encoder.checkpoint_sha256.*another store \(foreign\)"):
        ann.load_index(other)
    with pytest.raises(AnnError, match="no approximate index"):
        ann.load_index(
            tmp_path / "n.zarr", write_store(tmp_path / "n.zarr", {"/v/a.mp4": np.ones((2, 16))})
        )


def test_index_of_an_http_store_lives_where_told_and_answers_as_locally(
    small_store, tmp_path, nginx_server
):
    from typer.testing import CliRunner

    from ethoprism.cli import app

    path, _, _ = small_store  # its index was built beside it, s.zarr.ann
    server = nginx_server(path.parent)
    url = f"{server.url}/s.zarr"
    run = CliRunner().invoke
    refused = run(app, ["retrieve", "build-index", url, "--nlist", "16"])
    assert refused.exit_code == 1 and "--index-dir" in refused.output, refused.output
    where = tmp_path / "remote.ann"
    built = run(app, ["retrieve", "build-index", url, "--nlist", "16", "--index-dir", str(where)])
    assert built.exit_code == 0, built.output
    assert (where / "meta.json").exists()
    picks = ["--window", "5", "--window", "700", "--exclude-same-video", "-k", "5", "--json"]
    local = run(app, ["retrieve", "query", str(path), "--approx", *picks])
    remote = run(app, ["retrieve", "query", url, "--index-dir", str(where), *picks])
    assert local.exit_code == 0 and remote.exit_code == 0, local.output + remote.output
    assert remote.output == local.output and len(local.output) > 100
    # the local store's index also serves the remote store (same identity and videos)
    again = run(app, ["retrieve", "query", url, "--index-dir", f"{path}.ann", *picks])
    assert again.output == local.output
    unset = run(app, ["retrieve", "query", url, "--approx", *picks])
    assert unset.exit_code == 1 and "--index-dir" in unset.output
    assert {r["method"] for r in server.requests()} <= {"GET", "HEAD"}


def test_index_dir_of_another_embedding_is_refused(small_store, tmp_path):
    # With --index-dir, the directory does not say which embedding it indexes (beside the store,
    # `.ann` and `.video_embedding.ann` do): an index of `embedding` must not answer a search of
    # `video_embedding` (text search) with the wrong vectors' neighbours.
    path, ds, _ = small_store
    where = tmp_path / "idx"
    ann.build_index(path, nlist=16, index_path=where)
    assert ann.load_index(path, ds, index_path=where).info.n_windows == 1200
    with pytest.raises(AnnError, match=r"indexes 'embedding', not 'video_embedding'"):
        ann.load_index(path, ds, var="video_embedding", index_path=where)


def test_index_dir_that_holds_other_files_is_refused_not_wiped(small_store, tmp_path):
    # A rebuild replaces the index directory whole: a directory the user named that holds
    # anything but an index (`--index-dir .`, `--index-dir ~/indexes`) must be left alone.
    path, _, _ = small_store
    keep = tmp_path / "mine" / "notes.txt"
    keep.parent.mkdir()
    keep.write_text("mine")
    with pytest.raises(AnnError, match=r"mine.*not an approximate index"):
        ann.build_index(path, nlist=16, index_path=keep.parent)
    assert keep.read_text() == "mine"
    with pytest.raises(AnnError, match="not an approximate index"):
        ann.build_index(path, nlist=16, index_path=keep)  # a file
    assert keep.read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an empty directory, or an index, is (re)built
    ann.build_index(path, nlist=16, index_path=tmp_path / "empty")
    ann.build_index(path, nlist=16, index_path=tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["index.faiss", "meta.json"]
    # the build's scratch folder is its own: a neighbour named like one survives, none is left
    (tmp_path / "empty.tmp").mkdir()
    (tmp_path / "empty.tmp" / "notes.txt").write_text("mine")
    ann.build_index(path, nlist=16, index_path=tmp_path / "empty")
    assert (tmp_path / "empty.tmp" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "empty.tmp", "mine"]


def test_an_index_saved_before_it_recorded_its_embedding_still_loads(small_store, tmp_path):
    # meta.json files of earlier builds have no "var": their directory's name said it
    import json

    path, ds, _ = small_store
    where = tmp_path / "old.ann"
    ann.build_index(path, nlist=16, var="embedding", index_path=where)
    meta = json.loads((where / "meta.json").read_text())
    del meta["var"]
    (where / "meta.json").write_text(json.dumps(meta))
    assert ann.load_index(path, ds, var="video_embedding", index_path=where).info.n_windows == 1200
