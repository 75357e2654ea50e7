"""Sharing between labs: publish, verify, merge, remote reads with a cache, heads that travel.

Against real servers on 127.0.0.1 (nginx, Ceph radosgw from tests/servers.py); what a lab
without ethoprism runs is run in a fresh subprocess that imports only xarray, zarr and fsspec.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import identity
import numpy as np
import pytest
import s3fs
import zarr
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.probe.artifacts import HeadFileError
from ethoprism.store import Layout, StoreIdentityError, VideoRecord
from ethoprism.store.manifest import parse_manifest, verify
from ethoprism.store.publish import publish
from ethoprism.store.schema import StoreError

ENCODER = identity.encoder(16, checkpoint="0" * 64)
PREP = identity.preprocessing(32, 4, 2)
IMPORT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(store.__file__)))


def write_store(path, videos, layout="int8", checkpoint="0" * 64, seed=0, per_shard=4):
    """videos: {part: [(name, n_windows, fingerprint)]}; tokens carry a per-class signal."""
    rng = np.random.default_rng(seed)
    encoder = {**ENCODER, "checkpoint_sha256": checkpoint}
    for part, clips in videos.items():
        with store.open_writer(
            path,
            encoder=encoder,
            preprocessing=PREP,
            layout=Layout(layout),
            part=part,
            windows_per_shard=per_shard,
        ) as w:
            for name, n, fingerprint in clips:
                n_frames = 2 * n + 2
                rec = VideoRecord(
                    f"/archive/{name}", 1000 + n, fingerprint, 25.0, n_frames, n_frames / 25,
                    64, 48, "h264",
                )  # fmt: skip
                vw = w.begin_video(rec)
                tokens = rng.standard_normal((n, 2, 4, 4, 16)).astype(np.float32)
                tokens[: n // 2, ..., 0] += 3.0  # first half of each video: "walk"
                starts = 2 * np.arange(n)
                vw.append(tokens, tokens.mean(axis=(1, 2, 3)), starts, 1, 4, starts / 25.0)
                vw.commit()
            if part == "w1":
                w.record_failure(f"/archive/{part}-broken.mp4", "not a video: no video stream")


VIDEOS = {
    "w0": [("cam0/a.mp4", 7, "a" * 64), ("cam0/b.mp4", 5, "b" * 64)],
    "w1": [("cam1/c.mp4", 9, "c" * 64), ("cam1/d.mp4", 6, "d" * 64)],
}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("share")
    write_store(root / "feat.zarr", VIDEOS)
    write_store(root / "round7.zarr", VIDEOS, layout="float16-round7", seed=3, per_shard=3)
    publish(str(root / "feat.zarr"), str(root / "pub.zarr"))
    publish(str(root / "round7.zarr"), str(root / "pub7.zarr"))
    return root


def decoded_like_plain_xarray(ds_plain) -> np.ndarray:
    """What a reader without ethoprism gets as float32 tokens (SPEC.md, published stores)."""
    if "token_scale" in ds_plain:
        return (ds_plain.tokens * ds_plain.token_scale * ds_plain.channel_scale).values
    return ds_plain.tokens.values.astype(np.float32)


PLAIN_READER = textwrap.dedent(
    """
    import json, sys
    import numpy as np, xarray as xr
    url, out, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    ds = xr.open_zarr(url, storage_options=options or None)  # consolidated metadata, no listing
    if "token_scale" in ds:
        tokens = (ds.tokens * ds.token_scale * ds.channel_scale).values
    else:
        tokens = ds.tokens.values.astype(np.float32)
    arrays = {k: np.array(ds[k].values.tolist()) if ds[k].dtype.kind in "OTU" else ds[k].values
              for k in ds.coords}
    np.savez(out, tokens=tokens, embedding=ds.embedding.values, **arrays)
    mods = [m for m in sys.modules if m.split(".")[0] in ("ethoprism", "jax", "flax")]
    with open(out + ".json", "w") as f:
        json.dump({"attrs": ds.attrs, "dims": dict(ds.sizes), "foreign": mods}, f)
    """
)


def read_plainly(url, tmp_path, options=None) -> tuple[dict, dict]:
    out = str(tmp_path / "plain.npz")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run(
        [sys.executable, "-c", PLAIN_READER, url, out, json.dumps(options or {})],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    with np.load(out, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    with open(out + ".json") as f:
        return arrays, json.load(f)


def assert_plain_equals_store(arrays, meta, local):
    assert meta["foreign"] == []  # nothing but xarray, zarr, fsspec (and their deps)
    assert meta["dims"] == dict(local.sizes)
    attrs = {k: v for k, v in meta["attrs"].items() if k != "ethoprism_published"}
    for k, v in local.attrs.items():
        assert k == "source" or attrs.pop(k) == v, k
    root = zarr.open_group(local.attrs["source"], mode="r").attrs
    assert all(root[k] == v for k, v in attrs.items())  # the rest: the source's root attributes
    np.testing.assert_array_equal(arrays["tokens"], local.tokens.values)
    np.testing.assert_array_equal(arrays["embedding"], local.embedding.values)
    assert set(local.coords) <= set(arrays)
    for name in local.coords:
        values = local[name].values
        np.testing.assert_array_equal(
            arrays[name], values.astype(str) if values.dtype == object else values, err_msg=name
        )


def test_publish_is_the_stores_dataset_for_ethoprism_and_plain_xarray(stores, tmp_path):
    for src, pub in (("feat.zarr", "pub.zarr"), ("round7.zarr", "pub7.zarr")):
        local = store.open(str(stores / src))
        assert local.sizes["window"] == 27 and list(local.video_status.values).count("failed") == 1
        published = store.open(str(stores / pub))
        assert published.attrs["ethoprism_published"]["read_only"] is True
        for name in local.coords:
            np.testing.assert_array_equal(published[name].values, local[name].values, name)
        np.testing.assert_array_equal(published.tokens.values, local.tokens.values)
        picks = [26, 3, 11, 0, 12]
        for var in ("tokens", "embedding"):
            np.testing.assert_array_equal(
                store.read_windows(published, picks, var), store.read_windows(local, picks, var)
            )
        assert store.validate(str(stores / pub))["ok"]
        assert store.info(str(stores / pub))["windows"] == 27
        arrays, meta = read_plainly(str(stores / pub), tmp_path)
        assert_plain_equals_store(arrays, meta, local)


def test_tokens_are_copied_as_encoded_bytes(stores):
    # Each published inner chunk is byte for byte a source inner chunk (no recompression).
    local = store.open(str(stores / "round7.zarr"))
    src = zarr.open_array(stores / "round7.zarr/parts/w1/tokens", mode="r")
    dst = zarr.open_array(stores / "pub7.zarr/tokens", mode="r")
    w = int(np.flatnonzero(local.part.values == 1)[4])  # 5th window of part w1
    sw = int(local.part_window.values[w])

    def chunk_bytes(root, arr, window):
        per = arr.shards[0]
        data = (root / f"c/{window // per}/0/0/0/0").read_bytes()
        index = np.frombuffer(data[-(16 * per + 4) : -4], "<u8").reshape(per, 2)
        off, n = index[window % per]
        return data[off : off + n]

    a = chunk_bytes(stores / "round7.zarr/parts/w1/tokens", src, sw)
    b = chunk_bytes(stores / "pub7.zarr/tokens", dst, w)
    assert a == b and len(a) > 0


def test_published_store_is_read_only_by_contract(stores, tmp_path):
    copy = shutil.copytree(stores / "pub.zarr", tmp_path / "pub.zarr")
    with pytest.raises(StoreError, match="published store, read-only"):
        store.open_writer(copy, encoder=ENCODER, preprocessing=PREP, layout=Layout("int8"))
    with pytest.raises(StoreError, match="already a published store"):
        publish(str(copy), str(tmp_path / "again.zarr"))
    dest = str(tmp_path / "by-cli.zarr")
    first = CliRunner().invoke(app, ["store", "publish", str(stores / "feat.zarr"), dest, "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["windows"] == 27
    again = CliRunner().invoke(app, ["store", "publish", str(stores / "feat.zarr"), dest, "--json"])
    assert json.loads(again.output)["up_to_date"] is True
    os.remove(os.path.join(dest, "manifest.json"))  # killed after the root, before the manifest
    finished = CliRunner().invoke(app, ["store", "publish", str(stores / "feat.zarr"), dest])
    assert finished.exit_code == 0 and verify(dest)["ok"]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        publish(str(stores / "feat.zarr"), str(tmp_path / "full"))


def test_verify_names_altered_and_missing_objects_with_their_videos(stores, tmp_path):
    copy = shutil.copytree(stores / "pub.zarr", tmp_path / "pub.zarr")
    assert verify(str(copy))["ok"]
    shard = copy / "tokens/c/1/0/0/0/0"  # windows 4-7: a.mp4 windows 4-6, b.mp4 window 0
    data = bytearray(shard.read_bytes())
    data[10] ^= 1
    shard.write_bytes(bytes(data))
    (copy / "embedding/c/0/0").unlink()
    (copy / "stray.bin").write_bytes(b"?")
    r = verify(str(copy))
    assert not r["ok"]
    assert [a["path"] for a in r["altered"]] == ["tokens/c/1/0/0/0/0"]
    assert "cam0/a.mp4 windows 4-6" in r["altered"][0]["holds"]
    assert "cam0/b.mp4 windows 0-0" in r["altered"][0]["holds"]
    assert [m["path"] for m in r["missing"]] == ["embedding/c/0/0"]
    assert "cam1/d.mp4" in r["missing"][0]["holds"]  # the one chunk holds every window
    assert [e["path"] for e in r["extra"]] == ["stray.bin"]
    result = CliRunner().invoke(app, ["store", "verify", str(copy)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())  # rich wraps long lines
    assert "altered: tokens/c/1/0/0/0/0" in out and "missing: embedding/c/0/0" in out


def test_publish_killed_then_rerun_copies_only_what_is_missing(stores, tmp_path):
    dest = tmp_path / "pub.zarr"
    killer = textwrap.dedent(
        """
        import os, signal, sys
        import sys
        from ethoprism.store.publish import publish
        sys.modules["ethoprism.store.publish"].COPY_THREADS = 1  # so the kill lands between shards
        seen = []
        def progress(nbytes, windows):
            seen.append(nbytes)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        publish(sys.argv[1], sys.argv[2], progress=progress)
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", killer, str(stores / "feat.zarr"), str(dest)],
        capture_output=True,
        env={**os.environ, "PYTHONPATH": os.path.dirname(IMPORT_ROOT)},
        timeout=120,
    )
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not (dest / "manifest.json").exists()
    with pytest.raises(StoreError, match="not an ethoprism feature store"):
        store.open(str(dest))  # half published: not a store yet
    done = {p: p.stat().st_mtime_ns for p in (dest / "tokens/c").rglob("0") if p.is_file()}
    assert len(done) == 3
    summary = publish(str(stores / "feat.zarr"), str(dest))
    assert summary["windows"] == 27
    assert {p: p.stat().st_mtime_ns for p in done} == done  # not copied again
    assert verify(str(dest))["ok"]
    np.testing.assert_array_equal(
        store.open(str(dest)).tokens.values, store.open(str(stores / "feat.zarr")).tokens.values
    )


