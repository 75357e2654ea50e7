"""The CLI's one error boundary, its output (one console for results, one for messages) and
the helpers its commands share."""

from __future__ import annotations

import json
import os
import sys

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ethoprism.errors import EthoprismError

# What a user can cause and fix (a bad path, a file that is not a store): one red line, exit 1.
# Anything else is a bug and keeps its traceback.
USER_ERRORS = (
    EthoprismError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


def _user_error(error: Exception) -> bool:
    if isinstance(error, USER_ERRORS):
        return True
    zarr_errors = getattr(sys.modules.get("zarr"), "errors", None)  # only if zarr was used
    return zarr_errors is not None and isinstance(error, zarr_errors.BaseZarrError)


class ErrorBoundary(TyperGroup):
    """The one place where errors of every command (and subcommand) become a one-line message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:
            if not _user_error(e):
                raise
            raise fail(e) from None


# Piped to a file, rich would lay tables out at 80 columns and cut the figures to "2…"; a file
# has room (COLUMNS still wins when set).
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)
err_console = Console(stderr=True)


def fail(error: Exception) -> typer.Exit:
    """A red one-line message for a library error, and the exit (status 1) to raise."""
    err_console.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def print_figures(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table of named figures (summaries and benchmarks)."""
    table = Table(title=title, show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def caution(text: str | None) -> None:
    """A warning that qualifies every figure printed (e.g. results of random weights)."""
    if text:
        err_console.print(f"[bold yellow]{text}[/]", highlight=False)


def numbers(text: str, kind, what: str) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise EthoprismError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def cached(cache: str | None) -> dict | None:
    from ethoprism.store.cache import cache_options

    return cache_options(cache)
