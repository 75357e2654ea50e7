"""probe.labels: reading, alignment to windows, splits, few-shot sampling, and every label-file
error."""

from pathlib import Path

import numpy as np
import pytest
from test_probe_fixtures import fake_store

from ethoprism.probe import labels as L

MAMMALPS = Path(__file__).resolve().parents[2] / "data" / "labels_segments.csv"
MAMMALPS_STORE = {"S1_C1_E115_V0342.mp4": 494, "S2_C2_E394_V0135.mp4": 110}


def write(tmp_path, text, name="labels.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_mammalps_actions_align_to_windows():
    table = L.read_labels(MAMMALPS, "action")
    assert table.classes[0] == "none" and "grazing" in table.classes and not table.per_clip
    ds = fake_store(MAMMALPS_STORE)
    wl = L.align(ds, table)
    assert len(wl.window) == ds.sizes["window"]
    # window starting at 32 of the deer video: centre frame 39 lies in 28..237 grazing
    w = int(
        np.flatnonzero(
            (ds.video_name.values == "S1_C1_E115_V0342.mp4") & (ds.start_frame.values == 32)
        )[0]
    )
    assert wl.classes[int(wl.target[list(wl.window).index(w)].argmax())] == "grazing"
    assert np.all(wl.target.sum(1) == 1)


def test_mammalps_activity_is_contradictory_in_single_label_mode():
    table = L.read_labels(MAMMALPS, "activity")
    with pytest.raises(
        L.LabelError,
        match=r"rows 11 and 12: video 'S2_C2_E394_V0135.mp4' frame 13 .*escaping.*chasing",
    ):
        L.align(fake_store(MAMMALPS_STORE), table)
    wl = L.align(fake_store(MAMMALPS_STORE), table, multi_label=True, how="any")
    c = wl.classes
    first_wolf = list(wl.video).index("S2_C2_E394_V0135.mp4")
    assert (
        wl.target[first_wolf, c.index("escaping")] == 1
        and wl.target[first_wolf, c.index("chasing")] == 1
    )


def test_centre_majority_any_on_a_hand_computed_case(tmp_path):
    # 40 frames, windows of 16 at stride 8: 0..15, 8..23, 16..31, 24..39 (centres 7, 15, 23, 31)
    p = write(
        tmp_path,
        "video,start_frame,end_frame,action\n"
        "v.mp4,0,6,sit\nv.mp4,7,9,run\nv.mp4,10,23,sit\nv.mp4,24,39,run\n",
    )
    ds = fake_store({"v.mp4": 40})
    table = L.read_labels(p)
    assert table.classes == ("none", "run", "sit")
    centre = L.align(ds, table)
    assert centre.classes == ("run", "sit")  # no background window, so no background class
    np.testing.assert_array_equal(centre.target, [[1, 0], [0, 1], [0, 1], [1, 0]])
    major = L.align(ds, table, how="majority")  # window 16..31 is a tie 8:8, won by the first class
    np.testing.assert_array_equal(major.target, [[0, 1], [0, 1], [1, 0], [1, 0]])
    anyw = L.align(ds, table, how="any", multi_label=True)
    np.testing.assert_array_equal(anyw.target, [[1, 1], [1, 1], [1, 1], [1, 0]])
    with pytest.raises(L.LabelError, match="needs multi-label"):
        L.align(ds, table, how="any")


def test_unlabelled_frames_and_none_rows_are_background(tmp_path):
    p = write(tmp_path, "video,start_frame,end_frame,action\nv.mp4,0,10,run\nv.mp4,20,39,none\n")
    table = L.read_labels(p)
    frames = L.frame_targets(table, "v.mp4", 40, multi_label=False)
    assert frames[:11, 1].all() and frames[11:, 0].all() and not frames[11:, 1].any()


def test_per_clip_table(tmp_path):
    p = write(tmp_path, "video,label\na.mp4,groom\nb.mp4,walk\n")
    table = L.read_labels(p, "label")
    assert table.per_clip
    wl = L.align(fake_store({"a.mp4": 30, "b.mp4": 20, "c.mp4": 50}), table)
    assert set(wl.video) == {"a.mp4", "b.mp4"}  # c.mp4 is unlabelled, so unused
    assert wl.classes == ("groom", "walk")
    assert all(
        wl.classes[int(t.argmax())][0] == v[0].replace("a", "g").replace("b", "w")
        for t, v in zip(wl.target, wl.video, strict=False)
    )


def test_video_not_in_store(tmp_path):
    p = write(tmp_path, "video,start_frame,end_frame,action\nv.mp4,0,5,run\nghost.mp4,0,5,run\n")
    with pytest.raises(
        L.LabelError, match=r"labels.csv row 3: video 'ghost.mp4' is not in the store"
    ):
        L.align(fake_store({"v.mp4": 30}), L.read_labels(p))


def test_video_that_failed_extraction(tmp_path):
    p = write(tmp_path, "video,start_frame,end_frame,action\nbad.mp4,0,5,run\n")
    with pytest.raises(
        L.LabelError, match=r"row 2: video 'bad.mp4' failed extraction: truncated at frame 3"
    ):
        L.align(
            fake_store({"v.mp4": 30}, failed={"bad.mp4": "truncated at frame 3"}), L.read_labels(p)
        )


def test_frames_beyond_the_end(tmp_path):
    p = write(tmp_path, "video,start_frame,end_frame,action\nv.mp4,0,5,run\nv.mp4,6,30,sit\n")
    with pytest.raises(
        L.LabelError,
        match=(
            r"row 3: video 'v.mp4': end_frame 30 is beyond the video's last frame 29 "
            r"\(30 frames\)"
        ),
    ):
        L.align(fake_store({"v.mp4": 30}), L.read_labels(p))


def test_class_with_no_window(tmp_path):
    # a 2-frame 'jump' never holds a window centre
    p = write(tmp_path, "video,start_frame,end_frame,action\nv.mp4,0,1,jump\nv.mp4,2,39,sit\n")
    with pytest.raises(L.LabelError, match=r"class 'jump' \(rows 2\) has no window"):
        L.align(fake_store({"v.mp4": 40}), L.read_labels(p))


def test_class_with_no_training_example(tmp_path):
    p = write(tmp_path, "video,label\na.mp4,groom\nb.mp4,walk\nc.mp4,walk\n")
    wl = L.align(fake_store({"a.mp4": 30, "b.mp4": 20, "c.mp4": 20}), L.read_labels(p, "label"))
    with pytest.raises(
        L.LabelError,
        match=r"class 'groom' has no example in the training set \(its windows are in: a.mp4\)",
    ):
        L.check_has_examples(wl, wl.video != "a.mp4", "training set")


def test_contradictory_overlap_and_multi_label_cell(tmp_path):
    p = write(tmp_path, "video,start_frame,end_frame,action\nv.mp4,0,10,run\nv.mp4,8,20,sit\n")
    with pytest.raises(
        L.LabelError, match=r"rows 2 and 3: video 'v.mp4' frame 8 is labelled both 'run' and 'sit'"
    ):
        L.align(fake_store({"v.mp4": 30}), L.read_labels(p))
    p = write(tmp_path, "video,start_frame,end_frame,action\nv.mp4,0,29,run;sit\n")
    with pytest.raises(
        L.LabelError, match="row 2: video 'v.mp4': frames 0..29 carry several labels"
    ):
        L.align(fake_store({"v.mp4": 30}), L.read_labels(p))
    wl = L.align(fake_store({"v.mp4": 30}), L.read_labels(p), multi_label=True)
    assert wl.classes == ("run", "sit") and (wl.target == 1).all()


def test_malformed_files(tmp_path):
    with pytest.raises(L.LabelError, match=r"missing column\(s\) action"):
        L.read_labels(write(tmp_path, "video,start_frame,end_frame,behaviour\nv.mp4,0,1,x\n"))
    with pytest.raises(
        L.LabelError, match=r"row 2: video 'v.mp4': start_frame/end_frame must be integers"
    ):
        L.read_labels(write(tmp_path, "video,start_frame,end_frame,action\nv.mp4,0,x,run\n"))
    with pytest.raises(L.LabelError, match=r"row 2: video 'v.mp4': bad frame range 5..2"):
        L.read_labels(write(tmp_path, "video,start_frame,end_frame,action\nv.mp4,5,2,run\n"))
    with pytest.raises(L.LabelError, match="cannot read label file"):
        L.read_labels(tmp_path / "nope.csv")


def test_split_by_video_keeps_videos_whole():
    videos = [f"v{i}.mp4" for i in range(10)]
    split = L.split_by_video(videos, test_fraction=0.2, val_fraction=0.1, seed=0)
    assert sorted(split) == videos
    assert list(split.values()).count("test") == 2 and list(split.values()).count("val") == 1
    assert split == L.split_by_video(videos, 0.2, 0.1, seed=0)
    assert split != L.split_by_video(videos, 0.2, 0.1, seed=1)
    with pytest.raises(L.LabelError, match="cannot split 1 labelled video"):
        L.split_by_video(["a.mp4"], 0.5)


def test_split_file(tmp_path):
    p = write(tmp_path, "video,split\na.mp4,train\nb.mp4,test\n", "split.csv")
    assert L.read_split(p, ["a.mp4", "b.mp4"]) == {"a.mp4": "train", "b.mp4": "test"}
    p = write(tmp_path, "video,split\na.mp4,train\nz.mp4,test\n", "split.csv")
    with pytest.raises(L.LabelError, match="split.csv row 3: video 'z.mp4' has no labels"):
        L.read_split(p, ["a.mp4"])


def test_few_shot_exactly_k_per_class_and_differs_between_seeds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    wl = L.WindowLabels(
        np.arange(500),
        np.eye(4, dtype=np.float32)[y],
        np.array(["v"] * 500),
        ("none", "a", "b", "c"),
        False,
    )
    pool = np.arange(400)
    picks = {s: L.sample_shots(wl, pool, 10, seed=s) for s in range(3)}
    for idx in picks.values():
        assert np.isin(idx, pool).all()
        np.testing.assert_array_equal(np.bincount(y[idx], minlength=4), [10, 10, 10, 10])
    assert not np.array_equal(picks[0], picks[1]) and not np.array_equal(picks[1], picks[2])
    np.testing.assert_array_equal(picks[0], L.sample_shots(wl, pool, 10, seed=0))
    with pytest.raises(L.LabelError, match="fewer than 200 shots"):
        L.sample_shots(wl, pool, 200, seed=0)
