"""`store merge`: the parts of stores of one identity copied into a new working store.

The copy holds the parts of `handle.union_handle` under the same names, so its Dataset is the
union view's (`store.open([A, B, ...])`, which copies nothing): the reader's merge rules (SPEC.md,
"Merging parts") keep a video present in several stores once (its first complete copy), and
`duplicates` reports which.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ethoprism.store.handle import open_handle, part_name, union_handle
from ethoprism.store.parts import StoreHandle
from ethoprism.store.published import PUBLISHED_ATTR
from ethoprism.store.reader import dataset
from ethoprism.store.remote import is_url
from ethoprism.store.schema import PART_ATTR, PARTS, StoreError, content_key


def duplicates(handle: StoreHandle) -> list[dict]:
    """Videos complete in more than one part: their path, fingerprint and which part is kept."""
    seen: dict[str, list[str]] = {}
    paths = {}
    for part in handle.parts:
        for row in part.state["videos"]:
            if row["status"] == "complete":
                key = content_key(row)
                seen.setdefault(key, []).append(part.name)
                paths.setdefault(key, row["path"])
    return [
        {"path": paths[k], "sha256": k, "kept_from": names[0], "also_in": names[1:]}
        for k, names in seen.items()
        if len(names) > 1
    ]


def merge(sources, out, storage_options: dict | None = None) -> dict:
    """Copy the stores' parts into a new working store at `out` (a local directory).

    Returns {"out", "parts", "windows", "videos", "duplicates"}. The copy's Dataset equals
    `store.open(sources)`. Published stores are read-only views of one dataset, not parts:
    merge the working stores they came from.
    """
    handle = union_handle(sources, storage_options)
    for source in map(str, sources):
        if is_url(source):
            raise StoreError(f"{source}: merge copies local stores; download it first")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise StoreError(f"{out} exists and is not empty; merge into a new directory")
    roots = [Path(str(s).removeprefix("file://")) for s in sources]
    for source, root in zip(sources, roots, strict=True):
        attrs = json.loads((root / "zarr.json").read_text()).get("attributes", {})
        if PUBLISHED_ATTR in attrs:
            raise StoreError(
                f"{source} is a published store (one dataset, no parts); merge the working "
                "stores it was published from, or read them together with store.open([...])"
            )
    (out / PARTS).mkdir(parents=True)
    _write_doc(out / PARTS / "zarr.json", {})
    ignore = shutil.ignore_patterns(".*")
    for i, (source_handle, root) in enumerate(
        zip([open_handle(s, storage_options) for s in sources], roots, strict=True)
    ):
        for part in source_handle.parts:
            target = out / PARTS / part_name(i, part.name)
            shutil.copytree(root / PARTS / part.name, target, ignore=ignore)
            doc = json.loads((target / "zarr.json").read_text())
            doc["attributes"][PART_ATTR] = {
                **doc["attributes"][PART_ATTR],
                "name": part_name(i, part.name),
            }
            _write_doc(target / "zarr.json", doc["attributes"])
    _write_doc(out / "zarr.json", handle.attrs)  # last: the copy is a store from here on
    ds = dataset(handle)
    return {
        "out": str(out),
        "parts": len(handle.parts),
        "windows": ds.sizes["window"],
        "videos": int((ds.video_status.values == "complete").sum()),
        "duplicates": duplicates(handle),
    }


def _write_doc(path: Path, attributes: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes}))
    os.replace(tmp, path)
