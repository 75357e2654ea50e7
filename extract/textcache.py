"""Text embeddings kept on disk, so a prompt is encoded once ever per model, not once per run.

Keyed by (model name, checkpoint sha256, tokenizer sha256, the prompt after its template): one
small `.npy` file per prompt, named by the sha256 of that key, under `$ETHOPRISM_TEXT_CACHE`
(default `~/.cache/ethoprism/text-embeddings`). A file per prompt means a run reads only the
prompts it asks for, and no writer ever rewrites another's file. Each file is written under a
private temporary name and renamed into place, so concurrent writers never leave a torn entry
(two writing one prompt rename identical bytes). A file that does not read back as one float32
row of the model's width is a miss and is encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ENV_VAR = "ETHOPRISM_TEXT_CACHE"


def default_root() -> Path:
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
        "ethoprism/text-embeddings"
    )


@dataclass(frozen=True)
class TextCache:
    root: Path
    model: str
    checkpoint_sha256: str
    tokenizer_sha256: str

    def path(self, prompt: str) -> Path:
        key = [self.model, self.checkpoint_sha256, self.tokenizer_sha256, prompt]
        h = hashlib.sha256(json.dumps(key).encode()).hexdigest()
        return self.root / self.model / h[:2] / f"{h}.npy"

    def get(self, prompts: list[str], width: int) -> list[np.ndarray | None]:
        """Each prompt's cached embedding, or None."""
        return [_read(self.path(p), width) for p in prompts]

    def put(self, prompts: list[str], embeddings: np.ndarray) -> None:
        """Store the rows; a cache that cannot be written warns and is skipped (it only saves
        time)."""
        try:
            for p, row in zip(prompts, embeddings, strict=True):
                _write(self.path(p), np.ascontiguousarray(row, np.float32))
        except OSError as e:
            warnings.warn(f"text embedding cache {self.root} not written: {e}", stacklevel=2)


def encode_cached(
    cache: TextCache | None,
    prompts: list[str],
    width: int,
    encode: Callable[[list[str]], np.ndarray],
) -> np.ndarray:
    """(n, width) embeddings of `prompts`: cached rows as stored, the others from
    `encode(missing prompts)`, which are then cached. cache None: encode everything."""
    if cache is None:
        return encode(list(prompts))
    rows = cache.get(prompts, width)
    missing = [i for i, r in enumerate(rows) if r is None]
    out = np.zeros((len(prompts), width), np.float32)
    for i, r in enumerate(rows):
        if r is not None:
            out[i] = r
    if missing:
        todo = list(dict.fromkeys(prompts[i] for i in missing))  # each distinct prompt once
        fresh = dict(zip(todo, encode(todo), strict=True))
        cache.put(todo, np.stack([fresh[p] for p in todo]))
        for i in missing:
            out[i] = fresh[prompts[i]]
    return out


def _read(path: Path, width: int) -> np.ndarray | None:
    try:
        row = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return row if row.shape == (width,) and row.dtype == np.float32 else None


def _write(path: Path, row: np.ndarray) -> None:
    if _read(path, row.size) is not None:  # a damaged entry is replaced, not kept as a miss
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, row, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
