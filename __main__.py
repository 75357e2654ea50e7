"""`python -m ethoprism` is the `ethoprism` command."""

from ethoprism.cli import app

app(prog_name="ethoprism")
