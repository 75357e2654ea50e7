"""A damaged chunk met while reading, told as one line: which part, windows and videos hold it,
and how to check the whole store."""

from __future__ import annotations

import numpy as np

from ethoprism.store.schema import StoreError


class DamagedStoreError(StoreError):
    """Stored bytes that fail their checksum or cannot be decoded."""


def damaged(ds, windows, var: str, error: BaseException) -> DamagedStoreError:
    """The error for a failed read of `var` at dataset windows `windows` (positions on `window`)."""
    windows = np.unique(np.asarray(windows, np.int64))
    parts = ds.attrs.get("parts") or []
    part = sorted({str(parts[p]) for p in ds["part"].values[windows]}) if "part" in ds else []
    videos = sorted({str(v) for v in ds["video_name"].values[windows]})
    span = (
        f"window {windows[0]}"
        if len(windows) == 1
        else f"a chunk of windows {windows[0]}..{windows[-1]}"
    )
    source = ds.attrs.get("source", "STORE")
    return DamagedStoreError(
        f"damaged {var} data in part {', '.join(part) or '?'}, {span} (video "
        f"{', '.join(videos)}): {type(error).__name__}: {str(error)[:120]}; check the store with "
        f"`ethoprism store validate {source}`"
    )


def first_damaged(ds, var: str, first: int, stop: int, error: BaseException) -> DamagedStoreError:
    """Find the dask chunk of ds[var] in windows first..stop-1 that fails to read, and name it."""
    bounds = np.cumsum((0,) + ds[var].data.chunks[0])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        lo, hi = max(int(a), first), min(int(b), stop)
        if lo >= hi:
            continue
        try:
            ds[var].data[lo:hi].compute()
        except Exception as e:  # noqa: BLE001  the read that failed, whatever the codec raised
            return damaged(ds, np.arange(lo, hi), var, e)
    return damaged(ds, np.arange(first, stop), var, error)
