"""Token shards the writer assembles itself: byte-identical to zarr's, and tokens coded
elsewhere."""

import os

import numpy as np
import pytest
import zarr
from test_store_readwrite import SHAPE, open_w, record

from ethoprism import store
from ethoprism.store import Layout, StoreError, shards
from ethoprism.store.bench import activation_like
from ethoprism.store.stream import _compressors

PER_SHARD = 4


class SmallStaging(shards.ShardWriter):
    STAGING = 2 * shards.ALIGN  # a chunk spans several writes to the disk


def _zarr_shards(tmp_path, layout: str, values: np.ndarray) -> zarr.Array:
    arr = zarr.create_array(
        tmp_path / f"zarr{len(values)}.zarr",
        shape=values.shape,
        dtype=values.dtype,
        chunks=(1, *values.shape[1:]),
        shards=(PER_SHARD, *values.shape[1:]),
        compressors=_compressors(Layout(layout), "tokens"),
        fill_value=0,
    ).with_config({"write_empty_chunks": True})
    arr[:] = values
    return arr


def _shard_file(arr: zarr.Array, index: int):
    return arr.store.root / "c" / str(index) / "0" / "0" / "0" / "0"


@pytest.mark.parametrize("layout", ["float16-round7", "int8", "float16-uncompressed"])
@pytest.mark.parametrize("writer", [shards.ShardWriter, SmallStaging])
def test_a_shard_is_byte_identical_to_zarrs_own(tmp_path, layout, writer):
    """zarr writes the same windows through its own sharding codec; the files must be equal,
    a full shard and a shard holding only its first windows (a commit's tail) alike."""
    values = Layout(layout, 1).encode(activation_like(6, SHAPE))["tokens"]
    arr = _zarr_shards(tmp_path, layout, values)
    encode = shards.chunk_encoder(arr.metadata.to_dict())
    chunks = [encode(values[i : i + 1]) for i in range(6)]
    for direct in (True, False):  # O_DIRECT from an aligned buffer (padding cut off), buffered
        ours = writer(
            lambda i, direct=direct: tmp_path / f"shard{i}-{direct}", PER_SHARD, 0, [], direct
        )
        for chunk in chunks:
            ours.add(chunk)
        ours.flush()  # a commit: shard 1 holds windows 4 and 5 so far
        for index, window_range in ((0, range(4)), (1, range(4, 6))):
            path = tmp_path / f"shard{index}-{direct}"
            assert path.read_bytes() == _shard_file(arr, index).read_bytes()
            assert shards.read_chunks(path, len(window_range), PER_SHARD) == [
                tuple(bytes(b) for b in chunks[i]) for i in window_range
            ]
        assert ours.direct == direct or not hasattr(os, "O_DIRECT")
        assert sorted(p.name for p in tmp_path.glob("*.tmp")) == []


def test_windows_after_a_commit_extend_the_shard_and_a_discard_leaves_it_as_committed(tmp_path):
    values = Layout().encode(activation_like(7, SHAPE))["tokens"]
    arr = _zarr_shards(tmp_path, "float16-round7", values)
    encode = shards.chunk_encoder(arr.metadata.to_dict())
    chunks = [encode(values[i : i + 1]) for i in range(7)]
    path = tmp_path / "shard"
    ours = SmallStaging(lambda i: path.with_suffix(f".{i}"), PER_SHARD, 0, [])
    for chunk in chunks[:2]:
        ours.add(chunk)
    ours.flush()
    ours.mark_committed()
    committed = path.with_suffix(".0").read_bytes()
    ours.add(chunks[2])  # a video that is dropped, unfinished...
    ours.discard()
    assert path.with_suffix(".0").read_bytes() == committed
    assert list(tmp_path.glob("*.tmp")) == []
    for chunk in chunks[2:]:  # ...and the next, which fills shard 0 and starts shard 1
        ours.add(chunk)
    ours.flush()
    for index in (0, 1):
        assert path.with_suffix(f".{index}").read_bytes() == _shard_file(arr, index).read_bytes()
    # A writer resumed after a restart carries on from the committed chunks read back.
    resumed = shards.ShardWriter(
        lambda i: path.with_suffix(f".r{i}"),
        PER_SHARD,
        6,
        shards.read_chunks(path.with_suffix(".1"), 2, PER_SHARD),
    )
    resumed.add(chunks[6])
    resumed.flush()
    assert path.with_suffix(".r1").read_bytes() == _shard_file(arr, 1).read_bytes()


