"""The Zarr v3 feature store: schema, token coding, writer, reader, validation, remote access."""

from ethoprism.store.reader import open, read_windows, select
from ethoprism.store.schema import (
    Layout,
    StoreError,
    StoreIdentityError,
    VideoRecord,
    check_same_identity,
    identity,
)
from ethoprism.store.validate import info, validate
from ethoprism.store.writer import StoreWriter, VideoWriter, open_writer

__all__ = [
    "Layout",
    "StoreError",
    "StoreIdentityError",
    "StoreWriter",
    "VideoRecord",
    "VideoWriter",
    "check_same_identity",
    "identity",
    "info",
    "open",
    "open_writer",
    "read_windows",
    "select",
    "validate",
]
