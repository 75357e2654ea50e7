"""A store explains itself to plain zarr and xarray: a README attribute saying where the data
are, consolidated metadata at the root, and CF-style attributes on every array."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import xarray as xr
import zarr

from ethoprism import store
from ethoprism.store.describe import ARRAY_ATTRS

ENCODER = {"name": "videoprism-tiny", "config": {}, "checkpoint_sha256": "x", "dtype": "float32"}
PREP = {"frame_size": 72, "window_length": 16, "window_stride": 8}


@pytest.fixture(scope="module", params=["float16-round7", "int8"])
def path(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("describe") / "s.zarr")
    rng = np.random.default_rng(0)
    layout = store.Layout(request.param)
    with store.open_writer(
        path, encoder=ENCODER, preprocessing=PREP, layout=layout, part="lab-a"
    ) as w:
        for v in range(2):
            record = store.VideoRecord(f"v{v}.mp4", 10, f"{v:064x}", 30.0, 40, 1.3, 8, 8, "h264")
            vw = w.begin_video(record)
            tokens = rng.normal(size=(3, 2, 2, 2, 4)).astype(np.float32)
            starts = 8 * np.arange(3)
            vw.append(tokens, tokens.mean(axis=(1, 2, 3)), starts, 1, 16, starts / 30.0)
            vw.commit()
    return path


def test_root_says_where_the_data_are_and_xarray_can_follow_it(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "failed to open consolidated"
        root = xr.open_zarr(path)
    assert "parts/<name>" in root.attrs["README"]
    assert "xarray.open_zarr(STORE, group='parts/<name>')" in root.attrs["README"]
    assert root.attrs["parts"] == ["lab-a"]
    part = xr.open_zarr(path, group="parts/lab-a", consolidated=False)
    n = part.attrs["ethoprism_part"]["n_windows"]
    np.testing.assert_array_equal(
        part["embedding"].values[:n], store.open(path)["embedding"].values
    )


def test_root_holds_consolidated_metadata_of_every_array(path):
    group = zarr.open_group(path, mode="r", use_consolidated=True)
    listed = group.metadata.consolidated_metadata.flattened_metadata
    arrays = {k for k, v in listed.items() if v.node_type == "array"}
    assert {"parts/lab-a/tokens", "parts/lab-a/embedding", "parts/lab-a/start_time"} <= arrays
    assert listed["parts/lab-a/tokens"].shape[0] == 6  # as of the last writer's close


def test_every_array_has_long_name_description_and_units(path):
    part = zarr.open_group(path, mode="r")["parts/lab-a"]
    names = [name for name, _ in part.arrays()]
    assert "tokens" in names and "start_time" in names
    for name in names:
        attrs = part[name].attrs
        assert attrs["long_name"] and attrs["description"], name
        assert attrs["units"] == ARRAY_ATTRS[name]["units"], name
    assert part["start_time"].attrs["units"] == "seconds"
    assert part["start_frame"].attrs["units"] == "frames"
    ds = store.open(path)
    assert ds["start_time"].attrs["units"] == "seconds"
    assert ds["tokens"].attrs["long_name"] == "encoder tokens"
    assert "float32" in ds["tokens"].attrs["description"]
