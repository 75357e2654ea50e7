"""Remote reads of stores through real servers: nginx (HTTP Range) and S3 (Ceph radosgw)."""

from __future__ import annotations

import json
import shutil
import ssl

import identity
import numpy as np
import pytest
import s3fs
import xarray as xr
import zarr
from servers import free_port
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.store import Layout, StoreIdentityError, VideoRecord
from ethoprism.store.remote import storage_options_for, upload_store, zarr_store_for
from ethoprism.store.schema import StoreError

SHARD_WINDOWS = 16
ENCODER = identity.encoder(16, checkpoint="0" * 64)
PREP = identity.preprocessing(32, 4, 2)


def write_store(path, seed=0) -> None:
    """Two parts (two writers), 3 complete videos of 7, 5, 9 windows and one failed, int8
    layout (extra scale arrays), 4 windows per shard (videos straddle shards)."""
    rng = np.random.default_rng(seed)
    videos = {"w0": [("cam0/a.mp4", 7), ("cam0/b.mp4", 5)], "w1": [("cam1/c.mp4", 9)]}
    for part, clips in videos.items():
        with store.open_writer(
            path,
            encoder=ENCODER,
            preprocessing=PREP,
            layout=Layout("int8"),
            part=part,
            windows_per_shard=4,
        ) as w:
            for name, n in clips:
                rec = VideoRecord(
                    f"/archive/{name}",
                    10_000 + n,
                    f"{n:064x}",
                    25.0,
                    2 * n + 2,
                    (2 * n + 2) / 25,
                    64,
                    48,
                    "h264",
                )
                vw = w.begin_video(rec)
                scale = rng.uniform(0.1, 5.0, 16).astype(np.float32)  # per-channel scales
                tokens = rng.standard_t(4, (n, 2, 4, 4, 16)).astype(np.float32) * scale
                starts = 2 * np.arange(n)
                vw.append(tokens, tokens.mean(axis=(1, 2, 3)), starts, 1, 4, starts / 25.0)
                vw.commit()
            if part == "w1":
                w.record_failure("/archive/cam1/broken.mp4", "not a video: no video stream")


@pytest.fixture(scope="module")
def feature_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    write_store(root / "feat.zarr")
    return root


def assert_same_dataset(remote, local):
    assert {k: v for k, v in remote.attrs.items() if k != "source"} == {
        k: v for k, v in local.attrs.items() if k != "source"
    }
    assert remote.sizes == local.sizes and set(remote.coords) == set(local.coords)
    for name in local.coords:
        np.testing.assert_array_equal(remote[name].values, local[name].values, err_msg=name)
    picks = np.random.default_rng(1).permutation(local.sizes["window"])[:8]
    for var in ("tokens", "embedding"):
        np.testing.assert_array_equal(
            store.read_windows(remote, picks, var),
            store.read_windows(local, picks, var),
            err_msg=var,
        )
    np.testing.assert_array_equal(remote.embedding.values, local.embedding.values)
    np.testing.assert_array_equal(remote.tokens[5:11].values, local.tokens[5:11].values)


def write_sharded_group(root, n=64, seed=0) -> np.ndarray:
    """A plain zarr v3 group with one sharded array, one window per inner chunk."""
    values = np.random.default_rng(seed).standard_normal((n, 4, 8, 8)).astype(np.float32)
    group = zarr.open_group(zarr.storage.LocalStore(root), mode="w")
    arr = group.create_array(
        "a",
        shape=values.shape,
        dtype="float32",
        chunks=(1, 4, 8, 8),
        shards=(SHARD_WINDOWS, 4, 8, 8),
    )
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
    assert {r["uri"] for r in shard_reads} == {
        f"/g.zarr/a/c/{i // SHARD_WINDOWS}/0/0/0" for i in picks
    }


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
    assert n_files == 2 + 64 // SHARD_WINDOWS  # group + array metadata, one file per shard
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
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONFIG_FILE",
    ):
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


def test_store_opens_over_http_without_listing(feature_store, nginx_server):
    server = nginx_server(feature_store)  # no autoindex: listing a directory is a 403
    url = f"{server.url}/feat.zarr"
    local = store.open(str(feature_store / "feat.zarr"))
    remote = store.open(url)
    assert local.sizes["window"] == 21 and list(local.video_status.values).count("failed") == 1
    assert_same_dataset(remote, local)
    cam1 = store.select(remote, video="c.mp4", start=0.3)
    np.testing.assert_array_equal(cam1.start_frame.values, 2 * np.arange(4, 9))
    np.testing.assert_array_equal(
        store.read_windows(cam1, [0, 4]), store.read_windows(local, [16, 20])
    )

    log = server.requests()
    assert not [r for r in log if r["uri"].endswith("/") or r["status"] == 403], "tried to list"
    # A random minibatch reads byte ranges of shards (206), never whole shards.
    before = len(log)
    store.read_windows(remote, [20, 3, 11])
    token_reads = [r for r in server.requests()[before:] if "/tokens/c/" in r["uri"]]
    assert token_reads and {r["status"] for r in token_reads} == {206}, token_reads

    local_info = store.info(str(feature_store / "feat.zarr"))
    remote_info = store.info(url)
    assert remote_info.pop("source") == url
    local_info.pop("source")
    assert remote_info == local_info and remote_info["bytes_on_disk"] > 0
    report = store.validate(url)
    assert report["ok"] and report["windows"] == 21, report["problems"]


