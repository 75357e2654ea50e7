"""`ethoprism retrieve ...`: nearest windows of moments, clips or text; Hit@K."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ethoprism.cli.boundary import cached, caution, console, print_json
from ethoprism.cli.options import (
    BACKGROUND,
    LABEL_COLUMN,
    Align,
    AlignOpt,
    CacheOpt,
    CheckpointOpt,
    ColumnAliasOpt,
    IndexDirOpt,
    JsonOpt,
    LabelColumnOpt,
    SchedulerOpt,
    StoreArg,
)
from ethoprism.errors import EthoprismError

app = typer.Typer(
    rich_markup_mode="markdown",
    help="Find similar moments by nearest neighbours on window embeddings.",
    no_args_is_help=True,
)


@app.command("query")
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
    index_path: IndexDirOpt = None,
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
        "index_path": index_path,
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
            storage_options=cached(cache),
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

    caution(weights_warning(identity(result.index)))
    source = result.index.attrs.get("source", index_store or store)
    _print_neighbours(rows, f"nearest windows in {source}", "cosine" if text else "distance")
    if sheet:
        console.print(f"contact sheet: {sheet}", highlight=False)


def _print_neighbours(rows: list[dict], title: str, score: str) -> None:
    table = Table(
        "query", "rank", "video", "start time (s)", "start frame", "window", score, title=title
    )
    for r in rows:
        table.add_row(
            r["query"],
            str(r["rank"]),
            r["video"],
            f"{r['start_time']:.3f}",
            str(r["start_frame"]),
            str(r["window"]),
            f"{r[score]:.4g}",
        )
    console.print(table)


@app.command("build-index")
def retrieve_build_index(
    store: StoreArg,
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
    index_path: IndexDirOpt = None,
    as_json: JsonOpt = False,
    cache: CacheOpt = None,
) -> None:
    """Build the approximate (FAISS IVF-Flat) index of a store and report its recall@10 vs exact."""
    from dataclasses import asdict

    from ethoprism.probe.retrieve.ann import build_index, index_dir

    info = build_index(
        store, nlist=nlist, var=embedding, index_path=index_path, storage_options=cached(cache)
    )
    if as_json:
        print_json(asdict(info))
        return
    console.print(
        f"{index_dir(store, embedding, index_path)}: {info.kind}, {info.n_windows} windows, "
        f"nlist {info.nlist}, nprobe {info.nprobe}; recall@10 vs exact {info.recall_at_10:.3f} "
        f"on {info.recall_queries} windows; built in {info.build_seconds:.1f} s",
        highlight=False,
    )


@app.command("eval")
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
        storage_options=cached(cache),
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
    caution(r.weights)
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