def _one_call_at_a_time(calls: list, overlaps: list):
    """A progress callback that records its calls, and those made while another call is still
    running (each call lingers, so that threads calling unserialized would overlap)."""
    busy = threading.Lock()

    def progress(*args):
        if not busy.acquire(blocking=False):
            overlaps.append(args)
            return
        try:
            calls.append(args)
            time.sleep(0.005)
        finally:
            busy.release()

    return progress


def test_progress_comes_one_call_at_a_time_and_counts_every_byte(stores, tmp_path):
    # Copy and verify threads report progress; a caller adding it up (as the CLI's bars do)
    # must see each call alone, or it loses some of the count.
    calls, overlaps = [], []
    dest = tmp_path / "pub.zarr"
    r = publish(str(stores / "feat.zarr"), str(dest), progress=_one_call_at_a_time(calls, overlaps))
    assert not overlaps
    assert len(calls) > 8  # many shards, copied by several threads
    token_arrays = Layout("int8").arrays
    shards = [p for name in token_arrays for p in (dest / name / "c").rglob("*") if p.is_file()]
    assert sum(nbytes for nbytes, _ in calls) == sum(p.stat().st_size for p in shards)
    assert sum(windows for _, windows in calls) == r["windows"] * len(token_arrays)

    calls.clear()
    r = verify(str(dest), progress=_one_call_at_a_time(calls, overlaps))
    assert r["ok"] and not overlaps
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == r["bytes"]


