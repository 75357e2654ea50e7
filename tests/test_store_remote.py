"""Remote reads of stores through real servers: nginx (HTTP Range) and S3 (Ceph radosgw)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from ethoprism.store.remote import storage_options_for, upload_store, zarr_store_for
from ethoprism.store.schema import StoreError

SHARD_WINDOWS = 16


def write_sharded_group(root, n=64, seed=0) -> np.ndarray:
    """A plain zarr v3 group with one sharded array, one window per inner chunk."""
    values = np.random.default_rng(seed).standard_normal((n, 4, 8, 8)).astype(np.float32)
    group = zarr.open_group(zarr.storage.LocalStore(root), mode="w")
    arr = group.create_array("a", shape=values.shape, dtype="float32", chunks=(1, 4, 8, 8),
                             shards=(SHARD_WINDOWS, 4, 8, 8))
    arr[:] = values
    return values


def test_nginx_serves_shards_with_range_requests(tmp_path, nginx_server):
    values = write_sharded_group(tmp_path / "g.zarr")
    server = nginx_server(tmp_path)
    arr = zarr.open_array(zarr_store_for(f"{server.url}/g.zarr"), path="a", mode="r")
    picks = [3, 17, 40, 63]
    for i in picks:
        np.testing.assert_array_equal(arr[i], values[i])

    shard_reads = [r for r in server.requests() if "/a/c/" in r["uri"]]
    assert shard_reads, "no shard was read through nginx"
    # Every shard read is a byte range (index suffix, then one inner chunk), answered 206:
    # a server that ignores Range (python -m http.server) answers 200 with the whole shard.
    assert {r["status"] for r in shard_reads} == {206}, shard_reads
    assert all(r["range"].startswith("bytes=") for r in shard_reads)
    shard_size = (tmp_path / "g.zarr/a/c/0/0/0/0").stat().st_size
    assert max(r["bytes"] for r in shard_reads) < shard_size / 4
    assert {r["uri"] for r in shard_reads} == {f"/g.zarr/a/c/{i // SHARD_WINDOWS}/0/0/0" for i in picks}


def test_nginx_missing_key_reads_as_fill_value(tmp_path, nginx_server):
    # 404 must mean "absent chunk" to zarr, as on disk, not an error.
    group = zarr.open_group(zarr.storage.LocalStore(tmp_path / "g.zarr"), mode="w")
    group.create_array("sparse", shape=(4, 3), chunks=(1, 3), dtype="int32", fill_value=-7)[1] = 5
    server = nginx_server(tmp_path)
    arr = zarr.open_array(zarr_store_for(f"{server.url}/g.zarr"), path="sparse", mode="r")
    np.testing.assert_array_equal(arr[:], [[-7] * 3, [5] * 3, [-7] * 3, [-7] * 3])
    assert {r["status"] for r in server.requests() if "/sparse/c/" in r["uri"]} == {200, 404}


def test_s3_upload_and_read_sharded_group(tmp_path, s3_server):
    values = write_sharded_group(tmp_path / "g.zarr", seed=1)
    url = f"s3://{s3_server.bucket}/plain/g.zarr"
    n_files = upload_store(tmp_path / "g.zarr", url, s3_server.storage_options)
    assert n_files == 2 + 64 // SHARD_WINDOWS      # group + array metadata, one file per shard
    arr = zarr.open_array(zarr_store_for(url, s3_server.storage_options), path="a", mode="r")
    np.testing.assert_array_equal(arr[[5, 33, 60]], values[[5, 33, 60]])
    np.testing.assert_array_equal(arr[:], values)


def test_read_only_store_refuses_writes(tmp_path, s3_server):
    write_sharded_group(tmp_path / "g.zarr", n=16)
    url = f"s3://{s3_server.bucket}/ro/g.zarr"
    upload_store(tmp_path / "g.zarr", url, s3_server.storage_options)
    arr = zarr.open_array(zarr_store_for(url, s3_server.storage_options), path="a")
    with pytest.raises(ValueError, match="read.only"):
        arr[0] = 1.0


def test_s3_defaults_endpoint_from_env_and_anonymous_without_credentials(monkeypatch):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("ETHOPRISM_S3_ENDPOINT", "http://127.0.0.1:9")
    assert storage_options_for("s3://b/x") == {"endpoint_url": "http://127.0.0.1:9", "anon": True}
    given = {"key": "k", "secret": "s", "client_kwargs": {"endpoint_url": "http://h:1"}}
    assert storage_options_for("s3://b/x", given) == given
    assert storage_options_for("https://h/x.zarr") == {}


def test_unknown_protocol_is_a_store_error():
    with pytest.raises(StoreError, match="nosuchproto"):
        zarr_store_for("nosuchproto://bucket/x.zarr")
