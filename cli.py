"""The `ethoprism` command line. Each command's body is one library call; errors are one line."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ethoprism import __version__
from ethoprism.errors import EthoprismError

app = typer.Typer(
    help="Frozen video foundation models for animal behaviour: extract once, probe many times.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Measure speed as ratios taken in one run on this machine.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True)


def fail(error: Exception) -> typer.Exit:
    """Turn a library error into a red one-line message and exit status 1."""
    err_console.print(f"[bold red]error:[/] {error}", highlight=False)
    return typer.Exit(code=1)


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ethoprism {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Frozen video foundation models for animal behaviour: extract once, probe many times."""
