"""Shared pytest fixtures (tests/ is on sys.path: pytest's rootdir-relative conftest import)."""

import pytest
from servers import nginx_server, s3_server  # noqa: F401  (registered as fixtures)


@pytest.fixture(autouse=True)
def _own_text_cache(tmp_path_factory, monkeypatch):
    """Each test its own text embedding cache: none sees another's prompts (or ~/.cache)."""
    monkeypatch.setenv("ETHOPRISM_TEXT_CACHE", str(tmp_path_factory.mktemp("text-cache")))
