"""Writing and reading real zarr stores on disk: layouts, selection, merging parts, identity."""

import json
import os
import shutil

import identity
import numpy as np
import pytest
import xarray as xr
import zarr

from ethoprism import store
from ethoprism.store import Layout, StoreError, StoreIdentityError, VideoRecord
from ethoprism.store.bench import activation_like
from ethoprism.store.codecs import pool_spatial

ENCODER = identity.encoder(32, pos_emb_shape=[2, 4, 4])
PREP = identity.preprocessing(32, 4, 2)
SHAPE = (2, 8, 8, 32)  # t, h, w, c


def record(i, fps=10.0):
    return VideoRecord(
        f"/archive/cam{i}/clip{i}.mp4", 1000 + i, f"{i:064x}", fps, 40, 4.0, 64, 48, "h264"
    )


def write_video(w, i, n, batch=3, fps=10.0):
    """Write video i with n windows (stride 2 frames); returns its full-resolution tokens."""
    x = activation_like(n, SHAPE, seed=i)
    vw = w.begin_video(record(i, fps))
    for b in range(0, n, batch):
        k = min(batch, n - b)
        starts = 2 * np.arange(b, b + k)
        vw.append(x[b : b + k], x[b : b + k].mean(axis=(1, 2, 3)), starts, 1, 4, starts / fps)
    vw.commit()
    return x


def open_w(path, **kw):
    return store.open_writer(path, encoder=ENCODER, preprocessing=PREP, **kw)


@pytest.mark.parametrize(
    "layout,bound",
    [
        (Layout("float16-round7"), 2e-3),
        (Layout("float16"), 5e-4),
        (Layout("int8"), 2e-2),
        (Layout("float16-round7", 2), 2e-3),
        (Layout("float16-round7", 4), 2e-3),
        (Layout("int8", 2), 2e-2),
    ],
)
def test_round_trip_every_layout(tmp_path, layout, bound):
    with open_w(tmp_path / "s.zarr", layout=layout, part="w0") as w:
        xs = [write_video(w, i, n) for i, n in enumerate([5, 1, 7])]
    ds = store.open(tmp_path / "s.zarr")
    x = np.concatenate(xs)
    ref = pool_spatial(x, layout.pool)  # pooled reference is the numpy block mean
    t, h, w_, c = SHAPE
    assert ds.tokens.shape == (13, t, h // layout.pool, w_ // layout.pool, c)
    assert ds.tokens.dtype == np.float32 and ds.embedding.dtype == np.float32
    got = ds.tokens.values
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) <= bound
    # bit-identical to the pure codec: the store adds no error of its own
    np.testing.assert_array_equal(got, layout.decode(layout.encode(x)))
    np.testing.assert_array_equal(ds.embedding.values, x.mean(axis=(1, 2, 3)))
    idx = [12, 0, 6, 6, 3]
    np.testing.assert_array_equal(store.read_windows(ds, idx), got[idx])
    np.testing.assert_array_equal(
        store.read_windows(ds, idx, var="embedding"), ds.embedding.values[idx]
    )
    assert ds.attrs["layout"] == layout.to_dict()
    assert store.identity(ds) == {
        "encoder": ENCODER,
        "preprocessing": PREP,
        "layout": layout.to_dict(),
    }


def test_dataset_names_and_selection(tmp_path):
    path = tmp_path / "s.zarr"
    with open_w(path, part="w0") as w:
        write_video(w, 0, 6)
        write_video(w, 1, 4, fps=25.0)
        w.record_failure(record(2), "truncated at frame 17")
    ds = store.open(path)
    assert set(ds.dims) == {"window", "t", "h", "w", "c", "videos", "frame"}
    assert list(ds.video_name.values) == ["clip0.mp4"] * 6 + ["clip1.mp4"] * 4
    assert list(ds.video_status.values) == ["complete", "complete", "failed"]
    assert list(ds.video_first_window.values) == [0, 6, -1]
    assert list(ds.video_n_windows.values) == [6, 4, 0]
    assert ds.video_reason.values[2] == "truncated at frame 17"
    np.testing.assert_array_equal(ds.start_frame.values[6:], [0, 2, 4, 6])
    # plain xarray selection by video name, lazily
    one = ds.where(ds.video_name == "clip1.mp4", drop=True)
    assert one.sizes["window"] == 4
    np.testing.assert_array_equal(one.tokens.values, ds.tokens.values[6:])
    # the helper: by name and seconds, by path and frames, by table row
    sel = store.select(ds, video="clip0.mp4", start=0.2, end=0.8)
    np.testing.assert_allclose(sel.start_time.values, [0.2, 0.4, 0.6])
    np.testing.assert_array_equal(sel.tokens.values, ds.tokens.values[1:4])
    sel = store.select(ds, video="/archive/cam1/clip1.mp4", start=2, end=5, unit="frames")
    assert list(sel.start_frame.values) == [2, 4]
    assert store.select(ds, video=1).sizes["window"] == 4
    np.testing.assert_array_equal(store.read_windows(sel, [1, 0]), ds.tokens.values[[8, 7]])
    with pytest.raises(StoreError, match="clip9.mp4"):
        store.select(ds, video="clip9.mp4")


