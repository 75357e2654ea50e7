"""Pieces of an unfinished video: durable, invisible to readers, resumed by the same video and
dropped by any other, in stores whose shards hold windows of several pieces."""

from __future__ import annotations

import numpy as np
import pytest

from ethoprism import store

ENCODER = {"name": "videoprism-tiny", "config": {}, "checkpoint_sha256": "x", "dtype": "float32"}
PREP = {"frame_size": 72, "window_length": 16, "window_stride": 8}


def video(v: int, n: int):
    rng = np.random.default_rng(v)
    tokens = rng.normal(size=(n, 2, 2, 2, 4)).astype(np.float32)
    record = store.VideoRecord(f"v{v}.mp4", 10, f"{v:064x}", 30.0, 8 * n + 8, 1.0, 8, 8, "h264")
    return record, tokens


def append(vw, tokens, first: int) -> None:
    starts = 8 * np.arange(first, first + len(tokens))
    vw.append(tokens, tokens.mean(axis=(1, 2, 3)), starts, 1, 16, starts / 30.0)


def open_writer(path):
    # 4 windows per shard: pieces end inside shards
    return store.open_writer(
        path, encoder=ENCODER, preprocessing=PREP, windows_per_shard=4, part="p"
    )


@pytest.mark.parametrize("resume_same", [True, False])
def test_pieces_survive_a_closed_writer_and_resume_or_drop(tmp_path, resume_same):
    path = str(tmp_path / "s.zarr")
    rec0, tok0 = video(0, 5)
    rec1, tok1 = video(1, 11)
    rec2, tok2 = video(2, 6)
    with open_writer(path) as w:
        vw = w.begin_video(rec0)
        append(vw, tok0, 0)
        vw.commit()
        vw = w.begin_video(rec1)
        append(vw, tok1[:3], 0)
        vw.commit_piece()
        append(vw, tok1[3:6], 3)
        vw.commit_piece()
        append(vw, tok1[6:8], 6)  # not saved: lost with the writer
    assert store.open(path).sizes["window"] == 5  # pieces are not visible
    with open_writer(path) as w:
        w.record_failure("missing.mp4", "cannot open")  # a row after the pieces' one: kept
        if resume_same:
            assert w.unfinished() == {rec1.sha256: 6}
            vw = w.begin_video(rec1)
            append(vw, tok1[6:], 6)
            vw.commit()
            expected = np.concatenate([tok0, tok1])
            names = ["v0.mp4"] * 5 + ["v1.mp4"] * 11
        else:
            assert w.resume_point(rec1.sha256) == 6
            vw = w.begin_video(rec2)  # another video: the pieces go
            assert w.unfinished() == {}
            append(vw, tok2, 0)
            vw.commit()
            expected = np.concatenate([tok0, tok2])
            names = ["v0.mp4"] * 5 + ["v2.mp4"] * 6
    ds = store.open(path)
    np.testing.assert_allclose(ds["embedding"].values, expected.mean(axis=(1, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(ds["tokens"].values, expected, rtol=1e-2, atol=1e-2)
    complete = ds["video_status"].values == "complete"
    assert list(ds["video_n_windows"].values[complete]) == [5, len(expected) - 5]
    assert list(ds["video_path"].values[ds["video"].values]) == names  # rows renumbered
    assert store.validate(path)["ok"]
