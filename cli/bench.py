"""`ethoprism bench ...`: speed as ratios measured in one run on this machine."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ethoprism.cli.boundary import console, err_console, numbers, print_figures, print_json
from ethoprism.cli.options import Dtype, DtypeOpt, JsonOpt, ModelOpt

app = typer.Typer(
    rich_markup_mode="markdown",
    help="Measure speed as ratios taken in one run on this machine.",
    no_args_is_help=True,
)


@app.command("extract")
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


@app.command("host")
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


@app.command("share")
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


@app.command("store")
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


@app.command("retrieve")
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


@app.command("probe")
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


@app.command("encoder")
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


@app.command("localize")
def bench_localize(
    small: Annotated[
        bool, typer.Option(help="Token map (4, 4, 64) instead of the base (16, 16, 768).")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Frames per training step.")] = 16,
    as_json: JsonOpt = False,
) -> None:
    """Detector training steps/s and inference frames/s at the base token map, and the head's
    inference time per window over the encoder's (target <= 5%)."""
    from ethoprism.pipeline.localize_bench import bench_localize as run_bench

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
