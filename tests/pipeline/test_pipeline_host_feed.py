"""Feeding the accelerator: the progress display warns when decoding cannot keep it fed, and
the dry run says how many cores would."""

import json
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from ethoprism.cli import app
from ethoprism.extract import load_encoder
from ethoprism.extract.encode import ShardedEncoder
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.decode import THROTTLE_ENV
from ethoprism.pipeline.progress import RichReporter
from ethoprism.pipeline.run import STARVED_SHARE, extract_local

DATA = Path(__file__).parent.parent / "data"
HORSE = str(DATA / "videos" / "horse_288x162.mp4")
CFG = RunConfig(
    model="videoprism-tiny",
    checkpoint=str(DATA / "golden" / "checkpoint.npz"),
    prep=Preprocessing(frame_size=72, window_stride=16),
    batch_size=2,
    decode_workers=1,
)


class Shares(RichReporter):
    def __init__(self, console):
        super().__init__(console=console)
        self.shares = []

    def input_wait(self, share: float) -> None:
        self.shares.append(share)
        super().input_wait(share)


@pytest.mark.slow
def test_throttled_decoding_warns_that_the_accelerator_is_starved(tmp_path, monkeypatch):
    monkeypatch.setenv(THROTTLE_ENV, "0.15")  # seconds per window: far slower than the encoder
    encoder = load_encoder(CFG.model, CFG.checkpoint)
    sharded = ShardedEncoder(encoder, CFG.batch_size, store_layout=CFG.layout)
    sharded(np.zeros((2, 16, 72, 72, 3), np.uint8))  # compiled before: decoding sets the pace
    out = StringIO()
    reporter = Shares(Console(file=out, width=200, force_terminal=False))
    try:
        summary = extract_local(
            [HORSE],
            str(tmp_path / "s.zarr"),
            CFG,
            reporter=reporter,
            decode_in_processes=False,
            sharded=sharded,
        )
    finally:
        reporter.stop()
    assert summary.windows == 20
    assert reporter.shares and reporter.shares[-1] > STARVED_SHARE
    assert "the accelerator is starved by the host" in out.getvalue()
    assert out.getvalue().count("warning:") == 1  # once per run, not once per batch


def test_a_share_below_the_line_shows_no_warning():
    out = StringIO()
    reporter = RichReporter(Console(file=out, width=200), starved_share=1.0)
    reporter.start(1)
    reporter.input_wait(0.5)
    reporter.stop()
    assert "starved" not in out.getvalue()


@pytest.mark.slow
def test_dry_run_states_the_cores_the_run_needs(tmp_path):
    args = ["extract", HORSE, str(tmp_path / "s.zarr"), "--model", "videoprism-tiny"]
    args += ["--checkpoint", CFG.checkpoint, "--frame-size", "72", "--dry-run"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["decoder"] == "cpu" and plan["devices"] >= 1
    assert plan["host_ms_per_window"] > 0
    assert plan["cores_needed"] == pytest.approx(
        plan["host_ms_per_window"] * plan["windows_per_s"] / 1e3
    )
    assert 0 < plan["one_video_windows_per_s"] < float("inf")
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0, text.output
    assert "cores; this host has" in text.stdout
    assert "videos are fed one at a time" in text.stdout
    assert not (tmp_path / "s.zarr").exists()