def test_plain_xarray_reads_a_part_over_http(feature_store, nginx_server):
    # Plain xarray discovers a group's arrays by listing it, so this server lists directories.
    server = nginx_server(feature_store, autoindex=True)
    remote = xr.open_zarr(zarr_store_for(f"{server.url}/feat.zarr/parts/w1"), consolidated=False)
    local = xr.open_zarr(feature_store / "feat.zarr/parts/w1", consolidated=False)
    assert set(remote.data_vars) == {
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
    xr.testing.assert_identical(remote.load(), local.load())
    assert remote.attrs["ethoprism_part"]["n_windows"] == 9


def test_store_opens_over_s3(feature_store, s3_server, tmp_path):
    url = f"s3://{s3_server.bucket}/shared/feat.zarr"
    copy = shutil.copytree(feature_store / "feat.zarr", tmp_path / "copy.zarr")
    upload_store(copy, url, s3_server.storage_options)
    shutil.rmtree(copy)  # what is read now can only come from S3
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options)
    uploaded = fs.find(url, detail=True)
    local = store.open(str(feature_store / "feat.zarr"))
    remote = store.open(url, storage_options=s3_server.storage_options)
    assert remote.attrs["source"] == url
    assert_same_dataset(remote, local)
    assert store.validate(url, s3_server.storage_options)["ok"]
    fs.invalidate_cache()
    assert fs.find(url, detail=True) == uploaded  # reading wrote nothing

    # Pushing again is fine; pushing a store of another identity over it is refused.
    upload_store(feature_store / "feat.zarr", url, s3_server.storage_options)
    other = tmp_path / "other.zarr"
    shutil.copytree(feature_store / "feat.zarr", other)
    doc = json.loads((other / "zarr.json").read_text())
    doc["attributes"]["encoder"]["checkpoint_sha256"] = "1" * 64
    (other / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(StoreIdentityError, match="encoder.checkpoint_sha256"):
        upload_store(other, url, s3_server.storage_options)


def test_cli_pushes_and_reads_s3_with_endpoint_and_credentials_from_env(
    feature_store, s3_server, monkeypatch
):
    url = f"s3://{s3_server.bucket}/cli/feat.zarr"
    monkeypatch.setenv("ETHOPRISM_S3_ENDPOINT", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret)
    pushed = CliRunner().invoke(
        app, ["store", "push", str(feature_store / "feat.zarr"), url, "--json"]
    )
    assert pushed.exit_code == 0, pushed.output
    n_local = sum(
        1
        for p in (feature_store / "feat.zarr").rglob("*")
        if p.is_file() and not p.name.startswith(".")
    )
    assert json.loads(pushed.output)["files"] == n_local
    result = CliRunner().invoke(app, ["store", "info", url, "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["windows"] == 21 and info["videos_complete"] == 3 and info["source"] == url
    missing = CliRunner().invoke(app, ["store", "push", str(feature_store / "nope.zarr"), url])
    assert missing.exit_code == 1 and "not a feature store" in missing.output


def test_missing_remote_store_is_a_store_error(feature_store, nginx_server, s3_server):
    server = nginx_server(feature_store)
    with pytest.raises(StoreError, match="not a feature store"):
        store.open(f"{server.url}/nothing-here.zarr")
    with pytest.raises(StoreError, match="not a feature store"):
        store.open(f"s3://{s3_server.bucket}/nothing-here.zarr", s3_server.storage_options)
    with pytest.raises(StoreError, match="cannot read .*Connect"):
        store.open(f"http://127.0.0.1:{free_port()}/feat.zarr")  # nothing listens there


def test_wrong_s3_credentials_are_a_store_error(feature_store, s3_server):
    if s3_server.kind == "moto":
        pytest.skip(f"moto accepts any credentials (S3 is moto here because {s3_server.note})")
    url = f"s3://{s3_server.bucket}/private/feat.zarr"
    upload_store(feature_store / "feat.zarr", url, s3_server.storage_options)
    wrong = {**s3_server.storage_options, "secret": "not-the-secret"}
    with pytest.raises(StoreError, match="Forbidden.*AWS_ACCESS_KEY_ID"):
        store.open(url, wrong)
    with pytest.raises(StoreError, match="Forbidden"):  # the bucket is private
        store.open(url, {"endpoint_url": s3_server.endpoint_url, "anon": True})


def test_push_copies_the_committed_store_and_refuses_a_part_being_written(tmp_path, s3_server):
    path = tmp_path / "feat.zarr"
    write_store(path)
    (path / "parts" / "unregistered").mkdir()  # e.g. a part created after the push began
    (path / "parts" / "unregistered" / "zarr.json").write_text("{}")
    url = f"s3://{s3_server.bucket}/push/feat.zarr"
    with (
        store.open_writer(
            path, encoder=ENCODER, preprocessing=PREP, layout=Layout("int8"), part="w1"
        ),
        pytest.raises(StoreError, match="part 'w1' .* is being written"),
    ):
        upload_store(path, url, s3_server.storage_options)
    n_files = upload_store(path, url, s3_server.storage_options)
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.storage_options)
    pushed = {p.removeprefix(url.removeprefix("s3://") + "/") for p in fs.find(url)}
    assert len(pushed) == n_files and not [p for p in pushed if "unregistered" in p or "/." in p]
    assert store.open(url, s3_server.storage_options).sizes["window"] == 21


def test_store_opens_over_https_trusting_the_server_certificate(feature_store, nginx_server):
    server = nginx_server(feature_store, tls=True)
    url = f"{server.url}/feat.zarr"
    with pytest.raises(StoreError, match="cannot read https.*(certificate|SSL)"):
        store.open(url)  # self-signed: not trusted by default
    trusted = {"ssl": ssl.create_default_context(cafile=server.ca_file)}
    remote = store.open(url, storage_options=trusted)
    local = store.open(str(feature_store / "feat.zarr"))
    picks = [20, 0, 9]
    np.testing.assert_array_equal(
        store.read_windows(remote, picks), store.read_windows(local, picks)
    )
    np.testing.assert_array_equal(remote.embedding.values, local.embedding.values)
