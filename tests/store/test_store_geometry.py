"""Window geometry: every time a user sees is the one extraction stored, the frame's own pts.

Videos made here with explicit pts: an odd rate (1000000/33333 s timebase, as the
mouse_openfield_dlc recordings have) and a variable rate. Reference: the pts PyAV decodes.
"""

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from ethoprism import store
from ethoprism.extract.encoder import default_preprocessing
from ethoprism.extract.video import iter_raw
from ethoprism.pipeline.clip_query import clip_query
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract
from ethoprism.probe.classify.predict import write_frame_csv
from ethoprism.probe.retrieve.query import middle_frame, query_windows
from ethoprism.probe.retrieve.select import Moment, window_at
from ethoprism.store import geometry
from ethoprism.store.layout import FORMATS, Layout

CHECKPOINT = str(Path(__file__).parent.parent / "data" / "golden" / "checkpoint.npz")
N_FRAMES = 23


def write_video(path: Path, pts: list[int], time_base: Fraction) -> Path:
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        stream.time_base = stream.codec_context.time_base = time_base
        stream.codec_context.options = {"bf": "0"}
        for p in pts:
            frame = av.VideoFrame.from_ndarray(
                rng.integers(0, 256, (64, 64, 3), np.uint8), format="rgb24"
            )
            frame.pts, frame.time_base = p, time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("geometry")
    odd = write_video(tmp / "odd.mp4", [i * 33333 for i in range(N_FRAMES)], Fraction(1, 10**6))
    gaps = np.random.default_rng(1).choice([20_000, 33_000, 90_000], N_FRAMES - 1)
    variable = write_video(tmp / "variable.mp4", [0, *np.cumsum(gaps).tolist()], Fraction(1, 10**6))
    return {"odd": odd, "variable": variable}


@pytest.fixture(scope="module")
def extracted(videos, tmp_path_factory):
    path = tmp_path_factory.mktemp("geometry-store") / "s.zarr"
    prep = default_preprocessing("videoprism-tiny", window_stride=3)  # 4 frames: every frame held
    cfg = RunConfig(
        model="videoprism-tiny", checkpoint=CHECKPOINT, prep=prep, batch_size=4, decode_workers=1
    )
    summary = run_extract([str(v) for v in videos.values()], str(path), cfg)
    assert not summary.failed
    return store.open(str(path))


def decoded_times(path) -> np.ndarray:
    gen = iter_raw(str(path))
    return np.array([t for _, t, _ in gen])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["odd", "variable"])
def test_every_read_side_time_is_the_decoded_pts(videos, extracted, name):
    pts = decoded_times(videos[name])
    assert len(pts) == N_FRAMES
    if name == "variable":
        assert np.ptp(np.diff(pts)) > 0.05  # really variable
    ds = extracted
    row = [str(p).endswith(f"{name}.mp4") for p in ds["video_path"].values].index(True)
    idx = np.flatnonzero(ds["video"].values == row)
    geo = geometry.windows(ds, idx)
    stored = ds["frame_time"].values[idx]
    for i in range(len(geo)):
        np.testing.assert_array_equal(geo.times(i), pts[geo.frames(i)])
        np.testing.assert_array_equal(stored[i, : geo.n_valid[i]], pts[geo.frames(i)])
    np.testing.assert_array_equal(ds["start_time"].values[idx], pts[geo.start_frame])
    # every frame's time, as the per-frame CSV writes it
    times = geometry.video_frame_times(ds, row)
    np.testing.assert_array_equal(times, pts)
    csv = write_frame_csv(
        videos[name].with_suffix(".csv"), np.full((N_FRAMES, 1), 0.5), ["x"], times
    )
    rows = csv.read_text().splitlines()[1:]
    assert [r.split(",")[1] for r in rows] == [f"{t:.4f}" for t in pts]
    # retrieval: a query window's middle frame and span
    query = query_windows(ds, idx)
    middles = pts[geo.middle_frame]
    assert [t for _, t in query.frames] == middles.tolist()
    assert [middle_frame(ds, w)[1] for w in idx] == middles.tolist()
    # the moment at a window's middle time picks a window whose stored span holds it
    w = window_at(ds, Moment(name + ".mp4", seconds=float(middles[2])))
    span = geometry.windows(ds, [w])
    assert span.start_time[0] <= middles[2] <= span.end_time[0]
    # a query clip (the same video, encoded again) reports the same times
    clip = clip_query(str(videos[name]), ds, CHECKPOINT)
    assert [t for _, t in clip.frames] == middles.tolist()


