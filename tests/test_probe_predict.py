"""probe.predict / report: per-frame averaging on hand-computed cases, CSV and PNG output."""

import csv

import numpy as np
from test_probe_fixtures import window_starts

from ethoprism.probe.classify.predict import frame_labels, frame_probabilities, write_frame_csv
from ethoprism.probe.report import confusion_png, ethogram_png


def test_averaging_with_a_video_end_covered_by_fewer_windows():
    # 20 frames, windows of 16 at stride 8: 0..15 (16 valid) and 8..19 (12 valid, 4 padded)
    assert window_starts(20, 16, 8, 1) == [(0, 16), (8, 12)]
    prob = np.array([[1.0, 0.0], [0.2, 0.8]])
    mean, count = frame_probabilities(prob, [0, 8], [1, 1], [16, 12], 20)
    np.testing.assert_array_equal(count, [1] * 8 + [2] * 8 + [1] * 4)
    np.testing.assert_allclose(mean[:8], [[1.0, 0.0]] * 8)
    np.testing.assert_allclose(mean[8:16], [[0.6, 0.4]] * 8)
    np.testing.assert_allclose(mean[16:], [[0.2, 0.8]] * 4)
    np.testing.assert_array_equal(frame_labels(mean), [0] * 16 + [1] * 4)


def test_three_overlapping_windows_equal_brute_force():
    rng = np.random.default_rng(0)
    wins = window_starts(50, 16, 4, 1)
    prob = rng.dirichlet(np.ones(3), len(wins))
    start, valid = np.array(wins).T
    mean, count = frame_probabilities(prob, start, np.ones_like(start), valid, 50)
    for f in range(50):
        covering = [i for i, (s, v) in enumerate(wins) if s <= f <= s + v - 1]
        assert count[f] == len(covering)
        np.testing.assert_allclose(mean[f], prob[covering].mean(0))


def test_frame_step_counts_the_span_and_an_unreached_last_frame_is_nan():
    # 40 frames, windows of 4 sampled every 2nd frame at stride 4: spans s..s+6; the last
    # window (start 36) has 2 valid frames, 36 and 38, so frame 39 is covered by none
    wins = window_starts(40, 4, 4, 2)
    assert wins[-1] == (36, 2)
    start, valid = np.array(wins).T
    prob = np.tile([0.25, 0.75], (len(wins), 1))
    mean, count = frame_probabilities(prob, start, np.full_like(start, 2), valid, 40)
    assert count[5] == 2 and count[7] == 1 and count[8] == 2  # odd frames between samples count
    assert count[39] == 0 and np.isnan(mean[39]).all()
    np.testing.assert_allclose(mean[:39], [[0.25, 0.75]] * 39)
    assert frame_labels(mean)[39] == -1


def test_csv_and_pngs(tmp_path):
    mean = np.array([[0.9, 0.1], [0.3, 0.7], [np.nan, np.nan]])
    path = write_frame_csv(tmp_path / "v.csv", mean, ["sit", "run"], times=np.arange(3) / 2.0)
    with open(path) as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "time", "label", "p_sit", "p_run"]
    assert rows[2] == ["1", "0.5000", "run", "0.30000", "0.70000"]
    assert rows[3] == ["2", "1.0000", "", "", ""]
    png = ethogram_png(
        tmp_path / "v.png", ["sit", "run"], np.array([0, 1, -1]), np.array([0, 0, 1]), fps=2.0
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cm = confusion_png(tmp_path / "cm.png", np.array([[3, 1], [0, 2]]), ["sit", "run"])
    assert cm.stat().st_size > 1000
