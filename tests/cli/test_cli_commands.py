"""The command tree as a whole: every command and group answers --help with its own help page,
every option says what it is for, and the extraction enums mirror their owners' tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ethoprism.cli import app
from ethoprism.cli.options import Decoder, Interpolation
from ethoprism.extract.decoders import DECODERS
from ethoprism.extract.preprocess import INTERPOLATIONS

VIDEO = str(Path(__file__).parent.parent / "data" / "videos" / "mouse_cage_5frames.mp4")


def commands(command=None, path=()):
    """(path, click command) of the root, every group and every command below it."""
    command = command or typer.main.get_command(app)
    yield path, command
    for name in getattr(command, "commands", {}):
        yield from commands(command.commands[name], (*path, name))


def plain(text: str) -> str:
    """The output without rich's box drawing and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


COMMANDS = list(commands())


def test_the_tree_holds_every_group():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"extract", "models", "demo", "bench", "store", "retrieve", "probe"} <= names
    assert {"localize", "bench encoder", "store publish", "probe zero-shot"} <= names
    assert len(names) >= 30


@pytest.mark.parametrize(
    ("path", "command"), COMMANDS, ids=[" ".join(path) or "ethoprism" for path, _ in COMMANDS]
)
def test_every_command_has_a_help_page(path, command):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = plain(result.output)
    summary = (command.help or "").strip().splitlines()
    assert summary and summary[0].strip(), f"{' '.join(path)} has no help text"
    assert " ".join(summary[0].split()) in text
    for param in command.params:
        if param.name == "help" or getattr(param, "hidden", False):
            continue
        assert (param.help or "").strip(), f"{' '.join(path)}: {param.name} has no help"
        if param.param_type_name == "option":
            assert param.opts[0] in text, (path, param.opts)


def test_the_extraction_enums_mirror_their_owners():
    assert tuple(Interpolation) == INTERPOLATIONS
    assert tuple(Decoder) == DECODERS


@pytest.mark.parametrize(
    ("option", "value", "choices"),
    [("--interpolation", "lanczos", INTERPOLATIONS), ("--decoder", "gpu", DECODERS)],
)
def test_a_wrong_interpolation_or_decoder_lists_the_valid_ones(tmp_path, option, value, choices):
    result = CliRunner().invoke(app, ["extract", VIDEO, str(tmp_path / "s.zarr"), option, value])
    assert result.exit_code == 2, result.output
    text = plain(result.output)
    assert f"Invalid value for '{option}'" in text
    assert "is not one of " + ", ".join(f"'{c}'" for c in choices) in text, text
    assert not (tmp_path / "s.zarr").exists()


def test_the_chosen_interpolation_and_decoder_reach_the_run(tmp_path):
    """Their values, not their Python names (nvdec_linear), reach the decoder choice: the CPU
    decoder cannot make the hardware decoder's frames, and says so in one line."""
    args = ["extract", VIDEO, str(tmp_path / "s.zarr"), "--model", "videoprism-tiny"]
    args += ["--interpolation", "nvdec-linear", "--decoder", "cpu", "--dry-run"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "'nvdec-linear' frames come from the hardware decoder" in lines[0]
    assert not (tmp_path / "s.zarr").exists()


def test_python_m_ethoprism_cli_is_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "ethoprism.cli", "store", "--help"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Usage: ethoprism store" in out.stdout and "publish" in out.stdout


def test_the_command_tree_imports_nothing_heavy():
    """Why the enums mirror their owners instead of importing them: building the tree (for
    --help, for a typo) must not pay for JAX, numpy, xarray, zarr or PyAV."""
    heavy = ("jax", "numpy", "xarray", "zarr", "av")
    code = (
        "import sys, ethoprism.cli; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120
    )
    assert not set(heavy) & set(out.stdout.split()), out.stdout


def test_help_paragraphs_reflow_across_the_docstrings_line_breaks():
    # typer's rich mode keeps every source line break: at 200 columns a paragraph would still
    # print as the docstring's ragged lines
    result = CliRunner().invoke(app, ["store", "verify", "--help"], env={"COLUMNS": "200"})
    lines = [" ".join(line.split()) for line in result.output.splitlines()]
    assert any("it holds; exits 1 on any damage." in line for line in lines), result.output


def test_a_table_piped_to_a_file_keeps_its_figures_whole():
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    out = subprocess.run(
        [sys.executable, "-m", "ethoprism.cli", "models"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "google/videoprism-lvt-large-f8r288/flax_lvt_large_f8r288_repeated.npz" in out
    assert "…" not in out
