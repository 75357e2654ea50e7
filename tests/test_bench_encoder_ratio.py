"""`bench encoder` prints one consistent ratio: the printed GFLOP/s over the printed peak."""

import re

import pytest
from typer.testing import CliRunner

from ethoprism.cli import app


@pytest.mark.slow
def test_summary_ratio_is_the_printed_rate_over_the_printed_peak():
    r = CliRunner().invoke(app, ["bench", "encoder", "--model", "videoprism-tiny", "--rounds", "3"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    m = re.search(
        r"median round \((\d)\): [\d.]+ windows/s, ([\d.]+) GFLOP/s = (\d+)% of the measured "
        r"matmul peak ([\d.]+) GFLOP/s",
        text,
    )
    assert m, text
    gflops, percent, peak = float(m[2]), int(m[3]), float(m[4])
    assert abs(100 * gflops / peak - percent) <= 0.5 + 100 * 0.05 / peak, (gflops, percent, peak)
    # and it is the numbers of the round it names
    rounds = re.findall(
        r"round (\d): [\d.]+ windows/s, ([\d.]+) GFLOP/s, matmul peak ([\d.]+)", text
    )
    named = {int(i): (float(g), float(p)) for i, g, p in rounds}
    assert named[int(m[1])] == (gflops, peak)
