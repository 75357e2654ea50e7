"""Text search and zero-shot ethograms on a real store extracted with the tiny golden LvT model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from sklearn.metrics import accuracy_score, average_precision_score, confusion_matrix, f1_score
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.errors import EthoprismError
from ethoprism.extract import load_encoder
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.tokenizer import load_tokenizer
from ethoprism.extract.videotext import prompts
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract
from ethoprism.probe.classify.zeroshot import zero_shot
from ethoprism.probe.retrieve.text import run_text_query, text_table
from ethoprism.store.manifest import verify
from ethoprism.store.publish import publish

DATA = Path(__file__).parent.parent / "data"
GOLDEN = DATA / "golden" / "videoprism-lvt-tiny"
CHECKPOINT, TOKENIZER = str(GOLDEN / "checkpoint.npz"), str(GOLDEN / "tokenizer.model")
HORSE = str(DATA / "videos" / "horse_288x162.mp4")  # 308 frames
FIVE = str(DATA / "videos" / "mouse_cage_5frames.mp4")
PREP = Preprocessing(frame_size=72, window_stride=16)
TEXTS = ["a mouse rearing", "two flies fighting", "rat grooming in the corner"]
CLASSES = ["rearing", "grooming", "walking"]
TEXT_ARGS = ["--checkpoint", CHECKPOINT, "--tokenizer", TOKENIZER]


@pytest.fixture(scope="module")
def lvt_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("lvt") / "features.zarr"
    cfg = RunConfig(
        model="videoprism-lvt-tiny", checkpoint=CHECKPOINT, prep=PREP, batch_size=4,
        decode_workers=1,
    )  # fmt: skip
    assert run_extract([HORSE, FIVE], str(path), cfg).count("complete") == 2
    return str(path)


@pytest.fixture(scope="module")
def text_model():
    return load_encoder("videoprism-lvt-tiny", CHECKPOINT), load_tokenizer(TOKENIZER)


def test_store_holds_text_aligned_embeddings(lvt_store):
    ds = store.open(lvt_store)
    n = ds.sizes["window"]
    assert ds.attrs["encoder"]["name"] == "videoprism-lvt-tiny"
    video = ds["video_embedding"].values
    frames = ds["frame_embeddings"].values
    assert video.shape == (n, 64) and frames.shape == (n, PREP.window_length, 64)
    np.testing.assert_allclose(np.linalg.norm(video, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(frames, axis=2), 1, atol=1e-5)
    assert len(np.unique(video.round(4), axis=0)) == n  # each window its own embedding
    info = json.loads(CliRunner().invoke(app, ["store", "info", lvt_store, "--json"]).stdout)
    assert info["embeddings"] == ["embedding", "video_embedding", "frame_embeddings"]


def test_text_query_equals_numpy_brute_force(lvt_store, text_model):
    model, tok = text_model
    ds = store.open(lvt_store)
    k = 7
    result = run_text_query(lvt_store, TEXTS, k=k, checkpoint=CHECKPOINT, tokenizer=TOKENIZER)
    q = model.encode_texts(prompts(TEXTS), tok)
    cos = ds["video_embedding"].values.astype(np.float64) @ q.T.astype(np.float64)
    for i in range(len(TEXTS)):
        best = np.argsort(-cos[:, i], kind="stable")[:k]
        np.testing.assert_array_equal(result.found.windows[i], best)
    rows = text_table(result)
    assert [r["window"] for r in rows[:k]] == list(result.found.windows[0])
    np.testing.assert_allclose(
        [r["cosine"] for r in rows[:k]], np.sort(cos[:, 0])[::-1][:k], atol=1e-5
    )
    # the CLI gives the same ranking, once with --template "{}" (the prompt as given)
    out = CliRunner().invoke(
        app, ["retrieve", "query", lvt_store, "--text", TEXTS[1], "-k", "3", "--json", *TEXT_ARGS]
    )
    assert out.exit_code == 0, out.output
    assert [r["window"] for r in json.loads(out.stdout)] == list(result.found.windows[1][:3])
    raw = run_text_query(
        lvt_store, TEXTS[:1], k=3, template="{}", checkpoint=CHECKPOINT, tokenizer=TOKENIZER
    )
    bare = ds["video_embedding"].values @ model.encode_texts(TEXTS[:1], tok)[0]
    np.testing.assert_array_equal(raw.found.windows[0], np.argsort(-bare, kind="stable")[:3])


def test_text_query_through_the_approximate_index(lvt_store):
    exact = run_text_query(lvt_store, TEXTS, k=5, checkpoint=CHECKPOINT, tokenizer=TOKENIZER)
    with pytest.raises(EthoprismError, match="--embedding video_embedding"):
        run_text_query(lvt_store, TEXTS, approx=True, tokenizer=TOKENIZER)
    build = ["retrieve", "build-index", lvt_store, "--embedding", "video_embedding"]
    out = CliRunner().invoke(app, [*build, "--nlist", "1"])
    assert out.exit_code == 0, out.output
    assert Path(lvt_store + ".video_embedding.ann").is_dir()
    assert not Path(lvt_store + ".ann").exists()  # the moment-query index is another one
    approx = run_text_query(
        lvt_store, TEXTS, k=5, approx=True, checkpoint=CHECKPOINT, tokenizer=TOKENIZER
    )
    # one list: the IVF search is exhaustive, so it must agree with exact search
    np.testing.assert_array_equal(approx.found.windows, exact.found.windows)
    np.testing.assert_allclose(approx.found.distances, exact.found.distances, atol=1e-5)


def _brute_force_frame_probs(ds, video, n_frames, window_probs):
    """Per-frame mean over covering windows, frame by frame."""
    windows = np.flatnonzero(ds["video_name"].values.astype(str) == video)
    out = np.full((n_frames, window_probs.shape[1]), np.nan)
    for f in range(n_frames):
        cover = [
            i
            for i, w in enumerate(windows)
            if ds["start_frame"].values[w]
            <= f
            <= ds["start_frame"].values[w]
            + (ds["n_valid_frames"].values[w] - 1) * ds["frame_step"].values[w]
        ]
        if cover:
            out[f] = window_probs[cover].mean(0)
    return out


def test_zero_shot_metrics_equal_scikit_learn(lvt_store, text_model, tmp_path):
    model, tok = text_model
    ds = store.open(lvt_store)
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "video,start_frame,end_frame,action\n"
        "horse_288x162.mp4,0,99,rearing\nhorse_288x162.mp4,100,199,grooming\n"
        "horse_288x162.mp4,200,307,walking\n"
    )
    r = zero_shot(
        lvt_store, CLASSES, tmp_path / "out", labels=labels, checkpoint=CHECKPOINT,
        tokenizer=TOKENIZER, videos=["horse_288x162.mp4"],
    )  # fmt: skip
    windows = np.flatnonzero(ds["video_name"].values.astype(str) == "horse_288x162.mp4")
    logits = ds["video_embedding"].values[windows] @ model.encode_texts(prompts(CLASSES), tok).T
    e = np.exp(logits / 0.01)
    frame_prob = _brute_force_frame_probs(ds, "horse_288x162.mp4", 308, e / e.sum(1)[:, None])
    truth = np.repeat([0, 1, 2], [100, 100, 108])
    pred = frame_prob.argmax(1)
    m = r["metrics"]
    assert m["n"] == 308
    aps = [average_precision_score(truth == c, frame_prob[:, c]) for c in range(3)]
    assert [m["average_precision"][c] for c in CLASSES] == pytest.approx(aps, abs=1e-9)
    assert m["mAP"] == pytest.approx(np.mean(aps), abs=1e-9)
    assert m["accuracy"] == pytest.approx(accuracy_score(truth, pred))
    f1 = f1_score(truth, pred, average=None, labels=[0, 1, 2], zero_division=0)
    np.testing.assert_allclose([m["f1"][c] for c in CLASSES], f1)
    assert m["confusion"] == confusion_matrix(truth, pred, labels=[0, 1, 2]).tolist()
    # the ethogram CSV and the label file say the same per frame
    csv_rows = (tmp_path / "out" / "horse_288x162.csv").read_text().splitlines()[1:]
    assert [row.split(",")[2] for row in csv_rows] == [CLASSES[p] for p in pred]
    seeded = (tmp_path / "out" / "labels.csv").read_text().splitlines()[1:]
    covered = sum(int(s.split(",")[2]) - int(s.split(",")[1]) + 1 for s in seeded)
    assert covered == 308
    from ethoprism.probe.labels import frame_targets, read_labels

    table = read_labels(tmp_path / "out" / "labels.csv")
    back = frame_targets(table, "horse_288x162.mp4", 308, False)
    assert [table.classes[i] for i in back.argmax(1)] == [CLASSES[p] for p in pred]


def test_text_on_a_plain_store_is_refused(tmp_path):
    path = str(tmp_path / "plain.zarr")
    cfg = RunConfig(
        model="videoprism-tiny", checkpoint=str(DATA / "golden" / "checkpoint.npz"), prep=PREP,
        batch_size=4, decode_workers=1,
    )  # fmt: skip
    run_extract([FIVE], path, cfg)
    with pytest.raises(EthoprismError, match="videoprism-tiny.*--model videoprism-lvt-b"):
        run_text_query(path, TEXTS, tokenizer=TOKENIZER)
    out = CliRunner().invoke(app, ["retrieve", "query", path, "--text", "x", *TEXT_ARGS])
    assert out.exit_code == 1 and "no text-aligned embedding" in out.output
    assert "Traceback" not in out.output
    out = CliRunner().invoke(
        app, ["probe", "zero-shot", path, "--classes", "a,b", "--out", str(tmp_path / "z")]
    )
    assert out.exit_code == 1 and "videoprism-lvt-b" in out.output


def test_text_query_with_other_weights_is_refused(lvt_store, tmp_path):
    with np.load(CHECKPOINT) as z:
        arrays = dict(z)
    arrays["params/text_encoder/cls_emb"] = arrays["params/text_encoder/cls_emb"] + 1
    other = tmp_path / "other.npz"
    np.savez(other, **arrays)
    with pytest.raises(EthoprismError, match="not the one the store was extracted with"):
        run_text_query(lvt_store, TEXTS, checkpoint=str(other), tokenizer=TOKENIZER)


def test_published_lvt_store_keeps_text_search_and_verifies_its_aligned_arrays(
    lvt_store, tmp_path, nginx_server
):
    dest = str(tmp_path / "pub.zarr")
    publish(lvt_store, dest)
    local, published = store.open(lvt_store), store.open(dest)
    plain = xr.open_zarr(dest)  # what another lab sees, without ethoprism
    picks = [20, 0, 13, 3]
    for name in ("video_embedding", "frame_embeddings"):
        src = local[name]
        for ds in (published, plain):
            assert ds[name].dims == src.dims and ds[name].dtype == src.dtype, name
            np.testing.assert_array_equal(ds[name].values, src.values, err_msg=name)
        assert published[name].attrs == src.attrs == plain[name].attrs, name
        np.testing.assert_array_equal(
            store.read_windows(published, picks, name), src.values[picks], err_msg=name
        )
    assert store.info(dest)["embeddings"] == ["embedding", "video_embedding", "frame_embeddings"]
    assert store.validate(dest)["ok"]
    # text search ranks the published copy's windows exactly as the source's
    server = nginx_server(tmp_path)  # and over HTTP, as another lab reads it
    ranked = [
        run_text_query(s, TEXTS, k=6, checkpoint=CHECKPOINT, tokenizer=TOKENIZER)
        for s in (lvt_store, dest, f"{server.url}/pub.zarr")
    ]
    for other in ranked[1:]:
        np.testing.assert_array_equal(other.found.windows, ranked[0].found.windows)
        np.testing.assert_array_equal(other.found.distances, ranked[0].found.distances)
    out = [tmp_path / "zs-src", tmp_path / "zs-pub"]
    for s, o in zip((lvt_store, dest), out, strict=True):
        zero_shot(s, CLASSES, o, checkpoint=CHECKPOINT, tokenizer=TOKENIZER)
    for csv in sorted(p.name for p in out[0].glob("*.csv")):
        assert (out[1] / csv).read_text() == (out[0] / csv).read_text(), csv
    # every aligned chunk is in the manifest; an altered one is named with its windows
    assert verify(dest)["ok"]
    listed = {
        o["path"] for o in json.loads((tmp_path / "pub.zarr/manifest.json").read_text())["objects"]
    }
    assert "video_embedding/c/0/0" in listed and "frame_embeddings/c/0/0/0" in listed
    chunk = tmp_path / "pub.zarr/frame_embeddings/c/0/0/0"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 1
    chunk.write_bytes(bytes(data))
    r = verify(dest)
    assert not r["ok"] and [a["path"] for a in r["altered"]] == ["frame_embeddings/c/0/0/0"]
    result = CliRunner().invoke(app, ["store", "verify", dest])
    assert result.exit_code == 1
    assert "altered: frame_embeddings/c/0/0/0" in " ".join(result.output.split())


def test_lvt_store_published_to_s3_reads_plainly_and_ranks_texts_as_the_source(
    lvt_store, s3_server
):
    url = f"s3://{s3_server.bucket}/lvt-text/pub.zarr"
    opts = s3_server.storage_options
    publish(lvt_store, url, dest_options=opts)
    local = store.open(lvt_store)
    plain = xr.open_zarr(url, storage_options=opts)  # what another lab sees, without ethoprism
    for name in ("video_embedding", "frame_embeddings"):
        assert plain[name].dims == local[name].dims, name
        assert plain[name].dtype == local[name].dtype, name
        assert plain[name].attrs == local[name].attrs, name
        np.testing.assert_array_equal(plain[name].values, local[name].values, err_msg=name)
    assert verify(url, opts)["ok"]
    ranked = [
        run_text_query(s, TEXTS, k=6, checkpoint=CHECKPOINT, tokenizer=TOKENIZER, **kw)
        for s, kw in ((lvt_store, {}), (url, {"storage_options": opts}))
    ]
    np.testing.assert_array_equal(ranked[1].found.windows, ranked[0].found.windows)
    np.testing.assert_array_equal(ranked[1].found.distances, ranked[0].found.distances)


def test_text_search_takes_the_checkpoint_from_the_environment_as_extraction_does(
    lvt_store, text_model, tmp_path, monkeypatch
):
    model, tok = text_model
    monkeypatch.setenv("ETHOPRISM_TEXT_CACHE", str(tmp_path / "text-cache"))  # nothing cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # without the variable: no weights to be had
    texts = ["a horse standing still"]
    monkeypatch.setenv("ETHOPRISM_CHECKPOINT", CHECKPOINT)
    r = run_text_query(lvt_store, texts, k=4, tokenizer=TOKENIZER)
    cos = (
        store.open(lvt_store)["video_embedding"].values @ model.encode_texts(prompts(texts), tok)[0]
    )
    np.testing.assert_array_equal(r.found.windows[0], np.argsort(-cos, kind="stable")[:4])
    with np.load(CHECKPOINT) as z:
        arrays = dict(z)
    arrays["params/text_encoder/cls_emb"] = arrays["params/text_encoder/cls_emb"] + 1
    np.savez(tmp_path / "other.npz", **arrays)
    monkeypatch.setenv("ETHOPRISM_CHECKPOINT", str(tmp_path / "other.npz"))
    with pytest.raises(EthoprismError, match="not the one the store was extracted with"):
        run_text_query(lvt_store, texts, tokenizer=TOKENIZER)  # (the prompt is cached now)
    monkeypatch.setenv("ETHOPRISM_CHECKPOINT", str(tmp_path / "nowhere.npz"))
    out = CliRunner().invoke(
        app, ["retrieve", "query", lvt_store, "--text", texts[0], "--tokenizer", TOKENIZER]
    )
    assert out.exit_code == 1 and "ETHOPRISM_CHECKPOINT points at" in out.output
