"""The `ethoprism` command line: the command tree. Each command's body is one library call;
errors are one line (`boundary`)."""

from __future__ import annotations

from typing import Annotated

import typer

from ethoprism import __version__
from ethoprism.cli import bench, demo, extract, localize, probe, retrieve, store
from ethoprism.cli.boundary import ErrorBoundary

app = typer.Typer(
    rich_markup_mode="markdown",
    cls=ErrorBoundary,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ethoprism {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Frozen video foundation models for animal behaviour: extract once, probe many times."""


app.command()(extract.extract)
app.command()(extract.models)
app.command()(demo.demo)
app.add_typer(bench.app, name="bench")
app.add_typer(store.app, name="store")
app.add_typer(retrieve.app, name="retrieve")
app.add_typer(probe.app, name="probe")
app.add_typer(localize.app, name="localize")
