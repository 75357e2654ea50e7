"""`ethoprism extract` and `ethoprism models`: encode an archive into a store; the encoders."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from ethoprism.cli.boundary import console, err_console, print_figures, print_json
from ethoprism.cli.options import (
    CheckpointOpt,
    Decoder,
    Dtype,
    Interpolation,
    JsonOpt,
    Resize,
    SchedulerOpt,
    TokenLayout,
)


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


def _print_plan(plan) -> None:
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
    if plan.one_video_windows_per_s is not None:
        starved = plan.one_video_windows_per_s < plan.windows_per_s
        console.print(
            f"videos are fed one at a time: the slowest source's video feeds at most about "
            f"{plan.one_video_windows_per_s:.0f} windows/s"
            + ("; [yellow]the encoder would wait for it[/]" if starved else "")
        )


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
        Interpolation | None,
        typer.Option(
            help="Resize filter: area, bilinear (stores made before area was the default), "
            "bicubic, or area-lowres (MJPEG of at least twice the frame size decoded smaller "
            "by its decoder: less CPU on some CPUs, more on others, see `bench host`); part of "
            "the store's identity. Default: the store's, "
            "else area."
        ),
    ] = None,
    layout: Annotated[
        TokenLayout | None,
        typer.Option(
            help="Token storage: float16-round7 (default), float16, float16-uncompressed "
            "(least CPU, 23% more disk) or int8."
        ),
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
        Decoder,
        typer.Option(
            help="auto (the GPU's NVDEC where a CUDA device and PyNvVideoCodec are present and "
            "the store allows its frames), cpu (FFmpeg) or nvdec."
        ),
    ] = Decoder.auto,
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
    from ethoprism.pipeline.config import centred_on, config_for_store
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
            interpolation=interpolation.value if interpolation else None,
        ),
        layout=dict(dtype=layout.value if layout else None, pool=pool),
        batch_size=batch_size,
        decode_workers=decode_workers,
        piece_seconds=save_every,
        decoder=decoder.value,
        **centred_on(frames_from),
    )
    if dry_run:
        plan = plan_run(pipeline_extract.run_paths(archive, cfg), cfg, store_path=store)
        if as_json:
            print_json(plan.to_dict())
        else:
            _print_plan(plan)
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


def models(as_json: JsonOpt = False) -> None:
    """List the encoder configs and whether their weights are on this machine (no network)."""
    from ethoprism.extract.models import list_models

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
