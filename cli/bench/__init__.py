"""`ethoprism bench ...`: speed as ratios measured in one run on this machine. The commands live
by what they measure: `extraction` (the pipeline, the host's CPU, the encoder), `storage` (the
store and sharing it), `probes` (retrieval, heads, localization)."""

from __future__ import annotations

import typer

from ethoprism.cli.bench import extraction, probes, storage

app = typer.Typer(
    rich_markup_mode="markdown",
    help="Measure speed as ratios taken in one run on this machine.",
    no_args_is_help=True,
)

# The order here is the order `ethoprism bench --help` lists them.
app.command("extract")(extraction.bench_extract)
app.command("host")(extraction.bench_host)
app.command("share")(storage.bench_share)
app.command("store")(storage.bench_store)
app.command("retrieve")(probes.bench_retrieve)
app.command("probe")(probes.bench_probe)
app.command("encoder")(extraction.bench_encoder)
app.command("localize")(probes.bench_localize)