def test_parts_merge_into_one_dataset(tmp_path):
    path = tmp_path / "s.zarr"
    with open_w(path, part="a") as wa, open_w(path, part="b") as wb:
        write_video(wa, 0, 3)
        wb.record_failure(record(1), "decode error at frame 3")  # later done in part a
        write_video(wb, 2, 2)
        write_video(wa, 1, 4)
        write_video(wb, 0, 3)  # duplicate of a's video 0
        assert wa.is_complete(record(2).sha256) and not wa.is_complete(record(5).sha256)
    ds = store.open(path)
    assert ds.attrs["parts"] == ["a", "b"]
    assert list(ds.video_path.values) == [record(0).path, record(1).path, record(2).path]
    assert list(ds.video_status.values) == ["complete"] * 3
    assert list(ds.video_first_window.values) == [0, 3, 7] and ds.sizes["window"] == 9
    assert list(ds.video.values) == [0] * 3 + [1] * 4 + [2] * 2
    np.testing.assert_array_equal(
        ds.embedding.values[7:], activation_like(2, SHAPE, seed=2).mean(axis=(1, 2, 3))
    )
    rng = np.random.default_rng(0)
    idx = rng.permutation(9)
    np.testing.assert_array_equal(store.read_windows(ds, idx), ds.tokens.values[idx])


def test_failure_rows_are_updated_not_repeated(tmp_path):
    path = tmp_path / "s.zarr"
    with open_w(path, part="w") as w:
        w.record_failure("/x/bad.mp4", "not a video")
        w.record_failure("/x/bad.mp4", "still not a video")
        vw = w.begin_video(record(3))
        vw.append(np.zeros((1, *SHAPE), np.float32) + 1, np.ones((1, 32), np.float32), 0, 1, 4, 0.0)
        w.record_failure(record(3), "decoder crashed")  # discards the open video
        with pytest.raises(StoreError, match="clip3.mp4"):
            vw.commit()
    ds = store.open(path)
    assert list(ds.video_reason.values) == ["still not a video", "decoder crashed"]
    assert ds.sizes["window"] == 0 and store.validate(path)["ok"]


def test_plain_zarr_and_xarray_read_every_array_of_a_part(tmp_path):
    path = tmp_path / "s.zarr"
    with open_w(path, layout=Layout("int8"), part="w0") as w:
        x = write_video(w, 0, 5)
    group = zarr.open_group(path / "parts" / "w0", mode="r")
    arrays = dict(group.arrays())
    assert set(arrays) == {
        "tokens",
        "token_scale",
        "channel_scale",
        "embedding",
        "video",
        "start_frame",
        "frame_step",
        "n_valid_frames",
        "start_time",
    }
    part = xr.open_zarr(path / "parts" / "w0", consolidated=False)
    for name in arrays:
        np.testing.assert_array_equal(part[name].values, arrays[name][:])
    dequantised = part.tokens * part.token_scale * part.channel_scale  # by hand, as SPEC.md says
    np.testing.assert_array_equal(
        dequantised.transpose(*store.open(path).tokens.dims).values, store.open(path).tokens.values
    )
    assert np.linalg.norm(dequantised.values - x) / np.linalg.norm(x) < 2e-2
    record_attr = group.attrs["ethoprism_part"]
    assert record_attr["n_windows"] == 5 and record_attr["videos"][0]["n_windows"] == 5
    root = zarr.open_group(path, mode="r")
    assert root.attrs["schema"] == "ethoprism.features" and root.attrs["parts"] == ["w0"]


