"""`ethoprism bench share | store`: writing, reading and sharing the feature store."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ethoprism.cli.boundary import console, numbers, print_figures, print_json
from ethoprism.cli.options import JsonOpt


def bench_share(
    windows: Annotated[
        int,
        typer.Option(
            help="Windows in the benchmark store (0.4 MB each; 2048: 830 MB, large enough that "
            "publish's fixed costs per store, ~0.08 s, do not set the ratio)."
        ),
    ] = 2048,
    token_shape: Annotated[
        str, typer.Option(help="Token shape t,h,w,c of each window.")
    ] = "8,16,16,128",
    batch: Annotated[int, typer.Option(help="Windows per random minibatch.")] = 16,
    s3_url: Annotated[
        str | None,
        typer.Option(
            help="Also publish to and read from this empty S3 prefix (endpoint and "
            "credentials from the environment: ETHOPRISM_S3_ENDPOINT, AWS_ACCESS_KEY_ID, ...)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish vs raw copy; remote random-minibatch reads vs local (with and without the cache);
    verify vs sha256sum. Targets: publish >= 0.8x raw copy, warm-cache reads >= 0.8x local,
    verify >= 0.8x sha256sum."""
    from ethoprism.store.bench_share import bench_share as run_bench

    r = run_bench(
        windows=windows,
        token_shape=numbers(token_shape, int, "--token-shape"),
        batch=batch,
        s3_url=s3_url,
    )
    if as_json:
        print_json(r)
        return
    print_figures(
        f"bench share: {r['windows']} windows, {r['token_bytes'] / 1e6:.1f} MB of tokens",
        [(name, value) for name, value in r["lines"]],
    )


def bench_store(
    windows: Annotated[
        int, typer.Option(help="Windows written per layout (base token shape), in videos of 64.")
    ] = 128,
    directory: Annotated[
        str | None, typer.Option(help="Benchmark on this directory's disk.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Bytes per window per layout; store write vs raw disk write; random minibatch reads.

    Targets: the default layout (float16-round7) written at >= 0.7x a raw sequential write of
    the same bytes; read_windows >= 5x faster than zarr oindex on random 32-window minibatches.
    """
    from ethoprism.store.bench import bench_store as run_bench

    r = run_bench(windows=windows, directory=directory)
    if as_json:
        print_json(r)
        return
    table = Table(
        title=f"bench store: {r['windows']} windows of tokens {tuple(r['token_shape'])}",
        caption="tokens in: coded = float16 coded on the accelerator, as `extract` writes",
    )
    for col in (
        "layout",
        "tokens in",
        "MB/window",
        "windows/s",
        "CPU ms/window",
        "cores for disk speed",
        "write MB/s",
        "raw MB/s",
        "write vs raw",
    ):
        table.add_column(col)
    for x in r["layouts"]:
        table.add_row(
            f"{x['layout']['dtype']} pool {x['layout']['pool']}",
            x["tokens_in"],
            f"{x['bytes_per_window'] / 1e6:.2f}",
            f"{x['windows_per_s']:.1f}",
            f"{x['write_cpu_ms_per_window']:.0f}",
            f"{x['cores_for_disk_speed']:.1f}",
            f"{x['write_mb_per_s']:.0f}",
            f"{x['raw_write_mb_per_s']:.0f}",
            f"{x['write_vs_raw']:.2f}",
        )
    console.print(table)
    console.print(
        f"default layout, tokens coded as `extract` writes them: write {r['write_vs_raw']:.2f}x "
        "a raw sequential write of the same bytes (target >= 0.7)",
        highlight=False,
    )
    rd = r["reads"]
    console.print(
        f"random {rd['batch']}-window minibatch: read_windows {rd['read_windows_ms']:.1f} ms, "
        f"from memory {rd['memory_ms']:.1f} ms, oindex {rd['oindex_ms']:.1f} ms; "
        f"{rd['speedup_vs_oindex']:.1f}x faster than oindex (target >= 5), "
        f"{rd['read_windows_vs_memory']:.2f}x memory speed",
        highlight=False,
    )
