"""Token maps of frames of interest: the best-centred window, read from a real store; pooled
layouts refused; stores of centred windows never mixed with regular ones."""

import numpy as np
import pytest
from test_probe_fixtures import fake_store, write_store

from ethoprism import store
from ethoprism.probe.localize import features


def test_each_frame_is_read_from_its_best_centred_window(tmp_path):
    fake = fake_store({"a.mp4": 40, "b.mp4": 10}, shape=(16, 3, 2, 8))
    ds = store.open(write_store(tmp_path / "s.zarr", fake, store.Layout(dtype="float16")))
    frames = [("a.mp4", 20), ("a.mp4", 0), ("a.mp4", 39), ("b.mp4", 9), ("a.mp4", 7)]
    refs = features.locate(ds, frames)
    starts = ds.start_frame.values[refs.window]
    # 20: windows 8 (position 12) and 16 (position 4): 16 is nearer position 7
    assert list(starts) == [16, 0, 24, 0, 0]
    assert list(refs.t) == [4, 0, 15, 9, 7]
    want = fake.tokens.values[refs.window, refs.t]
    np.testing.assert_allclose(features.read_maps(ds, refs), want, rtol=1e-3, atol=1e-3)


def test_pooled_layout_is_refused_naming_the_layout_to_use(tmp_path):
    fake = fake_store({"a.mp4": 20}, shape=(16, 4, 4, 8))
    ds = store.open(write_store(tmp_path / "p.zarr", fake, store.Layout(pool=2)))
    with pytest.raises(features.FeatureError, match=r"pooled 2x2 .*extract with --pool 1"):
        features.locate(ds, [("a.mp4", 3)])


def test_frame_in_no_window_says_how_to_extract():
    ds = fake_store({"a.mp4": 40}, stride=24, shape=(16, 2, 2, 8))  # frames 16..23 in no window
    with pytest.raises(features.FeatureError, match="frame 18 of 'a.mp4'.*--frames-from"):
        features.locate(ds, [("a.mp4", 18)])


def test_centred_and_regular_windows_never_share_a_store(tmp_path):
    fake = fake_store({"a.mp4": 20})
    path = write_store(tmp_path / "r.zarr", fake)
    with pytest.raises(store.StoreIdentityError, match="regular stride"):
        store.open_writer(
            path,
            encoder=fake.attrs["encoder"],
            preprocessing=fake.attrs["preprocessing"],
            windows={"centred_on": "annotated frames", "frames_from": "a.csv"},
        )
