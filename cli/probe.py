"""`ethoprism probe ...`: heads on a store's tokens, per-frame ethograms, metrics."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ethoprism.cli.boundary import cached, caution, console, err_console, numbers, print_json
from ethoprism.cli.options import (
    BACKGROUND,
    LABEL_COLUMN,
    Align,
    AlignOpt,
    BackgroundOpt,
    CacheOpt,
    Head,
    JsonOpt,
    LabelColumnOpt,
    StoreArg,
    VideoFilterOpt,
    Videos,
)
from ethoprism.cli.progress import training_progress

app = typer.Typer(
    rich_markup_mode="markdown",
    help="Train heads on a store, predict per-frame ethograms, evaluate.",
    no_args_is_help=True,
)


HeadDirArg = Annotated[
    str, typer.Argument(help="A saved head directory (from `probe train`: OUT/NAME).")
]


def _score(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _print_ethograms(videos: list[dict]) -> None:
    for v in videos:
        console.print(
            f"{v['video']}: {v['frames']} frames -> {v['csv']}, {v['png']}", highlight=False
        )


def _print_trained(summary: dict) -> None:
    caution(summary["weights"])
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
    for h in summary["heads"]:
        t = h["test"] or {}
        table.add_row(
            h["name"],
            _score(t.get("mAP")),
            _score(t.get("macro_accuracy")),
            _score(t.get("accuracy")),
            h["dir"],
        )
    console.print(table)
    for a in summary["aggregate"]:
        if a["n_seeds"] > 1:
            console.print(
                f"shots {a['shots'] or 'all'}, lr {a['learning_rate']:g}: "
                f"mAP {_score(a['mAP']['mean'])} ± {_score(a['mAP']['std'])} "
                f"over {a['n_seeds']} seeds",
                highlight=False,
            )


@app.command("train")
def probe_train(
    store: StoreArg,
    labels: Annotated[
        str,
        typer.Argument(
            help=(
                "Label CSV: `video,start_frame,end_frame,<label column>[,track]` "
                "or `video,<label column>`."
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
        numbers(shots, int, "--shots"),
        numbers(lr, float, "--lr") if lr is not None else None,
    )
    bar, update = training_progress()
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
            storage_options=cached(cache),
        )
    if as_json:
        print_json(summary)
        return
    _print_trained(summary)


@app.command("predict")
def probe_predict(
    store: StoreArg,
    head: HeadDirArg,
    out: Annotated[
        str, typer.Option("--out", help="Output directory: VIDEO.csv and VIDEO.png per video.")
    ],
    labels: Annotated[
        str | None, typer.Option(help="Expert labels to draw above the predictions.")
    ] = None,
    video: VideoFilterOpt = None,
    as_json: JsonOpt = False,
    cache: CacheOpt = None,
) -> None:
    """Per-frame ethogram of each video: CSV (frame, time, label, probabilities) and a PNG strip."""
    from ethoprism.probe.classify.jobs import predict_store

    r = predict_store(store, head, out, labels=labels, videos=video, storage_options=cached(cache))
    if as_json:
        print_json(r)
        return
    _print_ethograms(r["videos"])


@app.command("eval")
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

    r = evaluate_head(store, head, labels, out, videos=videos.value, storage_options=cached(cache))
    if as_json:
        print_json(r)
        return
    caution(r["weights"])
    if r["note"]:
        err_console.print(f"[yellow]{r['note']}[/]", highlight=False)
    console.print(
        f"{r['head']} on {', '.join(r['videos'])} ({r['n']} frames or clips), "
        f"{r['evaluated_on']}: mAP {_score(r['mAP'])}, "
        f"macro accuracy {_score(r['macro_accuracy'])}, accuracy {_score(r['accuracy'])}",
        highlight=False,
    )
    table = Table()
    for col in ("class", "AP", "F1"):
        table.add_column(col)
    for c in r["classes"]:
        table.add_row(c, _score(r["average_precision"][c]), _score(r["f1"][c]))
    console.print(table)
    console.print(f"confusion matrix: {r['confusion_png']}", highlight=False)


@app.command("zero-shot")
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
    video: VideoFilterOpt = None,
    checkpoint: Annotated[
        str | None,
        typer.Option(help="The store's LvT weights; else $ETHOPRISM_CHECKPOINT, else the hub's."),
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
    _print_ethograms(r["videos"])
    console.print(f"labels file: {r['labels_file']}", highlight=False)
    if "metrics" in r:
        m = r["metrics"]
        console.print(
            f"mAP {m['mAP']:.3f}, macro accuracy {m['macro_accuracy']:.3f}, accuracy "
            f"{m['accuracy']:.3f} over {m['n']} frames; confusion matrix: {m['confusion_png']}",
            highlight=False,
        )


@app.command("publish")
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
