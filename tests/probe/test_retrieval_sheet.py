"""Contact sheets read the right frame from the real videos; a missing video is an error."""

from pathlib import Path

import av
import matplotlib.image
import numpy as np
import pytest
from test_retrieval import write_store

from ethoprism.probe import retrieve as retrieval
from ethoprism.probe.retrieve.contact_sheet import TILE_HEIGHT, contact_sheet, read_frame
from ethoprism.store.videos import VideosNotFound

DATA = Path(__file__).resolve().parents[2] / "data"
DEER = str(DATA / "S1_C1_E115_V0342.mp4")
WOLF = str(DATA / "S2_C2_E394_V0135.mp4")


def decoded_frame(path, index, height):
    """Frame `index` by decoding from the start (the reference for seeking)."""
    with av.open(path) as c:
        for i, frame in enumerate(c.decode(video=0)):
            if i == index:
                width = round(frame.width * height / frame.height / 2) * 2
                return frame.to_ndarray(format="rgb24", width=width, height=height)


def test_seeking_reads_the_same_frame_as_decoding_from_the_start():
    for index in (0, 23, 250, 493):  # 24 fps, keyframes far apart
        got = read_frame(DEER, index / 24.0, height=72)
        np.testing.assert_array_equal(got, decoded_frame(DEER, index, 72))


def test_sheet_has_a_row_per_query_and_a_placeholder_for_a_missing_video(tmp_path):
    rng = np.random.default_rng(0)
    ds = write_store(
        tmp_path / "s.zarr",
        {
            DEER: rng.normal(size=(20, 8)),
            WOLF: rng.normal(size=(12, 8)),
            str(tmp_path / "gone.mp4"): rng.normal(size=(6, 8)),
        },
    )
    query = retrieval.query_windows(ds, [3, 25])
    found = retrieval.search(ds, query, 4)
    labels = np.array(["graze"] * 20 + ["walk"] * 12 + [""] * 6, dtype=object)
    out = contact_sheet(
        tmp_path / "sheet.png",
        ds,
        query,
        found,
        n_results=4,
        query_labels=["graze", "walk"],
        index_labels=labels,
    )
    image = matplotlib.image.imread(out)
    assert image.shape[0] >= 2 * TILE_HEIGHT * 0.9 and image.shape[1] > image.shape[0]
    # a missing file is refused by name, not drawn as a grey tile
    gone = retrieval.query_windows(ds, [33])
    with pytest.raises(VideosNotFound, match="gone.mp4"):
        contact_sheet(tmp_path / "gone.png", ds, gone, retrieval.search(ds, gone, 2))
    assert not (tmp_path / "gone.png").exists()


def test_captions_join_overlapping_labels_of_the_centre_frame(tmp_path):
    from ethoprism.probe.labels import read_labels
    from ethoprism.probe.retrieve.contact_sheet import sheet_for, window_captions

    rng = np.random.default_rng(1)
    write_store(
        tmp_path / "s.zarr", {DEER: rng.normal(size=(20, 8)), WOLF: rng.normal(size=(5, 8))}
    )
    (tmp_path / "labels.csv").write_text(
        f"video,start_frame,end_frame,action\n{Path(DEER).name},0,40,graze\n"
        f"{Path(DEER).name},30,60,walk\n"
    )
    result = retrieval.run_query(str(tmp_path / "s.zarr"), windows=[3], k=2)
    captions = window_captions(result.index, read_labels(tmp_path / "labels.csv"))
    # window i's centre frame is 8 i + 7: window 0 -> 7, 3 -> 31, 5 -> 47, 7 -> 63; WOLF is
    # unlabelled
    assert list(captions[[0, 3, 5, 7, 20]]) == ["graze", "graze/walk", "walk", "none", ""]
    out = sheet_for(
        result, tmp_path / "sheet.png", n_results=2, labels=str(tmp_path / "labels.csv")
    )
    assert Path(out).stat().st_size > 1000