def _write(path, frame_time=None, start_time=(0.0, 0.08, 0.16)):
    prep = {"frame_size": 16, "window_length": 4, "window_stride": 2}
    with store.open_writer(path, encoder={"name": "x"}, preprocessing=prep, part="w") as w:
        video = w.begin_video(
            store.VideoRecord("v.mp4", 1, "ab" * 32, 25.0, 9, 0.36, 16, 16, "h264")
        )
        video.append(
            np.ones((3, 4, 2, 2, 8), np.float32),
            np.ones((3, 8), np.float32),
            start_frame=[0, 2, 4],
            frame_step=1,
            n_valid_frames=[4, 4, 3],
            start_time=start_time,
            frame_time=frame_time,
        )
        video.commit(n_frames=7, duration=0.28)


def test_frame_time_round_trips_and_is_validated(tmp_path):
    times = np.array([[0.0, 0.01, 0.05, 0.09], [0.05, 0.09, 0.2, 0.21], [0.2, 0.21, 0.3, 0.3]])
    _write(tmp_path / "s.zarr", times, start_time=times[:, 0])
    np.testing.assert_array_equal(store.open(tmp_path / "s.zarr")["frame_time"].values, times)
    assert store.validate(tmp_path / "s.zarr")["ok"]
    _write(tmp_path / "bad.zarr", times[:, ::-1], start_time=times[:, 0])
    problems = " ".join(store.validate(tmp_path / "bad.zarr")["problems"])
    assert "frame_time decreases" in problems and "is not start_time" in problems


def test_a_store_without_frame_time_reads_with_nominal_times(tmp_path):
    _write(tmp_path / "old.zarr")
    ds = store.open(tmp_path / "old.zarr")
    want = np.array([0.0, 0.08, 0.16])[:, None] + np.minimum(np.arange(4), [[3], [3], [2]]) / 25
    np.testing.assert_allclose(ds["frame_time"].values, want)
    assert "frame_time" not in store.reader.open_handle(tmp_path / "old.zarr").parts[0].arrays


def test_extraction_defaults_to_the_encoders_window_and_frame_size():
    assert RunConfig(model="videoprism-l").prep.window_length == 8
    assert RunConfig(model="videoprism-b").prep.window_length == 16
    tiny = RunConfig(model="videoprism-tiny").prep
    assert (tiny.window_length, tiny.frame_size) == (4, 72)
    assert default_preprocessing("videoprism-l", window_length=16).window_length == 16


def test_layout_answers_from_the_format_table():
    assert Layout().arrays == ("tokens",) and Layout("int8").arrays[1:] == (
        "token_scale",
        "channel_scale",
    )
    formats = ["float16-round7", "float16", "float16-uncompressed", "int8"]
    assert list(FORMATS) == formats
    assert [Layout(d).itemsize for d in formats] == [2, 2, 2, 1]
    assert Layout().compressor("tokens")["configuration"]["shuffle"] == "bitshuffle"
    assert Layout("int8").compressor("tokens")["name"] == "zstd"
    assert Layout("float16-uncompressed").compressor("tokens") is None
    assert [Layout(d).coded_on_device for d in formats] == [True, True, True, False]
    assert Layout(pool=2).stored_shape((16, 16, 16, 768)) == (16, 8, 8, 768)
    assert Layout("int8", 2).window_bytes((16, 8, 8, 768)) == 16 * 8 * 8 * 768


def test_extract_imports_the_store_constants_without_zarr_or_dask():
    code = (
        "import sys, ethoprism.extract.coding, ethoprism.store.layout; "
        "assert not {'zarr', 'dask', 'xarray'} & set(sys.modules), sys.modules.keys()"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_nominal_times_of_a_video_without_a_rate_stay_at_its_start():
    """A still image records fps 0: nominal times (stores without frame_time) must not divide
    by it; a video with a rate steps by frame_step / fps, padding repeating the last time."""
    t = geometry.nominal_frame_time([0.0, 2.0], [1, 2], [1, 3], [0.0, 4.0], 5)
    np.testing.assert_array_equal(t, [[0, 0, 0, 0, 0], [2.0, 2.5, 3.0, 3.0, 3.0]])
