"""Weighted k-nearest-neighbour classification (the DINO k-NN protocol).

This is a numpy implementation of `knn_classifier` in the reference
`eval_knn.py`: it is evaluation code, run once on precomputed features, so it
does not need to be a Keras layer. Test features are processed in chunks to
bound the memory of the similarity matrix.
"""

import math

import numpy as np


def _check_inputs(train_features, train_labels, test_features, test_labels):
    train_features = np.asarray(train_features, dtype="float32")
    test_features = np.asarray(test_features, dtype="float32")
    train_labels = np.asarray(train_labels).astype("int64").reshape(-1)
    if train_features.ndim != 2 or test_features.ndim != 2:
        raise ValueError(
            "Features must be 2-D (num_examples, dim); got train "
            f"{train_features.shape} and test {test_features.shape}."
        )
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            "Train and test features differ in width: "
            f"{train_features.shape[1]} vs {test_features.shape[1]}."
        )
    if len(train_labels) != len(train_features):
        raise ValueError(
            f"Got {len(train_labels)} train labels for "
            f"{len(train_features)} train features."
        )
    if train_labels.size and train_labels.min() < 0:
        raise ValueError("Labels must be non-negative class indices.")
    if test_labels is not None:
        test_labels = np.asarray(test_labels).astype("int64").reshape(-1)
        if len(test_labels) != len(test_features):
            raise ValueError(
                f"Got {len(test_labels)} test labels for "
                f"{len(test_features)} test features."
            )
    return train_features, train_labels, test_features, test_labels


def _num_classes(train_labels, test_labels, num_classes):
    inferred = int(train_labels.max()) + 1
    if test_labels is not None and len(test_labels):
        inferred = max(inferred, int(test_labels.max()) + 1)
    if num_classes is None:
        return inferred
    if num_classes < inferred:
        raise ValueError(
            f"num_classes={num_classes} but labels go up to {inferred - 1}."
        )
    return int(num_classes)


def _check_k(k, num_train):
    if not 1 <= k <= num_train:
        raise ValueError(
            f"k must be between 1 and the number of train examples "
            f"({num_train}); got {k}."
        )


