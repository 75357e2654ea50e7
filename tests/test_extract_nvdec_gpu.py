"""The hardware decoder against the CPU path, on a host with a CUDA GPU and PyNvVideoCodec.

Skipped elsewhere (these machines have no GPU). On a GPU host:
    pip install PyNvVideoCodec && python -m pytest -q tests/test_extract_nvdec_gpu.py
"""

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.extract.decoders import NVDEC_INTERPOLATION, NvdecBackend, nvdec_support
from ethoprism.extract.preprocess import Preprocessing, Resizer
from ethoprism.extract.video import iter_raw
from ethoprism.extract.windows import iter_windows

VIDEOS = Path(__file__).parent / "data" / "videos"
HORSE = VIDEOS / "horse_288x162.mp4"
WHEEL = VIDEOS / "mouse_wheel_250fps.mp4"

pytestmark = pytest.mark.skipif(
    not nvdec_support().available, reason=f"no hardware decoder here: {nvdec_support().reason}"
)


@pytest.mark.parametrize("video", [HORSE, WHEEL])
@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_nvdec_frames_match_the_cpu_path(video, mode):
    cpu_prep = Preprocessing(frame_size=96, resize=mode)
    nv_prep = Preprocessing(frame_size=96, resize=mode, interpolation=NVDEC_INTERPOLATION)
    backend, resize = NvdecBackend(nv_prep), Resizer(cpu_prep)
    cpu = iter_raw(video)
    n = 0
    for (i, t, frame), (j, u, raw) in zip(backend.decode(video), cpu, strict=True):
        assert (i, t) == (j, u)  # same index and pts time for every frame
        ours, theirs = backend.convert(frame), resize(raw)
        assert ours.shape == theirs.shape == (96, 96, 3) and ours.dtype == np.uint8
        # another YUV->RGB conversion and filter: close, not equal
        assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 4.0, i
        n += 1
    assert n > 0


def test_nvdec_windows_are_the_cpu_windows():
    prep = Preprocessing(frame_size=96)
    nv = list(
        iter_windows(
            HORSE, prep.__class__(frame_size=96, interpolation=NVDEC_INTERPOLATION), decoder="nvdec"
        )
    )
    cpu = list(iter_windows(HORSE, prep))
    assert [(w.start_frame, w.n_valid_frames, w.start_time) for w in nv] == [
        (w.start_frame, w.n_valid_frames, w.start_time) for w in cpu
    ]


def test_extract_with_nvdec_records_its_frames_in_the_identity(tmp_path):
    data = Path(__file__).parent / "data"
    path = tmp_path / "nv.zarr"
    args = ["extract", str(HORSE), str(path), "--model", "videoprism-tiny", "--frame-size", "72"]
    args += ["--checkpoint", str(data / "golden" / "checkpoint.npz"), "--decoder", "auto"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    ds = store.open(str(path))
    assert ds.attrs["preprocessing"]["interpolation"] == NVDEC_INTERPOLATION
    assert list(ds["video_status"].values) == ["complete"]
    assert np.isfinite(ds["tokens"].values).all()
