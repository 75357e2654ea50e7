"""Offline machines and dry runs: no weights needed where none are used, no 30 s of retries,
and appending to a store reuses the store's own model, checkpoint and preprocessing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from huggingface_hub import constants
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.errors import EthoprismError
from ethoprism.extract.models import load_encoder
from ethoprism.extract.weights import ONLINE_CHECK_SECONDS

DATA = Path(__file__).parent.parent / "data"
CHECKPOINT = str(DATA / "golden" / "checkpoint.npz")
FIVE = str(DATA / "videos" / "mouse_cage_5frames.mp4")
HORSE = str(DATA / "videos" / "horse_288x162.mp4")


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("ETHOPRISM_CHECKPOINT", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_offline_lookup_fails_fast(empty_hub_cache, monkeypatch):
    # A port nothing listens on: the hub client alone retries for ~25 s before giving up.
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:1")
    t0 = time.perf_counter()
    with pytest.raises(EthoprismError, match=r"offline \(cannot connect to 127.0.0.1:1") as e:
        load_encoder("videoprism-b")
    assert time.perf_counter() - t0 < ONLINE_CHECK_SECONDS + 1.0
    assert "--checkpoint PATH" in str(e.value)


def test_hf_hub_offline_is_honoured(empty_hub_cache, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    t0 = time.perf_counter()
    with pytest.raises(EthoprismError, match="HF_HUB_OFFLINE is set"):
        load_encoder("videoprism-b")
    assert time.perf_counter() - t0 < 1.0


def test_dry_run_needs_no_weights(empty_hub_cache, tmp_path):
    # videoprism-tiny has no published weights: loading any would fail.
    result = CliRunner().invoke(
        app,
        ["extract", FIVE, str(tmp_path / "s.zarr"), "--model", "videoprism-tiny"]
        + ["--frame-size", "72", "--batch-size", "2", "--dry-run", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["windows_per_s"] > 0
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.parametrize("checkpoint", [CHECKPOINT, "random"])
def test_append_defaults_to_the_stores_own_model(empty_hub_cache, tmp_path, checkpoint):
    path = str(tmp_path / "s.zarr")
    first = ["extract", FIVE, path, "--model", "videoprism-tiny", "--checkpoint", checkpoint]
    first += ["--frame-size", "72", "--stride", "16", "--pool", "2", "--json"]
    result = CliRunner().invoke(app, first)
    assert result.exit_code == 0, result.output
    # No --model, --frame-size, --stride, --pool; the checkpoint only where it is a file.
    again = ["extract", HORSE, path, "--json"]
    if checkpoint != "random":
        again += ["--checkpoint", checkpoint]
    result = CliRunner().invoke(app, again)
    assert result.exit_code == 0, result.output
    ds = store.open(path)
    assert sorted(Path(p).name for p in ds["video_path"].values) == sorted(
        [Path(FIVE).name, Path(HORSE).name]
    )
    assert list(ds["video_status"].values) == ["complete", "complete"]
    assert ds.attrs["encoder"]["name"] == "videoprism-tiny"
    assert ds.attrs["preprocessing"]["window_stride"] == 16
    assert ds.attrs["layout"]["pool"] == 2
