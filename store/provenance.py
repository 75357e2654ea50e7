"""How a store's weights are named to people: the checkpoint as a short, named hash, and the mark
that every figure and report made from random or unverifiable weights carries."""

from __future__ import annotations

import re

RANDOM_PREFIX = "random-init"  # extract.weights records random weights as "random-init-seed-N"
NOT_A_RESULT = "random weights — not a result"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def checkpoint_label(sha256: str | None) -> str:
    """`sha256:` and the first 12 hex digits, or what the weights are when they have no hash."""
    sha = str(sha256 or "")
    if sha.startswith(RANDOM_PREFIX):
        return f"random weights ({sha})"
    if _SHA256.fullmatch(sha):
        return f"sha256:{sha[:12]}"
    return f"unverified weights ({sha or 'no checkpoint hash recorded'})"


def weights_warning(identity: dict) -> str | None:
    """NOT_A_RESULT for a store made with random weights or without a checkpoint hash, else None."""
    sha = str((identity.get("encoder") or {}).get("checkpoint_sha256") or "")
    return None if _SHA256.fullmatch(sha) else NOT_A_RESULT
