"""`ethoprism probe ...` through typer's CliRunner on a real on-disk store."""

import json

from test_probe_jobs import real_store  # noqa: F401  (the module-scoped store fixture)
from typer.testing import CliRunner

from ethoprism.cli import app

runner = CliRunner()


def test_train_predict_eval_commands(real_store, tmp_path):  # noqa: F811
    path, labels = real_store
    r = runner.invoke(
        app,
        [
            "probe",
            "train",
            path,
            str(labels),
            "--out",
            str(tmp_path / "run"),
            "--head",
            "linear",
            "--lr",
            "3e-2",
            "--epochs",
            "4",
            "--batch-size",
            "16",
            "--dropout",
            "0",
            "--shots",
            "5",
            "--seeds",
            "2",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout[r.stdout.index("{") :])
    assert [h["name"] for h in summary["heads"]] == ["linear_shots5_seed0", "linear_shots5_seed1"]
    head = summary["heads"][0]["dir"]
    assert head == str(tmp_path / "run" / "linear_shots5_seed0")  # --out DIR: heads at DIR/NAME
    r = runner.invoke(
        app, ["probe", "predict", path, head, "--out", str(tmp_path / "pred"), "--video", "v1.mp4"]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pred" / "v1.csv").exists() and (tmp_path / "pred" / "v1.png").exists()
    r = runner.invoke(
        app, ["probe", "eval", path, head, str(labels), "--out", str(tmp_path / "ev"), "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["classes"] == ["none", "run", "sit"]


def test_label_errors_are_one_red_line(real_store, tmp_path):  # noqa: F811
    path, _ = real_store
    bad = tmp_path / "bad.csv"
    bad.write_text("video,start_frame,end_frame,action\nv0.mp4,0,9999,run\n")
    r = runner.invoke(app, ["probe", "train", path, str(bad), "--out", str(tmp_path / "x")])
    assert r.exit_code == 1
    assert (
        "bad.csv row 2: video 'v0.mp4': end_frame 9999 is beyond the video's last frame"
        in " ".join(r.output.split())
    )
    assert "Traceback" not in r.output
    r = runner.invoke(
        app, ["probe", "train", path, str(bad), "--out", str(tmp_path / "x"), "--shots", "a,b"]
    )
    assert r.exit_code == 1 and "--shots: expected comma-separated numbers" in r.output
