"""Exact retrieval: blocked search equals numpy brute force; moments, selections, exclusion.

Stores here are real zarr stores written with `ethoprism.store.open_writer`; their embeddings
are chosen by the test so that the brute-force reference is known.
"""

import hashlib

import identity
import numpy as np
import pytest

from ethoprism import store
from ethoprism.probe import retrieve as retrieval
from ethoprism.probe.retrieve.knn import RetrievalError

ENCODER = identity.encoder(16)
PREP = identity.preprocessing(288, 16, 8)
FPS = 24.0


def write_store(path, videos, *, encoder=ENCODER, prep=PREP):
    """videos: path -> (n_windows, D) embeddings. Windows start every 8 frames, 16 frames long."""
    with store.open_writer(path, encoder=encoder, preprocessing=prep) as w:
        for video, emb in videos.items():
            emb = np.asarray(emb, np.float32)
            n = len(emb)
            n_frames = 8 * n + 8
            record = store.VideoRecord(
                path=str(video),
                size_bytes=1000 + n,
                sha256=hashlib.sha256(str(video).encode()).hexdigest(),
                fps=FPS,
                n_frames=n_frames,
                duration=n_frames / FPS,
                width=64,
                height=64,
                codec="h264",
            )
            vw = w.begin_video(record)
            starts = 8 * np.arange(n)
            vw.append(
                emb[:, None, None, None, :],
                emb,
                starts,
                np.ones(n, np.int64),
                np.full(n, 16, np.int64),
                starts / FPS,
            )
            vw.commit()
    return store.open(str(path))


def brute_force(queries, index, k, allowed=None):
    d2 = ((queries[:, None, :].astype(np.float64) - index[None].astype(np.float64)) ** 2).sum(-1)
    if allowed is not None:
        d2 = np.where(allowed, d2, np.inf)
    ids = np.argsort(d2, axis=1, kind="stable")[:, :k]
    return ids, np.sqrt(np.take_along_axis(d2, ids, 1))


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    rng = np.random.default_rng(0)
    videos = {
        f"/videos/v{i}.mp4": rng.normal(size=(n, 16)) for i, n in enumerate([70, 45, 110, 30])
    }
    ds = write_store(tmp_path_factory.mktemp("s") / "a.zarr", videos)
    return ds, np.concatenate(list(videos.values())).astype(np.float32)


def test_blocked_search_equals_brute_force_across_blocks(archive):
    ds, emb = archive
    queries = np.random.default_rng(1).normal(size=(23, 16)).astype(np.float32)
    ref_ids, ref_d = brute_force(queries, emb, 7)
    for block_rows in (17, 64, 1000):  # blocks smaller than k, ragged, and one block
        found = retrieval.exact_search(queries, ds, 7, block_rows=block_rows)
        np.testing.assert_array_equal(found.windows, ref_ids)
        np.testing.assert_allclose(found.distances, ref_d, rtol=1e-5, atol=1e-5)
    # an in-memory array gives the same answer as the store
    np.testing.assert_array_equal(
        retrieval.exact_search(queries, emb, 7, block_rows=50).windows, ref_ids
    )


def test_many_queries_take_the_threshold_path_and_stay_exact():
    rng = np.random.default_rng(2)
    index = rng.normal(size=(3000, 8)).astype(np.float32)
    queries = rng.normal(size=(300, 8)).astype(np.float32)
    found = retrieval.exact_search(queries, index, 5, block_rows=256)
    ref_ids, ref_d = brute_force(queries, index, 5)
    np.testing.assert_array_equal(found.windows, ref_ids)
    np.testing.assert_allclose(found.distances, ref_d, rtol=1e-5, atol=1e-5)


def test_exclusion_and_selection_equal_masked_brute_force(archive):
    ds, emb = archive
    rng = np.random.default_rng(3)
    windows = rng.choice(len(emb), 12, replace=False)
    query = retrieval.query_windows(ds, windows)
    spans = ["v0.mp4@0.5-2", "/videos/v2.mp4", "v3.mp4@-1.2"]
    found = retrieval.search(ds, query, 6, exclude_same_video=True, videos=spans, block_rows=40)
    video = ds["video"].values
    centre = ds["start_time"].values + 15 / 2 / FPS
    selected = (
        ((video == 0) & (centre >= 0.5) & (centre <= 2))
        | (video == 2)
        | ((video == 3) & (centre <= 1.2))
    )
    allowed = selected[None, :] & (video[None, :] != video[windows][:, None])
    ref_ids, ref_d = brute_force(emb[windows], emb, 6, allowed)
    np.testing.assert_array_equal(found.windows, ref_ids)
    np.testing.assert_allclose(found.distances, ref_d, rtol=1e-5, atol=1e-5)
    assert not (video[found.windows] == video[windows][:, None]).any()


