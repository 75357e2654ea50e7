"""Box geometry: original <-> encoder-input pixels for every resize mode, checked against the
pixels the real resizer produces, and exact round trips; IoU and NMS against brute force."""

import numpy as np
import pytest

from ethoprism.extract.preprocess import Preprocessing, resize
from ethoprism.probe.localize import boxes

SIZES = [(120, 90), (97, 61), (61, 97), (288, 288), (1921, 1079), (33, 400)]


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
@pytest.mark.parametrize("width,height", SIZES)
def test_round_trip_is_exact_for_every_mode_and_odd_sizes(mode, width, height):
    rng = np.random.default_rng(width * height)
    xywh = np.c_[
        rng.uniform(0, width, (50, 1)),
        rng.uniform(0, height, (50, 1)),
        rng.uniform(1, width, (50, 1)),
        rng.uniform(1, height, (50, 1)),
    ]
    for size in (72, 144, 288):
        there = boxes.to_input(xywh, width, height, size, mode)
        np.testing.assert_allclose(
            boxes.to_original(there, width, height, size, mode), xywh, rtol=0, atol=1e-6
        )
        back = boxes.to_original(xywh, width, height, size, mode)
        np.testing.assert_allclose(
            boxes.to_input(back, width, height, size, mode), xywh, rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("mode", ["squash", "pad", "crop"])
def test_a_box_lands_where_the_resizer_puts_its_pixels(mode):
    width, height, size = 150, 90, 72
    img = np.zeros((height, width, 3), np.uint8)
    x, y, w, h = 40, 20, 60, 40
    img[y : y + h, x : x + w] = 255
    out = resize(img, Preprocessing(frame_size=size, resize=mode)).astype(float)[..., 0] / 255
    # the bright block's extent in the output, at half intensity (bilinear edges)
    cols = np.flatnonzero(out.max(0) > 0.5)
    rows = np.flatnonzero(out.max(1) > 0.5)
    bx, by, bw, bh = boxes.to_input([x, y, w, h], width, height, size, mode)[0]
    assert abs(cols[0] - bx) <= 1 and abs(cols[-1] + 1 - (bx + bw)) <= 1
    assert abs(rows[0] - by) <= 1 and abs(rows[-1] + 1 - (by + bh)) <= 1


def test_iou_and_nms_against_brute_force():
    rng = np.random.default_rng(0)
    a = np.c_[rng.integers(0, 20, (30, 2)), rng.integers(1, 10, (30, 2))].astype(float)
    grid = np.zeros((len(a), 40, 40), bool)
    for k, (x, y, w, h) in enumerate(a.astype(int)):
        grid[k, y : y + h, x : x + w] = True
    inter = (grid[:, None] & grid[None]).sum((2, 3))
    union = (grid[:, None] | grid[None]).sum((2, 3))
    np.testing.assert_allclose(boxes.iou(a, a), inter / union, atol=1e-12)
    scores = rng.random(len(a))
    labels = rng.integers(0, 2, len(a))
    keep = boxes.nms(a, scores, labels, 0.3)
    ov = boxes.iou(a[keep], a[keep])
    same = labels[keep][:, None] == labels[keep][None]
    assert not ((ov > 0.3) & same & ~np.eye(len(keep), dtype=bool)).any()
    for i in set(range(len(a))) - set(keep):  # each dropped box has a better kept twin
        assert any(
            scores[k] >= scores[i] and labels[k] == labels[i] and boxes.iou(a[i], a[k])[0, 0] > 0.3
            for k in keep
        )
