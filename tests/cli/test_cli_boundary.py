"""The CLI's one error boundary and its enum options, driven through typer's CliRunner."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from ethoprism.cli import app
from ethoprism.cli import options as cli_options
from ethoprism.extract.encoder import DTYPES
from ethoprism.probe import defaults
from ethoprism.probe.classify.heads import HEAD_KINDS
from ethoprism.probe.labels import ALIGN_MODES
from ethoprism.store.framing import RESIZE_MODES
from ethoprism.store.layout import LAYOUT_DTYPES


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def plain(text: str) -> str:
    """The output without rich's box drawing and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize(
    ("args", "option", "choices"),
    [
        (["probe", "eval", "s", "h", "l", "--out", "o", "--videos", "tset"], "--videos", None),
        (["probe", "train", "s", "l", "--out", "o", "--head", "svm"], "--head", HEAD_KINDS),
        (["probe", "train", "s", "l", "--out", "o", "--align", "center"], "--align", ALIGN_MODES),
        (["retrieve", "eval", "s", "l", "--align", "mode"], "--align", ALIGN_MODES),
        (["extract", "v.mp4", "s", "--layout", "int4"], "--layout", LAYOUT_DTYPES),
        (["extract", "v.mp4", "s", "--resize", "stretch"], "--resize", RESIZE_MODES),
        (["extract", "v.mp4", "s", "--dtype", "float16"], "--dtype", DTYPES),
        (["bench", "encoder", "--dtype", "fp8"], "--dtype", DTYPES),
    ],
)
def test_a_wrong_choice_lists_the_valid_ones(args, option, choices):
    result = run(*args)
    assert result.exit_code == 2, result.output
    text = plain(result.output)
    assert f"Invalid value for '{option}'" in text
    choices = choices or ("test", "all")
    assert "is not one of " + ", ".join(f"'{c}'" for c in choices) in text, text


def test_the_choices_mirror_the_library_tables():
    """The CLI lists choices without importing jax or xarray; they must not drift."""
    assert tuple(cli_options.Head) == HEAD_KINDS
    assert tuple(cli_options.Align) == ALIGN_MODES
    assert tuple(cli_options.Resize) == RESIZE_MODES
    assert tuple(cli_options.TokenLayout) == LAYOUT_DTYPES
    assert tuple(cli_options.Dtype) == DTYPES
    assert (cli_options.LABEL_COLUMN, cli_options.BACKGROUND) == (
        defaults.LABEL_COLUMN,
        defaults.BACKGROUND,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["store", "info", "{missing}"],
        ["store", "validate", "{empty}"],
        ["retrieve", "query", "{missing}", "--window", "0"],
        ["retrieve", "eval", "{empty}", "labels.csv", "--column", "activity"],
        ["probe", "train", "{empty}", "labels.csv", "--out", "{out}", "--lr", "fast"],
    ],
)
def test_a_library_error_is_one_line_and_exit_1(tmp_path, args):
    (tmp_path / "empty").mkdir()
    where = {"missing": tmp_path / "missing.zarr", "empty": tmp_path / "empty", "out": tmp_path}
    result = run(*[a.format(**where) for a in args])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)


def test_label_column_is_one_spelling_and_column_a_hidden_alias():
    for command in (["retrieve", "query"], ["retrieve", "eval"], ["probe", "train"]):
        text = plain(run(*command, "--help").output)
        assert "--label-column" in text and "--column " not in text, command
