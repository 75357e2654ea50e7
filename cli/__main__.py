"""`python -m ethoprism.cli` is the `ethoprism` command too (as `python -m ethoprism` is)."""

from ethoprism.cli import app

app(prog_name="ethoprism")
