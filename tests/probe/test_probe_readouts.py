"""Probe outputs a person reads: titles in the label's words with what was scored and the
random-weights mark, a labelled colour bar, no doubled folders, no empty progress line."""

import json
from pathlib import Path

import numpy as np
from test_probe_jobs import real_store  # noqa: F401  (the module-scoped store fixture)
from typer.testing import CliRunner

from ethoprism.cli import app
from ethoprism.probe.artifacts import load_head
from ethoprism.probe.classify import jobs, scoring
from ethoprism.probe.report import confusion_figure
from ethoprism.store.provenance import NOT_A_RESULT, checkpoint_label

runner = CliRunner()


def test_titles_marks_and_paths(real_store, tmp_path):  # noqa: F811
    path, labels = real_store
    out = tmp_path / "runs"  # --out is the folder written into, whatever its name: OUT/NAME
    summary = jobs.train_probe(
        path, labels, out, head="linear", learning_rates=(3e-2,), epochs=2, test_fraction=0
    )
    head = summary["heads"][0]
    assert Path(head["dir"]) == out / "linear_seed0" and (out / "linear_seed0/head.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["linear_seed0", "summary.json"]
    assert summary["weights"] == NOT_A_RESULT  # the fixture's encoder has random weights
    m = jobs.evaluate_head(path, head["dir"], labels, tmp_path / "ev")
    assert m["evaluated_on"] == scoring.TRAINING and m["weights"] == NOT_A_RESULT
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["evaluated_on"] == "training (not held out)"
    loaded = load_head(head["dir"])
    title = scoring.figure_title(loaded, "confusion matrix", m["evaluated_on"])
    assert "action" in title and "linear_seed0" not in title
    assert "training (not held out)" in title and NOT_A_RESULT.upper() in title
    fig = confusion_figure(np.array(m["confusion"]), m["classes"], title)
    assert "fraction of the expert row" in fig.axes[1].get_ylabel()  # the colour bar
    assert fig.axes[0].get_title() == title


def test_no_empty_progress_line_before_an_error(real_store, tmp_path):  # noqa: F811
    path, _ = real_store
    bad = tmp_path / "bad.csv"
    bad.write_text("video,start_frame,end_frame,action\nv0.mp4,0,9999,run\n")
    r = runner.invoke(app, ["probe", "train", path, str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1 and "None" not in r.output and "loss -" not in r.output, r.output


def test_checkpoint_label_is_whole_or_a_named_short_hash():
    sha = "8530d11a4b63d37fe4fcdd4934d9f868ce65052919d7b67f75dc4b460c265c30"
    assert checkpoint_label(sha) == "sha256:8530d11a4b63"
    assert checkpoint_label("random-init-seed-0") == "random weights (random-init-seed-0)"
    assert checkpoint_label(None).startswith("unverified weights")
