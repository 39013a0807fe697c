"""Tests of the weighted k-NN classifier against hand and brute force."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from keras_dino.evaluation import knn_classify
from keras_dino.evaluation import knn_evaluate
from keras_dino.evaluation import l2_normalize
from keras_dino.evaluation import paired_sign_test

# Unit vectors: the test point [1, 0] has similarities 1, 0.6, 0.6, 0.
TRAIN = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [0.0, 1.0]])
TRAIN_LABELS = np.array([0, 1, 1, 2])
TEST = np.array([[1.0, 0.0]])


def test_hand_computed_weighted_vote():
    # k=3 neighbours: class 0 (sim 1), class 1 twice (sim 0.6).
    # T=0.07: exp(1/.07)=1.6e6 beats 2*exp(.6/.07)=1.06e4 -> class 0.
    top1, top5, preds = knn_classify(
        TRAIN, TRAIN_LABELS, TEST, [0], k=3, temperature=0.07
    )
    assert preds.tolist() == [[0, 1, 2]]
    assert (top1, top5) == (100.0, 100.0)
    # T=1: exp(1)=2.72 loses to 2*exp(0.6)=3.64 -> class 1 (majority).
    top1, top5, preds = knn_classify(
        TRAIN, TRAIN_LABELS, TEST, [0], k=3, temperature=1.0
    )
    assert preds.tolist() == [[1, 0, 2]]
    assert (top1, top5) == (0.0, 100.0)
    # k=1: only the nearest neighbour votes.
    _, _, preds = knn_classify(TRAIN, TRAIN_LABELS, TEST, k=1, temperature=1)
    assert preds[0, 0] == 0


def test_top5_counts_min_5_k_predictions():
    # The reference uses the first min(5, k) predictions for top-5.
    _, top5, _ = knn_classify(
        TRAIN, TRAIN_LABELS, TEST, [1], k=1, num_classes=6
    )
    assert top5 == 0.0
    _, top5, preds = knn_classify(
        TRAIN, TRAIN_LABELS, TEST, [1], k=2, num_classes=6
    )
    assert preds.shape == (1, 6) and top5 == 100.0


def _brute_force(train, train_labels, test, k, temperature, num_classes):
    similarity = 1.0 - cdist(test, train, metric="cosine")
    predictions = []
    for row in similarity:
        nearest = np.argsort(-row, kind="stable")[:k]
        weights = np.exp(row[nearest] / temperature)
        scores = np.bincount(
            train_labels[nearest], weights=weights, minlength=num_classes
        )
        predictions.append(np.argsort(-scores, kind="stable"))
    return np.array(predictions)


@pytest.mark.parametrize("k,chunk_size", [(1, None), (7, 4), (20, 3)])
def test_matches_brute_force(k, chunk_size):
    rng = np.random.default_rng(k)
    train = l2_normalize(rng.normal(size=(60, 12)))
    test = l2_normalize(rng.normal(size=(23, 12)))
    train_labels = rng.integers(0, 8, 60)
    test_labels = rng.integers(0, 8, 23)
    top1, top5, preds = knn_classify(
        train,
        train_labels,
        test,
        test_labels,
        k=k,
        temperature=0.1,
        num_classes=8,
        chunk_size=chunk_size,
    )
    expected = _brute_force(train, train_labels, test, k, 0.1, 8)
    np.testing.assert_array_equal(preds, expected)
    correct = expected == test_labels[:, None]
    assert top1 == pytest.approx(100 * correct[:, 0].mean())
    assert top5 == pytest.approx(100 * correct[:, : min(5, k)].any(1).mean())


def test_evaluate_matches_classify():
    rng = np.random.default_rng(0)
    train = l2_normalize(rng.normal(size=(80, 6)))
    test = l2_normalize(rng.normal(size=(30, 6)))
    y_train, y_test = rng.integers(0, 5, 80), rng.integers(0, 5, 30)
    results = knn_evaluate(train, y_train, test, y_test, ks=(20, 3, 10))
    assert list(results) == [3, 10, 20]
    for k, accuracy in results.items():
        top1, top5, _ = knn_classify(train, y_train, test, y_test, k=k)
        assert accuracy == {"top1": top1, "top5": top5}


def test_clustered_data_is_classified():
    rng = np.random.default_rng(1)
    centers = l2_normalize(rng.normal(size=(4, 16))) * 5
    y_train, y_test = np.repeat(np.arange(4), 25), np.repeat(np.arange(4), 5)
    train = l2_normalize(centers[y_train] + rng.normal(size=(100, 16)))
    test = l2_normalize(centers[y_test] + rng.normal(size=(20, 16)))
    top1, _, _ = knn_classify(train, y_train, test, y_test, k=10)
    assert top1 == 100.0


def test_without_test_labels():
    top1, top5, preds = knn_classify(TRAIN, TRAIN_LABELS, TEST, k=2)
    assert top1 is None and top5 is None and preds.shape == (1, 3)


def test_errors():
    with pytest.raises(ValueError, match="k must be between"):
        knn_classify(TRAIN, TRAIN_LABELS, TEST, k=5)
    with pytest.raises(ValueError, match="width"):
        knn_classify(TRAIN, TRAIN_LABELS, np.ones((1, 3)), k=1)
    with pytest.raises(ValueError, match="train labels"):
        knn_classify(TRAIN, TRAIN_LABELS[:2], TEST, k=1)
    with pytest.raises(ValueError, match="num_classes"):
        knn_classify(TRAIN, TRAIN_LABELS, TEST, k=1, num_classes=2)
    with pytest.raises(ValueError, match="test_labels"):
        knn_evaluate(TRAIN, TRAIN_LABELS, TEST, None, ks=(1,))


def test_paired_sign_test_matches_scipy_binomtest():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    for n, p_a, p_b in [(40, 0.5, 0.5), (1000, 0.27, 0.31), (300, 0.6, 0.4)]:
        a = rng.random(n) < p_a
        b = rng.random(n) < p_b
        only_a, only_b, p = paired_sign_test(a, b)
        assert only_a == int(np.sum(a & ~b)) and only_b == int(np.sum(b & ~a))
        expected = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
        np.testing.assert_allclose(p, expected, rtol=1e-9)
    assert paired_sign_test([True, False], [True, False]) == (0, 0, 1.0)
    with pytest.raises(ValueError, match="same length"):
        paired_sign_test([True], [True, False])