def test_fewer_rows_than_k_pad_with_minus_one(archive):
    ds, _ = archive
    found = retrieval.search(ds, retrieval.query_windows(ds, [0]), 40, videos=["v3.mp4"])
    assert (found.windows[0, :30] >= 0).all() and (found.windows[0, 30:] == -1).all()
    assert np.isinf(found.distances[0, 30:]).all()


def test_moment_picks_the_covering_window_with_the_nearest_centre(archive):
    ds, _ = archive
    first = int(np.flatnonzero(ds["video"].values == 1)[0])
    # windows start every 8 frames and span 16: frame 20 is in windows 1 (8..23) and 2 (16..31);
    # centres 15.5 and 23.5, so window 2; frame 19.5 is the tie point
    assert retrieval.window_at(ds, retrieval.parse_moment("v1.mp4#20")) == first + 2
    assert retrieval.window_at(ds, retrieval.parse_moment("v1.mp4#19")) == first + 1
    assert retrieval.window_at(ds, retrieval.parse_moment(f"v1.mp4@{20 / FPS}")) == first + 2
    assert retrieval.window_at(ds, retrieval.parse_moment("/videos/v1.mp4@0:00.1")) == first
    with pytest.raises(RetrievalError, match=r"frame 5000 is outside v1.mp4"):
        retrieval.window_at(ds, retrieval.parse_moment("v1.mp4#5000"))
    with pytest.raises(RetrievalError, match=r"no video 'nope.mp4'"):
        retrieval.window_at(ds, retrieval.parse_moment("nope.mp4@1"))
    with pytest.raises(RetrievalError, match="VIDEO@SECONDS or VIDEO#FRAME"):
        retrieval.parse_moment("v1.mp4")


def test_query_and_index_from_stores_of_the_same_identity(archive, tmp_path):
    ds, emb = archive
    rng = np.random.default_rng(4)
    other = write_store(
        tmp_path / "q.zarr",
        {"/videos/v1.mp4": emb[70:115], "/videos/new.mp4": rng.normal(size=(5, 16))},
    )
    query = retrieval.query_moments(other, ["new.mp4#10", "v1.mp4#10"])
    found = retrieval.search(ds, query, 3, exclude_same_video=True)
    # v1.mp4 has the same content fingerprint in both stores, so it is excluded from its own query
    assert not (ds["video"].values[found.windows[1]] == 1).any()
    ref_ids, _ = brute_force(query.vectors[:1], emb, 3)
    np.testing.assert_array_equal(found.windows[:1], ref_ids)
    rows = retrieval.results_table(ds, query, found)
    assert [r["rank"] for r in rows] == [1, 2, 3, 1, 2, 3]
    assert rows[0]["start_frame"] == ds["start_frame"].values[rows[0]["window"]]

    foreign = write_store(
        tmp_path / "f.zarr",
        {"/videos/x.mp4": emb[:4]},
        encoder={**ENCODER, "checkpoint_sha256": "f" * 64},
    )
    with pytest.raises(store.StoreIdentityError, match="checkpoint_sha256"):
        retrieval.search(ds, retrieval.query_windows(foreign, [0]), 3)


def test_distributed_search_equals_local(archive):
    from dask.distributed import LocalCluster

    ds, _ = archive
    query = retrieval.query_windows(ds, [3, 90, 200])
    local = retrieval.search(
        ds, query, 5, exclude_same_video=True, videos=["v0.mp4", "v2.mp4", "v3.mp4"]
    )
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        remote = retrieval.search(
            ds,
            query,
            5,
            exclude_same_video=True,
            videos=["v0.mp4", "v2.mp4", "v3.mp4"],
            scheduler=cluster.scheduler_address,
            block_rows=32,
        )
    np.testing.assert_array_equal(remote.windows, local.windows)
    np.testing.assert_allclose(remote.distances, local.distances, rtol=1e-6)
