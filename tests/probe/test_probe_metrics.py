"""probe.metrics equals scikit-learn on random and edge-case inputs."""

import numpy as np
import pytest
from sklearn import metrics as skm

from ethoprism.probe.metrics import average_precision, classification_metrics

CLASSES = ["none", "walk", "graze", "run"]


def _check_against_sklearn(y, prob, classes=CLASSES, background="none"):
    m = classification_metrics(y, prob, classes, background=background)
    labels = list(range(len(classes)))
    pred = prob.argmax(1)
    assert m.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    present = np.unique(y)
    # balanced accuracy is the mean recall over classes present in y_true
    recall = skm.recall_score(y, pred, labels=present, average=None, zero_division=0)
    assert m.macro_accuracy == pytest.approx(recall.mean())
    np.testing.assert_allclose(
        m.f1, skm.f1_score(y, pred, labels=labels, average=None, zero_division=0)
    )
    np.testing.assert_array_equal(m.confusion, skm.confusion_matrix(y, pred, labels=labels))
    onehot = np.eye(len(classes))[y]
    expected_ap = []
    for c, name in enumerate(classes):
        if name == background or onehot[:, c].sum() == 0:
            assert np.isnan(m.average_precision[c])
            continue
        ref = skm.average_precision_score(onehot[:, c], prob[:, c])
        assert m.average_precision[c] == pytest.approx(ref)
        expected_ap.append(ref)
    assert m.mAP == pytest.approx(np.mean(expected_ap))
    return m


@pytest.mark.parametrize("seed", range(5))
def test_random_inputs_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.integers(0, 4, n)
    prob = rng.dirichlet(np.ones(4), n)
    _check_against_sklearn(y, prob)


def test_tied_scores_equal_sklearn():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 300)
    prob = np.round(rng.dirichlet(np.ones(4), 300), 1)  # many ties
    _check_against_sklearn(y, prob)


def test_class_never_predicted_and_class_absent():
    rng = np.random.default_rng(3)
    y = rng.choice([0, 1, 3], 100)  # "graze" absent from the test set
    prob = rng.dirichlet(np.ones(4), 100)
    prob[:, 3] = 0.0  # "run" never predicted
    m = _check_against_sklearn(y, prob)
    assert m.absent == ["graze"]
    assert m.f1[3] == 0.0


def test_background_excluded_from_map():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 4, 80)
    prob = rng.random((80, 4))
    m = classification_metrics(y, prob, CLASSES, background="none")
    prob[:, 0] = rng.random(80)  # background scores play no part in mAP
    assert classification_metrics(y, prob, CLASSES, background="none").mAP == m.mAP
    with_bg = classification_metrics(y, prob, CLASSES, background=None)
    assert not np.isnan(with_bg.average_precision[0])


def test_multilabel_ap_equal_sklearn():
    rng = np.random.default_rng(11)
    y = rng.random((150, 4)) < 0.3
    prob = rng.random((150, 4))
    m = classification_metrics(y, prob, CLASSES, background="none")
    ref = skm.average_precision_score(y[:, 1:], prob[:, 1:], average=None)
    np.testing.assert_allclose(m.average_precision[1:], ref)
    assert m.mAP == pytest.approx(ref.mean())


def test_average_precision_no_positive_is_nan():
    assert np.isnan(average_precision(np.zeros(5, bool), np.arange(5.0)))