def test_identity_mismatch_names_each_field(tmp_path):
    path = tmp_path / "s.zarr"
    open_w(path, part="w").close()
    other = {**ENCODER, "checkpoint_sha256": "abc123"}
    with pytest.raises(StoreIdentityError) as e:
        store.open_writer(path, encoder=other, preprocessing={**PREP, "window_stride": 8}, part="w")
    assert "encoder.checkpoint_sha256" in str(e.value) and "abc123" in str(e.value)
    assert "preprocessing.window_stride" in str(e.value) and "frame_size" not in str(e.value)
    with pytest.raises(StoreIdentityError, match="layout.dtype"):
        open_w(path, layout=Layout("int8"))
    # comparing two opened stores the same way
    with pytest.raises(StoreIdentityError, match="layout.pool"):
        store.check_same_identity(
            store.identity(store.open(path)),
            {
                "encoder": ENCODER,
                "preprocessing": PREP,
                "layout": {"dtype": "float16-round7", "pool": 2},
            },
            "store vs query",
        )


def test_newer_schema_and_not_a_store_are_refused(tmp_path):
    path = tmp_path / "s.zarr"
    with open_w(path, part="w") as w:
        write_video(w, 0, 2)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["schema_version"] = 2
    (path / "zarr.json").write_text(json.dumps(meta))
    for call in (lambda: store.open(path), lambda: store.validate(path), lambda: open_w(path)):
        with pytest.raises(StoreError, match="schema version 2, newer"):
            call()
    with pytest.raises(StoreError, match="does not exist"):
        store.open(tmp_path / "nothing")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    with pytest.raises(StoreError, match="not a feature store"):
        store.open(tmp_path / "plain")
    with pytest.raises(StoreError, match="not a feature store"):
        open_w(tmp_path / "plain")
    zarr.create_group(tmp_path / "other.zarr")
    with pytest.raises(StoreError, match="not an ethoprism feature store"):
        store.open(tmp_path / "other.zarr")


def test_bad_appends_are_refused_with_the_video_named(tmp_path):
    with open_w(tmp_path / "s.zarr", part="w") as w:
        vw = w.begin_video(record(0))
        x = activation_like(2, SHAPE)
        x[1, 0, 0, 0, 0] = np.nan
        with pytest.raises(StoreError, match=r"clip0.mp4: tokens of window 1"):
            vw.append(x, x.mean(axis=(1, 2, 3)), [0, 2], 1, 4, [0, 0.2])
        with pytest.raises(StoreError, match="clip0.mp4: expected tokens"):
            vw.append(x[0], x.mean(axis=(1, 2, 3)), 0, 1, 4, 0.0)
        with pytest.raises(StoreError, match="no windows appended"):
            vw.commit()
        with pytest.raises(StoreError, match="another writer"):
            open_w(tmp_path / "s.zarr", part="w")


def test_read_windows_on_an_in_memory_dataset():
    tokens = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    ds = xr.Dataset(
        {"tokens": (("window", "t", "c"), tokens)},
        coords={"start_frame": ("window", np.arange(5) * 8)},
        attrs={"schema": "ethoprism.features"},  # store-like attributes, but no store behind it
    )
    np.testing.assert_array_equal(store.read_windows(ds, [4, 1, 1]), tokens[[4, 1, 1]])
    np.testing.assert_array_equal(store.read_windows(ds, np.array([-1]), var="start_frame"), [32])


def test_reading_works_in_a_forked_child(tmp_path):
    """The reader's thread pool is rebuilt after fork (forked loaders, e.g. torch/dask workers)."""
    import multiprocessing

    path = tmp_path / "s.zarr"
    with open_w(path, part="w") as w:
        write_video(w, 0, 4)
    ds = store.open(path)
    want = store.read_windows(ds, [3, 1])  # the parent's pool now has threads
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(store.read_windows, (ds, [3, 1])).get(timeout=60)
    np.testing.assert_array_equal(got, want)


def test_extending_a_shard_keeps_earlier_chunks_bytes_in_place(tmp_path):
    """What concurrent readers rely on (SPEC.md): a reader holding a shard's old index still
    finds the committed chunks' bytes at the same offsets in the rewritten file."""
    with open_w(tmp_path / "s.zarr", part="w", windows_per_shard=8) as w:
        write_video(w, 0, 3)
        shard = tmp_path / "s.zarr/parts/w/tokens/c/0/0/0/0/0"
        old = shard.read_bytes()
        write_video(w, 1, 4)
        new = shard.read_bytes()
    index_bytes = 8 * 16 + 4  # 8 inner chunks x (offset, nbytes) uint64, then crc32c
    old_index = np.frombuffer(old[-index_bytes:-4], "<u8").reshape(8, 2)
    new_index = np.frombuffer(new[-index_bytes:-4], "<u8").reshape(8, 2)
    np.testing.assert_array_equal(new_index[:3], old_index[:3])
    assert new.startswith(old[:-index_bytes])


