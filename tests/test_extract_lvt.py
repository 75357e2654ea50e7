"""The LvT video-text model and tokenizer against the official code's outputs
(tests/data/golden/videoprism-lvt-tiny, tiny config, its own tokenizer)."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
import pytest

from ethoprism.errors import EthoprismError
from ethoprism.extract import load_encoder
from ethoprism.extract.lvt import VideoText
from ethoprism.extract.tokenizer import canonicalize, load_tokenizer
from ethoprism.extract.videotext import VideoTextEncoder, param_shapes, prompts

GOLDEN = Path(__file__).parent / "data" / "golden" / "videoprism-lvt-tiny"
VIDEO_CASES = sorted(p.stem for p in GOLDEN.glob("case_video_*.npz"))
TEXT_CASES = ["case_text_a", "case_text_b"]


def assert_close(ours, ref, scale=1.0, what=""):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, what
    bound = scale * (1e-4 + 1e-4 * np.abs(ref))
    worst = np.max(np.abs(ours - ref) - bound)
    assert worst <= 0, f"{what}: exceeds the tolerance by {worst}"


@pytest.fixture(scope="module")
def model() -> VideoTextEncoder:
    return load_encoder("videoprism-lvt-tiny", checkpoint=GOLDEN / "checkpoint.npz")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(GOLDEN / "tokenizer.model")


def test_variable_tree_is_the_official_one():
    for keys_file, name in [("checkpoint_keys.txt", "tiny"), ("checkpoint_keys_base.txt", "b")]:
        official = {}
        for line in (GOLDEN / keys_file).read_text().splitlines():
            key, shape = line.split("\t")
            official[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
        ours = {
            "params/" + "/".join(k): tuple(v.shape)
            for k, v in _flat(param_shapes(_cfg(name))["params"]).items()
        }
        assert ours == official, name


@functools.cache
def _video(config):
    return jax.jit(functools.partial(VideoText(config).apply, method=VideoText.video))


def _cfg(size):
    from ethoprism.extract.lvt import LVT_CONFIGS

    return LVT_CONFIGS[f"videoprism-lvt-{size}"]


def _flat(tree):
    from flax.traverse_util import flatten_dict

    return flatten_dict(tree)


@pytest.mark.parametrize("case", VIDEO_CASES)
def test_video_tower_matches_golden(model, case):
    z = np.load(GOLDEN / f"{case}.npz")
    video, out = _video(model.lvt)(model.params, z["inputs"])
    b = len(z["inputs"])
    assert_close(video, z["video_embeddings"], what="video_embeddings")
    assert_close(
        out["video_embedding_unnormalized"], z["video_embeddings_unnormalized"], what="unnorm"
    )
    assert_close(out["frame_embeddings"], z["frame_embeddings"], what="frame_embeddings")
    for ours, ref in [
        ("spatial_features", "spatial_features"),
        ("tokens", "spatiotemporal_features"),
        ("auxiliary_features", "auxiliary_features"),
    ]:
        assert_close(np.asarray(out[ours]).reshape(b, -1, 64), z[ref], what=ref)


@pytest.mark.parametrize("case", TEXT_CASES)
def test_tokenizer_matches_golden_exactly(tokenizer, case):
    z = np.load(GOLDEN / f"{case}.npz")
    texts = [str(t) for t in z["texts"]]
    assert [canonicalize(t) for t in texts] == [str(t) for t in z["canonical_texts"]]
    ids, paddings = tokenizer(texts)
    assert ids.dtype == np.int32 and paddings.dtype == np.float32
    np.testing.assert_array_equal(ids, z["token_ids"])
    np.testing.assert_array_equal(paddings, z["paddings"])
    assert [len(s) for s in tokenizer.ids(texts)] == list(z["num_tokens_untruncated"])


@pytest.mark.parametrize("case", TEXT_CASES)
def test_text_tower_matches_golden(model, tokenizer, case):
    z = np.load(GOLDEN / f"{case}.npz")
    texts = [str(t) for t in z["texts"]]
    emb, out = jax.jit(functools.partial(VideoText(model.lvt).apply, method=VideoText.text))(
        model.params, z["token_ids"], z["paddings"]
    )
    assert_close(emb, z["text_embeddings"], what="text_embeddings")
    assert_close(out["text_embedding_unnormalized"], z["text_embeddings_unnormalized"])
    # Rows at padded positions are garbage by design; compare the real ones and the class token.
    real = np.concatenate([z["paddings"] == 0, np.ones((len(texts), 1), bool)], axis=1)
    assert_close(np.asarray(out["text_features"])[real], z["text_features"][real])
    # The batched, length-trimmed path used for queries gives the same embeddings.
    assert_close(model.encode_texts(texts, tokenizer, batch_size=4), z["text_embeddings"])


def test_similarity_matches_the_colab(model, tokenizer):
    z = np.load(GOLDEN / "case_similarity.npz")
    enc = model(z["inputs"])  # the extraction interface, on the inputs of case_video_b2_t4_r72
    video = np.asarray(enc.video_embedding)
    assert_close(video, z["video_embeddings"])
    ref = np.load(GOLDEN / "case_video_b2_t4_r72.npz")
    assert_close(enc.frame_embeddings, ref["frame_embeddings"])
    np.testing.assert_allclose(enc.embedding, np.asarray(enc.tokens).mean((1, 2, 3)), atol=1e-6)
    text = model.encode_texts([str(t) for t in z["texts"]], tokenizer)
    cosine = video @ text.T
    assert_close(cosine, z["cosine"])
    assert_close(cosine / float(z["temperature"]), z["logits"], scale=100)


def test_prompt_template_and_errors(tmp_path):
    assert prompts(["a mouse rearing"]) == ["a video of a mouse rearing."]
    assert prompts(["x"], "{}") == ["x"]
    with pytest.raises(EthoprismError, match="template"):
        prompts(["x"], "no placeholder")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(EthoprismError, match="not a SentencePiece model"):
        load_tokenizer(bad)
    with pytest.raises(EthoprismError, match="--tokenizer PATH"):
        load_tokenizer(None, None)
    with pytest.raises(EthoprismError, match="does not match videoprism-lvt-tiny"):
        load_encoder("videoprism-lvt-tiny", checkpoint=GOLDEN.parent / "checkpoint.npz")
