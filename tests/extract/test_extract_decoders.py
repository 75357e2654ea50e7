"""Decode backends: which one a run gets, and the CPU fallback (no GPU on these machines)."""

from pathlib import Path

import numpy as np
import pytest

from ethoprism.extract.decoders import (
    NVDEC_INTERPOLATION,
    DecoderUnavailable,
    NvdecSupport,
    choose_decoder,
    nvdec_support,
    open_backend,
)
from ethoprism.extract.preprocess import Preprocessing, PreprocessingError, Resizer
from ethoprism.extract.video import iter_raw
from ethoprism.extract.windows import iter_windows
from ethoprism.pipeline.config import RunConfig, resolve_decoder
from ethoprism.store import VideoRecord, open_writer

HORSE = Path(__file__).parent.parent / "data" / "videos" / "horse_288x162.mp4"
BOTH = NvdecSupport(cuda_device=True, library=True)
NO_GPU = NvdecSupport(cuda_device=False, library=True)
NO_LIB = NvdecSupport(cuda_device=True, library=False)
NEITHER = NvdecSupport(cuda_device=False, library=False)


@pytest.mark.parametrize(
    "requested, support, interpolation, expected",
    [
        ("auto", BOTH, None, "nvdec"),
        ("auto", BOTH, NVDEC_INTERPOLATION, "nvdec"),
        ("auto", BOTH, "area", "cpu"),  # a CPU-made store, or a CPU filter asked for
        ("auto", NO_GPU, None, "cpu"),
        ("auto", NO_LIB, None, "cpu"),
        ("auto", NEITHER, None, "cpu"),
        ("cpu", BOTH, None, "cpu"),
        ("cpu", NEITHER, "bilinear", "cpu"),
        ("nvdec", BOTH, None, "nvdec"),
    ],
)
def test_choose_decoder(requested, support, interpolation, expected):
    assert choose_decoder(requested, support, interpolation) == expected


@pytest.mark.parametrize(
    "requested, support, interpolation, message",
    [
        ("nvdec", NO_GPU, None, "no CUDA device"),
        ("nvdec", NO_LIB, None, "PyNvVideoCodec is not installed"),
        ("nvdec", NEITHER, None, "no CUDA device visible to JAX; PyNvVideoCodec"),
        ("nvdec", BOTH, "area", "interpolation 'area'"),
        ("cpu", BOTH, NVDEC_INTERPOLATION, "--decoder nvdec"),
        ("gpu", BOTH, None, "unknown decoder 'gpu'"),
    ],
)
def test_choose_decoder_refuses_with_the_reason(requested, support, interpolation, message):
    with pytest.raises(DecoderUnavailable, match=message):
        choose_decoder(requested, support, interpolation)


@pytest.mark.skipif(nvdec_support().available, reason="this host has the hardware decoder")
def test_this_machine_falls_back_to_the_cpu():
    """No CUDA device here: auto is the CPU path, unchanged; nvdec by name is a clear error."""
    cfg = resolve_decoder(RunConfig())
    assert cfg.decoder == "cpu" and cfg.prep == Preprocessing()
    with pytest.raises(DecoderUnavailable, match="hardware decoder is not available here"):
        resolve_decoder(RunConfig(decoder="nvdec"))


def test_resolve_decoder_follows_the_store_and_sets_the_identity(tmp_path):
    cfg = resolve_decoder(RunConfig(), support=BOTH)
    assert (cfg.decoder, cfg.prep.interpolation) == ("nvdec", NVDEC_INTERPOLATION)
    named = RunConfig(prep=Preprocessing(interpolation="bilinear"))
    assert resolve_decoder(named, support=BOTH).decoder == "cpu"
    # a store made on the CPU keeps the CPU path on a GPU host
    path = tmp_path / "cpu.zarr"
    with open_writer(path, encoder={"name": "t"}, preprocessing=Preprocessing().to_dict()) as w:
        vw = w.begin_video(VideoRecord("v.mp4", 0, "sha", 30.0, 16, 0.0, 0, 0, "h264"))
        vw.append(np.ones((1, 1, 2, 2, 8), np.float32), np.ones((1, 8), np.float32), 0, 1, 16, 0)
        vw.commit()
    assert resolve_decoder(RunConfig(), str(path), support=BOTH).decoder == "cpu"
    with pytest.raises(DecoderUnavailable, match="interpolation 'area'"):
        resolve_decoder(RunConfig(decoder="nvdec"), str(path), support=BOTH)


def test_cpu_backend_is_the_unchanged_cpu_path():
    prep = Preprocessing(frame_size=32)
    decode, convert, _ = open_backend("cpu", prep)
    for (i, t, frame), (j, u, raw) in zip(decode(HORSE), iter_raw(HORSE), strict=True):
        assert (i, t) == (j, u)
        np.testing.assert_array_equal(convert(frame), Resizer(prep)(raw))
        if i == 3:
            break
    windows = list(iter_windows(HORSE, Preprocessing(frame_size=32), decoder="cpu"))
    assert [w.start_frame for w in windows][:3] == [0, 8, 16]


def test_hardware_frames_are_not_made_on_the_cpu():
    with pytest.raises(PreprocessingError, match="hardware decoder"):
        Resizer(Preprocessing(interpolation=NVDEC_INTERPOLATION))


def test_hardware_backend_takes_still_images_through_ffmpeg(tmp_path):
    """No bitstream for NVDEC in a PNG: FFmpeg decodes it, the device resizes it (here JAX's
    CPU stands in for the GPU), so a run's frames stay the hardware decoder's kind."""
    from PIL import Image

    from ethoprism.extract.decoders import NvdecBackend

    rgb = np.random.default_rng(0).integers(0, 256, (45, 61, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "still.png")
    prep = Preprocessing(frame_size=36, resize="pad", interpolation=NVDEC_INTERPOLATION)
    backend = NvdecBackend(prep)
    decoded = backend.decode(tmp_path / "still.png")
    frames = list(decoded)
    assert [(i, t) for i, t, _ in frames] == [(0, 0.0)]
    out = backend.convert(frames[0][2])
    cpu = Resizer(Preprocessing(frame_size=36, resize="pad"))(rgb)
    assert out.shape == (36, 36, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:4], cpu[:4])  # the same black bars (pad geometry)
    assert np.abs(out.astype(int) - cpu).mean() < 40  # another filter, the same picture