def test_embeddings_are_stored_in_chunks_of_many_windows(tmp_path, monkeypatch):
    """Large embedding chunks (fast full reads) still give exact random and per-window reads,
    across chunk boundaries, parts and repeated or unsorted indices."""
    monkeypatch.setattr("ethoprism.store.stream.EMBED_CHUNK", 8)
    path = tmp_path / "s.zarr"
    xs = []
    with open_w(path, part="a", windows_per_shard=3) as w:
        xs += [write_video(w, 0, 5), write_video(w, 1, 9, batch=4)]  # 14 windows: chunks 0, 1
    with open_w(path, part="b", windows_per_shard=3) as w:
        xs.append(write_video(w, 2, 20, batch=7))
    emb = zarr.open_array(path / "parts/a/embedding", mode="r")
    assert emb.chunks == (8, SHAPE[-1]) and emb.shards is None
    assert sorted(p.name for p in (path / "parts/a/embedding/c").iterdir()) == ["0", "1"]
    want = np.concatenate([x.mean(axis=(1, 2, 3)) for x in xs])
    ds = store.open(path)
    np.testing.assert_array_equal(ds.embedding.values, want)
    idx = np.random.default_rng(0).integers(0, len(want), 40)
    np.testing.assert_array_equal(store.read_windows(ds, idx, var="embedding"), want[idx])
    tokens = np.concatenate([Layout().decode(Layout().encode(x)) for x in xs])
    np.testing.assert_array_equal(store.read_windows(ds, idx[:8]), tokens[idx[:8]])
    sub = ds.isel(window=slice(10, 30))
    np.testing.assert_array_equal(
        store.read_windows(sub, [19, 0, 3], var="embedding"), want[[29, 10, 13]]
    )


def test_a_partly_filled_embedding_chunk_is_replaced_whole(tmp_path):
    """What crash safety and concurrent readers rely on (SPEC.md): committing the next video
    rewrites the chunk holding earlier committed embeddings as a new file renamed over the
    old one, so a reader (or a kill) meets either the old file or the new, both exact."""
    path = tmp_path / "s.zarr"
    with open_w(path, part="w", windows_per_shard=2) as w:
        first = write_video(w, 0, 3).mean(axis=(1, 2, 3))
        chunk = path / "parts/w/embedding/c/0/0"
        with open(chunk, "rb") as held:  # a reader that opened the file before the rewrite
            second = write_video(w, 1, 4).mean(axis=(1, 2, 3))
            old_bytes = held.read()
            assert os.fstat(held.fileno()).st_ino != chunk.stat().st_ino
    both = np.concatenate([first, second])
    for k, (data, windows) in enumerate(((old_bytes, first), (chunk.read_bytes(), both))):
        copy = tmp_path / f"copy{k}"  # the array with this file as its chunk, read by zarr
        shutil.copytree(path / "parts/w/embedding", copy)
        (copy / "c/0/0").write_bytes(data)
        np.testing.assert_array_equal(zarr.open_array(copy, mode="r")[: len(windows)], windows)


def test_a_refused_batch_leaves_the_video_as_it_was(tmp_path):
    """A batch refused mid-encoding (a value past float16's range in its last window, after
    earlier windows filled a shard) changes nothing: the video goes on and commits exactly."""
    path = tmp_path / "s.zarr"
    x = activation_like(7, SHAPE, seed=5)
    bad = x[2:5].copy()
    bad[2, 0, 0, 0, 0] = 7e4
    with open_w(path, part="w", windows_per_shard=3) as w:
        vw = w.begin_video(record(0))
        vw.append(x[:2], x[:2].mean(axis=(1, 2, 3)), [0, 2], 1, 4, [0.0, 0.2])
        with pytest.raises(
            StoreError,
            match=(
                r"clip0.mp4: tokens of window 2 of this batch \(store window 4\): "
                r"token magnitude 70000 exceeds"
            ),
        ):
            vw.append(bad, bad.mean(axis=(1, 2, 3)), [4, 6, 8], 1, 4, [0.4, 0.6, 0.8])
        starts = 2 * np.arange(2, 7)
        vw.append(x[2:], x[2:].mean(axis=(1, 2, 3)), starts, 1, 4, starts / 10)
        vw.commit()
    ds = store.open(path)
    want = Layout().decode(Layout().encode(x))
    np.testing.assert_array_equal(ds.tokens.values, want)
    np.testing.assert_array_equal(ds.start_frame.values, 2 * np.arange(7))
