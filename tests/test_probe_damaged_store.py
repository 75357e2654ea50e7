"""A damaged chunk met by `probe` or `retrieve` is one line naming the part, window and video,
and suggests `store validate`; never a traceback."""

import glob
from os.path import isfile
from pathlib import Path

import pytest
from test_probe_fixtures import fake_store, write_store
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.store.damage import DamagedStoreError

runner = CliRunner()


def flip_a_byte(path: str, array: str) -> None:
    """Corrupt the first stored chunk of `array` (a byte of its compressed data, so that its
    crc32c checksum no longer matches)."""
    chunk = min(f for f in glob.glob(f"{path}/parts/*/{array}/c/**", recursive=True) if isfile(f))
    data = bytearray(Path(chunk).read_bytes())
    data[8] ^= 0xFF
    Path(chunk).write_bytes(bytes(data))


@pytest.fixture()
def damaged(tmp_path):
    path = write_store(tmp_path / "s.zarr", fake_store({"a.mp4": 64, "b.mp4": 40}))
    (tmp_path / "labels.csv").write_text(
        "video,start_frame,end_frame,action\na.mp4,0,31,run\na.mp4,32,63,sit\n"
        "b.mp4,0,19,run\nb.mp4,20,39,sit\n"
    )
    return path, str(tmp_path / "labels.csv")


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert text.startswith("error: damaged") and "store validate" in text, text
    assert "part " in text and "window" in text and "video" in text, text
    return text


def test_probe_train_on_a_damaged_token_chunk(damaged, tmp_path):
    path, labels = damaged
    flip_a_byte(path, "tokens")
    r = runner.invoke(
        app,
        [
            "probe",
            "train",
            path,
            labels,
            "--out",
            str(tmp_path / "run"),
            "--lr",
            "1e-3",
            "--test-fraction",
            "0",
            "--epochs",
            "1",
        ],
    )
    text = one_line_error(r)
    assert "a.mp4" in text
    ds = store.open(path)
    with pytest.raises(DamagedStoreError, match=r"window 0 \(video a.mp4\)"):
        store.read_windows(ds, [0], "tokens")


def test_retrieve_on_a_damaged_embedding_chunk(damaged):
    path, _ = damaged
    flip_a_byte(path, "embedding")
    one_line_error(runner.invoke(app, ["retrieve", "query", path, "--window", "3"]))
    one_line_error(runner.invoke(app, ["retrieve", "build-index", path]))
