"""Figures: an ethogram strip of predictions against expert labels (the paper's Fig. 3) and a
confusion matrix. matplotlib figures drawn by the Agg canvas (no backend chosen for the
process, no pyplot state), written as PNG."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch


def _palette(n: int) -> list:
    base = matplotlib.colormaps["tab20"].colors
    return [base[i % len(base)] for i in range(n)]


def ethogram_png(
    path: str | os.PathLike,
    classes: list[str],
    predicted: np.ndarray,
    expert: np.ndarray | None = None,
    fps: float | None = None,
    title: str = "",
    background: str | None = None,
) -> Path:
    """Strips of per-frame class indices (-1: no label / not covered, drawn white; background
    grey)."""
    path = Path(path)
    rows = [("expert", expert)] if expert is not None else []
    rows.append(("predicted", predicted))
    colours = [
        "white",
        *(
            ("lightgrey" if c == background else p)
            for c, p in zip(classes, _palette(len(classes)), strict=False)
        ),
    ]
    cmap = ListedColormap(colours)
    n = len(predicted)
    fig = Figure(figsize=(10, 0.6 * len(rows) + 1.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 1, squeeze=False, sharex=True)
    extent_end = n / fps if fps else n
    for ax, (name, strip) in zip(axes[:, 0], rows, strict=False):
        ax.imshow(
            np.asarray(strip)[None] + 1,
            aspect="auto",
            cmap=cmap,
            vmin=0,
            vmax=len(colours) - 1,
            interpolation="nearest",
            extent=(0, extent_end, 0, 1),
        )
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    axes[-1, 0].set_xlabel("time (s)" if fps else "frame")
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.legend(
        handles=[Patch(color=c, label=k) for c, k in zip(colours[1:], classes, strict=False)],
        loc="lower center",
        ncol=min(len(classes), 6),
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.18, 1, 1))
    fig.savefig(path, dpi=120)
    return path


def confusion_png(
    path: str | os.PathLike, confusion: np.ndarray, classes: list[str], title: str = ""
) -> Path:
    """Row-normalised confusion matrix (colour, labelled on the colour bar) with the counts
    written in the cells."""
    path = Path(path)
    fig = confusion_figure(confusion, classes, title)
    fig.savefig(path, dpi=120)
    return path


def confusion_figure(confusion: np.ndarray, classes: list[str], title: str = ""):
    """The figure of `confusion_png`: a plain Figure with an Agg canvas, not kept by pyplot."""
    cm = np.asarray(confusion)
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, float), where=rows > 0)
    size = 1.2 + 0.5 * len(classes)
    fig = Figure(figsize=(size + 1, size))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("expert")
    for i, j in np.ndindex(cm.shape):
        ax.text(
            j,
            i,
            str(cm[i, j]),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if norm[i, j] > 0.5 else "black",
        )
    bar = fig.colorbar(im, ax=ax, fraction=0.046)
    bar.set_label("colour: fraction of the expert row; numbers: counts", fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
