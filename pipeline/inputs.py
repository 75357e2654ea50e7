"""Which videos a run covers: files, directories (recursive) and glob patterns, in a stable
order."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from ethoprism.errors import EthoprismError

VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv"}
# still images (one-frame videos); directories contribute them only where annotations name them
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def find_videos(inputs: list[str], suffixes=frozenset(VIDEO_SUFFIXES)) -> list[str]:
    """Expand ARCHIVE arguments into video paths, each once, in the order given.

    A file is taken as it is, whatever its suffix (so a broken or mislabelled file is reported
    as failed rather than silently skipped); directories contribute every file with one of
    `suffixes` below them, sorted; patterns are expanded with glob (recursive `**` allowed).
    """
    found: list[str] = []
    for item in inputs:
        if os.path.isfile(item):
            found.append(item)
        elif os.path.isdir(item):
            found += sorted(
                str(p)
                for p in Path(item).rglob("*")
                if p.is_file() and p.suffix.lower() in suffixes
            )
        elif glob.has_magic(item):
            matches = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
            if not matches:
                raise EthoprismError(f"no file matches {item!r}")
            found += matches
        else:
            raise EthoprismError(f"no such file or directory: {item!r}")
    seen, unique = set(), []
    for path in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    if not unique:
        raise EthoprismError(f"no videos found in {', '.join(inputs)}")
    return unique
