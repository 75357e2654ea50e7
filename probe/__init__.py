"""Probing the store: labels, heads, training, per-frame prediction, metrics, retrieval."""
