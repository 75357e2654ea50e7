"""`manifest.json` beside a published store, and `verify`: is a copy complete and untampered?

The manifest lists every object of the store (path relative to the store's root, size,
sha256, and for chunks of per-window arrays the windows they hold), the store's identity and
its videos' window ranges, so that damage is named in videos and windows without trusting the
damaged copy. Verifying streams each object through sha256 in blocks (memory bounded by the
threads times the block size), so a store of any size verifies in constant memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ethoprism.store.durable import fsync_path
from ethoprism.store.remote import is_local_fs, protocol_of, storage_options_for
from ethoprism.store.safety import check_relative_path
from ethoprism.store.schema import StoreError

MANIFEST = "manifest.json"
FORMAT = "ethoprism.manifest"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 256 << 20
BLOCK = 8 << 20
VERIFY_THREADS = 4
SHA256 = re.compile(r"^[0-9a-f]{64}$")


def put_object(fs, path: str, data: bytes | list, durable: bool = False) -> None:
    """Write one object whole (`data`: bytes, or buffers to write back to back): a local file
    appears only complete (temp, rename), and with `durable` is on the disk when this returns."""
    pieces = [data] if isinstance(data, bytes) else data
    if is_local_fs(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.writelines(pieces)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_path(Path(path).parent, directory=True)
    else:
        fs.pipe_file(path, b"".join(pieces))


def _sha256_stream(fs, path: str, progress: Callable[[int], None] | None) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with fs.open(path, "rb", block_size=BLOCK, cache_type="none") as f:
        while block := f.read(BLOCK):
            digest.update(block)
            size += len(block)
            if progress:
                progress(len(block))
    return size, digest.hexdigest()


def _listing(fs, base: str) -> list[str]:
    """Paths of every object under base, relative to it (dot files left out)."""
    found = fs.find(base)
    rel = [p[len(base) :].lstrip("/") for p in found if p.startswith(base)]
    return sorted(p for p in rel if p and not any(s.startswith(".") for s in p.split("/")))


def write_manifest(
    fs,
    base: str,
    identity: dict,
    known: dict[str, tuple[int, str]],
    videos: list[dict],
    windows_of: Callable[[str], tuple[int, int] | None],
) -> dict:
    """Hash every object under `base` (except those in `known`: {path: (size, sha256)}) and
    write `manifest.json` there; returns the manifest."""
    objects = []
    for path in _listing(fs, base):
        if path == MANIFEST:
            continue
        size, sha = known.get(path) or _sha256_stream(fs, f"{base}/{path}", None)
        entry = {"path": path, "size": size, "sha256": sha}
        windows = windows_of(path)
        if windows is not None:
            entry["windows"] = list(windows)
        objects.append(entry)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "identity": identity,
        "videos": videos,
        "objects": objects,
    }
    put_object(fs, f"{base}/{MANIFEST}", json.dumps(manifest).encode(), durable=True)
    return manifest


def _int(v, where: str, lo: int = 0) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or v > 1 << 50:
        raise StoreError(f"{where}: {v!r} is not a count")
    return v


def parse_manifest(data: bytes, where: str) -> dict:
    """Validate a manifest read from elsewhere against its schema (nothing in it is trusted)."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise StoreError(f"{where}: {len(data)} bytes, larger than a manifest may be")
    try:
        m = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(f"{where}: not JSON ({e})") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise StoreError(f"{where}: not an ethoprism manifest (format {FORMAT!r})")
    if _int(m.get("format_version"), f"{where} format_version") > FORMAT_VERSION:
        raise StoreError(f"{where}: manifest format newer than this ethoprism reads")
    if not isinstance(m.get("identity"), dict) or not isinstance(m.get("objects"), list):
        raise StoreError(f"{where}: identity or objects missing")
    seen = set()
    for i, o in enumerate(m["objects"]):
        at = f"{where} object {i}"
        if not isinstance(o, dict):
            raise StoreError(f"{at}: not an object")
        check_relative_path(o.get("path"), at)
        if o["path"] in seen:
            raise StoreError(f"{at}: {o['path']!r} listed twice")
        seen.add(o["path"])
        _int(o.get("size"), f"{at} size")
        if not isinstance(o.get("sha256"), str) or not SHA256.match(o["sha256"]):
            raise StoreError(f"{at}: sha256 {o.get('sha256')!r} is not 64 hex digits")
        w = o.get("windows")
        if w is not None and (not isinstance(w, list) or len(w) != 2):
            raise StoreError(f"{at}: windows {w!r} is not [first, stop]")
        if w is not None:
            _int(w[0], f"{at} windows"), _int(w[1], f"{at} windows")
    for i, v in enumerate(m.get("videos", [])):
        if not isinstance(v, dict) or not isinstance(v.get("path"), str):
            raise StoreError(f"{where} video {i}: not a video record")
        _int(v.get("first_window"), f"{where} video {i}"), _int(v.get("n_windows"), f"{where}")
    return m


