"""Text prompts against a store's text-aligned video embeddings (a VideoPrism LvT store).

Shared by text queries (retrieve) and zero-shot ethograms (classify): which array holds the
embedding, the refusal for stores that have none, and the prompts encoded once per run.
"""

from __future__ import annotations

import xarray as xr

from ethoprism.errors import EthoprismError

ALIGNED_VAR = "video_embedding"
TEMPERATURE = 0.01  # the official video-text colab's: scores = cosine / 0.01, softmax over texts


class TextSearchError(EthoprismError):
    """A store or prompt that cannot be searched by text."""


def require_aligned(ds: xr.Dataset) -> None:
    """Refuse a store without a text-aligned embedding, naming the model to extract with."""
    if ALIGNED_VAR not in ds:
        name = (ds.attrs.get("encoder") or {}).get("name")
        raise TextSearchError(
            f"{ds.attrs.get('source', 'the store')} was extracted with {name}, which has no "
            "text-aligned embedding; extract the videos with --model videoprism-lvt-b (or "
            "videoprism-lvt-l) to search or classify them by text"
        )


def encode_prompts(ds: xr.Dataset, texts: list[str], **how):
    """(n, D) embeddings of the prompts in the store's text space (`how`: template, checkpoint,
    tokenizer, as `extract.videotext.encode_prompts_for` takes them)."""
    require_aligned(ds)
    if not texts or any(not t.strip() for t in texts):
        raise TextSearchError(f"empty prompt in {texts!r}")
    from ethoprism.extract.videotext import encode_prompts_for

    return encode_prompts_for(ds.attrs["encoder"], list(texts), **how)
