"""Retrieval: nearest windows to a moment, a window, a clip or (with LvT stores) a sentence.

`knn` is the exact blocked search, `ann` the approximate FAISS index, `select` names what to
search (moments, spans), `query` ties them into whole queries, `hitk` scores retrieval against
labels and `contact_sheet` draws the results. The names below are the wing's public API.
"""

from ethoprism.probe.retrieve.knn import Neighbours, RetrievalError, exact_search
from ethoprism.probe.retrieve.query import (
    Query,
    QueryResult,
    middle_frame,
    query_moments,
    query_windows,
    results_table,
    run_query,
    search,
)
from ethoprism.probe.retrieve.select import (
    Moment,
    VideoSpan,
    find_video,
    parse_moment,
    parse_span,
    window_at,
)

__all__ = [
    "Moment",
    "Neighbours",
    "Query",
    "QueryResult",
    "RetrievalError",
    "VideoSpan",
    "exact_search",
    "find_video",
    "middle_frame",
    "parse_moment",
    "parse_span",
    "query_moments",
    "query_windows",
    "results_table",
    "run_query",
    "search",
    "window_at",
]
