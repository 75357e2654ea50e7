"""`ethoprism bench extract | host | encoder`: the extraction pipeline end to end, the host's CPU
per window, and the encoder against the machine's matmul peak."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ethoprism.cli.boundary import console, print_figures, print_json
from ethoprism.cli.options import Dtype, DtypeOpt, JsonOpt, ModelOpt


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

    Targets: pipeline efficiency >= 0.9 on videoprism-b (compute dominates); decode+resize at
    least 0.5x raw decode. Run it with --model videoprism-tiny to see a decode-bound pipeline.
    """
    from ethoprism.pipeline.bench import bench_extract as run_bench
    from ethoprism.pipeline.demo import VIDEOS

    video = video or str(VIDEOS[0])  # the bundled deer clip
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


def bench_host(
    model: Annotated[str, typer.Option(help="Encoder config (sets the token shape).")] = (
        "videoprism-b"
    ),
    frames: Annotated[int, typer.Option(help="Frames decoded per clip and repeat.")] = 96,
    windows: Annotated[int, typer.Option(help="Windows through the store's stages.")] = 32,
    repeats: Annotated[
        int,
        typer.Option(help="Alternating decode and decode+convert runs per clip (median counts)."),
    ] = 5,
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

    Measured in one run (CPU time of this process, all threads) on 384p, 720p and 1080p H.264,
    720p MJPEG (also as area-lowres) and 720p gray FFV1 (also as RGB) clips: decode, colour
    conversion + resize, batching, token check, compression, checksum, disk write; totals at
    stride 8 and 16. Targets: decode + convert + resize <= 1.25x decode alone; everything after
    decoding <= 5 ms per window. The NVDEC column is an estimate: demuxing replaces decoding and
    conversion.
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
            f"({r['accelerator']['source']}); NVDEC: estimated; 1 video: the most one video "
            "feeds (its decode worker's thread; the pool feeds one video at a time)",
        )
        short = ("decode", "conv", "batch", "check", "compr", "crc", "write")  # STAGES, narrow
        columns = ("source", *short, "total", "cores/100w/s", "cores", "NVDEC cores", "1 video w/s")
        for col in columns:
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
                f"{x['one_video_windows_per_s']:.0f}",
            )
        console.print(table)
    rows = [
        (
            f"{label}: decode+convert / decode",
            f"{clip['decode_convert_vs_decode']:.2f}  (target <= 1.25; pairs "
            "{:.2f}-{:.2f}; ".format(*clip["decode_convert_vs_decode_range"])
            + f"decode {clip['decode_ms_per_frame']:.2f} ms/frame)",
        )
        for label, clip in r["clips"].items()
    ]
    after = r["strides"][next(iter(r["strides"]))]["after_decode_ms"]
    rows.append(("after decoding", f"{after:.1f} ms/window  (target <= 5)"))
    rows.append(("store writer, whole", f"{r['store']['writer_ms_per_window']:.1f} ms/window"))
    print_figures("bench host: targets", rows)


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
    same run. FLOPs are counted analytically: `2*m*n*k` per matmul (projections, MLP, attention
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
