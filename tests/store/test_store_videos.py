"""Portable stores: videos are recorded with their path as given, absolute path and fingerprint,
and found again after the store and the videos moved (by --videos-root, by relative path or by
content); what cannot be found is an error naming it, not a grey tile."""

from __future__ import annotations

import shutil
from pathlib import Path

import identity
import numpy as np
import pytest
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.extract.video import probe_video
from ethoprism.store.videos import VideoResolver, VideosNotFound

DATA = Path(__file__).resolve().parents[2] / "data"
ENCODER = identity.encoder(8)
PREP = identity.preprocessing(288, 16, 8)


def write_store(path: str, videos: list[str]) -> None:
    """A store of real video records (paths as given) with 6 random windows each."""
    rng = np.random.default_rng(0)
    with store.open_writer(path, encoder=ENCODER, preprocessing=PREP) as w:
        for video in videos:
            info = probe_video(video)
            vw = w.begin_video(store.VideoRecord.of(info))
            emb = rng.normal(size=(6, 8)).astype(np.float32)
            starts = 8 * np.arange(6)
            vw.append(emb[:, None, None, None, :], emb, starts, 1, 16, starts / info.fps)
            vw.commit()


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """A lab folder with two videos, extracted there with relative paths."""
    lab = tmp_path / "lab1"
    (lab / "videos" / "sub").mkdir(parents=True)
    shutil.copy(DATA / "S1_C1_E115_V0342.mp4", lab / "videos" / "deer.mp4")
    shutil.copy(DATA / "S2_C2_E394_V0135.mp4", lab / "videos" / "sub" / "wolf.mp4")
    monkeypatch.chdir(lab)
    write_store("features.zarr", ["videos/deer.mp4", "videos/sub/wolf.mp4"])
    return lab


def sheet(store_path, out, *extra):
    args = ["retrieve", "query", str(store_path), "--moment", "deer.mp4@0.5", "-k", "3"]
    return CliRunner().invoke(app, [*args, "--sheet", str(out), "--json", *extra])


def test_rows_record_path_as_given_absolute_path_and_fingerprint(lab):
    ds = store.open("features.zarr")
    assert list(ds["video_path"].values) == ["videos/deer.mp4", "videos/sub/wolf.mp4"]
    assert list(ds["video_abs_path"].values) == [
        str(lab / "videos" / "deer.mp4"),
        str(lab / "videos" / "sub" / "wolf.mp4"),
    ]
    assert ds["video_size_bytes"].values[0] == (lab / "videos" / "deer.mp4").stat().st_size
    assert len(ds["video_sha256"].values[0]) == 64


def test_sheet_from_another_folder_uses_the_absolute_path(lab, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = sheet(lab / "features.zarr", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").stat().st_size > 1000


def test_moved_store_and_videos_need_videos_root(lab, tmp_path, monkeypatch):
    moved = tmp_path / "lab2"
    shutil.move(lab, moved)
    monkeypatch.chdir(tmp_path)
    result = sheet(moved / "features.zarr", tmp_path / "s.png")
    assert result.exit_code == 1
    message = " ".join(result.output.split())  # rich wraps long lines
    assert "cannot find 2 source video(s) of the store: videos/deer.mp4" in message
    assert "--videos-root" in message and "Traceback" not in result.output
    assert not (tmp_path / "s.png").exists()

    result = sheet(moved / "features.zarr", tmp_path / "s.png", "--videos-root", str(moved))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.png").stat().st_size > 1000
    found = VideoResolver(store.open(str(moved / "features.zarr")), moved).require(
        ["videos/deer.mp4", "videos/sub/wolf.mp4"]
    )
    assert found == {
        "videos/deer.mp4": str(moved / "videos" / "deer.mp4"),
        "videos/sub/wolf.mp4": str(moved / "videos" / "sub" / "wolf.mp4"),
    }


def test_renamed_videos_are_found_by_content(lab, tmp_path, monkeypatch):
    flat = tmp_path / "archive"
    flat.mkdir()
    shutil.move(lab / "videos" / "deer.mp4", flat / "renamed.mp4")
    shutil.move(lab / "videos" / "sub" / "wolf.mp4", flat / "other.mp4")
    shutil.copy(DATA / "S1_C1_E115_V0342.mp4", flat / "decoy.mp4")
    with open(flat / "decoy.mp4", "r+b") as f:  # same size, other content
        f.seek(1000)
        f.write(b"\0" * 16)
    monkeypatch.chdir(tmp_path)
    ds = store.open(str(lab / "features.zarr"))
    found = VideoResolver(ds, flat).require(["videos/deer.mp4", "videos/sub/wolf.mp4"])
    assert found == {
        "videos/deer.mp4": str(flat / "renamed.mp4"),
        "videos/sub/wolf.mp4": str(flat / "other.mp4"),
    }
    with pytest.raises(VideosNotFound, match="videos/deer.mp4"):
        VideoResolver(ds, tmp_path / "lab1").require(["videos/deer.mp4"])
