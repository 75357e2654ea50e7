"""Extraction runs end to end: real videos, the tiny golden encoder, a real store on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.errors import EthoprismError
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.windows import plan_windows
from ethoprism.pipeline.bench import PeakRSS
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract
from ethoprism.store import pieces

DATA = Path(__file__).parent.parent / "data"
VIDEOS = DATA / "videos"
CHECKPOINT = str(DATA / "golden" / "checkpoint.npz")
HORSE = str(VIDEOS / "horse_288x162.mp4")  # 308 frames, 24 fps, 288x162
FIVE = str(VIDEOS / "mouse_cage_5frames.mp4")  # 5 frames: shorter than one window
WHEEL = str(VIDEOS / "mouse_wheel_250fps.mp4")  # 994 frames at 250 fps
TRUNCATED = str(VIDEOS / "S2_C2_E394_V0135.TRUNCATED_60pct_moov_ok.mp4")
UNOPENABLE = str(VIDEOS / "centered_pair_small.TRUNCATED_50pct_moov_lost.mp4")

# The tiny encoder at 72 px (4x4 patches) keeps every run here to seconds.
PREP = Preprocessing(frame_size=72, window_stride=16)
CFG = RunConfig(
    model="videoprism-tiny", checkpoint=CHECKPOINT, prep=PREP, batch_size=4, decode_workers=2
)
CLI_ARGS = [
    "--model",
    "videoprism-tiny",
    "--checkpoint",
    CHECKPOINT,
    "--frame-size",
    "72",
    "--stride",
    "16",
    "--window-length",
    "16",
    "--batch-size",
    "4",
]


def windows_by_video(path) -> dict[str, dict[int, np.ndarray]]:
    """{video name: {start_frame: tokens}} of a store, whatever the parts and their order."""
    ds = store.open(str(path))
    out: dict[str, dict[int, np.ndarray]] = {}
    tokens = ds["tokens"].values
    for k, (name, start) in enumerate(
        zip(ds["video_name"].values, ds["start_frame"].values, strict=False)
    ):
        out.setdefault(str(name), {})[int(start)] = tokens[k]
    return out


def assert_same_windows(a: dict, b: dict, rtol: float = 0.0, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name, windows in a.items():
        assert windows.keys() == b[name].keys(), name
        for start, tokens in windows.items():
            np.testing.assert_allclose(
                tokens, b[name][start], rtol=rtol, atol=atol, err_msg=f"{name} window @{start}"
            )


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    """An uninterrupted run over two good videos, the reference for resume and scale-out runs."""
    path = tmp_path_factory.mktemp("ref") / "features.zarr"
    summary = run_extract([HORSE, WHEEL], str(path), CFG)
    assert summary.count("complete") == 2
    return path


def test_failures_are_recorded_and_the_rest_complete(tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video")
    path = tmp_path / "features.zarr"
    result = CliRunner().invoke(
        app,
        [
            "extract",
            HORSE,
            FIVE,
            TRUNCATED,
            UNOPENABLE,
            str(not_video),
            str(path),
            *CLI_ARGS,
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output  # some videos failed
    summary = json.loads(result.stdout)
    status = {Path(v["path"]).name: v for v in summary["videos"]}
    assert status["horse_288x162.mp4"]["status"] == "complete"
    assert status["mouse_cage_5frames.mp4"]["status"] == "complete"
    for name in [Path(TRUNCATED).name, Path(UNOPENABLE).name, "notes.mp4"]:
        assert status[name]["status"] == "failed"
        assert name in status[name]["reason"]  # the reason names the file

    ds = store.open(str(path))
    table = {
        Path(p).name: s
        for p, s in zip(ds["video_path"].values, ds["video_status"].values, strict=False)
    }
    assert table[Path(TRUNCATED).name] == "failed" and table["horse_288x162.mp4"] == "complete"

    # The 5-frame clip is one window, padded, with 5 real frames.
    five = ds.where(ds.video_name == "mouse_cage_5frames.mp4", drop=True)
    assert five.sizes["window"] == 1
    assert int(five.n_valid_frames[0]) == 5 and int(five.start_frame[0]) == 0

    # The horse: exactly the planned windows, in order, with their start times.
    horse = ds.where(ds.video_name == "horse_288x162.mp4", drop=True)
    starts, n_valid = plan_windows(308, PREP)
    np.testing.assert_array_equal(horse.start_frame.values, starts)
    np.testing.assert_array_equal(horse.n_valid_frames.values, n_valid)
    np.testing.assert_allclose(horse.start_time.values, starts / 24.0, atol=1e-3)
    assert np.isfinite(horse.embedding.values).all()

    # Re-running skips what is complete and tries the failed ones again; the log has a line per
    # video.
    log = tmp_path / "run.jsonl"
    again = CliRunner().invoke(
        app,
        ["extract", HORSE, FIVE, TRUNCATED, str(path), *CLI_ARGS, "--json", "--log-json", str(log)],
    )
    assert again.exit_code == 1
    summary = json.loads(again.stdout)
    assert summary["skipped"] == 2 and summary["n_failed"] == 1
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted((Path(x["path"]).name, x["status"]) for x in lines) == sorted(
        [
            ("horse_288x162.mp4", "skipped"),
            ("mouse_cage_5frames.mp4", "skipped"),
            (Path(TRUNCATED).name, "failed"),
        ]
    )
    assert store.open(str(path)).sizes["window"] == ds.sizes["window"]


def test_append_with_other_preprocessing_is_refused(reference_store):
    other = RunConfig(**{**CFG.__dict__, "prep": Preprocessing(frame_size=72, window_stride=8)})
    with pytest.raises(EthoprismError, match="window_stride"):
        run_extract([FIVE], str(reference_store), other)


def test_dry_run_writes_nothing(tmp_path):
    path = tmp_path / "features.zarr"
    result = CliRunner().invoke(
        app, ["extract", HORSE, FIVE, str(path), *CLI_ARGS, "--dry-run", "--json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["windows"] == len(plan_windows(308, PREP)[0]) + 1
    assert plan["windows_per_s"] > 0 and plan["store_bytes"] > 0
    assert not path.exists()


def _extract_in_subprocess(store_path, env_extra=None, videos=(HORSE, WHEEL), extra_args=()):
    env = {**os.environ, **(env_extra or {})}
    cmd = [
        sys.executable,
        "-m",
        "ethoprism",
        "extract",
        *videos,
        str(store_path),
        *CLI_ARGS,
        *extra_args,
        "--json",
    ]
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def _commit_record(path) -> dict:
    """The part's commit record as it is on disk now (empty before the run created its part)."""
    metas = list(Path(path, "parts").glob("*/zarr.json"))
    assert len(metas) <= 1, metas  # one writer, one part
    if not metas:
        return {"n_windows": 0, "videos": []}
    return json.loads(metas[0].read_text())["attributes"]["ethoprism_part"]


