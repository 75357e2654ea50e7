"""`ethoprism bench localize`, run tiny: it prints its figures (never asserted on time)."""

import json

import pytest
from typer.testing import CliRunner

from ethoprism.cli import app


@pytest.mark.slow  # three compilations
def test_bench_localize_runs_tiny():
    r = CliRunner().invoke(app, ["bench", "localize", "--small", "--batch-size", "4", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["map_shape"] == [4, 4, 64] and out["model"] == "videoprism-tiny"
    for key in ("train_steps_per_s", "frames_per_s", "encoder_windows_per_s", "head_vs_encoder"):
        assert out[key] > 0
    assert out["head_vs_encoder"] == out["encoder_windows_per_s"] / out["frames_per_s"]