def test_merge_and_union_view(tmp_path):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    write_store(a, {"w0": [("x.mp4", 4, "1" * 64), ("shared.mp4", 3, "5" * 64)]}, seed=1)
    write_store(b, {"w0": [("shared-copy.mp4", 3, "5" * 64), ("y.mp4", 5, "2" * 64)]}, seed=2)
    union = store.open([str(a), str(b)])
    assert union.sizes["window"] == 4 + 3 + 5  # the shared video once
    result = CliRunner().invoke(app, ["store", "merge", str(a), str(b), str(tmp_path / "m.zarr")])
    assert result.exit_code == 0, result.output
    assert "duplicate: /archive/shared.mp4" in " ".join(result.output.split())
    merged = store.open(str(tmp_path / "m.zarr"))
    assert union.attrs["parts"] == merged.attrs["parts"] == ["s00-w0", "s01-w0"]
    for name in merged.coords:
        np.testing.assert_array_equal(union[name].values, merged[name].values, err_msg=name)
    np.testing.assert_array_equal(union.tokens.values, merged.tokens.values)
    picks = [11, 0, 7]
    np.testing.assert_array_equal(
        store.read_windows(union, picks), store.read_windows(merged, picks)
    )
    # the shared video's windows come from the first store
    np.testing.assert_array_equal(
        store.read_windows(union, [4, 5, 6]),
        store.read_windows(store.open(str(a)), [4, 5, 6]),
    )
    assert store.validate(str(tmp_path / "m.zarr"))["ok"]


