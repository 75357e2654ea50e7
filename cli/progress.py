"""Rich progress bars fed by the library's progress callbacks (none under --json)."""

from __future__ import annotations

from ethoprism.cli.boundary import err_console


def training_progress():
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


def bytes_progress(what: str, shown: bool = True):
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
