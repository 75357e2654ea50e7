"""Shared pytest fixtures (tests/ is on sys.path: pytest's rootdir-relative conftest import)."""

from servers import nginx_server, s3_server  # noqa: F401  (registered as fixtures)
