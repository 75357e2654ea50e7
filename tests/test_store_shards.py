"""Token shards the writer assembles itself: byte-identical to zarr's, and tokens coded elsewhere."""

import os

import numpy as np
import pytest
import zarr
from ethoprism import store
from ethoprism.store import Layout, StoreError, shards
from ethoprism.store.bench import activation_like
from ethoprism.store.codecs import encode_tokens
from ethoprism.store.writer import _compressors
from test_store_readwrite import SHAPE, open_w, record

PER_SHARD = 4


@pytest.mark.parametrize("dtype", ["float16", "int8"])
def test_a_shard_is_byte_identical_to_zarrs_own(tmp_path, dtype):
    """zarr writes the same windows through its own sharding codec; the files must be equal,
    a full shard and a shard holding only its first windows (a commit's tail) alike."""
    layout = "float16-round7" if dtype == "float16" else "int8"
    values = encode_tokens(activation_like(6, SHAPE), layout, 1)["tokens"]
    arr = zarr.create_array(
        tmp_path / "zarr.zarr", shape=values.shape, dtype=values.dtype, chunks=(1, *SHAPE),
        shards=(PER_SHARD, *SHAPE), compressors=_compressors(layout, values.dtype), fill_value=0,
    ).with_config({"write_empty_chunks": True})
    arr[:] = values
    encode = shards.chunk_encoder(arr.metadata.to_dict())
    for direct in (True, False):  # O_DIRECT from an aligned buffer (padding cut off), buffered
        files = shards.ShardFiles(direct)
        for index, window_range in ((0, range(4)), (1, range(4, 6))):
            ours = tmp_path / f"shard{index}-{direct}"
            chunks = [encode(values[i : i + 1]) for i in window_range]
            files.write(ours, chunks + [None] * (PER_SHARD - len(chunks)), PER_SHARD)
            theirs = tmp_path / "zarr.zarr" / "c" / str(index) / "0" / "0" / "0" / "0"
            assert ours.read_bytes() == theirs.read_bytes()
            assert shards.read_chunks(ours, len(chunks), PER_SHARD) == chunks
        assert files.direct == direct or not hasattr(os, "O_DIRECT")


def test_a_damaged_shard_is_refused_when_resuming(tmp_path):
    encode = shards.chunk_encoder(
        zarr.create_array(tmp_path / "a.zarr", shape=(0, 4), dtype="float16", chunks=(1, 4),
                          shards=(PER_SHARD, 4), compressors=_compressors("float16-round7", np.dtype("float16")))
        .metadata.to_dict()
    )
    path = tmp_path / "shard"
    shards.ShardFiles().write(path, [encode(np.ones((1, 4), np.float16))] + [None] * 3, PER_SHARD)
    data = bytearray(path.read_bytes())
    data[20] ^= 1  # inside the first chunk's compressed bytes
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="chunk 0 of this shard fails its crc32c"):
        shards.read_chunks(path, 1, PER_SHARD)
    with pytest.raises(StoreError, match="shard file of committed windows is missing"):
        shards.read_chunks(tmp_path / "nothing", 1, PER_SHARD)


@pytest.mark.parametrize("layout", [Layout("float16-round7"), Layout("float16", 2)])
def test_tokens_coded_before_the_store_give_the_same_store(tmp_path, layout):
    """The extraction codes float16 tokens on the accelerator; the stored bytes must be those
    of the store coding float32 tokens itself."""
    x = activation_like(7, SHAPE)
    coded = encode_tokens(x, layout.dtype, layout.pool)["tokens"]
    for name, tokens in (("host", x), ("device", coded)):
        with open_w(tmp_path / f"{name}.zarr", part="w", layout=layout,
                    windows_per_shard=PER_SHARD) as w:
            vw = w.begin_video(record(0))
            for b in range(0, 7, 3):
                starts = 2 * np.arange(b, min(b + 3, 7))
                vw.append(tokens[b : b + 3], x[b : b + 3].mean(axis=(1, 2, 3)), starts, 1, 4,
                          starts / 10)
            vw.commit()
    host = store.read_windows(store.open(tmp_path / "host.zarr"), np.arange(7))
    device = store.read_windows(store.open(tmp_path / "device.zarr"), np.arange(7))
    np.testing.assert_array_equal(device, host)
    np.testing.assert_array_equal(host, coded.astype(np.float32))


def test_coded_tokens_that_the_layout_cannot_hold_are_refused(tmp_path):
    x = activation_like(3, SHAPE)
    coded = encode_tokens(x, "float16-round7", 1)["tokens"]
    emb = x.mean(axis=(1, 2, 3))
    with open_w(tmp_path / "s.zarr", part="w") as w:
        vw = w.begin_video(record(0))
        off_grid = coded.copy()
        off_grid[2, 0, 0, 0, 0] = np.float16(1.0009765625)  # 1 + 2**-10: needs 10 mantissa bits
        with pytest.raises(StoreError, match=r"tokens of window 2 of this batch .*7 mantissa"):
            vw.append(off_grid, emb, [0, 2, 4], 1, 4, 0.0)
        not_finite = coded.copy()
        not_finite[1, 1, 1, 1, 1] = np.inf
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


def test_bench_store_runs_and_measures_what_it_says(tmp_path):
    from ethoprism.store.bench import bench_store

    r = bench_store(windows=40, directory=str(tmp_path), repeats=1, token_shape=(2, 8, 8, 32))
    rows = {(x["layout"]["dtype"], x["layout"]["pool"], x["tokens_in"]): x for x in r["layouts"]}
    assert len(rows) == 7
    full, int8 = rows[("float16-round7", 1, "coded")], rows[("int8", 1, "float32")]
    assert int8["bytes_per_window"] < full["bytes_per_window"] < 2 * 2 * 8 * 8 * 32 + 1000
    assert rows[("float16-round7", 2, "coded")]["bytes_per_window"] < full["bytes_per_window"] / 2
    # the same windows coded on the host or before the store take the same bytes
    assert rows[("float16-round7", 1, "float32")]["bytes_per_window"] == full["bytes_per_window"]
    assert all(x["write_vs_raw"] > 0 and x["cores_for_disk_speed"] > 0 for x in rows.values())
    assert r["reads"]["speedup_vs_oindex"] > 0
