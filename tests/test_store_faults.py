"""Bad stores and bad places: corrupted or missing chunks, read-only mounts, a full disk; the
CLI."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.store import StoreError, VideoRecord, writer

ENCODER = {"name": "videoprism-tiny", "checkpoint_sha256": "random-init-seed-0", "dtype": "float32"}
PREP = {"frame_size": 16, "window_length": 4, "window_stride": 2}
SHAPE = (2, 8, 8, 32)


def write_video(w, i, n):
    x = np.random.default_rng(i).standard_normal((n, *SHAPE)).astype(np.float32)
    vw = w.begin_video(
        VideoRecord(f"/v/clip{i}.mp4", 1, f"{i:064x}", 30.0, 2 * n + 2, 1.0, 8, 8, "h264")
    )
    vw.append(x, x.mean(axis=(1, 2, 3)), 2 * np.arange(n), 1, 4, np.arange(n) / 15)
    vw.commit()
    return x


def make_store(path, videos=((0, 5), (1, 6))):
    with store.open_writer(
        path, encoder=ENCODER, preprocessing=PREP, part="w0", windows_per_shard=4
    ) as w:
        return [write_video(w, i, n) for i, n in videos]


def mount(*args):
    r = subprocess.run(["mount", *args], check=False, capture_output=True, text=True)
    if r.returncode:
        pytest.skip(
            f"cannot mount ({' '.join(args)}): {r.stderr.strip()} (needs root / CAP_SYS_ADMIN)"
        )


def test_validate_names_corrupted_and_missing_chunks(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path)
    runner = CliRunner()
    ok = runner.invoke(app, ["store", "validate", str(path), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["ok"]
    shard = path / "parts/w0/tokens/c/1/0/0/0/0"  # windows 4..7
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF  # flip one byte inside an inner chunk
    shard.write_bytes(bytes(data))
    (path / "parts/w0/embedding/c/0/0").unlink()  # one chunk: every window loses its embedding
    report = store.validate(path)
    assert not report["ok"]
    text = "\n".join(report["problems"])
    assert "embedding all zeros" in text and "window 9 (video /v/clip1.mp4, its window 4)" in text
    bad_tokens = [p for p in report["problems"] if "tokens unreadable" in p]
    assert len(bad_tokens) == 1 and "checksum" in bad_tokens[0]
    assert "clip0.mp4, its window 4" in bad_tokens[0] or "clip1.mp4" in bad_tokens[0]
    result = runner.invoke(app, ["store", "validate", str(path)])
    assert result.exit_code == 1
    assert "window 9 (video /v/clip1.mp4, its window 4)" in result.stderr.replace("\n", "")


def test_info_cli(tmp_path):
    path = tmp_path / "s.zarr"
    make_store(path)
    with store.open_writer(path, encoder=ENCODER, preprocessing=PREP, part="w1") as w:
        w.record_failure("/v/broken.mp4", "moov atom not found")
    result = CliRunner().invoke(app, ["store", "info", str(path), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["windows"] == 11 and r["videos_complete"] == 2
    assert r["videos_failed"] == [{"path": "/v/broken.mp4", "reason": "moov atom not found"}]
    assert r["encoder"] == ENCODER and r["layout"] == {"dtype": "float16-round7", "pool": 1}
    assert r["bytes_on_disk"] > 11 * np.prod(SHAPE)  # float16 random data barely compresses
    table = CliRunner().invoke(app, ["store", "info", str(path)])
    assert table.exit_code == 0 and "moov atom not found" in table.stdout
    missing = CliRunner().invoke(app, ["store", "info", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def test_cli_entry_point_help():
    exe = Path(sys.executable).parent / "ethoprism"
    r = subprocess.run([str(exe), "store", "--help"], check=False, capture_output=True, text=True)
    assert r.returncode == 0 and "validate" in r.stdout


def test_read_only_location(tmp_path):
    src, ro = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    ro.mkdir()
    xs = make_store(src / "s.zarr")
    before = sorted((p.relative_to(src), p.stat().st_mtime_ns) for p in src.rglob("*"))
    mount("--bind", "-o", "ro", str(src), str(ro))
    try:
        ds = store.open(ro / "s.zarr")
        np.testing.assert_array_equal(store.read_windows(ds, [10, 0]), ds.tokens.values[[10, 0]])
        assert np.abs(ds.tokens.values[:5] - xs[0]).max() < 0.05
        assert store.validate(ro / "s.zarr")["ok"]
        with pytest.raises(StoreError, match="read-only"):
            store.open_writer(ro / "s.zarr", encoder=ENCODER, preprocessing=PREP, part="w0")
        with pytest.raises(StoreError, match="read-only"):
            store.open_writer(ro / "new.zarr", encoder=ENCODER, preprocessing=PREP)
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert sorted((p.relative_to(src), p.stat().st_mtime_ns) for p in src.rglob("*")) == before


def test_full_disk_loses_nothing_committed(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk))
    try:
        path = disk / "s.zarr"
        written = {}
        with store.open_writer(
            path, encoder=ENCODER, preprocessing=PREP, part="w0", windows_per_shard=4
        ) as w:
            (disk / "ballast").write_bytes(b"\0" * (256 << 10))
            with pytest.raises(StoreError, match="no space left") as e:
                for i in range(100):
                    written[i] = write_video(w, i, 12)
        assert str(path) in str(e.value)
        failed_at = len(written)
        assert 3 < failed_at < 100
        report = store.validate(path)
        assert report["ok"] and report["videos"] == failed_at
        ds = store.open(path)
        for i, x in written.items():
            got = store.select(ds, video=f"clip{i}.mp4").tokens.values
            assert np.abs(got - x).max() < 0.05
        (disk / "ballast").unlink()  # space freed: the part resumes
        with store.open_writer(path, encoder=ENCODER, preprocessing=PREP, part="w0") as w:
            assert not w.is_complete(f"{failed_at:064x}")
            write_video(w, failed_at, 12)
        assert store.validate(path)["videos"] == failed_at + 1
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_window_lost_in_the_background_fails_its_video_and_spares_the_others(
    tmp_path, monkeypatch
):
    """Windows are compressed and written after append returns; one that fails there must fail
    its video (never commit it with a window missing) and leave committed and later videos
    whole."""
    monkeypatch.setattr(writer, "MAX_WINDOWS_IN_FLIGHT", 0)  # the error surfaces at an append
    path = tmp_path / "s.zarr"
    with store.open_writer(
        path, encoder=ENCODER, preprocessing=PREP, part="w0", windows_per_shard=4
    ) as w:
        first = write_video(w, 0, 5)  # ends inside shard 1
        compress, calls = w.stream.encoders["tokens"], []

        def crashing(values):
            calls.append(values)
            if len(calls) == 3:
                raise RuntimeError("compressor crashed")
            return compress(values)

        w.stream.encoders["tokens"] = crashing
        x = np.random.default_rng(1).standard_normal((7, *SHAPE)).astype(np.float32)
        vw = w.begin_video(VideoRecord("/v/bad.mp4", 1, "f" * 64, 30.0, 16, 1.0, 8, 8, "h264"))
        with pytest.raises(RuntimeError, match="compressor crashed"):
            for b in range(0, 7, 2):
                batch = x[b : b + 2]
                starts = 2 * np.arange(b, b + len(batch))
                vw.append(batch, batch.mean(axis=(1, 2, 3)), starts, 1, 4, starts / 15)
        with pytest.raises(StoreError, match="committed, failed or replaced"):
            vw.commit()
        w.stream.encoders["tokens"] = compress
        w.record_failure(vw.record, "compressor crashed")
        last = write_video(w, 2, 6)
    assert store.validate(path)["ok"]
    ds = store.open(path)
    for name, x in (("clip0.mp4", first), ("clip2.mp4", last)):
        assert np.abs(store.select(ds, video=name).tokens.values - x).max() < 0.05
    assert store.info(path)["videos_failed"] == [
        {"path": "/v/bad.mp4", "reason": "compressor crashed"}
    ]
