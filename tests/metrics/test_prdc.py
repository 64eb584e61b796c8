"""Improved precision/recall and density/coverage: brute-force agreement, blocking, sanity values."""

import numpy as np
import pytest

from synthjax import metrics


def _brute_force(real, fake, k_pr, k_dc):
    # full float64 distance matrices, written straight from the papers' definitions
    dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # noqa: E731
    d_rr, d_ff, d_rf = dist(real, real), dist(fake, fake), dist(real, fake)
    kth = lambda d, k: np.sort(d, axis=1)[:, k]  # column 0 is the point itself  # noqa: E731
    precision = np.mean((d_rf <= kth(d_rr, k_pr)[:, None]).any(axis=0))
    recall = np.mean((d_rf <= kth(d_ff, k_pr)[None, :]).any(axis=1))
    r_dc = kth(d_rr, k_dc)[:, None]
    density = (d_rf < r_dc).sum() / (k_dc * len(fake))
    coverage = np.mean(d_rf.min(axis=1) < r_dc[:, 0])
    return precision, recall, density, coverage


def _data(seed=0, n_real=301, n_fake=257, d=6, shift=0.3):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n_real, d)), rng.normal(size=(n_fake, d)) * 1.2 + shift


@pytest.mark.parametrize("block_size", [64, 1000])
def test_match_brute_force_reference(block_size):
    real, fake = _data()
    pr = metrics.precision_recall(real, fake, k=3, block_size=block_size)
    dc = metrics.density_coverage(real, fake, k=5, block_size=block_size)
    expected = _brute_force(real, fake, 3, 5)
    np.testing.assert_allclose([pr["precision"], pr["recall"], dc["density"], dc["coverage"]], expected, rtol=1e-12)


def test_block_size_does_not_change_results():
    real, fake = _data(seed=1)
    results = [
        (metrics.precision_recall(real, fake, block_size=b), metrics.density_coverage(real, fake, block_size=b))
        for b in (7, 100, 4096)
    ]
    assert results[0] == results[1] == results[2]


def test_identical_sets():
    real, _ = _data(seed=2)
    assert metrics.precision_recall(real, real) == {"precision": 1.0, "recall": 1.0}
    # each real ball holds its centre and its k-1 nearer neighbours strictly inside: density is exactly 1
    assert metrics.density_coverage(real, real) == {"density": 1.0, "coverage": 1.0}


def test_far_disjoint_sets():
    real, fake = _data(seed=3)
    assert metrics.precision_recall(real, fake + 100.0) == {"precision": 0.0, "recall": 0.0}
    assert metrics.density_coverage(real, fake + 100.0) == {"density": 0.0, "coverage": 0.0}


def test_same_distribution_and_mode_collapse():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8))
    dc = metrics.density_coverage(real, fake, k=5)
    # Naeem et al.: for matching distributions E[density] = 1 and coverage -> 1 - 2^-k = 0.969
    assert 0.9 < dc["density"] < 1.1 and 0.94 < dc["coverage"] < 0.99
    collapsed = real[:10][rng.integers(0, 10, 1000)] + 0.01 * rng.normal(size=(1000, 8))
    pr = metrics.precision_recall(real, collapsed)
    dc = metrics.density_coverage(real, collapsed)
    assert pr["precision"] > 0.99 and pr["recall"] < 0.05 and dc["coverage"] < 0.1


@pytest.mark.parametrize(
    "real, fake, k, match",
    [
        (np.zeros((10, 3)), np.zeros((10, 4)), 3, "same feature dim"),
        (np.zeros((3, 3)), np.zeros((10, 3)), 3, "k=3 needs more than k samples"),
        (np.zeros((10, 3)), np.zeros((10, 3)), 0, "k must be an integer >= 1"),
        (np.full((10, 3), np.inf), np.zeros((10, 3)), 3, "non-finite"),
    ],
)
def test_bad_inputs_raise(real, fake, k, match):
    with pytest.raises(ValueError, match=match):
        metrics.precision_recall(real, fake, k=k)