def test_merge_refuses_another_checkpoint_or_layout_naming_the_field(tmp_path):
    a = tmp_path / "a.zarr"
    write_store(a, {"w0": [("x.mp4", 2, "1" * 64)]})
    other_ckpt = tmp_path / "ckpt.zarr"
    write_store(other_ckpt, {"w0": [("y.mp4", 2, "2" * 64)]}, checkpoint="f" * 64)
    other_layout = tmp_path / "layout.zarr"
    write_store(other_layout, {"w0": [("y.mp4", 2, "2" * 64)]}, layout="float16")
    with pytest.raises(StoreIdentityError, match=r"encoder.checkpoint_sha256 \('0+' vs 'f+'\)"):
        store.open([str(a), str(other_ckpt)])
    result = CliRunner().invoke(
        app, ["store", "merge", str(a), str(other_layout), str(tmp_path / "m.zarr")]
    )
    assert result.exit_code == 1
    assert "layout.dtype ('int8' vs 'float16')" in " ".join(result.output.split())
    assert not (tmp_path / "m.zarr" / "zarr.json").exists()


def test_manifest_paths_outside_the_store_are_refused(stores):
    good = json.loads((stores / "pub.zarr/manifest.json").read_text())
    assert parse_manifest(json.dumps(good).encode(), "m")["objects"]
    for bad in ("../x", "/etc/passwd", "a/../../x", "tokens/./c", "C:x", "a\\b"):
        crafted = {**good, "objects": [{"path": bad, "size": 1, "sha256": "0" * 64}]}
        with pytest.raises(StoreError, match="escapes the store"):
            parse_manifest(json.dumps(crafted).encode(), "m")
    crafted = {**good, "objects": [{"path": "x", "size": -1, "sha256": "0" * 64}]}
    with pytest.raises(StoreError, match="is not a count"):
        parse_manifest(json.dumps(crafted).encode(), "m")