def _chunks(num_test, num_train, chunk_size):
    if chunk_size is None:
        # Keep the (chunk, num_train) similarity block near 2**26 floats.
        chunk_size = int(min(1024, max(1, 2**26 // max(num_train, 1))))
    for start in range(0, num_test, chunk_size):
        yield slice(start, min(start + chunk_size, num_test))


def _nearest(similarity, k):
    """Top-k similarities and indices per row, sorted in decreasing order."""
    if k < similarity.shape[1]:
        idx = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(k), (len(similarity), k))
    sims = np.take_along_axis(similarity, idx, axis=1)
    order = np.argsort(-sims, axis=1, kind="stable")
    return (
        np.take_along_axis(sims, order, axis=1),
        np.take_along_axis(idx, order, axis=1),
    )


def _vote(distances, neighbour_labels, temperature, num_classes):
    """Sum of one-hot(labels) * exp(sim / T); classes sorted by score."""
    weights = np.exp(distances.astype("float64") / temperature)
    scores = np.zeros((len(distances), num_classes), dtype="float64")
    rows = np.repeat(np.arange(len(distances)), distances.shape[1])
    np.add.at(scores, (rows, neighbour_labels.reshape(-1)), weights.reshape(-1))
    # Stable sort: equal scores are ranked by class index.
    return np.argsort(-scores, axis=1, kind="stable")


def _accuracy(predictions, test_labels, k):
    correct = predictions == test_labels[:, None]
    top1 = 100.0 * correct[:, 0].sum() / len(test_labels)
    top5 = 100.0 * correct[:, : min(5, k)].sum() / len(test_labels)
    return float(top1), float(top5)


def knn_classify(
    train_features,
    train_labels,
    test_features,
    test_labels=None,
    k=20,
    temperature=0.07,
    num_classes=None,
    chunk_size=None,
):
    """Weighted k-NN classification as DINO's `knn_classifier`.

    For each test feature: cosine similarity to every train feature (the
    features must already be L2-normalised, as `extract_features` does by
    default), the `k` most similar train examples, weights
    `exp(similarity / temperature)`, class scores = sum over neighbours of
    one-hot(label) * weight, classes sorted by decreasing score. Top-5
    counts a hit in the first `min(5, k)` predicted classes, as the
    reference does. Equal scores are ranked by class index.

    Args:
        train_features: `(num_train, dim)` L2-normalised features.
        train_labels: `(num_train,)` integer labels.
        test_features: `(num_test, dim)` L2-normalised features.
        test_labels: optional `(num_test,)` integer labels; needed for the
            accuracies.
        k: int, number of neighbours (20 in DINO's headline numbers).
        temperature: float, `T` of the weights (0.07 in DINO).
        num_classes: int; inferred from the labels when `None`.
        chunk_size: int, test features per similarity block; by default
            chosen to keep the block near 2**26 entries.

    Returns:
        `(top1, top5, predictions)`: the accuracies in percent (`None`
        without `test_labels`) and an int array `(num_test, num_classes)`
        of class indices sorted from most to least likely.

    Example:
    >>> train = l2_normalize(np.random.randn(100, 8))
    >>> labels = np.random.randint(0, 3, 100)
    >>> top1, top5, preds = knn_classify(train, labels, train, labels, k=5)
    """
    train_features, train_labels, test_features, test_labels = _check_inputs(
        train_features, train_labels, test_features, test_labels
    )
    _check_k(k, len(train_features))
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}.")
    num_classes = _num_classes(train_labels, test_labels, num_classes)
    predictions = []
    for chunk in _chunks(len(test_features), len(train_features), chunk_size):
        similarity = test_features[chunk] @ train_features.T
        distances, indices = _nearest(similarity, k)
        predictions.append(
            _vote(distances, train_labels[indices], temperature, num_classes)
        )
    predictions = np.concatenate(predictions)
    if test_labels is None:
        return None, None, predictions
    top1, top5 = _accuracy(predictions, test_labels, k)
    return top1, top5, predictions


def knn_evaluate(
    train_features,
    train_labels,
    test_features,
    test_labels,
    ks=(10, 20, 100, 200),
    temperature=0.07,
    num_classes=None,
    chunk_size=None,
):
    """Runs `knn_classify` for several `k` with one similarity pass.

    The neighbours of the largest `k` are found once per chunk; smaller
    `k` use their prefix, which gives the same result as separate calls.

    Args:
        train_features: `(num_train, dim)` L2-normalised features.
        train_labels: `(num_train,)` integer labels.
        test_features: `(num_test, dim)` L2-normalised features.
        test_labels: `(num_test,)` integer labels.
        ks: iterable of ints, the numbers of neighbours (DINO reports 10,
            20, 100 and 200).
        temperature: float, `T` of the weights.
        num_classes: int; inferred from the labels when `None`.
        chunk_size: int, test features per similarity block.

    Returns:
        A dict `{k: {"top1": float, "top5": float}}`, accuracies in percent.

    Example:
    >>> results = knn_evaluate(train, train_labels, test, test_labels)
    >>> results[20]["top1"]
    """
    train_features, train_labels, test_features, test_labels = _check_inputs(
        train_features, train_labels, test_features, test_labels
    )
    if test_labels is None:
        raise ValueError("knn_evaluate needs test_labels.")
    ks = sorted({int(k) for k in ks})
    if not ks:
        raise ValueError("ks must hold at least one k.")
    for k in ks:
        _check_k(k, len(train_features))
    if temperature <= 0:
        raise ValueError(f"temperature must be positive; got {temperature}.")
    num_classes = _num_classes(train_labels, test_labels, num_classes)
    hits = {k: np.zeros(2) for k in ks}
    for chunk in _chunks(len(test_features), len(train_features), chunk_size):
        similarity = test_features[chunk] @ train_features.T
        distances, indices = _nearest(similarity, ks[-1])
        neighbour_labels = train_labels[indices]
        targets = test_labels[chunk]
        for k in ks:
            preds = _vote(
                distances[:, :k],
                neighbour_labels[:, :k],
                temperature,
                num_classes,
            )
            correct = preds == targets[:, None]
            hits[k] += (correct[:, 0].sum(), correct[:, : min(5, k)].sum())
    total = len(test_labels)
    return {
        k: {
            "top1": float(100.0 * hits[k][0] / total),
            "top5": float(100.0 * hits[k][1] / total),
        }
        for k in ks
    }


def paired_sign_test(correct_a, correct_b):
    """Exact McNemar (sign) test of two classifiers on the same examples.

    Counts the examples only one of the two gets right and tests, with an
    exact two-sided binomial test at p = 0.5, whether they differ. Use it to
    tell whether a k-NN gain over a baseline is more than noise.

    Args:
        correct_a: boolean `(n,)`, which examples classifier A gets right.
        correct_b: boolean `(n,)`, the same for classifier B.

    Returns:
        `(only_a, only_b, p_value)`: examples only A / only B gets right,
        and the two-sided p-value.

    Example:
    >>> paired_sign_test([True, True, False], [False, True, False])
    (1, 0, 1.0)
    """
    correct_a = np.asarray(correct_a, dtype=bool)
    correct_b = np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape or correct_a.ndim != 1:
        raise ValueError(
            "correct_a and correct_b must be 1-D and of the same length; got "
            f"{correct_a.shape} and {correct_b.shape}."
        )
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(correct_b & ~correct_a))
    n, low = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return only_a, only_b, 1.0
    # P(X <= low) for X ~ Binomial(n, 1/2), in log space for large n.
    log_terms = [
        math.lgamma(n + 1)
        - math.lgamma(i + 1)
        - math.lgamma(n - i + 1)
        - n * math.log(2.0)
        for i in range(low + 1)
    ]
    tail = float(np.exp(np.logaddexp.reduce(log_terms)))
    return only_a, only_b, min(1.0, 2.0 * tail)