def test_a_damaged_shard_is_refused_when_resuming(tmp_path):
    encode = shards.chunk_encoder(
        zarr.create_array(
            tmp_path / "a.zarr",
            shape=(0, 4),
            dtype="float16",
            chunks=(1, 4),
            shards=(PER_SHARD, 4),
            compressors=_compressors(Layout("float16-round7"), "tokens"),
        ).metadata.to_dict()
    )
    path = tmp_path / "shard"
    writer = shards.ShardWriter(lambda i: path, PER_SHARD, 0, [])
    writer.add(encode(np.ones((1, 4), np.float16)))
    writer.flush()
    data = bytearray(path.read_bytes())
    data[20] ^= 1  # inside the first chunk's compressed bytes
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="chunk 0 of this shard fails its crc32c"):
        shards.read_chunks(path, 1, PER_SHARD)
    with pytest.raises(StoreError, match="shard file of committed windows is missing"):
        shards.read_chunks(tmp_path / "nothing", 1, PER_SHARD)


@pytest.mark.parametrize(
    "layout", [Layout("float16-round7"), Layout("float16", 2), Layout("float16-uncompressed")]
)
def test_tokens_coded_before_the_store_give_the_same_store(tmp_path, layout):
    """The extraction codes float16 tokens on the accelerator; the stored bytes must be those
    of the store coding float32 tokens itself."""
    x = activation_like(7, SHAPE)
    coded = layout.encode(x)["tokens"]
    for name, tokens in (("host", x), ("device", coded)):
        with open_w(
            tmp_path / f"{name}.zarr", part="w", layout=layout, windows_per_shard=PER_SHARD
        ) as w:
            vw = w.begin_video(record(0))
            for b in range(0, 7, 3):
                starts = 2 * np.arange(b, min(b + 3, 7))
                vw.append(
                    tokens[b : b + 3], x[b : b + 3].mean(axis=(1, 2, 3)), starts, 1, 4, starts / 10
                )
            vw.commit()
    host = store.read_windows(store.open(tmp_path / "host.zarr"), np.arange(7))
    device = store.read_windows(store.open(tmp_path / "device.zarr"), np.arange(7))
    np.testing.assert_array_equal(device, host)
    np.testing.assert_array_equal(host, coded.astype(np.float32))


@pytest.mark.parametrize("writeable", [True, False])  # copied while checked; checked in place
def test_coded_tokens_that_the_layout_cannot_hold_are_refused(tmp_path, writeable):
    x = activation_like(3, SHAPE)
    coded = Layout().encode(x)["tokens"]
    emb = x.mean(axis=(1, 2, 3))
    with open_w(tmp_path / "s.zarr", part="w") as w:
        vw = w.begin_video(record(0))
        off_grid = coded.copy()
        off_grid[2, 0, 0, 0, 0] = np.float16(1.0009765625)  # 1 + 2**-10: needs 10 mantissa bits
        off_grid.flags.writeable = writeable
        with pytest.raises(StoreError, match=r"tokens of window 2 of this batch .*7 mantissa"):
            vw.append(off_grid, emb, [0, 2, 4], 1, 4, 0.0)
        not_finite = coded.copy()
        not_finite[1, 1, 1, 1, 1] = np.inf
        not_finite.flags.writeable = writeable
        with pytest.raises(StoreError, match=r"tokens of window 1 of this batch .*not finite"):
            vw.append(not_finite, emb, [0, 2, 4], 1, 4, 0.0)
        vw.append(coded, emb, [0, 2, 4], 1, 4, 0.0)  # the refused batches left nothing behind
        vw.commit()
    np.testing.assert_array_equal(
        store.read_windows(store.open(tmp_path / "s.zarr"), np.arange(3)), coded.astype(np.float32)
    )
    with (
        open_w(tmp_path / "q.zarr", part="w", layout=Layout("int8")) as w,
        pytest.raises(StoreError, match="int8 layout takes float32 tokens"),
    ):
        w.begin_video(record(0)).append(coded, emb, [0, 2, 4], 1, 4, 0.0)


