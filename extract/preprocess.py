"""How decoded frames become encoder input: the `Preprocessing` identity, resizing and scaling.

Resizing runs inside libswscale (through PyAV): the picture is scaled in the decoder's own pixel
format and only the small result is converted to RGB. Converting at full size and scaling in numpy
costs several times the decode itself.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from ethoprism.errors import EthoprismError
from ethoprism.store.framing import RESIZE_MODES, resize_geometry

# libswscale filters; "area-lowres": "area" after the decoder shrank the picture itself where it
# can (`decoder_lowres`); and the hardware decoder's frames (`extract.decoders`), resized on the
# device
INTERPOLATIONS = ("area", "bilinear", "bicubic", "area-lowres", "nvdec-linear")
# Decoders with a downscaler of their own (FFmpeg's `lowres`: MJPEG's reduced-size inverse DCT,
# 1/2, 1/4 or 1/8 size). It is plain C: where the full-size decoder's SIMD is fast it costs more
# CPU, not less (720p at half size: 1.30 vs 0.95 ms a frame on an AVX-512 EPYC); `ethoprism
# bench host` says which on a given host.
LOWRES_CODECS = ("mjpeg",)


class PreprocessingError(EthoprismError):
    """A `Preprocessing` field with a value that cannot work; the message names the field."""


@dataclass(frozen=True)
class Preprocessing:
    """Everything between a decoded frame and the encoder; written into the store as its
    identity."""

    frame_size: int = 288  # output frames are frame_size x frame_size RGB
    resize: str = "squash"  # "squash" | "pad" (letterbox, black bars) | "crop" (centre)
    window_length: int = 16  # frames per window
    window_stride: int = 8  # S: frames between consecutive window starts
    frame_step: int = 1  # K: window frames are start + j*K
    pixel_range: tuple[float, float] = (0.0, 1.0)  # what uint8 0 and 255 map to
    # libswscale filter; changes the features, so it is identity. "area" (a box filter) is the
    # cheapest that averages every source pixel when shrinking: 25-50% less CPU than "bilinear"
    # from 720p and 1080p sources (`ethoprism bench host`). Stores made before it was the
    # default say "bilinear"; pass that to append to them. "area-lowres" lets MJPEG sources of
    # at least twice the frame size be decoded smaller (`decoder_lowres`): other pixels.
    interpolation: str = "area"

    def __post_init__(self):
        for name in ("frame_size", "window_length", "window_stride", "frame_step"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise PreprocessingError(
                    f"preprocessing field {name!r} must be a positive integer, got {value!r}"
                )
            object.__setattr__(self, name, int(value))
        if self.resize not in RESIZE_MODES:
            raise PreprocessingError(
                f"preprocessing field 'resize' must be one of {', '.join(RESIZE_MODES)}; "
                f"got {self.resize!r}"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise PreprocessingError(
                f"preprocessing field 'interpolation' must be one of {', '.join(INTERPOLATIONS)}; "
                f"got {self.interpolation!r}"
            )
        try:
            lo, hi = (float(v) for v in self.pixel_range)
        except (TypeError, ValueError):
            raise PreprocessingError(
                f"preprocessing field 'pixel_range' must be two numbers (low, high), "
                f"got {self.pixel_range!r}"
            ) from None
        if not lo < hi:
            raise PreprocessingError(
                f"preprocessing field 'pixel_range' must have low < high, got {self.pixel_range!r}"
            )
        object.__setattr__(self, "pixel_range", (lo, hi))

    @property
    def window_span(self) -> int:
        """Source frames from a window's first frame to its last, inclusive."""
        return (self.window_length - 1) * self.frame_step + 1

    def to_dict(self) -> dict:
        """Plain JSON types (pixel_range as a list), so that a dict read back from JSON compares
        equal."""
        d = dataclasses.asdict(self)
        d["pixel_range"] = list(self.pixel_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise PreprocessingError(
                f"unknown preprocessing field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**d)


def decoder_lowres(prep: Preprocessing, codec: str, width: int, height: int) -> int:
    """The power of two by which a `codec` decoder may shrink a width x height picture itself
    under `prep` (FFmpeg's `lowres`; 0: full size). Only with interpolation "area-lowres", for
    `LOWRES_CODECS`, at most 3 (FFmpeg's limit), and never below the size the picture is
    resized to, so that the area filter still only shrinks. Nor where the shrunk picture
    (rounded up by the decoder) would be placed a pixel differently in the frame than the
    full-size one: boxes map through the full-size placement (`store.framing`)."""
    if prep.interpolation != "area-lowres" or codec not in LOWRES_CODECS:
        return 0
    full = resize_geometry(width, height, prep.frame_size, prep.resize)
    k = 0
    while k < 3:
        w, h = -(-width >> (k + 1)), -(-height >> (k + 1))
        if w < full[0] or h < full[1]:
            break
        if resize_geometry(w, h, prep.frame_size, prep.resize) != full:
            break
        k += 1
    return k


class Resizer:
    """Converts decoded frames to frame_size x frame_size RGB uint8 as `prep` says.

    `single_channel`: frames of grayscale sources (pixel format gray*) come out as one channel
    (S, S, 1), equal to each channel of the RGB frame they would otherwise give; the device
    repeats it (`extract.encode`). Holds its libswscale contexts, reused across frames of the
    same shape; not thread-safe.
    """

    def __init__(self, prep: Preprocessing, single_channel: bool = False):
        if prep.interpolation == "nvdec-linear":
            raise PreprocessingError(
                "interpolation 'nvdec-linear' frames are made by the hardware decoder "
                "(--decoder nvdec), not on the CPU"
            )
        self.prep = prep
        self.single_channel = single_channel
        self._interpolation = prep.interpolation.removesuffix("-lowres").upper()
        self._scaler = VideoReformatter()  # one context per step: each keeps its configuration
        self._to_rgb = VideoReformatter()

    def __call__(self, frame: av.VideoFrame | np.ndarray) -> np.ndarray:
        if isinstance(frame, np.ndarray):
            frame = av.VideoFrame.from_ndarray(
                np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24"
            )
        size = self.prep.frame_size
        sw, sh, x, y = resize_geometry(frame.width, frame.height, size, self.prep.resize)
        # Scale in the decoder's own pixel format, then convert the small picture to RGB: ~20%
        # less work than swscale's combined scale+convert path. One thread each: decoding is
        # already threaded and the pipeline runs several decoders.
        small = self._scaler.reformat(frame, sw, sh, interpolation=self._interpolation, threads=1)
        scaled = self._pixels(small)
        if (sw, sh) == (size, size):
            return scaled
        if self.prep.resize == "pad":  # centred on black
            out = np.zeros((size, size, scaled.shape[-1]), np.uint8)
            out[y : y + sh, x : x + sw] = scaled
            return out
        return np.ascontiguousarray(scaled[-y : -y + size, -x : -x + size])  # crop the centre

    def _pixels(self, small: av.VideoFrame) -> np.ndarray:
        name = small.format.name
        if self.single_channel and name == "gray":  # swscale's gray -> RGB copies the value
            return small.to_ndarray()[..., None]
        rgb = self._to_rgb.reformat(small, format="rgb24", threads=1).to_ndarray()
        if self.single_channel and name.startswith("gray"):
            # deeper grays: swscale rounds to 8 bits differently going to gray than to rgb24
            return np.ascontiguousarray(rgb[..., :1])
        return rgb


def resize(frame: av.VideoFrame | np.ndarray, prep: Preprocessing) -> np.ndarray:
    """One frame (a decoded PyAV frame or an (H, W, 3) uint8 RGB array) -> (S, S, 3) uint8 RGB."""
    return Resizer(prep)(frame)


def to_float(pixels, pixel_range: tuple[float, float] = (0.0, 1.0)):
    """uint8 pixels -> float32 in pixel_range; works on numpy and jax arrays alike.

    Kept out of the decoder on purpose: float32 windows are 4x the bytes to queue and transfer.
    """
    lo, hi = pixel_range
    return pixels.astype("float32") * np.float32((hi - lo) / 255.0) + np.float32(lo)
