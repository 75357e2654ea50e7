"""Every command, given a broken input of each class (missing, unreachable, corrupted, wrong
type), prints one line starting with "error:", exits with status 1 and shows no traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app

DATA = Path(__file__).parent.parent / "data"
VIDEO = str(DATA / "videos" / "mouse_cage_5frames.mp4")
UNREACHABLE = "http://127.0.0.1:1/features.zarr"  # nothing listens on port 1
ENCODER = {"name": "videoprism-tiny", "config": {}, "checkpoint_sha256": "x", "dtype": "float32"}
PREP = {"frame_size": 72, "window_length": 16, "window_stride": 8}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """A good store and labels, and one broken input of each class."""
    root = tmp_path_factory.mktemp("broken")
    good = root / "good.zarr"
    with store.open_writer(str(good), encoder=ENCODER, preprocessing=PREP) as w:
        vw = w.begin_video(store.VideoRecord("v.mp4", 10, "a" * 64, 30.0, 40, 1.3, 8, 8, "h264"))
        tokens = np.ones((3, 2, 2, 2, 4), np.float32)
        vw.append(tokens, tokens.mean(axis=(1, 2, 3)), 8 * np.arange(3), 1, 16, np.arange(3.0))
        vw.commit()
    labels = root / "labels.csv"
    labels.write_text("video,start_frame,end_frame,action\nv.mp4,0,20,walk\nv.mp4,21,39,rest\n")
    corrupt_store = root / "corrupt.zarr"
    corrupt_store.mkdir()
    (corrupt_store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')
    corrupt_labels = root / "corrupt.csv"
    corrupt_labels.write_bytes(b"\x00\xff\xfe garbage \x00\x81" * 10)
    not_a_head = root / "head.txt"
    not_a_head.write_text("not a head")
    corrupt_head = root / "corrupt_head"
    corrupt_head.mkdir()
    (corrupt_head / "head.json").write_text("{not json")
    return {
        "good": str(good),
        "labels": str(labels),
        "missing": str(root / "nowhere.zarr"),
        "missing_file": str(root / "nowhere.csv"),
        "corrupt_store": str(corrupt_store),
        "corrupt_labels": str(corrupt_labels),
        "corrupt_head": str(corrupt_head),
        "file": str(labels),  # a file where a store or a head directory is expected
        "text_file": str(not_a_head),
        "video": VIDEO,
        "out": str(root / "out"),
    }


# Each: the command with {placeholders} for the inputs above.
CASES = {
    # store arguments
    **{
        f"{command} {kind}": f"{command} {{{kind}}} {rest}"
        for command, rest in [
            ("store info", ""),
            ("store validate", ""),
            ("store push", "{out}/pushed.zarr"),
            ("retrieve query", "--moment v.mp4@0.1"),
            ("retrieve build-index", ""),
            ("retrieve eval", "{labels}"),
            ("probe train", "{labels} --out {out}/t"),
            ("probe predict", "{corrupt_head} --out {out}/p"),
            ("probe eval", "{corrupt_head} {labels} --out {out}/e"),
        ]
        for kind in ("missing", "corrupt_store", "file")
    },
    **{
        f"{command} unreachable": f"{command} {UNREACHABLE} {rest}"
        for command, rest in [
            ("store info", ""),
            ("store validate", ""),
            ("retrieve query", "--moment v.mp4@0.1"),
            ("retrieve build-index", "--index-dir {out}/i.ann"),
            ("probe train", "{labels} --out {out}/t"),
        ]
    },
    # other inputs
    "store push to unreachable": "store push {good} " + UNREACHABLE,
    "extract missing video": "extract {missing_file} {out}/x.zarr",
    "extract into a file": "extract {video} {file} --model videoprism-tiny --checkpoint random",
    "extract into a corrupt store": "extract {video} {corrupt_store}",
    "extract into a URL": "extract {video} " + UNREACHABLE,
    "extract missing checkpoint": "extract {video} {out}/y.zarr --model videoprism-tiny "
    "--checkpoint {missing_file}",
    "extract text file as checkpoint": "extract {video} {out}/z.zarr --model videoprism-tiny "
    "--checkpoint {text_file}",
    "retrieve eval missing labels": "retrieve eval {good} {missing_file}",
    "retrieve eval corrupt labels": "retrieve eval {good} {corrupt_labels}",
    "retrieve query missing clip": "retrieve query {good} --clip {missing_file}",
    "probe train missing labels": "probe train {good} {missing_file} --out {out}/t",
    "probe train corrupt labels": "probe train {good} {corrupt_labels} --out {out}/t",
    "probe train labels is a store": "probe train {good} {good} --out {out}/t",
    "probe predict missing head": "probe predict {good} {missing} --out {out}/p",
    "probe predict head is a file": "probe predict {good} {text_file} --out {out}/p",
    "probe predict corrupt head": "probe predict {good} {corrupt_head} --out {out}/p",
    "probe eval missing labels": "probe eval {good} {corrupt_head} {missing_file} --out {out}/e",
    "bench extract missing video": "bench extract --video {missing_file}",
    "bench store missing dir": "bench store --directory {missing}",
    "bench probe missing dir": "bench probe --directory {missing}",
    "bench encoder unknown model": "bench encoder --model videoprism-nonesuch",
    "demo out is a file": "demo --out {text_file}",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_input_is_one_line_and_exit_1(case, inputs):
    args = CASES[case].format(**inputs).split()
    result = CliRunner().invoke(app, args)
    unexpected = result.exception if not isinstance(result.exception, SystemExit) else None
    assert unexpected is None, f"{case}: {type(unexpected).__name__}: {unexpected}"
    assert result.exit_code == 1, f"{case}: exit {result.exit_code}: {result.output}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {result.stderr}"
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_push_to_unreachable_s3_names_the_endpoint(inputs, monkeypatch):
    monkeypatch.setenv("ETHOPRISM_S3_ENDPOINT", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    result = CliRunner().invoke(app, ["store", "push", inputs["good"], "s3://bucket/x.zarr"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: uploading") and "S3 endpoint http://127.0.0.1:1" in lines[0]


def test_push_to_a_local_directory_and_file_url(inputs, tmp_path):
    for target in (str(tmp_path / "a" / "copy.zarr"), f"file://{tmp_path}/b/copy.zarr"):
        result = CliRunner().invoke(app, ["store", "push", inputs["good"], target])
        assert result.exit_code == 0, result.output
        local = target.removeprefix("file://")
        assert store.validate(local)["ok"]
        np.testing.assert_array_equal(
            store.open(local)["embedding"].values, store.open(inputs["good"])["embedding"].values
        )