def test_tokens_changed_by_the_caller_after_append_are_stored_as_appended(tmp_path):
    """append returns before its windows are compressed, so writable tokens must be copied: a
    caller reusing its buffer for the next batch must not change the stored windows."""
    x = activation_like(16, SHAPE)
    coded = Layout().encode(x)["tokens"]
    buffer = np.empty_like(coded[:8])
    with open_w(tmp_path / "s.zarr", part="w", windows_per_shard=PER_SHARD) as w:
        vw = w.begin_video(record(0))
        for b in (0, 8):
            buffer[:] = coded[b : b + 8]
            starts = 2 * np.arange(b, b + 8)
            vw.append(buffer, x[b : b + 8].mean(axis=(1, 2, 3)), starts, 1, 4, starts / 10)
        buffer[:] = np.float16(7.0)
        vw.commit()
    stored = store.read_windows(store.open(tmp_path / "s.zarr"), np.arange(16))
    np.testing.assert_array_equal(stored, coded.astype(np.float32))


def test_bench_store_runs_and_measures_what_it_says(tmp_path):
    from ethoprism.store.bench import bench_store

    r = bench_store(windows=40, directory=str(tmp_path), repeats=1, token_shape=(2, 8, 8, 32))
    rows = {(x["layout"]["dtype"], x["layout"]["pool"], x["tokens_in"]): x for x in r["layouts"]}
    assert len(rows) == 8
    full, int8 = rows[("float16-round7", 1, "coded")], rows[("int8", 1, "float32")]
    assert int8["bytes_per_window"] < full["bytes_per_window"] < 2 * 2 * 8 * 8 * 32 + 1000
    raw = rows[("float16-uncompressed", 1, "coded")]["bytes_per_window"]
    assert 2 * 2 * 8 * 8 * 32 < raw < 2 * 2 * 8 * 8 * 32 + 1000  # the values, index, checksums
    assert rows[("float16-round7", 2, "coded")]["bytes_per_window"] < full["bytes_per_window"] / 2
    # the same windows coded on the host or before the store take the same bytes
    assert rows[("float16-round7", 1, "float32")]["bytes_per_window"] == full["bytes_per_window"]
    assert all(x["write_vs_raw"] > 0 and x["cores_for_disk_speed"] > 0 for x in rows.values())
    assert r["reads"]["speedup_vs_oindex"] > 0
    assert r["write_vs_raw"] == full["write_vs_raw"]


def test_uncompressed_tokens_are_stored_as_their_own_bytes(tmp_path):
    """float16-uncompressed: codecs bytes + crc32c inside the shard, each window's chunk its
    float16 bytes as they are, read back equal by zarr itself."""
    coded = Layout("float16-uncompressed").encode(activation_like(5, SHAPE))["tokens"]
    with open_w(
        tmp_path / "s.zarr",
        part="w",
        layout=Layout("float16-uncompressed"),
        windows_per_shard=PER_SHARD,
    ) as w:
        vw = w.begin_video(record(0))
        vw.append(coded, coded.astype(np.float32).mean(axis=(1, 2, 3)), 2 * np.arange(5), 1, 4, 0.0)
        vw.commit()
    tokens = zarr.open_array(tmp_path / "s.zarr" / "parts" / "w" / "tokens", mode="r")
    (sharding,) = tokens.metadata.to_dict()["codecs"]
    assert [c["name"] for c in sharding["configuration"]["codecs"]] == ["bytes", "crc32c"]
    np.testing.assert_array_equal(tokens[:], coded)
    chunks = shards.read_chunks(_shard_file(tokens, 0), PER_SHARD, PER_SHARD)
    assert [bytes(c[0]) for c in chunks] == [coded[i].tobytes() for i in range(PER_SHARD)]


def test_an_uncompressed_store_publishes_and_reads_back_with_plain_xarray(tmp_path):
    import xarray as xr

    from ethoprism.store.publish import publish

    coded = Layout("float16-uncompressed").encode(activation_like(6, SHAPE))["tokens"]
    with open_w(
        tmp_path / "s.zarr",
        part="w",
        layout=Layout("float16-uncompressed"),
        windows_per_shard=PER_SHARD,
    ) as w:
        for i, rows in enumerate((slice(0, 4), slice(4, 6))):
            vw = w.begin_video(record(i))
            batch = coded[rows]
            starts = 2 * np.arange(len(batch))
            vw.append(batch, batch.astype(np.float32).mean(axis=(1, 2, 3)), starts, 1, 4, 0.0)
            vw.commit()
    publish(str(tmp_path / "s.zarr"), str(tmp_path / "pub.zarr"))
    plain = xr.open_zarr(tmp_path / "pub.zarr")
    np.testing.assert_array_equal(plain.tokens.values, coded)
