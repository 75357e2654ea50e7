"""`ethoprism store ...`: inspect, check and share feature stores."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from ethoprism.cli.boundary import cached, console, err_console, print_json
from ethoprism.cli.options import CacheOpt, JsonOpt, StoreArg
from ethoprism.cli.progress import bytes_progress
from ethoprism.errors import EthoprismError

app = typer.Typer(
    rich_markup_mode="markdown", help="Inspect and check feature stores.", no_args_is_help=True
)


@app.command("info")
def store_info(store: StoreArg, as_json: JsonOpt = False, cache: CacheOpt = None) -> None:
    """Identity, videos complete and failed, windows, bytes on disk and per window, layout."""
    from ethoprism.store import info
    from ethoprism.store.provenance import checkpoint_label

    r = info(store, cached(cache))
    if as_json:
        print_json(r)
        return
    table = Table(title=f"feature store {r['source']}", show_header=False)
    table.add_row(
        "schema",
        f"{r['schema']} v{r['schema_version']} (ethoprism {r['software_version']}, "
        f"created {r['created']})",
    )
    encoder = r["encoder"] or {}
    table.add_row(
        "encoder",
        f"{encoder.get('name')} checkpoint {checkpoint_label(encoder.get('checkpoint_sha256'))} "
        f"dtype {encoder.get('dtype')}",
    )
    table.add_row("preprocessing", json.dumps(r["preprocessing"]))
    table.add_row(
        "layout", f"{r['layout']['dtype']}, pool {r['layout']['pool']}, tokens {r['token_shape']}"
    )
    table.add_row("parts", ", ".join(f"{p['name']} ({p['windows']} windows)" for p in r["parts"]))
    table.add_row(
        "embeddings",
        ", ".join(r["embeddings"])
        + (" (searchable by text)" if len(r["embeddings"]) > 1 else " (no text-aligned one)"),
    )
    table.add_row("videos", f"{r['videos_complete']} complete, {len(r['videos_failed'])} failed")
    for v in r["videos_failed"]:
        table.add_row("  failed", f"{v['path']}: {v['reason']}")
    table.add_row("windows", str(r["windows"]))
    per = r["bytes_per_window"]
    table.add_row(
        "bytes on disk",
        f"{r['bytes_on_disk'] / 1e6:.1f} MB" + (f" ({per / 1e6:.2f} MB per window)" if per else ""),
    )
    console.print(table)


@app.command("validate")
def store_validate(store: StoreArg, as_json: JsonOpt = False, cache: CacheOpt = None) -> None:
    """Read every committed window; check counts, finiteness and the video tables.

    Exits 1 with a report naming the part, window and video of every problem found.
    """
    from ethoprism.store import validate

    r = validate(store, cached(cache))
    if as_json:
        print_json(r)
    elif r["ok"]:
        console.print(
            f"[green]ok[/]: {r['windows']} windows of {r['videos']} videos in {r['parts']} part(s)"
        )
    else:
        for problem in r["problems"]:
            err_console.print(f"[red]problem:[/] {problem}", highlight=False)
        err_console.print(f"{len(r['problems'])} problem(s) in {store}", highlight=False)
    if not r["ok"]:
        raise typer.Exit(code=1)


@app.command("push")
def store_push(
    store: Annotated[str, typer.Argument(help="A local feature store directory.")],
    url: Annotated[
        str, typer.Argument(help="Where to: s3://bucket/name.zarr or another writable fsspec URL.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Copy a local store to S3 (or any fsspec URL) for others to read with store.open(URL).

    Credentials and endpoint come from the environment: AWS_ACCESS_KEY_ID and
    AWS_SECRET_ACCESS_KEY (or an AWS profile), ETHOPRISM_S3_ENDPOINT for self-hosted S3.
    """
    from ethoprism.store.remote import upload_store

    n_files = upload_store(store, url)
    if as_json:
        print_json({"store": store, "url": url, "files": n_files})
    else:
        console.print(f"pushed {n_files} files of {store} to {url}", highlight=False)


@app.command("publish")
def store_publish(
    store: Annotated[str, typer.Argument(help="The feature store to publish.")],
    dest: Annotated[
        str, typer.Argument(help="Where to: a new directory, s3://bucket/prefix or an fsspec URL.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Publish a store as ONE plain Zarr dataset with consolidated metadata and a manifest.

    Anyone can then read it with `xarray.open_zarr(DEST)` (local, https://, s3://). Token
    windows are copied as stored (no recompression); rerunning after an interruption copies
    only what is missing. Then check a copy with `ethoprism store verify DEST`.
    """
    from ethoprism.store.publish import publish

    bar, update = bytes_progress("publishing tokens", shown=not as_json)
    copied = [0]

    def progress(nbytes: int, windows: int) -> None:
        copied[0] += nbytes
        update(copied[0])

    with bar:
        r = publish(store, dest, progress=progress)
    if as_json:
        print_json(r)
    elif r["up_to_date"]:
        console.print(f"{dest} already holds this publish ({r['windows']} windows)")
    else:
        console.print(
            f"published {r['windows']} windows of {r['videos']} videos to {dest}: "
            f"{r['objects']} objects, {r['bytes'] / 1e6:.1f} MB, manifest.json beside them",
            highlight=False,
        )


@app.command("verify")
def store_verify(store: StoreArg, as_json: JsonOpt = False) -> None:
    """Check a published store against its manifest.json (every object's size and sha256).

    Names every missing, extra or altered object and the videos and windows it holds;
    exits 1 on any damage. Streams: memory stays bounded whatever the store's size.
    """
    from ethoprism.store.manifest import verify

    bar, update = bytes_progress("verifying", shown=not as_json)
    with bar:
        r = verify(store, progress=update)
    if as_json:
        print_json(r)
    else:
        for kind in ("missing", "altered", "extra"):
            for item in r[kind]:
                err_console.print(
                    f"[red]{kind}:[/] {item['path']} ({item['holds']})", highlight=False
                )
        if r["ok"]:
            console.print(f"[green]ok[/]: {r['objects']} objects, {r['bytes'] / 1e6:.1f} MB")
        if not r["extra_checked"]:
            console.print("extra objects not checked: the server does not list directories")
    if not r["ok"]:
        raise typer.Exit(code=1)


@app.command("merge")
def store_merge(
    stores: Annotated[list[str], typer.Argument(help="Stores to merge (same identity), then OUT.")],
    as_json: JsonOpt = False,
) -> None:
    """Merge stores of one identity (encoder, checkpoint, preprocessing, layout) into a new one.

    The last argument is the new store's directory. Videos present in several stores (same
    content fingerprint) are reported and kept once. Stores of another identity are refused,
    naming the field that differs. `ethoprism.store.open([A, B])` reads the same without copying.
    """
    from ethoprism.store.merge import merge

    if len(stores) < 2:
        raise EthoprismError("give at least one store and the output directory")
    r = merge(stores[:-1], stores[-1])
    if as_json:
        print_json(r)
        return
    for d in r["duplicates"]:
        console.print(
            f"duplicate: {d['path']} (sha256 {d['sha256'][:12]}) kept from part {d['kept_from']}, "
            f"also in {', '.join(d['also_in'])}",
            highlight=False,
        )
    console.print(
        f"merged {len(stores) - 1} stores into {r['out']}: {r['parts']} parts, "
        f"{r['videos']} videos, {r['windows']} windows",
        highlight=False,
    )
