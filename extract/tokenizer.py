"""Text -> token ids for the LvT text tower, as the official `models.tokenize_texts` does it.

Canonicalise (ASCII punctuation -> space, lower case, single spaces, a final "."), SentencePiece
ids (no BOS when the model has none, as c4_en; never EOS), the first 64 kept, padded with id 0
(hard-coded, not the model's pad id) and paddings 1.0.
"""

from __future__ import annotations

import os
import string
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ethoprism.errors import EthoprismError

ENV_VAR = "ETHOPRISM_TOKENIZER"
_PUNCTUATION = str.maketrans(string.punctuation, " " * len(string.punctuation))


class TokenizerError(EthoprismError):
    """A SentencePiece model that cannot be found or read."""


def canonicalize(text: str) -> str:
    return " ".join(text.translate(_PUNCTUATION).lower().split()) + "."


@dataclass(frozen=True)
class Tokenizer:
    path: str
    processor: object  # sentencepiece.SentencePieceProcessor

    def ids(self, texts: list[str], canonical: bool = True) -> list[list[int]]:
        """Untruncated ids of each text."""
        texts = [canonicalize(t) for t in texts] if canonical else list(texts)
        bos = self.processor.bos_id()
        return [([bos] if bos >= 0 else []) + self.processor.EncodeAsIds(t) for t in texts]

    def __call__(
        self, texts: list[str], max_length: int = 64, canonical: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n, max_length) int32, paddings (n, max_length) float32, 1 = pad)."""
        ids = np.zeros((len(texts), max_length), np.int32)
        paddings = np.ones((len(texts), max_length), np.float32)
        for row, seq in enumerate(self.ids(texts, canonical)):
            seq = seq[:max_length]
            ids[row, : len(seq)] = seq
            paddings[row, : len(seq)] = 0.0
        return ids, paddings


def load_tokenizer(path: str | os.PathLike | None = None, url: str | None = None) -> Tokenizer:
    """The SentencePiece model at `path`; None -> $ETHOPRISM_TOKENIZER, else `url` downloaded
    once into the user's cache (~/.cache/ethoprism/tokenizers)."""
    import sentencepiece

    if path is None and os.environ.get(ENV_VAR):
        path = os.environ[ENV_VAR]
    if path is None:
        path = _cached_download(url)
    path = Path(path).expanduser()
    if not path.is_file():
        raise TokenizerError(f"tokenizer {path} does not exist")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.Load(str(path))
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"tokenizer {path} is not a SentencePiece model: {e}") from None
    return Tokenizer(str(path), processor)


def _cached_download(url: str | None) -> Path:
    how = f"pass tokenizer=PATH (CLI: --tokenizer PATH) or set {ENV_VAR}=PATH"
    if url is None:
        raise TokenizerError(f"this model has no published tokenizer: {how}")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ethoprism"
    target = cache / "tokenizers" / url.rstrip("/").split("/")[-2] / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".part{os.getpid()}")
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            f.write(r.read())
        tmp.replace(target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TokenizerError(
            f"the tokenizer is not cached and could not be downloaded from {url} "
            f"({type(e).__name__}); download it, then {how}"
        ) from None
    return target