def _complete(record: dict) -> list[str]:
    return [Path(v["path"]).name for v in record["videos"] if v["status"] == "complete"]


def _kill_when(proc, path, reached) -> dict:
    """SIGKILL the run as soon as its commit record satisfies `reached`; return the record the
    kill left, after checking that the kill, not the end of the run, stopped it."""
    deadline = time.monotonic() + 240
    while not reached(_commit_record(path)):
        assert proc.poll() is None, f"the run ended before the kill point: {proc.communicate()}"
        assert time.monotonic() < deadline, "the run never reached the kill point"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the decode workers die with it
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # still running when killed
    record = _commit_record(path)  # nothing is written after the kill
    assert len(_complete(record)) < 2, "the store was complete at the kill"
    return record


def test_sigkill_then_resume_is_bit_identical(reference_store, tmp_path):
    path = tmp_path / "features.zarr"
    # Killed mid-run at a point the store defines, not after a guessed delay: one video
    # committed and the other open, with a piece of it committed (saved after every batch).
    # One kill: start-up is most of a run here, so each further kill would add a whole run.
    proc = _extract_in_subprocess(path, extra_args=("--save-every", "0"))
    record = _kill_when(proc, path, lambda r: _complete(r) and pieces.windows_of(r) > 0)
    first, kept = _complete(record), pieces.windows_of(record)
    assert len(first) == 1 and kept > 0

    proc = _extract_in_subprocess(path)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    ref = windows_by_video(reference_store)
    for video in json.loads(out)["videos"]:
        name = Path(video["path"]).name
        if name in first:
            assert video["status"] == "skipped"
        else:  # only the windows after the kept pieces were encoded again
            assert video["status"] == "complete" and video["windows"] == len(ref[name]) - kept
    assert_same_windows(windows_by_video(path), ref)


