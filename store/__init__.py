"""The Zarr v3 feature store: schema, token coding, writer, reader, validation, remote access.

The names are imported on first use, so that importing the pure-numpy token layout and coding
(`store.layout`, `store.codecs`, which the extraction uses) does not pull in zarr and dask.
"""

import sys
import types

_NAMES = {
    "open": "ethoprism.store.reader",
    "read_windows": "ethoprism.store.reader",
    "select": "ethoprism.store.reader",
    "Layout": "ethoprism.store.layout",
    "StoreError": "ethoprism.store.errors",
    "StoreIdentityError": "ethoprism.store.errors",
    "VideoRecord": "ethoprism.store.schema",
    "check_same_identity": "ethoprism.store.schema",
    "identity": "ethoprism.store.schema",
    "info": "ethoprism.store.validate",
    "validate": "ethoprism.store.validate",
    "StoreWriter": "ethoprism.store.writer",
    "VideoWriter": "ethoprism.store.writer",
    "open_writer": "ethoprism.store.writer",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'ethoprism.store' has no attribute {name!r}")


class _Package(types.ModuleType):
    """Importing the submodule `store.validate` sets the package attribute `validate`; the
    function of that name (as the package exported it before it was lazy) must stay."""

    def __setattr__(self, name, value):
        if not (name in _NAMES and isinstance(value, types.ModuleType)):
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
