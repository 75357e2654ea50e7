"""`ethoprism demo`: the main job on the bundled clips."""

from __future__ import annotations

from typing import Annotated

import typer

from ethoprism.cli.boundary import err_console, print_figures, print_json
from ethoprism.cli.options import JsonOpt
from ethoprism.cli.progress import training_progress


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
    bar, update = training_progress()

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
