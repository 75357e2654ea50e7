"""Importing and using the store (and the probe's figures) changes nothing process-wide, and the
reader's registry of opened stores is bounded and reopens remote stores with their options."""

from __future__ import annotations

import multiprocessing
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
from test_store_remote import write_store

from ethoprism import store
from ethoprism.store import reader
from ethoprism.store.remote import upload_store
from ethoprism.store.stream import keep_freed_memory


def test_imports_and_figures_leave_the_process_as_they_found_it(tmp_path):
    """blosc's settings, matplotlib's backend and pyplot are untouched by importing the store
    and the probe's figure modules and by drawing figures (run in a fresh interpreter)."""
    script = textwrap.dedent(
        f"""
        import sys
        import blosc, matplotlib
        threads, backend = blosc.nthreads, matplotlib.rcParams._get_backend_or_none()
        import ethoprism.store, ethoprism.store.writer, ethoprism.store.shards
        import ethoprism.probe.report as report
        import ethoprism.probe.retrieve.contact_sheet
        import numpy as np
        assert blosc.nthreads == threads, (blosc.nthreads, threads)
        report.ethogram_png({str(tmp_path / "e.png")!r}, ["a", "b"], np.array([0, 1, 1, -1]),
                            np.array([0, 0, 1, 1]), fps=2.0)
        report.confusion_png({str(tmp_path / "c.png")!r}, np.array([[3, 1], [0, 2]]), ["a", "b"])
        assert matplotlib.rcParams._get_backend_or_none() == backend, backend
        assert "matplotlib.pyplot" not in sys.modules
        print("ok")
        """
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "MPLBACKEND"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    for name in ("e.png", "c.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_writer_leaves_the_allocator_alone(tmp_path):
    """malloc thresholds are an opt-in of the extraction run, never set by opening a writer."""
    keep_freed_memory.cache_clear()
    write_store(tmp_path / "s.zarr")
    assert keep_freed_memory.cache_info().misses == 0


def test_registry_of_opened_stores_is_bounded_and_reopens(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "_OPENED", type(reader._OPENED)())
    write_store(tmp_path / "s0.zarr")
    for i in range(1, reader.OPENED_STORES + 2):
        shutil.copytree(tmp_path / "s0.zarr", tmp_path / f"s{i}.zarr")
    datasets = [store.open(str(tmp_path / f"s{i}.zarr")) for i in range(reader.OPENED_STORES + 2)]
    assert len(reader._OPENED) == reader.OPENED_STORES
    assert datasets[0].attrs["source"] not in reader._OPENED  # the least recently used
    picks = np.array([20, 3, 3, 0, 11])
    want = datasets[0].tokens.values[picks]
    np.testing.assert_array_equal(store.read_windows(datasets[0], picks), want)
    assert datasets[0].attrs["source"] in reader._OPENED  # reopened, now the most recent
    assert len(reader._OPENED) == reader.OPENED_STORES


def _read_in_child(pickled: bytes) -> np.ndarray:
    return store.read_windows(pickle.loads(pickled), [4, 0, 9], "embedding")


def test_storage_options_reach_another_process(tmp_path, s3_server):
    """A dataset of an S3 store (credentials and endpoint given as storage_options) pickled to a
    fresh process reads there: the child knows neither the endpoint nor the keys otherwise."""
    url = f"s3://{s3_server.bucket}/registry/feat.zarr"
    write_store(tmp_path / "feat.zarr")
    upload_store(tmp_path / "feat.zarr", url, s3_server.storage_options)
    ds = store.open(url, storage_options=s3_server.storage_options)
    assert "storage_options" not in ds.attrs and "secret" not in repr(ds.attrs)
    want = store.read_windows(ds, [4, 0, 9], "embedding")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        got = pool.apply(_read_in_child, (pickle.dumps(ds.isel(window=slice(None))),))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(
        want, store.open(str(tmp_path / "feat.zarr")).embedding.values[[4, 0, 9]]
    )
