"""Finding a store's source videos on this machine, wherever the store and videos have moved.

The store holds no pixels; commands that show frames (contact sheets, clip and moment tools)
read them from the original files. Each video row records the path as given to `extract`, its
absolute form and the file's fingerprint (size and sha256), so a video is looked for:
1. at its recorded path, then its absolute path (a file there is taken as it is);
2. under `videos_root`: the recorded path taken relative to it, then ever shorter tails of the
   absolute path (`/old/lab/data/a/x.mp4` -> `data/a/x.mp4`, `a/x.mp4`, `x.mp4`), each with the
   recorded size;
3. under `videos_root`, by fingerprint: any file of the recorded size whose sha256 matches
   (renamed files).
URLs are used as they are. Videos found nowhere are reported together, by name, in one error.
"""

from __future__ import annotations

import os
from pathlib import Path

from ethoprism.store.schema import StoreError, file_sha256


class VideosNotFound(StoreError):
    """Source videos of a store that are not on this machine where looked for."""


def _is_file_of_size(path: Path, size: int) -> bool:
    try:
        return path.is_file() and (size < 0 or path.stat().st_size == size)
    except OSError:
        return False


class VideoResolver:
    """Maps a store's recorded video paths to files on this machine (see the module doc)."""

    def __init__(self, datasets, videos_root: str | os.PathLike | None = None):
        """datasets: one or more datasets of `ethoprism.store.open` whose videos are wanted.
        Paths that are in none of their tables (a clip given by the user) must exist."""
        self.root = Path(videos_root) if videos_root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise VideosNotFound(f"--videos-root {self.root} is not a directory")
        self.rows: dict[str, dict] = {}  # recorded path -> what is known about the file
        for ds in datasets if isinstance(datasets, list | tuple) else [datasets]:
            has_abs = "video_abs_path" in ds.coords  # not in stores written before it was
            for i, path in enumerate(ds["video_path"].values):
                self.rows[str(path)] = {
                    "abs_path": str(ds["video_abs_path"].values[i]) if has_abs else "",
                    "size": int(ds["video_size_bytes"].values[i]),
                    "sha256": str(ds["video_sha256"].values[i]),
                }
        self._found: dict[str, str | None] = {}
        self._by_size: dict[int, list[Path]] | None = None

    def locate(self, recorded: str) -> str | None:
        """This machine's path of the video recorded as `recorded`, or None."""
        if recorded not in self._found:
            self._found[recorded] = self._search(recorded)
        return self._found[recorded]

    def require(self, recorded_paths) -> dict[str, str]:
        """{recorded: local path} for every one of them; VideosNotFound names those missing."""
        found = {p: self.locate(p) for p in dict.fromkeys(recorded_paths)}
        missing = [p for p, local in found.items() if local is None]
        if missing:
            shown = ", ".join(self._describe(p) for p in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            where = (
                f", nor under --videos-root {self.root} (by relative path or by content)"
                if self.root is not None
                else "; pass --videos-root DIR, the folder where the videos are now"
            )
            raise VideosNotFound(
                f"cannot find {len(missing)} source video(s) of the store: {shown}{more}: "
                f"not at the paths recorded at extraction{where}"
            )
        return found  # type: ignore[return-value]

    def _describe(self, recorded: str) -> str:
        abs_path = self.rows.get(recorded, {}).get("abs_path", "")
        return recorded + (f" (absolute {abs_path})" if abs_path and abs_path != recorded else "")

    def _search(self, recorded: str) -> str | None:
        if "://" in recorded:
            return recorded
        row = self.rows.get(recorded, {"abs_path": "", "size": -1, "sha256": ""})
        size = row["size"]
        for candidate in (recorded, row["abs_path"]):
            if candidate and Path(candidate).is_file():
                return candidate
        if self.root is None:
            return None
        tails = []
        if not os.path.isabs(recorded):
            tails.append(Path(recorded))
        parts = Path(row["abs_path"] or recorded).parts
        tails += [Path(*parts[k:]) for k in range(1, len(parts))]
        for tail in tails:
            if _is_file_of_size(self.root / tail, size):
                return str(self.root / tail)
        if row["sha256"] and size >= 0:
            for path in self._files_by_size().get(size, []):
                if file_sha256(path) == row["sha256"]:
                    return str(path)
        return None

    def _files_by_size(self) -> dict[int, list[Path]]:
        """Every file under the root by size, so only same-size files are hashed."""
        if self._by_size is None:
            self._by_size = {}
            for dirpath, _, files in os.walk(self.root):
                for name in files:
                    path = Path(dirpath, name)
                    try:
                        self._by_size.setdefault(path.stat().st_size, []).append(path)
                    except OSError:
                        continue
        return self._by_size
