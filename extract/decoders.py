"""Decode backends: where frames are decoded and resized to encoder frames.

- "cpu" (the default): PyAV / FFmpeg on the host, resized by libswscale (`preprocess.Resizer`).
- "nvdec": the GPU's video decoder through PyNvVideoCodec (NVIDIA's Python bindings of the Video
  Codec SDK), RGB straight out of the decoder into device memory, resized on the device by JAX;
  only the small encoder frames come back to the host. Its pixels are not swscale's (another
  YUV->RGB conversion and filter), so its preprocessing says interpolation "nvdec-linear" and
  a store never mixes the two.
- "auto": "nvdec" where a CUDA device and PyNvVideoCodec are both present and the run's
  preprocessing allows it, "cpu" elsewhere.

Frame indices are presentation order from 0 on both, and times come from the same place: the
CPU path's decoder reports each frame's pts; the hardware path takes them from a demux pass
(`video.demux_times`), which gives the same values (tested on the CPU side).
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable, Generator
from dataclasses import dataclass

import numpy as np

from ethoprism.errors import EthoprismError
from ethoprism.extract.framepool import PerThread, conversion_threads
from ethoprism.extract.preprocess import Preprocessing, Resizer
from ethoprism.extract.video import (
    VideoError,
    demux_times,
    is_still,
    iter_frames,
    iter_raw,
    probe_video,
)
from ethoprism.store.framing import resize_geometry

DECODERS = ("auto", "cpu", "nvdec")
NVDEC_INTERPOLATION = "nvdec-linear"
NVDEC_LIBRARY = "PyNvVideoCodec"
_NVDEC_CHUNK = 32  # frames fetched from the hardware decoder at a time


class DecoderUnavailable(EthoprismError):
    """A decode backend was asked for by name and cannot run here; the message says why."""


@dataclass(frozen=True)
class NvdecSupport:
    cuda_device: bool  # JAX sees a CUDA GPU
    library: bool  # PyNvVideoCodec is importable

    @property
    def available(self) -> bool:
        return self.cuda_device and self.library

    @property
    def reason(self) -> str:
        missing = [
            *([] if self.cuda_device else ["no CUDA device visible to JAX"]),
            *([] if self.library else [f"{NVDEC_LIBRARY} is not installed"]),
        ]
        return "; ".join(missing)


def nvdec_support() -> NvdecSupport:
    """What this machine offers the hardware decoder (imports nothing heavy but JAX)."""
    import jax

    cuda = any(
        d.platform == "gpu" and "cuda" in str(getattr(d.client, "platform_version", "")).lower()
        for d in jax.local_devices()
    )
    return NvdecSupport(cuda, importlib.util.find_spec(NVDEC_LIBRARY) is not None)


def choose_decoder(requested: str, support: NvdecSupport, interpolation: str | None) -> str:
    """The backend a run uses: "cpu" or "nvdec".

    `interpolation` is the one the run must produce (an existing store's, or one the user
    named), None when the backend may pick its own. "auto" takes the hardware decoder only
    where it is available and may produce the run's frames; "nvdec" asked for by name and not
    available is an error that says why.
    """
    if requested not in DECODERS:
        raise DecoderUnavailable(f"unknown decoder {requested!r}; one of {', '.join(DECODERS)}")
    hardware_frames = interpolation in (None, NVDEC_INTERPOLATION)
    if requested == "nvdec":
        if not support.available:
            raise DecoderUnavailable(
                f"--decoder nvdec: the hardware decoder is not available here "
                f"({support.reason}); use --decoder cpu or auto"
            )
        if not hardware_frames:
            raise DecoderUnavailable(
                f"--decoder nvdec makes {NVDEC_INTERPOLATION!r} frames, but this run's "
                f"preprocessing says interpolation {interpolation!r}; use --decoder cpu"
            )
        return "nvdec"
    if requested == "cpu":
        if interpolation == NVDEC_INTERPOLATION:
            raise DecoderUnavailable(
                f"interpolation {NVDEC_INTERPOLATION!r} frames come from the hardware decoder "
                "only; use --decoder nvdec on a host with a CUDA GPU and PyNvVideoCodec"
            )
        return "cpu"
    return "nvdec" if support.available and hardware_frames else "cpu"


def preprocessing_for(prep: Preprocessing, decoder: str) -> Preprocessing:
    """`prep` as the backend produces it (the hardware decoder's frames are its own kind)."""
    if decoder == "nvdec":
        return dataclasses.replace(prep, interpolation=NVDEC_INTERPOLATION)
    return prep


Decoded = Generator[tuple[int, float, object], None, tuple[int, float]]


def open_backend(decoder: str, prep: Preprocessing, threads: int = 0):
    """(decode(path) -> Decoded, convert(frame) -> (S, S, 3) uint8, or (S, S, 1) for grayscale
    sources on the CPU, and how many threads may call convert at once) for a chosen backend.
    `threads`: the CPU decoder's (0: FFmpeg chooses; `framepool.conversion_threads`)."""
    if decoder == "nvdec":
        backend = NvdecBackend(prep)
        return backend.decode, backend.convert, 1  # one JAX stream of small device jobs
    resizers = PerThread(lambda: Resizer(prep, single_channel=True))
    convert = lambda frame: resizers.get()(frame)  # noqa: E731
    return (lambda path: iter_raw(path, threads, prep)), convert, conversion_threads(threads)


class NvdecBackend:
    """Hardware decoding with PyNvVideoCodec; frames resized on the device with JAX.

    Runs in the process that owns the accelerator (the decode pool uses threads for it): a
    second process would open a second JAX client on the same GPU.
    """

    def __init__(self, prep: Preprocessing, gpu_id: int = 0):
        self.prep, self.gpu_id = prep, gpu_id
        self._resize: dict[tuple[int, int], Callable] = {}

    def decode(self, path) -> Decoded:
        if is_still(path):
            return (yield from self._decode_still(path))
        import PyNvVideoCodec as nvc

        times = demux_times(path)
        try:
            decoder = nvc.SimpleDecoder(
                str(path),
                gpu_id=self.gpu_id,
                use_device_memory=True,
                output_color_type=nvc.OutputColorType.RGB,
            )
        except Exception as e:  # noqa: BLE001 (the library raises plain RuntimeErrors)
            raise VideoError(path, f"hardware decoder cannot open it: {e}") from None
        n = len(decoder)
        if n != len(times):
            raise VideoError(
                path, f"hardware decoder sees {n} frames, the demuxer {len(times)}", frame=0
            )
        for start in range(0, n, _NVDEC_CHUNK):
            for k, frame in enumerate(decoder[start : min(start + _NVDEC_CHUNK, n)]):
                yield start + k, float(times[start + k]), frame
        period = 1.0 / probe_video(path).fps if n else 0.0
        return n, float(times[-1] - times[0] + period) if n else 0.0

    def _decode_still(self, path) -> Decoded:
        """A still image has no bitstream for the hardware decoder: FFmpeg decodes it, and it is
        resized on the device like every hardware frame, so the run's frames stay one kind."""
        import jax

        yield 0, 0.0, jax.device_put(next(iter_frames(path)).rgb)
        return 1, 0.0

    def convert(self, frame) -> np.ndarray:
        """One decoded frame (RGB in device memory, DLPack) -> (S, S, 3) uint8 on the host."""
        import jax

        rgb = jax.dlpack.from_dlpack(frame)  # (H, W, 3) uint8, no copy
        key = rgb.shape[:2]
        if key not in self._resize:
            self._resize[key] = jax.jit(self._resizer(*key))
        return np.asarray(self._resize[key](rgb))

    def _resizer(self, height: int, width: int) -> Callable:
        import jax
        import jax.numpy as jnp

        size = self.prep.frame_size
        sw, sh, x, y = resize_geometry(width, height, size, self.prep.resize)

        def resize(rgb):
            small = jax.image.resize(
                rgb.astype(jnp.float32), (sh, sw, 3), method="linear", antialias=True
            )
            small = jnp.clip(jnp.round(small), 0, 255).astype(jnp.uint8)
            if (sw, sh) == (size, size):
                return small
            if self.prep.resize == "pad":
                return jnp.zeros((size, size, 3), jnp.uint8).at[y : y + sh, x : x + sw].set(small)
            return small[-y : -y + size, -x : -x + size]

        return resize
