"""The on-disk text embedding cache: a prompt is encoded once per (model, checkpoint, tokenizer),
and what comes back from the cache is bit for bit what the text tower gave."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from ethoprism.errors import EthoprismError
from ethoprism.extract import load_encoder
from ethoprism.extract.textcache import TextCache, encode_cached
from ethoprism.extract.tokenizer import load_tokenizer
from ethoprism.extract.videotext import encode_prompts_for, prompts
from ethoprism.store.schema import file_sha256

GOLDEN = Path(__file__).parent.parent / "data" / "golden" / "videoprism-lvt-tiny"
CHECKPOINT, TOKENIZER = str(GOLDEN / "checkpoint.npz"), str(GOLDEN / "tokenizer.model")
TEXTS = ["a mouse rearing", "two flies fighting", "rat grooming in the corner", "Walking!"]
IDENTITY = {"name": "videoprism-lvt-tiny", "checkpoint_sha256": file_sha256(CHECKPOINT)}


def refuse(missing):
    raise AssertionError(f"encoded {missing}: expected cache hits")


def test_cache_hit_is_bitwise_the_fresh_encode(tmp_path, monkeypatch):
    monkeypatch.setenv("ETHOPRISM_TEXT_CACHE", str(tmp_path / "cache"))
    model, tok = load_encoder("videoprism-lvt-tiny", CHECKPOINT), load_tokenizer(TOKENIZER)
    fresh = model.encode_texts(prompts(TEXTS), tok)
    cold = encode_prompts_for(IDENTITY, TEXTS, checkpoint=CHECKPOINT, tokenizer=TOKENIZER)
    assert cold.tobytes() == fresh.tobytes()
    # warm: no checkpoint named and none on this machine; the hits need no weights
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-hub"))
    monkeypatch.delenv("ETHOPRISM_CHECKPOINT", raising=False)
    warm = encode_prompts_for(IDENTITY, TEXTS, tokenizer=TOKENIZER)
    assert warm.tobytes() == fresh.tobytes()
    # a new prompt among cached ones needs the weights again: here there are none
    with pytest.raises(EthoprismError):
        encode_prompts_for(IDENTITY, [*TEXTS, "a fish turning"], tokenizer=TOKENIZER)
    # the key is the prompt after its template: another template is another prompt
    cache = TextCache(tmp_path / "cache", "videoprism-lvt-tiny", IDENTITY["checkpoint_sha256"],
                      file_sha256(TOKENIZER))  # fmt: skip
    assert all(r is not None for r in cache.get(prompts(TEXTS), 64))
    assert all(r is None for r in cache.get(prompts(TEXTS, "{}"), 64))


def test_a_changed_checkpoint_or_tokenizer_misses(tmp_path):
    rows = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    texts = ["a", "b", "c"]
    base = TextCache(tmp_path, "m", "1" * 64, "2" * 64)
    got = encode_cached(base, texts, 8, lambda t: rows[[texts.index(x) for x in t]])
    assert got.tobytes() == rows.tobytes()
    assert encode_cached(base, texts, 8, refuse).tobytes() == rows.tobytes()
    for other in (
        TextCache(tmp_path, "m", "3" * 64, "2" * 64),  # another checkpoint
        TextCache(tmp_path, "m", "1" * 64, "3" * 64),  # another tokenizer
        TextCache(tmp_path, "n", "1" * 64, "2" * 64),  # another model
    ):
        assert other.get(texts, 8) == [None] * 3
    # partial hits: only the new prompt is encoded
    asked = []
    new = np.ones((1, 8), np.float32)
    got = encode_cached(base, ["b", "d", "a"], 8, lambda t: asked.extend(t) or new)
    assert asked == ["d"]
    np.testing.assert_array_equal(got, np.stack([rows[1], new[0], rows[0]]))


def test_damaged_entries_miss_and_concurrent_writers_agree(tmp_path):
    cache = TextCache(tmp_path, "m", "1" * 64, "2" * 64)
    row = np.arange(8, dtype=np.float32)
    cache.put(["x"], row[None])
    cache.path("x").write_bytes(cache.path("x").read_bytes()[:-4])  # torn: one float short
    assert cache.get(["x"], 8) == [None]
    cache.path("x").unlink()
    texts = [f"prompt {i}" for i in range(50)]
    rows = np.random.default_rng(1).normal(size=(50, 8)).astype(np.float32)
    writers = [threading.Thread(target=cache.put, args=(texts, rows)) for _ in range(8)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert np.stack(cache.get(texts, 8)).tobytes() == rows.tobytes()
    assert not list(tmp_path.rglob("*.tmp"))  # no temporary file left behind


def test_a_damaged_entry_is_replaced_by_its_fresh_encode(tmp_path):
    # A torn entry is a miss; the encode that follows must replace it, or every later run
    # encodes the prompt again (and reads the weights) for as long as the torn file stays.
    cache = TextCache(tmp_path, "m", "1" * 64, "2" * 64)
    row = np.arange(8, dtype=np.float32)
    cache.put(["x"], row[None])
    cache.path("x").write_bytes(cache.path("x").read_bytes()[:-4])
    assert encode_cached(cache, ["x"], 8, lambda t: row[None]).tobytes() == row.tobytes()
    assert encode_cached(cache, ["x"], 8, refuse).tobytes() == row.tobytes()
