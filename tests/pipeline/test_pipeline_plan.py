"""Run planning (`extract --dry-run`) on its own: windows per video as decoding finds them,
unreadable videos named, and the store size from the tokens the encoder really gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ethoprism.errors import EthoprismError
from ethoprism.extract import load_encoder
from ethoprism.extract.encode import ShardedEncoder
from ethoprism.extract.preprocess import Preprocessing
from ethoprism.extract.video import probe_video
from ethoprism.extract.windows import iter_windows
from ethoprism.pipeline.config import RunConfig
from ethoprism.pipeline.plan import bytes_per_window, plan_run
from ethoprism.pipeline.rate import measure_rate
from ethoprism.store import Layout

DATA = Path(__file__).parent.parent / "data"
VIDEOS = DATA / "videos"
CHECKPOINT = str(DATA / "golden" / "checkpoint.npz")
HORSE = str(VIDEOS / "horse_288x162.mp4")
FIVE = str(VIDEOS / "mouse_cage_5frames.mp4")
UNOPENABLE = str(VIDEOS / "centered_pair_small.TRUNCATED_50pct_moov_lost.mp4")
PREP = Preprocessing(frame_size=72, window_stride=16)
CFG = RunConfig(model="videoprism-tiny", checkpoint=CHECKPOINT, prep=PREP, batch_size=2)


def test_plan_counts_the_windows_decoding_gives_and_names_unreadable_videos(tmp_path):
    missing = str(tmp_path / "missing.mp4")
    plan = plan_run([HORSE, UNOPENABLE, FIVE, missing], CFG, measure=False)
    assert [v["path"] for v in plan.videos] == [HORSE, UNOPENABLE, FIVE, missing]
    for path, row in zip([HORSE, FIVE], [plan.videos[0], plan.videos[2]], strict=True):
        decoded = list(iter_windows(path, PREP))  # the judge: what extraction will store
        assert row["windows"] == len(decoded) > 0, row
        info = probe_video(path)
        assert (row["frames"], row["fps"]) == (info.n_frames, info.fps)
    for path, row in zip([UNOPENABLE, missing], plan.videos[1::2], strict=True):
        with pytest.raises(EthoprismError) as e:
            probe_video(path)
        assert row == {"path": path, "error": str(e.value)}
    assert plan.windows == plan.videos[0]["windows"] + plan.videos[2]["windows"]
    assert plan.windows_per_s is None and plan.seconds is None
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["store_bytes"] == pytest.approx(plan.windows * plan.bytes_per_window)
    assert d["windows"] == plan.windows and d["videos"] == plan.videos


@pytest.mark.parametrize("layout", [Layout("float16-round7"), Layout("int8"), Layout("float16", 2)])
def test_bytes_per_window_follows_the_tokens_the_encoder_gives(layout):
    """The estimate is the stored token bytes of a real window of the tiny encoder, coded for
    the layout (as the layout expects them compressed), plus its embedding and coordinates."""
    cfg = RunConfig(
        model="videoprism-tiny", checkpoint=CHECKPOINT, prep=PREP, batch_size=1, layout=layout
    )
    encoder = load_encoder(cfg.model, cfg.checkpoint)
    sharded = ShardedEncoder(encoder, 1, PREP.pixel_range, store_layout=cfg.layout)
    window = next(iter_windows(HORSE, PREP)).pixels[None]
    out = sharded(window)
    t, h, w, c = out.tokens.shape[1:]
    h, w = (h, w) if out.tokens.dtype == np.float16 else (h // layout.pool, w // layout.pool)
    tokens = layout.stored_window_bytes((t, h, w, c))
    assert bytes_per_window(cfg) == pytest.approx(tokens + 4 * c + 40)


def test_measured_rate_gives_the_run_time():
    rate = measure_rate(CFG, batches=1)
    plan = plan_run([HORSE], CFG, measure=False)
    plan.windows_per_s = rate
    assert np.isfinite(rate) and rate > 0
    assert plan.seconds == pytest.approx(plan.windows / rate)
