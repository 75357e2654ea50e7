"""Shared pytest fixtures (tests/ is on sys.path: pytest's rootdir-relative conftest import)."""

import os
import shutil
import tempfile

import pytest
from servers import nginx_server, s3_server  # noqa: F401  (registered as fixtures)

# Many tests compile the same programs (the tiny encoder at the same shapes, the same heads) in
# fresh jit closures, subprocesses and Dask workers; XLA's persistent cache, keyed on the
# program itself, compiles each once per session. A fresh directory per session: nothing
# carries over between runs, so a run here costs what it costs on a clean machine.
_JAX_CACHE = {
    "JAX_COMPILATION_CACHE_DIR": None,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.2",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}


def pytest_configure(config):
    _JAX_CACHE["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ethoprism-jax-cache-")
    os.environ.update(_JAX_CACHE)  # read by jax at import, here and in every child process


def pytest_unconfigure(config):
    shutil.rmtree(_JAX_CACHE["JAX_COMPILATION_CACHE_DIR"] or "", ignore_errors=True)


@pytest.fixture(autouse=True)
def _own_text_cache(tmp_path_factory, monkeypatch):
    """Each test its own text embedding cache: none sees another's prompts (or ~/.cache)."""
    monkeypatch.setenv("ETHOPRISM_TEXT_CACHE", str(tmp_path_factory.mktemp("text-cache")))
