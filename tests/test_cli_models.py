"""`ethoprism models` and the module entry point, driven as a user would."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ethoprism.cli import app


def test_models_json():
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(rows) == {
        f"videoprism-{m}" for m in ("b", "l", "tiny", "lvt-b", "lvt-l", "lvt-tiny")
    }
    # the video-text base model: both towers, as many values as the official checkpoint holds
    keys = Path(__file__).parent / "data" / "golden" / "videoprism-lvt-tiny"
    keys = keys / "checkpoint_keys_base.txt"
    official = sum(
        math.prod(int(s) for s in line.split("\t")[1].strip("()").split(",") if s.strip())
        for line in keys.read_text().splitlines()
    )
    assert rows["videoprism-lvt-b"]["params"] == official
    assert rows["videoprism-lvt-b"]["hf_repo"] == "google/videoprism-lvt-base-f16r288"
    base = rows["videoprism-b"]
    assert (base["frames"], base["image_size"], base["model_dim"], base["params"]) == (
        16,
        288,
        768,
        114_365_184,
    )
    assert base["hf_repo"] == "google/videoprism-base-f16r288"
    assert rows["videoprism-l"]["frames"] == 8 and rows["videoprism-tiny"]["weights"] is None


def test_models_table_and_bad_bench_dtype():
    runner = CliRunner()
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "videoprism-b" in result.output and "114.4M" in result.output
    result = runner.invoke(
        app, ["bench", "encoder", "--model", "videoprism-tiny", "--dtype", "float16"]
    )
    assert result.exit_code == 2  # a usage error, naming the valid choices
    assert "'float16' is not one of 'float32', 'bfloat16'" in " ".join(
        result.output.replace("│", " ").split()
    )


def test_module_entry_point_reports_cached_weights(tmp_path):
    """`python -m ethoprism` in a fresh process, offline, with the base checkpoint in the hub
    cache."""
    repo = tmp_path / "hub" / "models--google--videoprism-base-f16r288"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("1" * 40)
    (repo / "snapshots" / ("1" * 40)).mkdir(parents=True)
    cached = repo / "snapshots" / ("1" * 40) / "flax_base_f16r288_repeated.npz"
    cached.write_bytes(b"placeholder")  # availability is a cache lookup; loading validates the file
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run(
        [sys.executable, "-m", "ethoprism", "models", "--json"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)}
    assert (
        rows["videoprism-b"]["weights"] == str(cached) and rows["videoprism-l"]["weights"] is None
    )
    out = subprocess.run(
        [sys.executable, "-m", "ethoprism", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "models" in out.stdout and "bench" in out.stdout
