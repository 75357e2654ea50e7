"""Text queries: windows ranked by cosine similarity of their text-aligned video embedding to each
prompt, with the same blocked exact search as moment queries, or the approximate index built
over `video_embedding` (`retrieve build-index STORE --embedding video_embedding`).

Both embeddings are L2-normalised, so the L2 order is the cosine order and
cosine = 1 - distance^2 / 2.
"""

from __future__ import annotations

import numpy as np

from ethoprism import store
from ethoprism.extract.lvt import PROMPT_TEMPLATE
from ethoprism.probe.retrieve.ann import load_index
from ethoprism.probe.retrieve.knn import exact_search
from ethoprism.probe.retrieve.query import Query, QueryResult
from ethoprism.probe.retrieve.select import parse_span, selection_mask
from ethoprism.probe.text import ALIGNED_VAR, TextSearchError, encode_prompts, require_aligned


def cosine(distances: np.ndarray) -> np.ndarray:
    return 1.0 - np.square(distances.astype(np.float64)) / 2.0


def run_text_query(
    index_store: str,
    texts: list[str],
    *,
    k: int = 10,
    template: str = PROMPT_TEMPLATE,
    checkpoint: str | None = None,
    tokenizer: str | None = None,
    videos: list[str] | None = None,
    scheduler: str | None = None,
    approx: bool = False,
    index_path: str | None = None,
    storage_options: dict | None = None,
) -> QueryResult:
    """`ethoprism retrieve query --text`: the k windows nearest each prompt (with `approx`, by
    the saved index: in `index_path`, else beside the store)."""
    ds = store.open(index_store, storage_options)
    require_aligned(ds)
    approx = approx or index_path is not None
    if approx and scheduler:
        raise TextSearchError(
            "--approx searches the saved index in this process; --scheduler is for exact search"
        )
    index = load_index(index_store, ds, var=ALIGNED_VAR, index_path=index_path) if approx else None
    vectors = encode_prompts(
        ds, texts, template=template, checkpoint=checkpoint, tokenizer=tokenizer
    )
    n = len(texts)
    query = Query(vectors, list(texts), [None] * n, [None] * n, [None] * n)
    mask = selection_mask(ds, [parse_span(v) for v in videos]) if videos else None
    if index is not None:
        found = index.search(vectors, k, mask=mask)
    else:
        found = exact_search(vectors, ds[ALIGNED_VAR].data, k, mask=mask, scheduler=scheduler)
    return QueryResult(ds, query, found)


def text_table(result: QueryResult) -> list[dict]:
    """The neighbours table with each window's cosine similarity to its prompt."""
    rows = result.table()
    for r in rows:
        r["cosine"] = float(cosine(np.float32(r["distance"])))
    return rows
