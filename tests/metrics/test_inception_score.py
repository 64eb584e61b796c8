"""Inception Score: known values, logits route, numerical safety, errors."""

import numpy as np
import pytest

from synthjax import metrics


def _reference_is(p, splits):
    # the textbook formula, for random strictly positive probabilities
    scores = []
    for part in np.array_split(p, splits):
        py = part.mean(axis=0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), axis=1))))
    return np.mean(scores), np.std(scores)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def test_uniform_predictions_score_one():
    mean, std = metrics.inception_score(np.full((100, 1008), 1 / 1008))
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 7, 1008])
def test_confident_predictions_over_k_equally_used_classes_score_k(k):
    probs = np.zeros((10 * 3 * k, 1008))
    probs[np.arange(len(probs)), np.arange(len(probs)) % k] = 1.0  # every split sees each class 3 times
    mean, std = metrics.inception_score(probs, num_splits=10)
    assert mean == pytest.approx(k, rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)


def test_matches_textbook_formula_on_random_probabilities():
    probs = _softmax(np.random.default_rng(0).normal(scale=3, size=(1000, 50)))
    np.testing.assert_allclose(metrics.inception_score(probs, 10), _reference_is(probs, 10), rtol=1e-10)


def test_from_logits_matches_probs_and_survives_extreme_logits():
    logits = np.random.default_rng(1).normal(scale=3, size=(500, 20))
    np.testing.assert_allclose(
        metrics.inception_score_from_logits(logits, 5), metrics.inception_score(_softmax(logits), 5), rtol=1e-10
    )
    # logits of scale 1e4 make float softmax exactly one-hot; the log-softmax route still gives k
    extreme = np.full((40, 8), -1e4)
    extreme[np.arange(40), np.arange(40) % 4] = 1e4
    mean, _ = metrics.inception_score_from_logits(extreme, num_splits=2)
    assert mean == pytest.approx(4.0, rel=1e-12)


def test_zero_probabilities_do_not_produce_nan():
    probs = np.zeros((20, 5))
    probs[:, 0] = 0.5
    probs[np.arange(20), 1 + np.arange(20) % 4] = 0.5
    mean, std = metrics.inception_score(probs, num_splits=2)
    assert np.isfinite(mean) and np.isfinite(std) and mean > 1


@pytest.mark.parametrize(
    "probs, match",
    [
        (np.random.default_rng(2).normal(size=(20, 5)), "negative entries|sum to 1"),
        (np.full((20, 5), 0.5), "row 0 sums to 2.5.*inception_score_from_logits"),
        (np.full((5, 5), 0.2), "at least num_splits=10 samples; got 5"),
        (np.full((20, 5), np.nan), "non-finite"),
    ],
)
def test_bad_probabilities_raise(probs, match):
    with pytest.raises(ValueError, match=match):
        metrics.inception_score(probs, num_splits=10)


def test_class_confidence_counts_confident_samples_and_class_shares():
    # Top-class probabilities known in closed form: logits (a, 0, ..., 0) over C classes give e^a / (e^a + C - 1).
    c = 10
    confident_logit = np.log(0.95 * (c - 1) / 0.05)  # top probability 0.95
    unsure_logit = np.log(0.5 * (c - 1) / 0.5)  # top probability 0.5
    rows = []
    for i in range(100):  # classes 0..3 get 40, 30, 20, 10 samples; 70 of the 100 confident
        cls = 0 if i < 40 else 1 if i < 70 else 2 if i < 90 else 3
        z = np.zeros(c)
        z[cls] = confident_logit if i % 10 < 7 else unsure_logit
        rows.append(z)
    out = metrics.class_confidence(np.array(rows))
    assert out == {"confident": 0.7, "class_min": 0.0, "class_max": 0.4}
    assert metrics.class_confidence(np.array(rows), threshold=0.4)["confident"] == 1.0


def test_class_confidence_rejects_a_threshold_outside_zero_one():
    with pytest.raises(metrics.MetricInputError, match="threshold"):
        metrics.class_confidence(np.zeros((4, 3)), threshold=1.0)
