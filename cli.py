"""The `ethoprism` command line. Each command's body is one library call; errors are one line."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from ethoprism import __version__
from ethoprism.cli_options import (
    BACKGROUND,
    LABEL_COLUMN,
    Align,
    AlignOpt,
    BackgroundOpt,
    CacheOpt,
    CheckpointOpt,
    ColumnAliasOpt,
    Dtype,
    DtypeOpt,
    Head,
    JsonOpt,
    LabelColumnOpt,
    ModelOpt,
    Resize,
    SchedulerOpt,
    StoreArg,
    TokenLayout,
    Videos,
)
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


app = typer.Typer(
    cls=ErrorBoundary,
    help="Frozen video foundation models for animal behaviour: extract once, probe many times.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(
    help="Measure speed as ratios taken in one run on this machine.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")

console = Console()
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


# --- extraction -------------------------------------------------------------------------------


def _print_summary(summary) -> None:
    from ethoprism.store.provenance import checkpoint_label

    rate = summary.windows / summary.seconds if summary.seconds else 0.0
    print_figures(
        f"extracted into {summary.store}",
        [
            (
                "model",
                f"{summary.model} (checkpoint {checkpoint_label(summary.checkpoint_sha256)})",
            ),
            ("devices", str(summary.devices)),
            (
                "videos",
                (
                    f"{summary.count('complete')} complete, "
                    f"{summary.count('skipped')} already in the store, "
                    f"{summary.count('failed')} failed"
                ),
            ),
            ("windows", f"{summary.windows} in {summary.seconds:.1f} s ({rate:.2f}/s)"),
        ],
    )
    for v in summary.failed:
        err_console.print(f"[red]failed[/] {v.path}: {v.reason}", highlight=False)


def _centres(frames_from: str | None) -> dict:
    """RunConfig fields for `extract --frames-from`."""
    if frames_from is None:
        return {}
    from ethoprism.probe.localize.annotations import read

    ann = read(frames_from)
    centres = tuple((v, tuple(ann.frames_of(v))) for v in ann.videos)
    return {"centres": centres, "frames_from": frames_from}


@app.command()
def extract(
    archive: Annotated[
        list[str], typer.Argument(help="Videos: files, directories (recursive) or glob patterns.")
    ],
    store: Annotated[
        str, typer.Argument(help="The feature store to create or append to (a directory).")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            help="Encoder config: videoprism-b, videoprism-l, videoprism-tiny. "
            "Default: an existing store's own (with its checkpoint and preprocessing), "
            "else videoprism-b."
        ),
    ] = None,
    checkpoint: CheckpointOpt = None,
    dtype: Annotated[
        Dtype | None,
        typer.Option(help="Matmul dtype: float32 or bfloat16. Default: the store's, else float32."),
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(
            help="Frames between consecutive window starts. Default: the store's, else 8."
        ),
    ] = None,
    window_length: Annotated[
        int | None,
        typer.Option(help="Frames per window. Default: the store's, else the encoder's."),
    ] = None,
    frame_step: Annotated[
        int | None,
        typer.Option(help="Frame step K inside a window: frames start + j*K. Default: 1."),
    ] = None,
    resize: Annotated[
        Resize | None,
        typer.Option(
            help="squash (to a square), pad (letterbox) or crop (centre). Default: squash."
        ),
    ] = None,
    frame_size: Annotated[
        int | None,
        typer.Option(help="Side of the square frames the encoder sees. Default: the encoder's."),
    ] = None,
    interpolation: Annotated[
        str | None,
        typer.Option(
            help="Resize filter: area, bilinear (stores made before area was the default) or "
            "bicubic; part of the store's identity. Default: the store's, else area."
        ),
    ] = None,
    layout: Annotated[
        TokenLayout | None,
        typer.Option(help="Token storage: float16-round7 (default), float16 or int8."),
    ] = None,
    pool: Annotated[
        int | None,
        typer.Option(help="Average-pool tokens spatially by 1, 2 or 4 before storing. Default: 1."),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(help="Windows per encoder call (rounded up to a multiple of the devices)."),
    ] = 8,
    decode_workers: Annotated[
        int, typer.Option(help="Decoding processes running ahead of the encoder.")
    ] = 2,
    decoder: Annotated[
        str,
        typer.Option(
            help="auto (the GPU's NVDEC where a CUDA device and PyNvVideoCodec are present and "
            "the store allows its frames), cpu (FFmpeg) or nvdec."
        ),
    ] = "auto",
    scheduler: SchedulerOpt = None,
    save_every: Annotated[
        float,
        typer.Option(
            help="Seconds between saves of a long video's windows: an interrupted run resumes "
            "inside the video and redoes at most this much (0: after every batch)."
        ),
    ] = 30.0,
    dry_run: Annotated[
        bool,
        typer.Option(
            help="List videos, windows, estimated store size and run time; write nothing."
        ),
    ] = False,
    log_json: Annotated[
        str | None, typer.Option(help="Append one JSON line per finished video to this file.")
    ] = None,
    frames_from: Annotated[
        str | None,
        typer.Option(
            help="Box annotations (COCO JSON, CSV, MammAlps JSON): encode only the windows "
            "centred on annotated frames (i-7..i+8), only for annotated videos."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Extract VideoPrism tokens from an archive of videos into a Zarr feature store.

    Re-running the same command resumes: complete videos are skipped, unfinished ones redone.
    A video that cannot be decoded is recorded as failed and the run goes on; the exit status
    is 1 when any video failed.
    """
    from ethoprism.pipeline import extract as pipeline_extract
    from ethoprism.pipeline.config import config_for_store
    from ethoprism.pipeline.inputs import find_videos
    from ethoprism.pipeline.plan import plan_run
    from ethoprism.pipeline.progress import JsonLinesReporter, RichReporter
    from ethoprism.pipeline.run import ExtractInterrupted

    cfg = config_for_store(
        store,
        model=model,
        checkpoint=checkpoint,
        dtype=dtype.value if dtype else None,
        prep=dict(
            window_length=window_length,
            frame_size=frame_size,
            resize=resize.value if resize else None,
            window_stride=stride,
            frame_step=frame_step,
            interpolation=interpolation,
        ),
        layout=dict(dtype=layout.value if layout else None, pool=pool),
        batch_size=batch_size,
        decode_workers=decode_workers,
        piece_seconds=save_every,
        decoder=decoder,
        **_centres(frames_from),
    )
    if dry_run:
        plan = plan_run(find_videos(archive), cfg, store_path=store)
        if as_json:
            print_json(plan.to_dict())
            return
        table = Table("video", "frames", "fps", "windows", title="dry run: nothing written")
        for v in plan.videos:
            if "error" in v:
                table.add_row(v["path"], "[red]unreadable[/]", "", v["error"])
            else:
                table.add_row(v["path"], str(v["frames"]), f"{v['fps']:.3g}", str(v["windows"]))
        console.print(table)
        console.print(
            f"{plan.windows} windows, about {plan.store_bytes / 1e9:.2f} GB in the store "
            f"({plan.bytes_per_window / 1e6:.2f} MB/window); "
            f"encoder {plan.windows_per_s:.2f} windows/s "
            f"here, so about {plan.seconds / 3600:.2f} h"
        )
        if plan.cores_needed is not None:
            console.print(
                f"host: about {plan.host_ms_per_window:.1f} ms of CPU per window "
                f"({plan.decoder} decoding), so feeding {plan.devices} device(s) at "
                f"{plan.windows_per_s:.2f} windows/s needs about {plan.cores_needed:.1f} "
                f"cores; this host has {os.cpu_count()}"
            )
        return
    reporter = None if as_json else RichReporter(console=err_console)
    if log_json:
        reporter = JsonLinesReporter(log_json, reporter)
    try:
        summary = pipeline_extract.run_extract(
            archive, store, cfg, scheduler=scheduler, reporter=reporter
        )
    except ExtractInterrupted as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(code=130) from None
    finally:
        if reporter is not None:
            reporter.stop()
    if as_json:
        print_json(summary.to_dict())
    else:
        _print_summary(summary)
    if summary.failed:
        raise typer.Exit(code=1)


