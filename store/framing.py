"""Frame placement, its one owner: where a width x height source frame lands in the square
frame_size x frame_size encoder input, for each resize mode the store records.

The extraction places pixels with it (`extract.preprocess`, `extract.decoders`) and readers map
boxes with it (`probe.localize.boxes`), so both sides agree by construction; it lives in the store
because the store records the preprocessing (frame size, resize mode) that it interprets. Pure
Python: no numpy, zarr or dask.
"""

from __future__ import annotations

from ethoprism.errors import EthoprismError

RESIZE_MODES = ("squash", "pad", "crop")


def resize_geometry(
    width: int, height: int, frame_size: int, mode: str
) -> tuple[int, int, int, int]:
    """Where a width x height picture goes: (scaled_w, scaled_h, x, y).

    The picture is scaled to scaled_w x scaled_h, then placed with its top-left corner at (x, y)
    of the frame_size x frame_size output: "pad" leaves black bars (x, y >= 0), "crop" cuts off
    what falls outside (x, y <= 0).
    """
    if mode == "squash":
        return frame_size, frame_size, 0, 0
    if mode == "pad":
        scale = frame_size / max(width, height)
        sw, sh = (min(frame_size, max(1, round(v * scale))) for v in (width, height))
        return sw, sh, (frame_size - sw) // 2, (frame_size - sh) // 2
    if mode == "crop":
        scale = frame_size / min(width, height)
        sw, sh = (max(frame_size, round(v * scale)) for v in (width, height))
        return sw, sh, -((sw - frame_size) // 2), -((sh - frame_size) // 2)
    raise EthoprismError(f"unknown resize mode {mode!r}; one of {', '.join(RESIZE_MODES)}")


def frame_transform(
    width: int, height: int, frame_size: int, mode: str
) -> tuple[float, float, float, float]:
    """(scale_x, scale_y, x0, y0): input pixel = original pixel * scale + offset, per axis (each
    axis has its own factor, as libswscale scales)."""
    sw, sh, x0, y0 = resize_geometry(width, height, frame_size, mode)
    return sw / width, sh / height, float(x0), float(y0)
