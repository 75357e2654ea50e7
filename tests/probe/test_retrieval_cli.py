"""`ethoprism retrieve ...` end to end, and queries by a new clip through the store's own
encoder."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_retrieval import write_store
from typer.testing import CliRunner

from ethoprism import store
from ethoprism.cli import app
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.pipeline.clip_query import ClipQueryError, clip_query, embed_clip
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.extract import run_extract
from ethoprism.probe import retrieve as retrieval

DATA = Path(__file__).parent.parent / "data"
CHECKPOINT = str(DATA / "golden" / "checkpoint.npz")
FIVE = str(DATA / "videos" / "mouse_cage_5frames.mp4")
HORSE = str(DATA / "videos" / "horse_288x162.mp4")
runner = CliRunner()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("cli") / "s.zarr"
    write_store(path, {f"/videos/v{i}.mp4": rng.normal(size=(60, 16)) for i in range(3)})
    return path


def test_query_by_moment_prints_the_nearest_windows_as_json(archive):
    out = runner.invoke(
        app,
        [
            "retrieve",
            "query",
            str(archive),
            "--moment",
            "v1.mp4#100",
            "-k",
            "4",
            "--exclude-same-video",
            "--videos",
            "v0.mp4",
            "--videos",
            "v1.mp4@0-3",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    ds = store.open(str(archive))
    query = retrieval.query_moments(ds, ["v1.mp4#100"])
    assert rows[0]["query"] == query.names[0] and [r["rank"] for r in rows] == [1, 2, 3, 4]
    assert all(r["video"] == "v0.mp4" for r in rows)  # v1 is the query's own video
    emb = ds["embedding"].values[:60]
    d = np.linalg.norm(emb - query.vectors[0], axis=1)
    assert [r["window"] for r in rows] == list(np.argsort(d)[:4])
    np.testing.assert_allclose([r["distance"] for r in rows], np.sort(d)[:4], rtol=1e-5)


def test_bad_moment_is_one_red_line(archive):
    out = runner.invoke(app, ["retrieve", "query", str(archive), "--moment", "v9.mp4@1"])
    assert (
        out.exit_code == 1 and "no video 'v9.mp4'" in out.output and "Traceback" not in out.output
    )


def test_build_index_then_approximate_query(archive):
    out = runner.invoke(app, ["retrieve", "build-index", str(archive), "--nlist", "4", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["n_windows"] == 180
    exact = runner.invoke(app, ["retrieve", "query", str(archive), "--window", "7", "--json"])
    sheet = archive.parent / "sheet.png"
    approx = runner.invoke(
        app,
        [
            "retrieve",
            "query",
            str(archive),
            "--window",
            "7",
            "--approx",
            "--json",
        ],
    )
    assert approx.exit_code == 0, approx.output
    # the test store's videos do not exist: a sheet is refused, naming them
    refused = runner.invoke(
        app, ["retrieve", "query", str(archive), "--window", "7", "--sheet", str(sheet)]
    )
    assert refused.exit_code == 1 and "cannot find" in refused.output
    assert not sheet.exists()
    ids = [r["window"] for r in json.loads(approx.stdout)]
    # the query window and the windows sharing frames with it are not results
    assert 7 not in ids and len(set(ids) & {r["window"] for r in json.loads(exact.stdout)}) >= 8


def test_eval_prints_mean_hit_and_random_baseline(tmp_path):
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(2, 8)) * 5
    videos = {
        f"/videos/{n}.mp4": np.stack(
            [centres[i // 5] + rng.normal(size=8) * 0.1 for i in range(10)]
        )
        for n in "abcd"
    }
    write_store(tmp_path / "s.zarr", videos)
    (tmp_path / "labels.csv").write_text(
        "video,start_frame,end_frame,action\n"
        + "".join(f"{n}.mp4,0,46,walk\n{n}.mp4,47,87,eat\n" for n in "abcd")
    )
    out = runner.invoke(
        app,
        [
            "retrieve",
            "eval",
            str(tmp_path / "s.zarr"),
            str(tmp_path / "labels.csv"),
            "--test-fraction",
            "0.25",
            "-k",
            "1",
            "-k",
            "5",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    r = json.loads(out.stdout)
    assert r["mean_hit"] == {"1": 1.0, "5": 1.0} and r["n_index"] == 30 and r["n_queries"] == 10
    assert r["random"]["1"] == pytest.approx(0.5)  # 15 of 30 index windows per class


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "x.zarr"
    cfg = RunConfig(
        model="videoprism-tiny",
        checkpoint=CHECKPOINT,
        prep=Preprocessing(frame_size=72, window_stride=16),
        batch_size=4,
        decode_workers=1,
    )
    run_extract([FIVE], str(path), cfg)
    return path


def test_clip_is_encoded_like_the_store_and_finds_itself(extracted):
    ds = store.open(str(extracted))
    query = clip_query(FIVE, ds, checkpoint=CHECKPOINT)
    np.testing.assert_allclose(query.vectors, ds["embedding"].values, atol=1e-5)
    found = retrieval.search(ds, query, 1)
    assert found.windows[0, 0] == 0 and found.distances[0, 0] < 1e-3


def test_clip_query_refuses_other_weights(extracted):
    ds = store.open(str(extracted))
    with pytest.raises(
        ClipQueryError, match=r"encoder.checkpoint_sha256 .*not the ones the store was made with"
    ):
        embed_clip(FIVE, ds, checkpoint="random")
    # a store whose identity names other weights refuses the encoder once it is loaded, too
    enc = ds.attrs["encoder"]
    other = ds.assign_attrs(encoder={**enc, "config": {**enc["config"], "mlp_dim": 999}})
    with pytest.raises(ClipQueryError, match=r"encoder.config.mlp_dim \(128 vs 999\)"):
        embed_clip(FIVE, other, checkpoint=CHECKPOINT)
    out = runner.invoke(
        app, ["retrieve", "query", str(extracted), "--clip", FIVE, "--checkpoint", "random"]
    )
    assert out.exit_code == 1 and "checkpoint_sha256" in out.output
