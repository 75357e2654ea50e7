"""In-memory stand-ins for `ethoprism.store.open` datasets, built with exactly the contract's names.

Other probe tests import `fake_store` from here. Windows follow the extraction contract: starts
0, S, 2S, ...; the last window is the first that reaches the last frame; n_valid_frames counts
the real frames of a padded window.
"""

import identity
import numpy as np
import xarray as xr

ENCODER = identity.encoder(8)
PREP = identity.preprocessing(288, 16, 8)
LAYOUT = {"dtype": "float16-round7", "pool": 1}


def window_starts(n_frames: int, length: int, stride: int, step: int):
    """(start, n_valid) of each window of a video, per the extraction contract."""
    out, start = [], 0
    while True:
        n_valid = min(length, -(-(n_frames - start) // step))
        out.append((start, n_valid))
        if start + (length - 1) * step >= n_frames - 1:
            return out
        start += stride


def fake_store(
    videos: dict[str, int],
    *,
    tokens_fn=None,
    shape=(4, 2, 2, 8),
    length=16,
    stride=8,
    step=1,
    fps=24.0,
    encoder=ENCODER,
    failed: dict[str, str] | None = None,
    seed=0,
) -> xr.Dataset:
    """videos: file name -> n_frames.
    tokens_fn(video, start, n_valid, rng) -> (t, h, w, c) tokens."""
    rng = np.random.default_rng(seed)
    rows, toks = [], []
    paths, n_frames_col, status, reason, first, count = [], [], [], [], [], []
    for v, (name, n) in enumerate(videos.items()):
        wins = window_starts(n, length, stride, step)
        paths.append(f"/data/videos/{name}")
        n_frames_col.append(n)
        status.append("complete")
        reason.append("")
        first.append(len(rows))
        count.append(len(wins))
        for start, n_valid in wins:
            rows.append((v, name, start, step, n_valid, start / fps))
            toks.append(
                tokens_fn(name, start, n_valid, rng) if tokens_fn else rng.normal(size=shape)
            )
    for name, why in (failed or {}).items():
        paths.append(f"/data/videos/{name}")
        n_frames_col.append(0)
        status.append("failed")
        reason.append(why)
        first.append(len(rows))
        count.append(0)
    tokens = np.asarray(toks, np.float32)
    v, name, start, fstep, valid, t0 = zip(*rows, strict=False)
    nv = len(paths)
    return xr.Dataset(
        {
            "tokens": (("window", "t", "h", "w", "c"), tokens),
            "embedding": (("window", "c"), tokens.mean((1, 2, 3))),
            "video_path": ("videos", np.array(paths)),
            "video_sha256": ("videos", np.array(["0" * 64] * nv)),
            "video_fps": ("videos", np.full(nv, fps)),
            "video_n_frames": ("videos", np.array(n_frames_col)),
            "video_duration": ("videos", np.array(n_frames_col) / fps),
            "video_width": ("videos", np.full(nv, 64)),
            "video_height": ("videos", np.full(nv, 64)),
            "video_codec": ("videos", np.array(["h264"] * nv)),
            "video_status": ("videos", np.array(status)),
            "video_reason": ("videos", np.array(reason)),
            "video_first_window": ("videos", np.array(first)),
            "video_n_windows": ("videos", np.array(count)),
        },
        coords={
            "video": ("window", np.array(v)),
            "video_name": ("window", np.array(name)),
            "start_frame": ("window", np.array(start, np.int64)),
            "frame_step": ("window", np.array(fstep, np.int64)),
            "n_valid_frames": ("window", np.array(valid, np.int64)),
            "start_time": ("window", np.array(t0, np.float64)),
        },
        # no "schema" attribute: store.read_windows takes a dataset carrying one for an opened store
        attrs={
            "encoder": dict(encoder),
            "preprocessing": {
                **PREP,
                "window_length": length,
                "window_stride": stride,
                "frame_step": step,
            },
            "layout": LAYOUT,
            "software_version": "test",
            "created": "2026-01-01T00:00:00Z",
        },
    )


def write_store(path, ds: xr.Dataset, layout=None) -> str:
    """Write an in-memory fake to a real on-disk store with `store.open_writer`; return its path."""
    from ethoprism import store

    with store.open_writer(
        path,
        encoder=ds.attrs["encoder"],
        preprocessing=ds.attrs["preprocessing"],
        layout=layout or store.Layout(),
    ) as w:
        for v, p in enumerate(ds.video_path.values):
            n = int(ds.video_n_frames.values[v])
            rec = store.VideoRecord(
                str(p),
                1000 + v,
                f"{v:064d}",
                float(ds.video_fps.values[v]),
                n,
                n / float(ds.video_fps.values[v]),
                64,
                64,
                "h264",
            )
            if ds.video_status.values[v] != "complete":
                w.record_failure(rec, str(ds.video_reason.values[v]))
                continue
            sel = np.flatnonzero(ds.video.values == v)
            vw = w.begin_video(rec)
            vw.append(
                ds.tokens.values[sel],
                ds.embedding.values[sel],
                ds.start_frame.values[sel],
                ds.frame_step.values[sel],
                ds.n_valid_frames.values[sel],
                ds.start_time.values[sel],
            )
            vw.commit()
    return str(path)


def test_fake_store_follows_the_window_contract():
    ds = fake_store({"a.mp4": 40, "b.mp4": 10})
    a = ds.where(ds.video_name == "a.mp4", drop=True)
    assert list(a.start_frame.values) == [0, 8, 16, 24]
    assert list(a.n_valid_frames.values) == [16, 16, 16, 16]
    b = ds.where(ds.video_name == "b.mp4", drop=True)
    assert list(b.n_valid_frames.values) == [10]


def test_real_store_reads_back_like_the_fake(tmp_path):
    from ethoprism import store

    fake = fake_store({"a.mp4": 40, "b.mp4": 10})
    ds = store.open(write_store(tmp_path / "s.zarr", fake))
    np.testing.assert_array_equal(ds.video_name.values, fake.video_name.values)
    np.testing.assert_array_equal(ds.start_frame.values, fake.start_frame.values)
    got = store.read_windows(ds, [4, 1], "tokens")
    np.testing.assert_allclose(got, fake.tokens.values[[4, 1]], rtol=1e-2, atol=1e-2)