@bench_app.command("extract")
def bench_extract(
    video: Annotated[
        str | None, typer.Option(help="Video to extract (default: the bundled deer clip).")
    ] = None,
    model: ModelOpt = "videoprism-b",
    windows: Annotated[int, typer.Option(help="About this many windows are extracted.")] = 16,
    batch: Annotated[int, typer.Option(help="Windows per encoder call.")] = 4,
    dtype: DtypeOpt = Dtype.float32,
    checkpoint: Annotated[str, typer.Option(help="Weights; random ones time the same.")] = "random",
    as_json: JsonOpt = False,
) -> None:
    """End-to-end extraction vs the encoder alone, decode+resize vs raw decode, peak RSS.

    Targets: pipeline efficiency >= 0.9 on videoprism-b (compute dominates); decode+resize
    >= 0.5x raw decode. Run it with --model videoprism-tiny to see a decode-bound pipeline.
    """
    from pathlib import Path

    from ethoprism.pipeline.bench import bench_extract as run_bench

    video = video or str(Path(__file__).parent / "data" / "S1_C1_E115_V0342.mp4")
    r = run_bench(
        video,
        model=model,
        windows=windows,
        batch_size=batch,
        checkpoint=checkpoint,
        dtype=dtype.value,
    )
    if as_json:
        print_json(r)
        return
    d = r["decode"]
    print_figures(
        (
            f"bench extract: {model}, {r['windows']} windows, batch {r['batch_size']}, "
            f"{r['devices']} device(s)"
        ),
        [
            ("end-to-end", f"{r['end_to_end_windows_per_s']:.3f} windows/s"),
            ("encoder only", f"{r['encoder_only_windows_per_s']:.3f} windows/s"),
            (
                "pipeline efficiency",
                f"{r['pipeline_efficiency']:.2f}  (target >= 0.9 on videoprism-b)",
            ),
            ("raw decode", f"{d['raw_fps']:.0f} frames/s"),
            ("decode + resize", f"{d['resize_fps']:.0f} frames/s"),
            ("decode ratio", f"{d['ratio']:.2f}  (target >= 0.5)"),
            ("peak RSS", f"{r['peak_rss_mb']:.0f} MiB"),
        ],
    )