def _held(entry: dict, videos: list[dict]) -> str:
    """What an object holds, in videos and windows."""
    if "windows" not in entry:
        if entry["path"] == "zarr.json" or entry["path"].endswith("/zarr.json"):
            return "metadata"
        return "the video table" if entry["path"].startswith("video_") else "store data"
    lo, hi = entry["windows"]
    held = []
    for v in videos:
        a, b = max(lo, v["first_window"]), min(hi, v["first_window"] + v["n_windows"])
        if a < b:
            first = a - v["first_window"]
            held.append(f"{v['path']} windows {first}-{first + b - a - 1}")
    return f"windows {lo}-{hi - 1} ({'; '.join(held) or 'no video'})"


def verify(
    url: str,
    storage_options: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Check the store at `url` against its manifest, streaming every object through sha256.

    `progress(bytes_done, bytes_total)`, never by two threads at once. Returns {"ok",
    "missing", "altered", "extra" (each a list of {"path", "holds", ...}), "objects", "bytes",
    "extra_checked"}; never writes.
    """
    import fsspec

    try:
        fs, base = fsspec.url_to_fs(url, **storage_options_for(url, storage_options))
    except (ImportError, ValueError) as e:
        raise StoreError(f"cannot open {url}: {e}") from None
    base = base.rstrip("/")
    where = f"{url}/{MANIFEST}"
    try:
        with fs.open(f"{base}/{MANIFEST}", "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise StoreError(f"{where} not found: not a published store (publish it first)") from None
    except OSError as e:
        raise StoreError(f"cannot read {where}: {type(e).__name__}: {e}") from None
    m = parse_manifest(data, where)
    total = sum(o["size"] for o in m["objects"])
    done = [0]
    counting = threading.Lock()  # the checking threads all advance the one count

    def advance(n: int) -> None:
        with counting:
            done[0] += n
            if progress:
                progress(done[0], total)

    def check(entry):
        try:
            size, sha = _sha256_stream(fs, f"{base}/{entry['path']}", advance)
        except FileNotFoundError:
            return "missing", entry, None
        if (size, sha) != (entry["size"], entry["sha256"]):
            return "altered", entry, size
        return "ok", entry, size

    report = {"ok": True, "missing": [], "altered": [], "extra": [], "extra_checked": True}
    with ThreadPoolExecutor(VERIFY_THREADS) as pool:
        for status, entry, size in pool.map(check, m["objects"]):
            if status != "ok":
                item = {"path": entry["path"], "holds": _held(entry, m.get("videos", []))}
                if status == "altered":
                    item.update(expected_size=entry["size"], size=size)
                report[status].append(item)
    if protocol_of(url) in ("http", "https"):
        listed, report["extra_checked"] = [], False  # static HTTP servers do not list
    else:
        listed = _listing(fs, base)
    known = {o["path"] for o in m["objects"]} | {MANIFEST}
    report["extra"] = [
        {"path": p, "holds": "not in the manifest"} for p in listed if p not in known
    ]
    report["ok"] = not (report["missing"] or report["altered"] or report["extra"])
    report.update(objects=len(m["objects"]), bytes=total, url=url)
    return report