def test_store_with_a_pickle_codec_or_object_dtype_is_refused(stores, tmp_path):
    for where, change in (
        ("codec", lambda m: m["codecs"].insert(1, {"name": "numcodecs.pickle"})),
        ("data type", lambda m: m.update(data_type="object")),
    ):
        copy = shutil.copytree(stores / "pub.zarr", tmp_path / where.replace(" ", "_"))
        root = json.loads((copy / "zarr.json").read_text())
        change(root["consolidated_metadata"]["metadata"]["video_path"])
        (copy / "zarr.json").write_text(json.dumps(root))
        with pytest.raises(StoreError, match=f"{where} .* not one ethoprism reads"):
            store.open(str(copy))
    escaping = shutil.copytree(stores / "feat.zarr", tmp_path / "escaping.zarr")
    root = json.loads((escaping / "zarr.json").read_text())
    root["attributes"]["parts"] = ["w0", "../../elsewhere"]
    (escaping / "zarr.json").write_text(json.dumps(root))
    with pytest.raises(StoreError, match="'../../elsewhere' is not a plain name"):
        store.open(str(escaping))
    part = shutil.copytree(stores / "feat.zarr", tmp_path / "working.zarr")
    meta_path = part / "parts/w0/start_time/zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["codecs"].insert(1, {"name": "numcodecs.pickle"})
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="numcodecs.pickle"):
        store.open(str(part))


LABELS = "video,start_frame,end_frame,action\n" + "".join(
    f"{name.split('/')[1]},0,{n - 1},walk\n{name.split('/')[1]},{n},{2 * n + 1},rest\n"
    for clips in VIDEOS.values()
    for name, n, _ in clips
)


@pytest.mark.slow
def test_remote_store_and_published_head_give_the_local_numbers(stores, tmp_path, nginx_server):
    from ethoprism.probe.classify.jobs import predict_store, train_probe

    (tmp_path / "labels.csv").write_text(LABELS)
    server = nginx_server(stores)
    url = f"{server.url}/pub.zarr"
    common = dict(head="linear", epochs=3, batch_size=8, test_fraction=0.25, dropout=0.0)
    here = train_probe(str(stores / "feat.zarr"), tmp_path / "labels.csv", tmp_path / "l", **common)
    there = train_probe(
        url,
        tmp_path / "labels.csv",
        tmp_path / "r",
        storage_options={"cache": str(tmp_path / "cache")},
        **common,
    )
    assert here["heads"][0]["test"] == there["heads"][0]["test"]
    assert here["heads"][0]["test"]  # metrics on the held-out video
    head_dir = tmp_path / "l" / here["heads"][0]["name"]
    published = tmp_path / "served-heads" / "walk"
    result = CliRunner().invoke(app, ["probe", "publish", str(head_dir), str(published), "--json"])
    assert result.exit_code == 0, result.output
    provenance = json.loads(result.output)
    assert provenance["store_identity"] == store.identity(store.open(url))
    assert provenance["classes"] == ["rest", "walk"] or set(provenance["classes"]) >= {"walk"}
    assert len(provenance["labels"]["sha256"]) == 64 and provenance["metrics"]
    assert provenance["training"]["epochs"] == 3
    heads = nginx_server(tmp_path / "served-heads")
    a = predict_store(str(stores / "feat.zarr"), head_dir, tmp_path / "pa")
    b = predict_store(url, f"{heads.url}/walk", tmp_path / "pb")
    for va, vb in zip(a["videos"], b["videos"], strict=True):
        assert Path(va["csv"]).read_text() == Path(vb["csv"]).read_text()
    assert os.listdir(tmp_path / "cache")  # the cache was used

    # a head whose store identity differs is refused, naming the field
    other = tmp_path / "other.zarr"
    write_store(other, {"w0": [("z.mp4", 3, "9" * 64)]}, checkpoint="e" * 64)
    with pytest.raises(StoreIdentityError, match="encoder.checkpoint_sha256"):
        predict_store(str(other), f"{heads.url}/walk", tmp_path / "pc")
    # a head altered after publishing is refused
    meta = json.loads((published / "head.json").read_text())
    meta["classes"] = ["rest", "walk", "run"]
    (published / "head.json").write_text(json.dumps(meta))
    with pytest.raises(HeadFileError, match="does not match its manifest"):
        predict_store(url, f"{heads.url}/walk", tmp_path / "pd")