@bench_app.command("host")
def bench_host(
    model: Annotated[str, typer.Option(help="Encoder config (sets the token shape).")] = (
        "videoprism-b"
    ),
    frames: Annotated[int, typer.Option(help="Frames decoded per clip and repeat.")] = 96,
    windows: Annotated[int, typer.Option(help="Windows through the store's stages.")] = 32,
    repeats: Annotated[int, typer.Option(help="Decode runs per clip (the best counts).")] = 2,
    threads: Annotated[
        int, typer.Option(help="Decoder threads per video (0: FFmpeg chooses), as extract uses.")
    ] = 0,
    accelerator_rate: Annotated[
        float,
        typer.Option(
            help="Encoder windows/s per accelerator, used where JAX sees no accelerator "
            "(450: VideoPrism-B bf16 on an H100-class device)."
        ),
    ] = 450.0,
    directory: Annotated[
        str | None, typer.Option(help="Temporary clips and shards on this directory's disk.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Host CPU milliseconds per window, stage by stage, and the cores one accelerator needs.

    Measured in one run (CPU time of this process, all threads) on 384p, 720p and 1080p H.264
    and 720p MJPEG clips: decode, colour conversion + resize, batching, token check,
    compression, checksum, disk write; totals at stride 8 and 16. Targets: decode + convert +
    resize <= 1.25x decode alone; everything after decoding <= 5 ms per window. The NVDEC
    column is an estimate: demuxing replaces decoding and conversion.
    """
    from ethoprism.pipeline.host_bench import STAGES
    from ethoprism.pipeline.host_bench import bench_host as run_bench

    r = run_bench(
        model=model,
        frames=frames,
        windows=windows,
        repeats=repeats,
        threads=threads,
        rate=accelerator_rate,
        directory=directory,
    )
    if as_json:
        print_json(r)
        return
    rate = r["accelerator"]["windows_per_s"]
    for stride in r["strides"]:
        table = Table(
            title=f"bench host: CPU ms per window at stride {stride}, {model}",
            caption=f"cores: to feed one accelerator at {rate:.0f} windows/s "
            f"({r['accelerator']['source']}); NVDEC: estimated",
        )
        short = ("decode", "conv", "batch", "check", "compr", "crc", "write")  # STAGES, narrow
        for col in ("source", *short, "total", "cores/100w/s", "cores", "NVDEC cores"):
            table.add_column(col, no_wrap=col == "source")
        for label, clip in r["clips"].items():
            x = clip["strides"][stride]
            table.add_row(
                label,
                *(f"{x['stages_ms'][k]:.1f}" for k in STAGES),
                f"{x['total_ms']:.1f}",
                f"{x['cores_per_100_windows_per_s']:.1f}",
                f"{x['cores_per_accelerator']:.1f}",
                f"{x['nvdec_cores_per_accelerator']:.1f}",
            )
        console.print(table)
    rows = [
        (
            f"{label}: decode+convert / decode",
            f"{clip['decode_convert_vs_decode']:.2f}  (target <= 1.25; "
            f"decode {clip['decode_ms_per_frame']:.2f} ms/frame)",
        )
        for label, clip in r["clips"].items()
    ]
    after = r["strides"][next(iter(r["strides"]))]["after_decode_ms"]
    rows.append(("after decoding", f"{after:.1f} ms/window  (target <= 5)"))
    rows.append(("store writer, whole", f"{r['store']['writer_ms_per_window']:.1f} ms/window"))
    print_figures("bench host: targets", rows)


# --- store ------------------------------------------------------------------------------------

store_app = typer.Typer(help="Inspect and check feature stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")


def _cached(cache: str | None) -> dict | None:
    from ethoprism.store.cache import cache_options

    return cache_options(cache)


@store_app.command("info")
def store_info(store: StoreArg, as_json: JsonOpt = False, cache: CacheOpt = None) -> None:
    """Identity, videos complete and failed, windows, bytes on disk and per window, layout."""
    from ethoprism.store import info
    from ethoprism.store.provenance import checkpoint_label

    r = info(store, _cached(cache))
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


@store_app.command("validate")
def store_validate(store: StoreArg, as_json: JsonOpt = False, cache: CacheOpt = None) -> None:
    """Read every committed window; check counts, finiteness and the video tables.

    Exits 1 with a report naming the part, window and video of every problem found.
    """
    from ethoprism.store import validate

    r = validate(store, _cached(cache))
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


@store_app.command("push")
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


# --- sharing between labs (store/publish.py, store/manifest.py, store/merge.py) -----------------


def _bytes_progress(what: str, shown: bool = True):
    """A rich progress bar over bytes, and its update(done, total) callback (none if not shown:
    --json output stays parsable)."""
    import contextlib

    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    if not shown:
        return contextlib.nullcontext(), lambda done, total=None: None

    bar = Progress(
        *Progress.get_default_columns(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
    )
    task = bar.add_task(what, total=None)

    def update(done: int, total: int | None = None) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update


@store_app.command("publish")
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

    bar, update = _bytes_progress("publishing tokens", shown=not as_json)
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


@store_app.command("verify")
def store_verify(store: StoreArg, as_json: JsonOpt = False) -> None:
    """Check a published store against its manifest.json (every object's size and sha256).

    Names every missing, extra or altered object and the videos and windows it holds;
    exits 1 on any damage. Streams: memory stays bounded whatever the store's size.
    """
    from ethoprism.store.manifest import verify

    bar, update = _bytes_progress("verifying", shown=not as_json)
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


@store_app.command("merge")
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


@bench_app.command("share")
def bench_share(
    windows: Annotated[int, typer.Option(help="Windows in the benchmark store.")] = 96,
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
        token_shape=_numbers(token_shape, int, "--token-shape"),
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


@bench_app.command("store")
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


# --- retrieval --------------------------------------------------------------------------------

retrieve_app = typer.Typer(
    help="Find similar moments by nearest neighbours on window embeddings.", no_args_is_help=True
)
app.add_typer(retrieve_app, name="retrieve")


@retrieve_app.command("query")
def retrieve_query(
    store: Annotated[
        str,
        typer.Argument(
            help="The store the query moments/windows come from (a directory or URL); "
            "also the index unless --index-store is given."
        ),
    ],
    moment: Annotated[
        list[str] | None,
        typer.Option(
            help="VIDEO@SECONDS or VIDEO#FRAME (repeatable); the "
            "covering window with the nearest centre."
        ),
    ] = None,
    window: Annotated[
        list[int] | None, typer.Option(help="A window index of STORE (repeatable).")
    ] = None,
    clip: Annotated[
        str | None,
        typer.Option(
            help="A new video file, encoded with STORE's encoder and "
            "preprocessing; each of its windows is a query."
        ),
    ] = None,
    text: Annotated[
        list[str] | None,
        typer.Option(
            help="A text prompt (repeatable): windows ranked by cosine similarity of their "
            "text-aligned embedding (stores of a videoprism-lvt model)."
        ),
    ] = None,
    template: Annotated[
        str, typer.Option(help="How --text is wrapped before encoding ('{}' keeps it as is).")
    ] = "a video of {}.",
    tokenizer: Annotated[
        str | None,
        typer.Option(help="SentencePiece model for --text (offline; else downloaded once)."),
    ] = None,
    k: Annotated[int, typer.Option("-k", help="Neighbours per query.")] = 10,
    index_store: Annotated[
        str | None, typer.Option(help="Search this store instead (same identity).")
    ] = None,
    exclude_same_video: Annotated[
        bool, typer.Option(help="Skip windows of the query's own video.")
    ] = False,
    include_overlapping: Annotated[
        bool,
        typer.Option(
            help="Let a query window find itself and the windows sharing frames with it "
            "(left out by default: they are near copies of it)."
        ),
    ] = False,
    videos: Annotated[
        list[str] | None,
        typer.Option(help="Only search these: VIDEO or VIDEO@START-END seconds (repeatable)."),
    ] = None,
    scheduler: SchedulerOpt = None,
    approx: Annotated[
        bool, typer.Option(help="Use the index built by `retrieve build-index`.")
    ] = False,
    checkpoint: CheckpointOpt = None,
    sheet: Annotated[str | None, typer.Option(help="Write a contact sheet PNG here.")] = None,
    sheet_results: Annotated[int, typer.Option(help="Results per query on the sheet.")] = 3,
    labels: Annotated[str | None, typer.Option(help="Label file to caption the sheet.")] = None,
    label_column: LabelColumnOpt = LABEL_COLUMN,
    column: ColumnAliasOpt = None,
    videos_root: Annotated[
        str | None,
        typer.Option(
            help="Where the store's videos are now, if not at the paths recorded at extraction "
            "(matched by relative path, then by content)."
        ),
    ] = None,
    as_json: JsonOpt = False,
    cache: CacheOpt = None,
) -> None:
    """The k nearest windows (L2 on the pooled embedding) of moments, windows or a new clip; or
    the windows most similar to text prompts (--text, on a videoprism-lvt store)."""
    from ethoprism.probe import retrieve as retrieval
    from ethoprism.probe.retrieve.contact_sheet import sheet_for

    search = {
        "k": k,
        "exclude_same_video": exclude_same_video,
        "videos": videos,
        "scheduler": scheduler,
        "approx": approx,
    }
    if text:
        from ethoprism.probe.retrieve.text import run_text_query

        del search["exclude_same_video"]
        result = run_text_query(
            index_store or store,
            text,
            template=template,
            checkpoint=checkpoint,
            tokenizer=tokenizer,
            **search,
        )
    elif clip:
        from ethoprism.pipeline.clip_query import run_clip_query

        result = run_clip_query(
            clip, store, checkpoint=checkpoint, index_store=index_store, **search
        )
    else:
        result = retrieval.run_query(
            index_store or store,
            query_store=store,
            moments=moment or [],
            windows=window or [],
            include_overlapping=include_overlapping,
            storage_options=_cached(cache),
            **search,
        )
    if sheet:
        sheet_for(
            result,
            sheet,
            n_results=sheet_results,
            labels=labels,
            column=column or label_column,
            videos_root=videos_root,
        )
    if text:
        from ethoprism.probe.retrieve.text import text_table

        rows = text_table(result)
    else:
        rows = result.table()
    if as_json:
        print_json(rows)
        return
    from ethoprism.store import identity
    from ethoprism.store.provenance import weights_warning

    warning = weights_warning(identity(result.index))
    if warning:
        err_console.print(f"[bold yellow]{warning}[/]", highlight=False)
    table = Table(
        "query",
        "rank",
        "video",
        "start time (s)",
        "start frame",
        "window",
        "cosine" if text else "distance",
        title=f"nearest windows in {result.index.attrs.get('source', index_store or store)}",
    )
    for r in rows:
        table.add_row(
            r["query"],
            str(r["rank"]),
            r["video"],
            f"{r['start_time']:.3f}",
            str(r["start_frame"]),
            str(r["window"]),
            f"{r['cosine' if text else 'distance']:.4g}",
        )
    console.print(table)
    if sheet:
        console.print(f"contact sheet: {sheet}", highlight=False)


@retrieve_app.command("build-index")
def retrieve_build_index(
    store: Annotated[
        str,
        typer.Argument(help="A local feature store; the index is written beside it (STORE.ann)."),
    ],
    nlist: Annotated[
        int | None, typer.Option(help="Inverted lists (default ~sqrt(windows)).")
    ] = None,
    embedding: Annotated[
        str,
        typer.Option(
            help="Which embedding to index: embedding (moment queries), or video_embedding "
            "for text queries on a videoprism-lvt store (written beside it as "
            "STORE.video_embedding.ann)."
        ),
    ] = "embedding",
    as_json: JsonOpt = False,
) -> None:
    """Build the approximate (FAISS IVF-Flat) index of a store and report its recall@10 vs exact."""
    from dataclasses import asdict

    from ethoprism.probe.retrieve.ann import build_index, index_dir

    info = build_index(store, nlist=nlist, var=embedding)
    if as_json:
        print_json(asdict(info))
        return
    console.print(
        f"{index_dir(store, embedding)}: {info.kind}, {info.n_windows} windows, "
        f"nlist {info.nlist}, nprobe {info.nprobe}; recall@10 vs exact {info.recall_at_10:.3f} "
        f"on {info.recall_queries} windows; built in {info.build_seconds:.1f} s",
        highlight=False,
    )


@retrieve_app.command("eval")
def retrieve_eval(
    store: Annotated[
        str,
        typer.Argument(
            help="Feature store: the test set (queries), and the train set too "
            "unless --index-store is given."
        ),
    ],
    labels: Annotated[
        str, typer.Argument(help="Label file (CSV segments or per-clip) covering the videos.")
    ],
    index_store: Annotated[str | None, typer.Option(help="The train store (the index).")] = None,
    split: Annotated[
        str | None, typer.Option(help="CSV video,split (train/test) for a single store.")
    ] = None,
    test_fraction: Annotated[
        float, typer.Option(help="Without --split: fraction of videos used as test.")
    ] = 0.25,
    label_column: LabelColumnOpt = LABEL_COLUMN,
    column: ColumnAliasOpt = None,
    background: Annotated[
        str, typer.Option(help="Background class: not a query, kept in the index.")
    ] = BACKGROUND,
    align: AlignOpt = Align.centre,
    k: Annotated[
        list[int] | None, typer.Option("-k", help="K values (repeatable; default 1 5 10).")
    ] = None,
    fraction: Annotated[
        float, typer.Option(help="Fraction of queries per run (the paper: 0.1).")
    ] = 1.0,
    runs: Annotated[int, typer.Option(help="Runs averaged (the paper: 3).")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for the split and the query subsampling.")] = 0,
    scheduler: SchedulerOpt = None,
    as_json: JsonOpt = False,
    cache: CacheOpt = None,
) -> None:
    """mean Hit@K as in Sun et al. 2024: test windows query the train windows, averaged over
    classes."""
    from ethoprism.probe.retrieve.hitk import DEFAULT_KS, evaluate_stores

    r = evaluate_stores(
        store,
        labels,
        index_store=index_store,
        split=split,
        test_fraction=test_fraction,
        column=column or label_column,
        background=background,
        align=align.value,
        ks=tuple(k or DEFAULT_KS),
        fraction=fraction,
        runs=runs,
        seed=seed,
        scheduler=scheduler,
        storage_options=_cached(cache),
    )
    if as_json:
        print_json(r.to_dict())
    else:
        _print_hits(r)
    if r.absent:
        raise EthoprismError(
            f"class(es) {', '.join(r.absent)} have no window in the index, so their Hit@K is "
            "0 by construction and the mean is not a measurement; use a split whose index "
            "holds every queried class (--split, --test-fraction or --index-store)"
        )


def _print_hits(r) -> None:
    if r.weights:
        err_console.print(f"[bold yellow]{r.weights}[/]", highlight=False)
    table = Table(
        "",
        *[f"Hit@{k}" for k in r.ks],
        title=f"retrieval: {r.n_queries_per_run} of {r.n_queries} queries x {r.runs} run(s), "
        f"{r.n_index} index windows",
    )
    table.add_row("mean", *[f"{r.mean_hit[k]:.3f} ± {r.std_hit[k]:.3f}" for k in r.ks])
    table.add_row("random", *[f"{r.random[k]:.3f}" for k in r.ks])
    for name, per in r.per_class.items():
        table.add_row(
            f"  {name} ({r.index_count[name]} in index)", *[f"{per[k]:.3f}" for k in r.ks]
        )
    console.print(table)


@bench_app.command("retrieve")
def bench_retrieve(
    n: Annotated[
        int,
        typer.Option(
            help="Index embeddings (generated in memory; the default keeps the run within "
            "about 4 GB: 1000000 takes about 10 GB)."
        ),
    ] = 250_000,
    dim: Annotated[int, typer.Option(help="Embedding width.")] = 768,
    queries: Annotated[int, typer.Option(help="Queries searched at once.")] = 500,
    text_n: Annotated[
        int,
        typer.Option(
            help="Normalised text-aligned embeddings for the text-query figures (1000000 for an "
            "archive-sized figure: ~6 GB; 0 skips them)."
        ),
    ] = 250_000,
    prompts: Annotated[
        int, typer.Option(help="Prompts encoded by the videoprism-lvt-b text tower (0 skips).")
    ] = 1000,
    lvt_tower: Annotated[
        bool,
        typer.Option(
            help="Also time the videoprism-lvt-b video tower against the plain encoder at the "
            "base shape (16 x 288 x 288; minutes on a CPU)."
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Exact search vs FAISS IndexFlatL2 on the same embeddings (target >= 0.8x), and the IVF
    index's speedup over exact search and its recall@10; text queries/s over text-aligned
    embeddings (exact and IVF), prompts encoded/s, and the LvT video tower's extra cost."""
    from ethoprism.probe.retrieve.bench import bench_retrieve as run_bench
    from ethoprism.probe.retrieve.bench import bench_text_search

    r = {}
    if n:
        with err_console.status(f"bench retrieve: {n} embeddings of width {dim}, exact and FAISS"):
            r = run_bench(n=n, dim=dim, queries=queries)
    if text_n:
        with err_console.status(f"bench retrieve: text queries over {text_n} embeddings"):
            r.update(bench_text_search(n=text_n, dim=dim))
    if prompts or lvt_tower:
        from ethoprism.extract import lvt_bench

        if prompts:
            with err_console.status(f"bench retrieve: encoding {prompts} prompts"):
                r.update(lvt_bench.bench_prompts(n=prompts))
        if lvt_tower:
            with err_console.status("bench retrieve: the videoprism-lvt-b video tower"):
                r.update(lvt_bench.bench_video_tower())
    if as_json:
        print_json(r)
        return
    if n:
        print_figures(
            (
                f"bench retrieve: {r['n']} x {r['dim']} float32, {r['queries']} queries, "
                f"k {r['k']}, {r['threads']} threads"
            ),
            [
                ("exact (blocked GEMM)", f"{r['exact_queries_per_s']:.1f} queries/s"),
                ("FAISS IndexFlatL2", f"{r['faiss_flat_queries_per_s']:.1f} queries/s"),
                ("exact vs FAISS flat", f"{r['exact_vs_faiss_flat']:.2f}x  (target >= 0.8)"),
                ("same ids as FAISS", f"{r['same_ids_as_faiss']:.4f}"),
                (
                    "IVF-Flat",
                    (
                        f"nlist {r['ivf_nlist']}, nprobe {r['ivf_nprobe']}, "
                        f"built in {r['ivf_build_s']:.1f} s"
                    ),
                ),
                ("IVF speedup vs exact", f"{r['ivf_speedup_vs_exact']:.1f}x"),
                ("IVF recall@10", f"{r['ivf_recall_at_10']:.3f}"),
            ],
        )
    text = []
    if text_n:
        text += [
            (
                f"text queries, exact ({r['text_n']} x {dim})",
                f"{r['text_exact_queries_per_s']:.1f}/s",
            ),
            (
                f"text queries, IVF (nprobe {r['text_ivf_nprobe']})",
                f"{r['text_ivf_queries_per_s']:.1f}/s, recall@{r['text_k']} "
                f"{r['text_ivf_recall']:.3f}",
            ),
        ]
    if prompts:
        text.append(
            (
                f"prompts encoded ({r['model']})",
                f"{r['prompts_per_s']:.1f}/s ({r['prompts_per_cpu_s']:.1f} per CPU second; "
                f"{r['gflop_per_position']:.2f} GFLOP per token position); cached: "
                f"{r['prompts_per_s_warm_cache']:.0f}/s",
            )
        )
    if lvt_tower:
        text += [
            ("plain encoder, s/window", f"{r['plain_s_per_window']:.2f}"),
            ("LvT video tower, s/window", f"{r['lvt_s_per_window']:.2f}"),
            (
                "LvT extra cost per window",
                f"{100 * r['lvt_extra_time']:+.0f}% time, "
                f"{100 * r['lvt_extra_flops']:+.0f}% FLOPs ({r['lvt_extra_gflop']:.0f} GFLOP)",
            ),
        ]
    if text:
        print_figures("bench retrieve: text (video-text models)", text)


# --- probe ------------------------------------------------------------------------------------

probe_app = typer.Typer(
    help="Train heads on a store, predict per-frame ethograms, evaluate.", no_args_is_help=True
)
app.add_typer(probe_app, name="probe")


HeadDirArg = Annotated[
    str, typer.Argument(help="A saved head directory (from `probe train`: OUT/NAME).")
]


def _numbers(text: str, kind, what: str) -> tuple:
    try:
        return tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise EthoprismError(f"{what}: expected comma-separated numbers, got {text!r}") from None


def _training_progress():
    """A rich progress bar fed by probe.train's progress events."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeRemainingColumn(),
        console=err_console,
    )
    tasks = []  # added at the first step: nothing is shown before training starts

    def update(event: dict) -> None:
        if "step" in event:
            if not tasks:
                bar.start()  # a no-op inside `with bar`
                tasks.append(bar.add_task("train", total=event["steps"], epoch=1, loss="-"))
            bar.update(
                tasks[0],
                total=event["steps"],
                completed=event["step"],
                epoch=event["epoch"] + 1,
                loss=f"{event['loss']:.4f}",
            )
        elif any(v is not None for v in event["val_loss"]):
            vals = [v for v in event["val_loss"] if v is not None]
            bar.console.print(
                f"epoch {event['epoch'] + 1}: validation loss {min(vals):.4f}"
                + (f"..{max(vals):.4f}" if len(vals) > 1 else ""),
                highlight=False,
            )

    return bar, update


@probe_app.command("train")
def probe_train(
    store: StoreArg,
    labels: Annotated[
        str,
        typer.Argument(
            help=(
                "Label CSV: video,start_frame,end_frame,<label column>[,track] "
                "or video,<label column>."
            )
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out", help="Output directory: one folder per head (OUT/NAME) and summary.json."
        ),
    ],
    label_column: LabelColumnOpt = LABEL_COLUMN,
    background: BackgroundOpt = BACKGROUND,
    head: Annotated[Head, typer.Option(help="The head on the tokens or embedding.")] = Head.map,
    align: AlignOpt = Align.centre,
    multi_label: Annotated[
        bool, typer.Option(help="Frames may carry several labels (sigmoid loss).")
    ] = False,
    shots: Annotated[
        str, typer.Option(help="Few-shot sizes, e.g. 10,50,100 (k windows per class).")
    ] = "",
    seeds: Annotated[
        int, typer.Option(help="Seeds per setting (few-shot samples and initialisation).")
    ] = 1,
    lr: Annotated[
        str | None,
        typer.Option(
            help="Learning rate(s), comma-separated; one head per value. Default: try 5e-5, "
            "3e-4, 1e-3 and 3e-3 in the same pass and keep the lowest validation loss."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(help="Training epochs (cosine decay over them).")] = 30,
    batch_size: Annotated[
        int, typer.Option(help="Windows per minibatch, read once for all heads.")
    ] = 32,
    dropout: Annotated[float, typer.Option(help="Dropout before the classifier.")] = 0.5,
    balanced: Annotated[
        bool, typer.Option(help="Class-balanced loss for imbalanced labels.")
    ] = False,
    patience: Annotated[
        int, typer.Option(help="Early stopping patience in epochs (with a validation split).")
    ] = 5,
    test_fraction: Annotated[
        float, typer.Option(help="Share of labelled videos held out for testing.")
    ] = 0.25,
    val_fraction: Annotated[
        float | None,
        typer.Option(
            help="Share of labelled videos (or windows, split by time) for validation: early "
            "stopping and the learning rate choice. Default 0.2 without --lr, else 0."
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Split file: CSV video,split (train|val|test).")
    ] = None,
    split_seed: Annotated[int, typer.Option(help="Seed of the random split by video.")] = 0,
    as_json: JsonOpt = False,
    cache: CacheOpt = None,
) -> None:
    """Train heads on the store's tokens: one per few-shot size x seed x learning rate, in one pass.

    Videos are split whole into train / val / test; when that leaves a class without training
    windows, videos are kept in training per class, and with too few videos each class's last
    windows in time are held out (frames shared with held-out windows never trained on). Test
    metrics are per frame (window probabilities averaged over the windows covering each frame),
    mAP without the background, and always on held-out frames.
    """
    from ethoprism.probe.classify.jobs import train_probe

    shot_sizes, learning_rates = (
        _numbers(shots, int, "--shots"),
        _numbers(lr, float, "--lr") if lr is not None else None,
    )
    bar, update = _training_progress()
    with bar:
        summary = train_probe(
            store,
            labels,
            out,
            label_column=label_column,
            background=background,
            head=head.value,
            align=align.value,
            multi_label=multi_label,
            shots=shot_sizes,
            seeds=seeds,
            learning_rates=learning_rates,
            epochs=epochs,
            batch_size=batch_size,
            dropout=dropout,
            balanced=balanced,
            patience=patience,
            test_fraction=test_fraction,
            val_fraction=val_fraction,
            split=split,
            split_seed=split_seed,
            progress=update,
            storage_options=_cached(cache),
        )
    if as_json:
        print_json(summary)
        return
    if summary["weights"]:
        err_console.print(f"[bold yellow]{summary['weights']}[/]", highlight=False)
    n = summary["n_windows"]
    console.print(
        f"split {summary['split_how']}: {n['train']} training, {n['val']} validation, "
        f"{n['test']} test windows ({n['gap']} left out beside held-out ones)",
        highlight=False,
    )
    for h in summary["heads"]:
        choice = h["learning_rate_choice"]
        if choice:
            tried = ", ".join(
                f"{lr} ({'-' if v is None else f'{v:.4f}'})"
                for lr, v in choice["candidates"].items()
            )
            console.print(
                f"{h['name']}: learning rate {choice['chosen']:g}, {choice['by']} among {tried}",
                highlight=False,
            )
    test_videos = ", ".join(summary["test_videos"]) or "none"
    table = Table(
        title=f"{len(summary['heads'])} head(s), classes {', '.join(summary['classes'])}; "
        f"metrics on {summary['metrics_on']}: {test_videos}"
    )
    for col in (
        "head",
        "mAP (held-out)",
        "macro acc (held-out)",
        "accuracy (held-out)",
        "saved in",
    ):
        table.add_column(col)

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    for h in summary["heads"]:
        t = h["test"] or {}
        table.add_row(
            h["name"],
            fmt(t.get("mAP")),
            fmt(t.get("macro_accuracy")),
            fmt(t.get("accuracy")),
            h["dir"],
        )
    console.print(table)
    for a in summary["aggregate"]:
        if a["n_seeds"] > 1:
            console.print(
                f"shots {a['shots'] or 'all'}, lr {a['learning_rate']:g}: "
                f"mAP {fmt(a['mAP']['mean'])} ± {fmt(a['mAP']['std'])} over {a['n_seeds']} seeds",
                highlight=False,
            )


@probe_app.command("predict")
def probe_predict(
    store: StoreArg,
    head: HeadDirArg,
    out: Annotated[
        str, typer.Option("--out", help="Output directory: VIDEO.csv and VIDEO.png per video.")
    ],
    labels: Annotated[
        str | None, typer.Option(help="Expert labels to draw above the predictions.")
    ] = None,
    video: Annotated[
        list[str] | None, typer.Option(help="Only this video (file name); repeatable.")
    ] = None,
    as_json: JsonOpt = False,
    cache: CacheOpt = None,
) -> None:
    """Per-frame ethogram of each video: CSV (frame, time, label, probabilities) and a PNG strip."""
    from ethoprism.probe.classify.jobs import predict_store

    r = predict_store(store, head, out, labels=labels, videos=video, storage_options=_cached(cache))
    if as_json:
        print_json(r)
        return
    for v in r["videos"]:
        console.print(
            f"{v['video']}: {v['frames']} frames -> {v['csv']}, {v['png']}", highlight=False
        )


@probe_app.command("eval")
def probe_eval(
    store: StoreArg,
    head: HeadDirArg,
    labels: Annotated[str, typer.Argument(help="Expert label CSV (same format as for training).")],
    out: Annotated[
        str, typer.Option("--out", help="Output directory: metrics.json and confusion.png.")
    ],
    videos: Annotated[
        Videos,
        typer.Option(
            help="test: the head's held-out videos and frames (its training videos, labelled "
            "so, when it has none); all: every labelled video."
        ),
    ] = Videos.test,
    as_json: JsonOpt = False,
    cache: CacheOpt = None,
) -> None:
    """mAP (behaviours of interest, no background), macro accuracy, accuracy, per-class F1,
    confusion matrix; each says whether it is held-out or training (not held out)."""
    from ethoprism.probe.classify.jobs import evaluate_head

    r = evaluate_head(store, head, labels, out, videos=videos.value, storage_options=_cached(cache))
    if as_json:
        print_json(r)
        return

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    if r["weights"]:
        err_console.print(f"[bold yellow]{r['weights']}[/]", highlight=False)
    if r["note"]:
        err_console.print(f"[yellow]{r['note']}[/]", highlight=False)
    console.print(
        f"{r['head']} on {', '.join(r['videos'])} ({r['n']} frames or clips), "
        f"{r['evaluated_on']}: mAP {fmt(r['mAP'])}, "
        f"macro accuracy {fmt(r['macro_accuracy'])}, accuracy {fmt(r['accuracy'])}",
        highlight=False,
    )
    table = Table()
    for col in ("class", "AP", "F1"):
        table.add_column(col)
    for c in r["classes"]:
        table.add_row(c, fmt(r["average_precision"][c]), fmt(r["f1"][c]))
    console.print(table)
    console.print(f"confusion matrix: {r['confusion_png']}", highlight=False)


@probe_app.command("zero-shot")
def probe_zero_shot(
    store: StoreArg,
    classes: Annotated[
        str, typer.Option(help="Comma-separated class names; each becomes one text prompt.")
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            help="Output directory: VIDEO.csv and VIDEO.png per video, labels.csv, and with "
            "--labels metrics.json and confusion.png.",
        ),
    ],
    labels: Annotated[
        str | None, typer.Option(help="Expert labels: drawn above the ethogram and scored.")
    ] = None,
    label_column: LabelColumnOpt = LABEL_COLUMN,
    background: BackgroundOpt = BACKGROUND,
    template: Annotated[
        str, typer.Option(help="How each class name is wrapped ('{}' keeps it as is).")
    ] = "a video of {}.",
    video: Annotated[
        list[str] | None, typer.Option(help="Only this video (file name); repeatable.")
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option(help="The store's LvT weights (offline; else the hub's).")
    ] = None,
    tokenizer: Annotated[
        str | None, typer.Option(help="SentencePiece model (offline; else downloaded once).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Zero-shot ethogram of a videoprism-lvt store: every window scored against one text prompt
    per class, averaged per frame like a trained head; with --labels, the metrics of `probe
    eval`. labels.csv holds the result as a label file to correct and train on."""
    from ethoprism.probe.classify.zeroshot import zero_shot

    r = zero_shot(
        store,
        classes.split(","),
        out,
        labels=labels,
        column=label_column,
        background=background,
        template=template,
        checkpoint=checkpoint,
        tokenizer=tokenizer,
        videos=video,
    )
    if as_json:
        print_json(r)
        return
    for v in r["videos"]:
        console.print(
            f"{v['video']}: {v['frames']} frames -> {v['csv']}, {v['png']}", highlight=False
        )
    console.print(f"labels file: {r['labels_file']}", highlight=False)
    if "metrics" in r:
        m = r["metrics"]
        console.print(
            f"mAP {m['mAP']:.3f}, macro accuracy {m['macro_accuracy']:.3f}, accuracy "
            f"{m['accuracy']:.3f} over {m['n']} frames; confusion matrix: {m['confusion_png']}",
            highlight=False,
        )


@probe_app.command("publish")
def probe_publish(
    head: Annotated[str, typer.Argument(help="A trained head's directory (heads/NAME).")],
    dest: Annotated[
        str, typer.Argument(help="Where to: a directory, s3://bucket/prefix or an fsspec URL.")
    ],
    as_json: JsonOpt = False,
) -> None:
    """Publish a trained head with its provenance and a manifest, for other labs.

    Its provenance travels in head.json: the training store's identity, the label file's
    sha256 and label names, hyperparameters and metrics. Others run it with
    `ethoprism probe predict STORE URL` on any store of a compatible identity.
    """
    from ethoprism.probe.share import publish_head

    r = publish_head(head, dest)
    if as_json:
        print_json(r)
    else:
        console.print(
            f"published head {r['name']} ({', '.join(r['classes'])}) to {dest}", highlight=False
        )


@bench_app.command("probe")
def bench_probe(
    windows: Annotated[int, typer.Option(help="Windows in the temporary store.")] = 64,
    heads: Annotated[int, typer.Option(help="Heads trained together.")] = 16,
    batch_size: Annotated[int, typer.Option(help="Windows per minibatch.")] = 16,
    small: Annotated[
        bool, typer.Option(help="Token shape (16, 4, 4, 96) instead of the base (16, 16, 16, 768).")
    ] = False,
    directory: Annotated[
        str | None, typer.Option(help="Put the temporary store on this directory's disk.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """MAP heads: N heads together vs 1 (target <= 3), epoch from the store vs from memory
    (target <= 1.3), training windows/s at the base token shape."""
    from ethoprism.probe.classify.bench import bench_probe as run_bench

    with err_console.status("bench probe") as status:
        r = run_bench(
            windows=windows,
            heads=heads,
            batch_size=batch_size,
            shape=(16, 4, 4, 96) if small else (16, 16, 16, 768),
            directory=directory,
            stage=lambda what: status.update(f"bench probe: {what}"),
        )
    if as_json:
        print_json(r)
        return
    t = r["epoch_seconds"]
    console.print(
        f"bench probe: {r['windows']} windows of tokens {tuple(r['token_shape'])}, "
        f"batch {r['batch_size']}, MAP with {r['attention_heads']} attention heads",
        highlight=False,
    )
    n = r["heads"]
    console.print(
        f"epoch of 1 head: {t['store_1']:.2f} s from the store, {t['memory_1']:.2f} s from memory; "
        f"{n} heads: {t[f'store_{n}']:.2f} s / {t[f'memory_{n}']:.2f} s",
        highlight=False,
    )
    console.print(
        f"{r['heads']} heads together / 1 head: {r['many_vs_one']:.2f}x (target <= 3); "
        f"first epoch, with setup: {r['many_vs_one_first_epoch']:.2f}x",
        highlight=False,
    )
    console.print(
        f"epoch from the store / from memory ({r['heads']} heads): {r['store_vs_memory']:.2f}x "
        f"(target <= 1.3); with 1 head {r['store_vs_memory_one_head']:.2f}x",
        highlight=False,
    )
    console.print(
        f"MAP training: {r['windows_per_s_one_head']:.1f} windows/s for 1 head, "
        f"{r['head_windows_per_s_many']:.1f} head-windows/s for {r['heads']}",
        highlight=False,
    )


# --- encoder models ---------------------------------------------------------------------------


@app.command()
def models(as_json: JsonOpt = False) -> None:
    """List the encoder configs and whether their weights are on this machine (no network)."""
    from ethoprism.extract.weights import list_models

    rows = list_models()
    if as_json:
        print_json(rows)
        return
    table = Table()
    for col in ("model", "frames", "image", "dim", "layers (s+t)", "params", "weights"):
        table.add_column(col)
    for r in rows:
        where = r["weights"] or (
            f"not cached: {r['hf_repo']}/{r['hf_filename']}"
            if r["hf_repo"]
            else "none published (checkpoint=PATH or random)"
        )
        table.add_row(
            r["name"],
            str(r["frames"]),
            f"{r['image_size']}px",
            str(r["model_dim"]),
            f"{r['spatial_layers']}+{r['temporal_layers']}",
            f"{r['params'] / 1e6:.1f}M",
            where,
        )
    console.print(table)


@bench_app.command("encoder")
def bench_encoder(
    model: ModelOpt = "videoprism-b",
    batch: Annotated[int, typer.Option(help="Windows per call.")] = 1,
    dtype: DtypeOpt = Dtype.float32,
    rounds: Annotated[
        int, typer.Option(help="Timed rounds, each a matmul-peak measurement then one batch.")
    ] = 3,
    as_json: JsonOpt = False,
) -> None:
    """Encoder windows/s and GFLOP/s against this machine's float32 matmul peak, measured in the
    same run. FLOPs are counted analytically: 2*m*n*k per matmul (projections, MLP, attention
    scores and values); the peak is the best jit-compiled 2048^3 jnp.dot of each round."""
    from ethoprism.extract.bench import bench_encoder as run_bench

    r = run_bench(model=model, batch=batch, dtype=dtype.value, rounds=rounds)
    if as_json:
        print_json(r)
        return
    console.print(
        f"bench encoder: {r['model']} {r['dtype']}, input {tuple(r['input_shape'])}, "
        f"{r['gflop_per_window']:.4g} GFLOP per window ({r['flops']})",
        highlight=False,
    )
    for i, x in enumerate(r["rounds"]):
        console.print(
            f"round {i + 1}: {x['windows_per_s']:.4f} windows/s, {x['gflops']:.1f} GFLOP/s, "
            f"matmul peak {x['peak_gflops']:.1f} GFLOP/s, ratio {x['ratio']:.2f} "
            f"(per CPU second {x['cpu_ratio']:.2f})",
            highlight=False,
        )
    console.print(
        f"median round ({r['median_round']}): {r['windows_per_s']:.4f} windows/s, "
        f"{r['gflops']:.1f} GFLOP/s = {r['ratio']:.0%} of the measured matmul peak "
        f"{r['peak_gflops']:.1f} GFLOP/s "
        f"(best round {r['best_ratio']:.0%}; target >= 60%); per CPU second {r['cpu_ratio']:.0%}",
        highlight=False,
    )
    if r["dtype"] != "float32":
        console.print(
            f"{r['dtype']} vs float32 in the same rounds: {r['speedup_vs_float32']:.2f}x the speed "
            f"(target >= 1)",
            highlight=False,
        )


# --- the main job -----------------------------------------------------------------------------


@app.command()
def demo(
    out: Annotated[
        str, typer.Option(help="Folder for the store, the head, ethograms and metrics.")
    ] = "out",
    as_json: JsonOpt = False,
) -> None:
    """Extract the bundled MammAlps clips, train a MAP head on their labels, write ethograms.

    Uses VideoPrism-B when its weights are on this machine (see `ethoprism models`), else the
    tiny encoder with random weights, which runs everything but learns nothing meaningful.
    """
    from ethoprism.pipeline.demo import check_out, choose_encoder, run_demo
    from ethoprism.pipeline.progress import RichReporter

    check_out(out)
    choice = choose_encoder()
    if not choice.real:
        err_console.print(
            "[bold yellow]No VideoPrism weights on this machine: using the TINY encoder with "
            "RANDOM weights.[/] The pipeline runs end to end, but the features and metrics mean "
            "nothing. See README 'Getting the VideoPrism weights'.",
            highlight=False,
        )
    reporter = None if as_json else RichReporter(console=err_console)
    bar, update = _training_progress()

    def stage(text: str) -> None:
        bar.stop()  # training's display, once training is over
        if not as_json:
            err_console.print(f"[bold]demo:[/] {text}", highlight=False)

    try:
        result = run_demo(
            out,
            reporter=reporter,
            stage=stage,
            training_progress=None if as_json else update,
        )
    finally:
        if reporter is not None:
            reporter.stop()
        bar.stop()
    if as_json:
        print_json(result)
        return
    m = result["metrics"]
    print_figures(
        "ethoprism demo",
        [
            (
                "encoder",
                f"{choice.model} ({'official weights' if choice.real else 'RANDOM weights'})",
            ),
            (
                "store",
                f"{result['store']}: {result['store_windows']} windows "
                f"({result['extraction']['windows']} extracted by this run)",
            ),
            ("head", result["head"]),
            ("classes", ", ".join(result["classes"])),
            *[("ethogram", f"{e['csv']}  {e['png']}") for e in result["ethograms"]],
            (
                "learning rate",
                f"{result['learning_rate']['chosen']:g} ({result['learning_rate']['by']})",
            ),
            ("split", result["split"]),
            (
                f"metrics ({m['evaluated_on']})",
                (
                    f"mAP {m['mAP']:.3f}, accuracy {m['accuracy']:.3f}, "
                    f"macro accuracy {m['macro_accuracy']:.3f}"
                    + (f" — {m['weights'].upper()}" if m["weights"] else "")
                ),
            ),
            ("confusion matrix", m["confusion_png"]),
        ],
    )


# --- localization -----------------------------------------------------------------------------

localize_app = typer.Typer(
    help="Detection heads on per-frame token maps: train from boxes, predict boxes, COCO AP.",
    no_args_is_help=True,
)
app.add_typer(localize_app, name="localize")
AnnotationsArg = Annotated[
    str,
    typer.Argument(
        help="Boxes: COCO JSON, CSV video,frame,track,class,x,y,w,h, or MammAlps per-frame JSON."
    ),
]
DetectorArg = Annotated[str, typer.Argument(help="A detector directory from `localize train`.")]
ClassFieldOpt = Annotated[
    str, typer.Option(help="MammAlps JSON: the detection attribute that is the class.")
]


def _warn(messages: list[str]) -> None:
    for m in messages:
        err_console.print(f"[yellow]warning:[/] {m}", highlight=False)


@localize_app.command("train")
def localize_train(
    store: StoreArg,
    annotations: AnnotationsArg,
    out: Annotated[str, typer.Option("--out", help="Directory for the trained detector.")],
    epochs: Annotated[int, typer.Option(help="Passes over the annotated frames.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Frames per step.")] = 64,
    learning_rate: Annotated[
        float, typer.Option(help="Peak learning rate (after a 10% linear warm-up; cosine to 0).")
    ] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 1e-5,
    dim: Annotated[int, typer.Option(help="Channels of the pyramid levels and the head.")] = 128,
    class_field: ClassFieldOpt = "species",
    seed: Annotated[int, typer.Option(help="Initialisation and shuffling seed.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Train a detector (simple feature pyramid + anchor-free head) on the token maps of the
    annotated frames; each frame i is read from the window covering frames i-7..i+8."""
    from rich.progress import Progress

    from ethoprism.probe.localize.train import TrainConfig, train_detector

    cfg = TrainConfig(epochs, batch_size, learning_rate, weight_decay, seed=seed)
    with Progress(console=err_console, disable=as_json) as bar:
        task = bar.add_task("training", total=None)

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, total=total, completed=step, description=f"loss {loss:.4f}")

        r = train_detector(
            store, annotations, out, cfg, dim=dim, class_field=class_field, progress=progress
        )
    _warn(r["warnings"])
    if as_json:
        print_json(r)
        return
    console.print(
        f"detector for {', '.join(r['classes'])}: {r['frames']} frames, {r['boxes']} boxes, "
        f"{r['steps']} steps in {r['seconds']:.1f} s, final loss {r['loss']:.4f} -> {r['out']}",
        highlight=False,
    )


@localize_app.command("predict")
def localize_predict(
    store: StoreArg,
    detector: DetectorArg,
    out: Annotated[str, typer.Option("--out", help="Output directory.")],
    video: Annotated[
        str | None,
        typer.Option(help="Boxes for every frame of this video (file name), and a PNG strip."),
    ] = None,
    annotations: Annotated[
        str | None, typer.Option(help="Boxes for the frames this annotation file names.")
    ] = None,
    strip: Annotated[int, typer.Option(help="Frames in the PNG strip.")] = 8,
    class_field: ClassFieldOpt = "species",
    as_json: JsonOpt = False,
) -> None:
    """Predicted boxes as boxes.csv (video, frame, class, score, x, y, w, h in original pixels)
    and detections.json (COCO results)."""
    from ethoprism.probe.localize import predict

    if (video is None) == (annotations is None):
        raise EthoprismError("give exactly one of --video or --annotations")
    if video is not None:
        r = predict.predict_video(store, detector, video, out, strip=strip)
    else:
        r = predict.predict_annotated(store, detector, annotations, out, class_field)
    if as_json:
        print_json(r)
        return
    console.print(f"{r['detections']} boxes on {r['frames']} frames -> {out}", highlight=False)


@localize_app.command("eval")
def localize_eval(
    store: StoreArg,
    detector: DetectorArg,
    annotations: AnnotationsArg,
    out: Annotated[
        str, typer.Option("--out", help="Directory: metrics.json, detections, PR curves PNG.")
    ],
    class_field: ClassFieldOpt = "species",
    as_json: JsonOpt = False,
) -> None:
    """COCO AP@[.5:.95], AP50 and AP75 (pycocotools) on the annotated frames, and the
    precision-recall curves at IoU 0.5 and 0.75."""
    from ethoprism.probe.localize.evaluate import evaluate

    r = evaluate(store, detector, annotations, out, class_field)
    _warn(r["warnings"])
    if as_json:
        print_json(r)
        return
    console.print(
        f"{r['frames']} frames, {r['boxes']} boxes: AP {r['AP']:.3f}, AP50 {r['AP50']:.3f}, "
        f"AP75 {r['AP75']:.3f}; PR curves {r['files'][2]}",
        highlight=False,
    )


@bench_app.command("localize")
def bench_localize(
    small: Annotated[
        bool, typer.Option(help="Token map (4, 4, 64) instead of the base (16, 16, 768).")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Frames per training step.")] = 16,
    as_json: JsonOpt = False,
) -> None:
    """Detector training steps/s and inference frames/s at the base token map, and the head's
    inference time per window over the encoder's (target <= 5%)."""
    from ethoprism.probe.localize.bench import bench_localize as run_bench

    r = run_bench(small=small, batch_size=batch_size)
    if as_json:
        print_json(r)
        return
    print_figures(
        f"bench localize: token map {tuple(r['map_shape'])}, {r['model']} encoder",
        [
            ("training", f"{r['train_steps_per_s']:.2f} steps/s (batch {r['batch_size']})"),
            ("inference", f"{r['frames_per_s']:.1f} frames/s"),
            ("encoder", f"{r['encoder_windows_per_s']:.2f} windows/s"),
            ("head / encoder per window", f"{100 * r['head_vs_encoder']:.2f}% (target <= 5%)"),
        ],
    )
