"""`ethoprism localize ...`: detection heads on per-frame token maps."""

from __future__ import annotations

from typing import Annotated

import typer

from ethoprism.cli.boundary import console, err_console, print_json
from ethoprism.cli.options import JsonOpt, StoreArg
from ethoprism.errors import EthoprismError

app = typer.Typer(
    rich_markup_mode="markdown",
    help="Detection heads on per-frame token maps: train from boxes, predict boxes, COCO AP.",
    no_args_is_help=True,
)


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


@app.command("train")
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


@app.command("predict")
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


@app.command("eval")
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