def test_four_devices_give_the_same_tokens_as_one(reference_store, tmp_path):
    path = tmp_path / "features.zarr"
    proc = _extract_in_subprocess(path, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out)["devices"] == 4
    # One window per device instead of four on one: XLA tiles the float32 sums differently, so
    # the last bits differ and can move a token by one float16-round7 step (2^-7 relative).
    assert_same_windows(
        windows_by_video(path), windows_by_video(reference_store), rtol=2**-7, atol=1e-3
    )


def test_dask_cluster_gives_the_same_windows(reference_store, tmp_path):
    from dask.distributed import LocalCluster

    path = tmp_path / "features.zarr"
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        summary = run_extract([HORSE, WHEEL], str(path), CFG, scheduler=cluster.scheduler_address)
    assert summary.count("complete") == 2
    assert sorted(p.name for p in (path / "parts").iterdir() if p.is_dir()) == ["dask-0", "dask-1"]
    assert_same_windows(windows_by_video(path), windows_by_video(reference_store))


def _trim(src: str, dst: str, n_frames: int) -> None:
    """Copy the first n_frames of a video's packets into a new file (no re-encoding)."""
    import av

    with av.open(src) as inp, av.open(dst, "w") as out:
        stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(stream)
        for k, packet in enumerate(inp.demux(stream)):
            if packet.dts is None or k >= n_frames + 8:  # a few more for B-frame reordering
                continue
            packet.stream = out_stream
            out.mux(packet)


def _peak_rss_of_extraction(video: str, store_path) -> PeakRSS:
    # Every frame is decoded; a long stride only saves converting frames no window uses.
    proc = _extract_in_subprocess(store_path, videos=(video,), extra_args=("--stride", "64"))
    with PeakRSS(proc.pid, interval=0.05) as rss:
        proc.wait()
    assert proc.returncode == 0, proc.stderr.read().decode()
    return rss


def _mib(rss: PeakRSS) -> str:
    parts = ", ".join(f"{name} {v / 2**20:.0f}" for name, v in rss.at_peak.items())
    return f"{rss.peak / 2**20:.0f} MiB ({parts})"


def test_memory_does_not_grow_with_video_length(tmp_path):
    long_video = str(VIDEOS / "mouse_arena_10000f.mp4")
    short_video = str(tmp_path / "mouse_arena_1000f.mp4")
    _trim(long_video, short_video, 1000)
    short = _peak_rss_of_extraction(short_video, tmp_path / "short.zarr")
    long = _peak_rss_of_extraction(long_video, tmp_path / "long.zarr")
    n_long = store.open(str(tmp_path / "long.zarr")).sizes["window"]
    n_short = store.open(str(tmp_path / "short.zarr")).sizes["window"]
    assert n_long > 8 * n_short  # the long run really did ~10x the work
    assert long.peak <= 1.2 * short.peak, f"long: {_mib(long)}; short: {_mib(short)}"


def test_demo_reports_the_stores_windows_on_a_rerun(tmp_path):
    from ethoprism.pipeline.demo import extract_stage

    path = str(tmp_path / "demo.zarr")
    first, windows = extract_stage([HORSE], path, CFG)
    assert first.windows == windows > 0
    again, windows_again = extract_stage([HORSE], path, CFG)
    assert again.windows == 0  # nothing new to encode on the rerun...
    assert (
        windows_again == windows == store.open(path).sizes["window"]
    )  # ...the store still holds them
