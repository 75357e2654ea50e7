"""Test clips made from the bundled horse clip (tests/ is on sys.path, like servers.py)."""

from __future__ import annotations

from pathlib import Path

import av

HORSE = Path(__file__).parent / "data" / "videos" / "horse_288x162.mp4"


def transcode(path: Path, codec: str, pix_fmt: str, frames: int) -> Path:
    """The first `frames` frames of the horse clip (288x162, 30 fps) re-encoded with `codec` in
    pixel format `pix_fmt` (e.g. lossless FFV1 gray, MJPEG yuvj420p)."""
    with av.open(str(HORSE)) as src, av.open(str(path), "w") as dst:
        out = dst.add_stream(codec, rate=30)
        out.width, out.height, out.pix_fmt = 288, 162, pix_fmt
        for _, frame in zip(range(frames), src.decode(video=0), strict=False):
            dst.mux(out.encode(frame.reformat(format=pix_fmt)))
        dst.mux(out.encode(None))
    return path
