"""Streaming video decoding with PyAV: metadata, content fingerprint, and frames with exact index
and time.

Conventions (the store and every label file rely on them):
- A frame's index counts decoded frames in presentation order from 0: what a person stepping
  through the video in a player sees. Its time is the frame's pts x the stream's time_base in
  seconds, as ffprobe reports it (`pts_time`); a frame without a pts gets the previous frame's
  time plus one frame period.
- A still image (PNG, JPEG, ... : FFmpeg's image demuxers) is a one-frame video: frame 0 at
  time 0, no frame rate (fps 0.0), duration 0, codec "image". Its one window repeats the frame
  window_length times, as any video shorter than a window is padded (the paper's stills).
- A damaged video is a failed video. A decode error, a packet the demuxer marks corrupt (a file
  cut short), or fewer frames than the container declares (threaded decoders drop damaged frames
  without an error) raise `VideoError` naming the file and the first frame that could not be
  decoded. The frames before it are yielded first; callers discard the video.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import NamedTuple

import av
import numpy as np
from fsspec import open as fsspec_open

from ethoprism.errors import EthoprismError
from ethoprism.extract.framepool import conversion_threads, ordered_map
from ethoprism.extract.packets import packet_decoder
from ethoprism.extract.preprocess import Preprocessing, Resizer, decoder_lowres
from ethoprism.store.schema import STILL_CODEC

_HASH_CHUNK = 1 << 20


class VideoError(EthoprismError):
    """A video that cannot be used; `reason` says why (and at which frame, when known)."""

    def __init__(self, path, reason: str, frame: int | None = None):
        self.path = str(path)
        self.frame = frame
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # survives pickling between processes (decode pools, Dask workers)
        return type(self), (self.path, self.reason, self.frame)


@dataclass(frozen=True)
class VideoInfo:
    path: str  # as given by the user
    size_bytes: int
    sha256: str  # content fingerprint (hex)
    fps: float
    n_frames: int  # as the container declares it; decoding gives the exact count
    duration: float  # seconds
    width: int
    height: int
    codec: str
    pix_fmt: str


class Frame(NamedTuple):
    index: int  # presentation order from 0
    time: float  # pts seconds
    rgb: np.ndarray  # (H, W, 3) uint8


def _is_url(path) -> bool:
    return "://" in str(path)


@contextmanager
def _open_bytes(path):
    """A binary file object for a local path or an fsspec URL."""
    with fsspec_open(path, "rb") if _is_url(path) else open(path, "rb") as f:
        yield f


@contextmanager
def _open_video(path):
    """(container, video stream), with every way of failing to open turned into a VideoError."""
    with ExitStack() as stack:
        try:
            # Local files go to FFmpeg by name: its own I/O is faster than Python callbacks.
            source = stack.enter_context(fsspec_open(path, "rb")) if _is_url(path) else str(path)
            container = stack.enter_context(av.open(source, mode="r"))
        except FileNotFoundError:
            raise VideoError(path, "file not found") from None
        except IsADirectoryError:
            raise VideoError(path, "is a directory, not a video file") from None
        except PermissionError:
            raise VideoError(path, "permission denied") from None
        except av.InvalidDataError as e:
            raise VideoError(path, f"not a video or unreadable ({_describe(e)})") from None
        except (av.FFmpegError, OSError) as e:
            raise VideoError(path, f"cannot open: {_describe(e)}") from None
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            raise VideoError(path, f"no video stream (streams: {', '.join(kinds)})")
        yield container, container.streams.video[0]


def _describe(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _is_still(stream) -> bool:
    """A still image: FFmpeg opens those with `image2` or one of its `<format>_pipe` demuxers,
    which make up a frame rate (25) for them."""
    name = stream.container.format.name
    return name == "image2" or name.endswith("_pipe")


def is_still(path) -> bool:
    """Whether `path` is a still image (opens the container only: no hashing, no decoding)."""
    with _open_video(path) as (_, stream):
        return _is_still(stream)


def _frame_rate(stream) -> float:
    if _is_still(stream):
        return 0.0
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def probe_video(path) -> VideoInfo:
    """Open `path`, read its metadata and hash its bytes (streaming; memory does not grow with
    size)."""
    with _open_video(path) as (container, stream):
        codec = stream.codec_context
        still = _is_still(stream)
        fps = _frame_rate(stream)
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        else:
            duration = 0.0
        n_frames = stream.frames or round(duration * fps)
        if still:
            n_frames, duration = 1, 0.0
        if n_frames <= 0:
            raise VideoError(path, "zero frames (the container declares no frames and no duration)")
        info = {
            "fps": fps,
            "n_frames": int(n_frames),
            "duration": duration,
            "width": codec.width,
            "height": codec.height,
            "codec": STILL_CODEC if still else codec.name,
            "pix_fmt": codec.pix_fmt or "unknown",
        }
    size, sha = _fingerprint(path)
    return VideoInfo(path=str(path), size_bytes=size, sha256=sha, **info)


def _fingerprint(path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    try:
        with _open_bytes(path) as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise VideoError(path, f"cannot read: {e.strerror or e}") from None
    return size, h.hexdigest()


def _configure_threads(stream, threads: int) -> None:
    """threads: 0 lets FFmpeg choose, 1 decodes on the calling thread, n uses n threads."""
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    if threads != 1:
        stream.thread_type = "AUTO"
        stream.thread_count = threads


def _decode(
    path, container, stream, workers: int = 1
) -> Generator[tuple[int, float, av.VideoFrame], None, tuple[int, float]]:
    """Yields (index, time, frame) in presentation order and returns (n_frames, duration) as
    decoded. `workers` > 1 decodes the packets of codecs that can take it on that many threads
    (`extract.packets`).

    Raises VideoError on damage (see the module docstring).
    """
    codec = stream.codec_context
    tb = stream.time_base
    rate = _frame_rate(stream)
    period = 1.0 / rate if rate else 0.0
    index = 0
    time = first_time = None
    sent = 0  # packets whose frame should come out (discarded ones are edit-list trims)

    def emit(frames):
        nonlocal index, time, first_time
        for frame in frames:
            if frame.pts is not None and tb is not None:
                time = float(frame.pts * tb)
            else:
                time = 0.0 if time is None else time + period
            if first_time is None:
                first_time = time
            yield index, time, frame
            index += 1

    def flush():
        # an FFmpegError here is ignored: already failing; the frames that did come out were yielded
        with suppress(av.FFmpegError):
            yield from emit(codec.decode(None))

    prepare, decode, workers = packet_decoder(codec, workers)
    # size 0: the end marker (flushed below); `prepare` runs here, in packet order
    packets = (prepare(p) for p in container.demux(stream) if p.size)
    try:
        for packet, frames in ordered_map(decode, packets, workers):
            if packet.is_corrupt:
                yield from flush()
                raise VideoError(
                    path,
                    f"decode error at frame {index}: corrupt packet at "
                    f"{_seconds(packet.pts, tb)} "
                    f"(file truncated or damaged)",
                    frame=index,
                )
            sent += not packet.is_discard
            if isinstance(frames, av.FFmpegError):
                yield from flush()
                raise VideoError(
                    path, f"decode error at frame {index}: {_describe(frames)}", frame=index
                )
            yield from emit(frames)
        yield from emit(codec.decode(None))
    except av.FFmpegError as e:  # reading the file, not decoding it
        raise VideoError(
            path, f"read error at frame {index}: {_describe(e)}", frame=index
        ) from None
    except OSError as e:
        raise VideoError(
            path, f"read error at frame {index}: {e.strerror or e}", frame=index
        ) from None
    if index == 0:
        raise VideoError(path, "zero frames could be decoded", frame=0)
    declared = stream.frames
    if declared and index < min(declared, sent):
        raise VideoError(
            path,
            f"decode error at frame {index}: only {index} of the {declared} frames the container "
            f"declares could be decoded (file damaged)",
            frame=index,
        )
    return index, time - first_time + period  # the last frame lasts one frame period


def iter_frames(path, threads: int = 0, prep: Preprocessing | None = None) -> Iterator[Frame]:
    """Decode the first video stream of `path` (a local path or fsspec URL), one Frame at a time.

    rgb is the frame at its stored size, or resized as `prep` says when it is given (cheaper than
    resizing the full-size RGB frame). Memory does not depend on the video's length.
    """
    convert = Resizer(prep) if prep is not None else _to_rgb
    with _open_video(path) as (container, stream):
        _configure_threads(stream, threads)
        for index, time, frame in _decode(path, container, stream, conversion_threads(threads)):
            yield Frame(index, time, convert(frame))


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def iter_raw(
    path, threads: int = 0, prep: Preprocessing | None = None
) -> Generator[tuple[int, float, av.VideoFrame], None, tuple[int, float]]:
    """Yields (index, time, PyAV frame) in the decoder's own pixel format, for callers that convert
    frames themselves; returns (n_frames, duration in seconds) as decoding found them. With
    `prep`, the decoder shrinks the picture itself where `prep` allows (`decoder_lowres`)."""
    with _open_video(path) as (container, stream):
        _configure_threads(stream, threads)
        codec = stream.codec_context
        if prep is not None and (k := decoder_lowres(prep, codec.name, codec.width, codec.height)):
            codec.options = {**codec.options, "lowres": str(k)}  # read when decoding starts
        return (yield from _decode(path, container, stream, conversion_threads(threads)))


def _seconds(pts, tb) -> str:
    return "unknown time" if pts is None or tb is None else f"{float(pts * tb):.3f} s"


def demux_times(path) -> np.ndarray:
    """Presentation times (seconds, in presentation order) of the frames of `path`, from its
    packets alone: no decoding, so a small fraction of decoding's CPU. Decoders that do not
    report times themselves (the hardware one) take them from here; a packet without a pts
    gets the previous time plus one frame period, as in decoding."""
    with _open_video(path) as (container, stream):
        tb, rate = stream.time_base, _frame_rate(stream)
        pts = []
        try:
            for packet in container.demux(stream):
                if packet.size and not packet.is_discard:
                    pts.append(packet.pts)
        except (av.FFmpegError, OSError) as e:
            raise VideoError(path, f"read error while demuxing: {_describe(e)}") from None
    known = sorted(p for p in pts if p is not None)
    times = [float(p * tb) for p in known] if tb is not None else []
    period = 1.0 / rate if rate else 0.0
    while len(times) < len(pts):  # packets without pts come after the timed ones
        times.append(times[-1] + period if times else 0.0)
    return np.asarray(times, np.float64)
