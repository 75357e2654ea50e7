"""`ethoprism bench retrieve | probe | localize`: the work done on cached features: search,
training heads, localization."""

from __future__ import annotations

from typing import Annotated

import typer

from ethoprism.cli.boundary import console, err_console, print_figures, print_json
from ethoprism.cli.options import JsonOpt


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
