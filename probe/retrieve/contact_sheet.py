"""Contact sheets of retrieval results (like Figs. 4-5 of Sun et al. 2024).

One row per query: its middle frame, then the middle frames of its nearest windows, each
titled with video, window start time and frame (the numbers of the results table), distance
and, when known, the behaviour label (green when it matches
the query's, red when not). The store holds no pixels: frames are read from the original video
files named in the store's video table, one frame per tile, by seeking; they are found with
`store.videos.VideoResolver` (recorded paths, then `videos_root`), and a sheet with videos that
cannot be found is refused, naming them. A frame that cannot be decoded becomes a grey tile
naming its file.
"""

from __future__ import annotations

import os

import av
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ethoprism.probe import defaults
from ethoprism.probe import labels as label_io
from ethoprism.probe.retrieve.hitk import table_for_store
from ethoprism.probe.retrieve.knn import Neighbours
from ethoprism.probe.retrieve.query import Query, QueryResult, middle_frame, window_start
from ethoprism.store import identity
from ethoprism.store.provenance import weights_warning
from ethoprism.store.videos import VideoResolver

TILE_HEIGHT = 180  # pixels of each frame in the sheet


class FrameUnavailable(Exception):
    """Why a tile shows no frame (missing file, unreadable file, time past the end)."""


def read_frame(path: str, seconds: float, height: int = TILE_HEIGHT) -> np.ndarray:
    """The RGB frame shown at `seconds` (pts time), scaled to `height`: seek, then decode
    forward."""
    if not os.path.exists(path):
        raise FrameUnavailable(f"missing file:\n{os.path.basename(path)}")
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            half = 0.5 / float(stream.average_rate or 25)
            container.seek(max(0, int(seconds / stream.time_base)), stream=stream, backward=True)
            shown = None
            for frame in container.decode(stream):
                if frame.time is not None and frame.time > seconds + half:
                    break
                shown = frame
            if shown is None:
                raise FrameUnavailable(f"no frame at {seconds:.2f} s in\n{os.path.basename(path)}")
            width = max(2, round(shown.width * height / shown.height / 2) * 2)
            return shown.to_ndarray(format="rgb24", width=width, height=height)
    except (av.error.FFmpegError, IndexError) as e:
        raise FrameUnavailable(
            f"unreadable:\n{os.path.basename(path)}\n({type(e).__name__})"
        ) from None


def _tile(ax, path, seconds, title, colour="black"):
    ax.set_axis_off()
    ax.set_title(title, fontsize=7, color=colour)
    try:
        ax.imshow(read_frame(path, seconds))
    except FrameUnavailable as why:
        ax.imshow(np.full((TILE_HEIGHT, TILE_HEIGHT * 16 // 9, 3), 200, np.uint8))
        ax.text(
            0.5,
            0.5,
            str(why),
            ha="center",
            va="center",
            fontsize=7,
            transform=ax.transAxes,
            wrap=True,
        )


def caption(index_ds, w: int, rank: int, distance: float) -> str:
    """A result tile's title: rank, distance, and the window's start time and frame, the numbers
    of the results table (the tile itself shows the window's middle frame)."""
    start, frame = window_start(index_ds, w)
    name = os.path.basename(middle_frame(index_ds, w)[0])
    return f"#{rank} d={distance:.3g}\n{name}@{start:.3f}s #{frame}"


def contact_sheet(
    out_path,
    index_ds,
    query: Query,
    found: Neighbours,
    *,
    n_results: int = 3,
    query_labels: list[str | None] | None = None,
    index_labels=None,
    videos_root=None,
    query_ds=None,
) -> str:
    """Write the PNG and return its path.

    query_labels: a label per query (or None); index_labels: (n_windows,) labels of the index
    windows ("" or None where unknown); videos_root: where to look for videos not at their
    recorded paths; query_ds: the store the query windows come from, if not the index.
    """
    n_results = min(n_results, found.windows.shape[1])
    shown = found.windows[:, :n_results]
    needed = [frame[0] for frame in query.frames if frame is not None]  # None: a text query
    needed += [middle_frame(index_ds, int(w))[0] for w in shown.ravel() if w >= 0]
    stores = [index_ds] if query_ds is None else [query_ds, index_ds]
    local = VideoResolver(stores, videos_root).require(needed)
    rows, cols = len(query.names), 1 + n_results
    # A figure of its own on the Agg canvas: no process-wide backend, no pyplot state.
    fig = Figure(figsize=(2.4 * cols, 2.0 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for qi in range(rows):
        q_label = query_labels[qi] if query_labels else None
        title = "query\n" + query.names[qi] + (f"\n[{q_label}]" if q_label else "")
        if query.frames[qi] is None:  # a text query: the prompt is the whole query
            axes[qi, 0].set_axis_off()
            axes[qi, 0].text(0.5, 0.5, title, ha="center", va="center", wrap=True, fontsize=9)
        else:
            path, seconds = query.frames[qi]
            _tile(axes[qi, 0], local[path], seconds, title)
        for r in range(n_results):
            w = int(found.windows[qi, r])
            ax = axes[qi, r + 1]
            if w < 0:
                ax.set_axis_off()
                continue
            path, seconds = middle_frame(index_ds, w)
            label = None if index_labels is None else index_labels[w]
            title = caption(index_ds, w, r + 1, found.distances[qi, r])
            colour = "black"
            if label:
                title += f"\n[{label}]"
                if q_label:
                    colour = "green" if set(label.split("/")) & set(q_label.split("/")) else "red"
            _tile(ax, local[path], seconds, title, colour)
    warning = weights_warning(identity(index_ds))
    fig.suptitle(
        ((warning.upper() + "\n") if warning else "")
        + "tiles: each window's middle frame; captions: its start time and frame, as in the table",
        fontsize=8,
        color="red" if warning else "black",
    )
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    return os.fspath(out_path)


def window_captions(ds, table) -> np.ndarray:
    """(n_windows,) every label of each window's centre frame joined by "/", "" where unlabelled."""
    out = np.full(ds.sizes["window"], "", dtype=object)
    table = table_for_store(ds, table)
    if table.segments:
        aligned = label_io.align(ds, table, multi_label=True)
        for w, target in zip(aligned.window, aligned.target, strict=False):
            out[w] = "/".join(c for c, on in zip(aligned.classes, target, strict=False) if on)
    return out


def sheet_for(
    result: QueryResult,
    out_path,
    *,
    n_results: int = 3,
    labels: str | None = None,
    column: str = defaults.LABEL_COLUMN,
    background: str = defaults.BACKGROUND,
    videos_root=None,
) -> str:
    """The contact sheet of a query result, captioned from a label file when one is given."""
    query_labels = index_labels = None
    if labels:
        table = label_io.read_labels(labels, column=column, background=background)
        index_labels = window_captions(result.index, table)
        if result.query_ds is not None:
            captions = window_captions(result.query_ds, table)
            query_labels = [captions[w] or None for w in result.query.windows]
    return contact_sheet(
        out_path,
        result.index,
        result.query,
        result.found,
        n_results=n_results,
        query_labels=query_labels,
        index_labels=index_labels,
        videos_root=videos_root,
        query_ds=result.query_ds,
    )
