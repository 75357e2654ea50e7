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


# --- store ------------------------------------------------------------------------------------

store_app = typer.Typer(help="Inspect and check feature stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")
StoreArg = Annotated[str, typer.Argument(help="A feature store: a directory, http(s):// or s3:// URL.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@store_app.command("info")
def store_info(store: StoreArg, as_json: JsonOpt = False) -> None:
    """Identity, videos complete and failed, windows, bytes on disk and per window, layout."""
    from ethoprism.store import info

    try:
        r = info(store)
    except EthoprismError as e:
        raise fail(e) from None
    if as_json:
        print_json(r)
        return
    table = Table(title=f"feature store {r['source']}", show_header=False)
    table.add_row("schema", f"{r['schema']} v{r['schema_version']} (ethoprism {r['software_version']}, "
                            f"created {r['created']})")
    encoder = r["encoder"] or {}
    table.add_row("encoder", f"{encoder.get('name')} checkpoint sha256 {str(encoder.get('checkpoint_sha256'))[:12]} "
                             f"dtype {encoder.get('dtype')}")
    table.add_row("preprocessing", json.dumps(r["preprocessing"]))
    table.add_row("layout", f"{r['layout']['dtype']}, pool {r['layout']['pool']}, tokens {r['token_shape']}")
    table.add_row("parts", ", ".join(f"{p['name']} ({p['windows']} windows)" for p in r["parts"]))
    table.add_row("videos", f"{r['videos_complete']} complete, {len(r['videos_failed'])} failed")
    for v in r["videos_failed"]:
        table.add_row("  failed", f"{v['path']}: {v['reason']}")
    table.add_row("windows", str(r["windows"]))
    per = r["bytes_per_window"]
    table.add_row("bytes on disk", f"{r['bytes_on_disk'] / 1e6:.1f} MB"
                  + (f" ({per / 1e6:.2f} MB per window)" if per else ""))
    console.print(table)


@store_app.command("validate")
def store_validate(store: StoreArg, as_json: JsonOpt = False) -> None:
    """Read every committed window; check counts, finiteness and the video tables.

    Exits 1 with a report naming the part, window and video of every problem found.
    """
    from ethoprism.store import validate

    try:
        r = validate(store)
    except EthoprismError as e:
        raise fail(e) from None
    if as_json:
        print_json(r)
    elif r["ok"]:
        console.print(f"[green]ok[/]: {r['windows']} windows of {r['videos']} videos in {r['parts']} part(s)")
    else:
        for problem in r["problems"]:
            err_console.print(f"[red]problem:[/] {problem}", highlight=False)
        err_console.print(f"{len(r['problems'])} problem(s) in {store}", highlight=False)
    if not r["ok"]:
        raise typer.Exit(code=1)


@store_app.command("push")
def store_push(
    store: Annotated[str, typer.Argument(help="A local feature store directory.")],
    url: Annotated[str, typer.Argument(help="Where to: s3://bucket/name.zarr or another writable fsspec URL.")],
    as_json: JsonOpt = False,
) -> None:
    """Copy a local store to S3 (or any fsspec URL) for others to read with store.open(URL).

    Credentials and endpoint come from the environment: AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (or an AWS profile), ETHOPRISM_S3_ENDPOINT for self-hosted S3.
    """
    from ethoprism.store.remote import upload_store

    try:
        n_files = upload_store(store, url)
    except EthoprismError as e:
        raise fail(e) from None
    if as_json:
        print_json({"store": store, "url": url, "files": n_files})
    else:
        console.print(f"pushed {n_files} files of {store} to {url}", highlight=False)


@bench_app.command("store")
def bench_store(
    windows: Annotated[int, typer.Option(help="Windows written per layout (base token shape).")] = 64,
    directory: Annotated[str | None, typer.Option(help="Benchmark on this directory's disk.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Bytes per window per layout; store write vs raw disk write; random minibatch reads.

    Targets: write >= 0.7x a raw sequential write of the same bytes; read_windows >= 5x
    faster than zarr oindex on random 32-window minibatches.
    """
    from ethoprism.store.bench import bench_store as run_bench

    try:
        r = run_bench(windows=windows, directory=directory)
    except EthoprismError as e:
        raise fail(e) from None
    if as_json:
        print_json(r)
        return
    table = Table(title=f"bench store: {r['windows']} windows of tokens {tuple(r['token_shape'])}")
    for col in ("layout", "MB/window", "write MB/s", "raw MB/s", "write vs raw (>= 0.7)"):
        table.add_column(col)
    for x in r["layouts"]:
        table.add_row(f"{x['layout']['dtype']} pool {x['layout']['pool']}", f"{x['bytes_per_window'] / 1e6:.2f}",
                      f"{x['write_mb_per_s']:.0f}", f"{x['raw_write_mb_per_s']:.0f}", f"{x['write_vs_raw']:.2f}")
    console.print(table)
    rd = r["reads"]
    console.print(f"random {rd['batch']}-window minibatch: read_windows {rd['read_windows_ms']:.1f} ms, "
                  f"from memory {rd['memory_ms']:.1f} ms, oindex {rd['oindex_ms']:.1f} ms; "
                  f"{rd['speedup_vs_oindex']:.1f}x faster than oindex (target >= 5), "
                  f"{rd['read_windows_vs_memory']:.2f}x memory speed", highlight=False)