def test_cli_reads_over_http_with_a_cache_the_same_as_locally(stores, tmp_path, nginx_server):
    server = nginx_server(stores)  # no directory listings
    arrays, meta = read_plainly(f"{server.url}/pub.zarr", tmp_path)  # a lab without ethoprism
    assert_plain_equals_store(arrays, meta, store.open(str(stores / "feat.zarr")))
    for name in ("feat.zarr", "pub.zarr"):
        local = CliRunner().invoke(app, ["store", "info", str(stores / name), "--json"])
        cache = ["--cache", str(tmp_path / "cache")]
        remote = CliRunner().invoke(
            app, ["store", "info", f"{server.url}/{name}", "--json", *cache]
        )
        assert remote.exit_code == 0, remote.output
        a, b = json.loads(local.output), json.loads(remote.output)
        assert a.pop("source") != b.pop("source") and a == b
    before = len(server.requests())
    again = CliRunner().invoke(
        app, ["store", "validate", f"{server.url}/pub.zarr", "--json", *cache]
    )
    assert again.exit_code == 0 and json.loads(again.output)["ok"]
    verified = CliRunner().invoke(app, ["store", "verify", f"{server.url}/pub.zarr", "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output)["extra_checked"] is False
    assert {r["method"] for r in server.requests()[before:]} <= {"GET", "HEAD"}


@pytest.mark.slow
def test_publish_to_s3_then_plain_xarray_and_verify_over_s3(stores, tmp_path, s3_server):
    url = f"s3://{s3_server.bucket}/published/feat.zarr"
    opts = s3_server.storage_options
    summary = publish(str(stores / "feat.zarr"), url, dest_options=opts)
    assert summary["windows"] == 27
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    objects = fs.find(url, detail=True)
    local = store.open(str(stores / "feat.zarr"))
    plain_opts = {
        "key": opts["key"],
        "secret": opts["secret"],
        "endpoint_url": opts["endpoint_url"],
    }
    arrays, meta = read_plainly(url, tmp_path, plain_opts)
    assert_plain_equals_store(arrays, meta, local)
    report = verify(url, opts)
    assert report["ok"] and report["extra_checked"], report
    remote = store.open(url, {**opts, "cache": str(tmp_path / "cache")})
    picks = [26, 1, 13]
    np.testing.assert_array_equal(
        store.read_windows(remote, picks), store.read_windows(local, picks)
    )
    assert store.validate(url, opts)["ok"]
    fs.invalidate_cache()
    assert fs.find(url, detail=True) == objects  # reading and verifying wrote nothing
    fs.rm(f"{url}/embedding/c/0/0")
    damaged = verify(url, opts)
    assert [m["path"] for m in damaged["missing"]] == ["embedding/c/0/0"]

    # a working store on S3 publishes to S3 as well (shard indexes and chunks by byte range)
    from ethoprism.store.remote import upload_store

    working = f"s3://{s3_server.bucket}/working/feat.zarr"
    upload_store(stores / "feat.zarr", working, opts)
    again = f"s3://{s3_server.bucket}/published/again.zarr"
    publish(working, again, storage_options=opts, dest_options=opts)
    assert verify(again, opts)["ok"]
    np.testing.assert_array_equal(store.open(again, opts).tokens.values, local.tokens.values)


def test_bench_share_runs_tiny():
    result = CliRunner().invoke(
        app, ["bench", "share", "--windows", "6", "--token-shape", "2,4,4,16", "--json"]
    )
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["windows"] == 6 and r["publish_vs_raw_copy"] > 0 and r["verify_vs_sha256sum"] > 0


def test_publish_refuses_a_damaged_source_window(stores, tmp_path):
    damaged = shutil.copytree(stores / "feat.zarr", tmp_path / "damaged.zarr")
    shard = damaged / "parts/w1/tokens/c/1/0/0/0/0"  # part w1 windows 4-7
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF  # inside window 4's chunk
    shard.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"part 'w1' tokens .* window 4 fails its crc32c"):
        publish(str(damaged), str(tmp_path / "pub.zarr"))


def test_publish_refuses_a_truncated_source_shard(stores, tmp_path):
    damaged = shutil.copytree(stores / "feat.zarr", tmp_path / "damaged.zarr")
    shard = damaged / "parts/w0/tokens/c/1/0/0/0/0"  # part w0 windows 4-7
    data = shard.read_bytes()
    shard.write_bytes(data[:100] + data[-(16 * 4 + 4) :])  # index kept, windows cut
    with pytest.raises(StoreError, match=r"part 'w0' tokens shard c/1/0/0/0/0: .*truncated"):
        publish(str(damaged), str(tmp_path / "pub.zarr"))
    shard.write_bytes(data[:10])  # not even its index
    with pytest.raises(StoreError, match=r"part 'w0' tokens shard c/1/0/0/0/0: 10 bytes"):
        publish(str(damaged), str(tmp_path / "pub2.zarr"))


def test_publish_copies_a_shard_whose_windows_are_out_of_order_with_gaps(stores, tmp_path):
    # zarr's format lets a shard hold its chunks anywhere: publish reads back-to-back windows
    # as one block, so a shard stored in reverse with gaps must still publish the same windows.
    import google_crc32c

    moved = shutil.copytree(stores / "feat.zarr", tmp_path / "moved.zarr")
    shard = moved / "parts/w0/tokens/c/1/0/0/0/0"  # part w0 windows 4-7
    data = shard.read_bytes()
    per = 4
    index = np.frombuffer(data[-(16 * per + 4) : -4], "<u8").reshape(per, 2)
    body, rows = b"gap", np.zeros((per, 2), "<u8")
    for i in reversed(range(per)):
        off, n = index[i]
        rows[i] = len(body), n
        body += data[off : off + n] + b"gapgap"
    rows_bytes = rows.tobytes()
    shard.write_bytes(body + rows_bytes + google_crc32c.value(rows_bytes).to_bytes(4, "little"))
    before = store.open(str(stores / "feat.zarr")).tokens.values
    assert np.array_equal(store.open(str(moved)).tokens.values, before)  # still a valid shard
    publish(str(moved), str(tmp_path / "pub.zarr"))
    assert np.array_equal(store.open(str(tmp_path / "pub.zarr")).tokens.values, before)
    assert verify(str(tmp_path / "pub.zarr"))["ok"]


def test_shards_staged_in_small_pieces_are_the_same_bytes(stores, tmp_path, monkeypatch):
    # Shards are written a few MB at a time (whole disk blocks, the rest carried over): with
    # pieces smaller than a window, every shard must still come out byte for byte the same.
    from ethoprism.store import shard_copy

    monkeypatch.setattr(shard_copy, "ALIGN", 512)  # (a disk that refuses it: buffered writes)
    monkeypatch.setattr(shard_copy, "STAGE", 512)
    monkeypatch.setattr(shard_copy, "BLOCK", 1)  # one window per read
    for source, name in (("feat.zarr", "pub.zarr"), ("round7.zarr", "pub7.zarr")):
        publish(str(stores / source), str(tmp_path / name))
        tokens = sorted((stores / name / "tokens").glob("c/*/0/0/0/0"))
        assert len(tokens) > 1 and max(p.stat().st_size for p in tokens) > 3 * 512
        for p in tokens:
            assert (tmp_path / name / p.relative_to(stores / name)).read_bytes() == p.read_bytes()
        assert verify(str(tmp_path / name))["ok"]
