"""KID: unbiasedness, float32 accuracy against float64, subset handling, errors."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax import metrics


def _mmd2_float64(x, y, biased=False):
    d, m = x.shape[1], len(x)
    k = lambda p, q: (p @ q.T / d + 1.0) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if biased:
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return within - 2 * kxy.mean()


def test_unbiased_over_independent_draws_of_one_distribution():
    # 400 independent pairs of 32-sample sets: the unbiased estimator averages to 0
    # within its standard error, while the biased (V-statistic) version is clearly positive.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 32, 4)).astype(np.float32)
    y = rng.normal(size=(400, 32, 4)).astype(np.float32)
    values = np.asarray(jax.vmap(metrics.mmd2_unbiased)(jnp.asarray(x), jnp.asarray(y)), np.float64)
    stderr = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean()) < 3 * stderr
    biased = np.array([_mmd2_float64(a, b, biased=True) for a, b in zip(x.astype(np.float64), y.astype(np.float64))])
    assert biased.mean() > 10 * stderr


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same_mean, same_std = metrics.kid(a, b, num_subsets=50, subset_size=500)
    shifted_mean, _ = metrics.kid(a, b + 0.3, num_subsets=50, subset_size=500)
    assert abs(same_mean) < 0.02 and same_std > 0
    assert shifted_mean > 0.1 > 5 * abs(same_mean)


def test_float32_core_matches_float64_on_inception_like_features():
    # non-negative, sparse-ish 2048-d features like Inception pool outputs; a KID of ~5e-5
    # is a difference of kernel means ~1.4, so this checks the accumulation order.
    rng = np.random.default_rng(2)
    x = rng.gamma(0.5, 0.7, size=(1000, 2048))
    y = rng.gamma(0.5, 0.7, size=(1000, 2048)) * 1.01
    got = float(metrics.mmd2_unbiased(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)))
    expected = _mmd2_float64(x, y)
    assert abs(got - expected) < 1e-6
    assert abs(got - expected) < 0.01 * abs(expected)


def test_kid_equals_mean_of_per_subset_float64_values():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) + 0.1
    mean, std = metrics.kid(a, b, num_subsets=5, subset_size=100, seed=7)
    draws = np.random.default_rng(7)
    idx_a = [draws.choice(300, 100, replace=False) for _ in range(5)]
    idx_b = [draws.choice(250, 100, replace=False) for _ in range(5)]
    values = np.array([_mmd2_float64(a[i], b[j]) for i, j in zip(idx_a, idx_b)])
    np.testing.assert_allclose([mean, std], [values.mean(), values.std()], rtol=1e-4, atol=1e-6)


def test_same_seed_same_result_and_different_seed_differs():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    assert metrics.kid(a, b, 10, 50, seed=1) == metrics.kid(a, b, 10, 50, seed=1)
    assert metrics.kid(a, b, 10, 50, seed=1) != metrics.kid(a, b, 10, 50, seed=2)


def test_subset_size_above_available_is_clamped_with_warning():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(120, 8)), rng.normal(size=(80, 8))
    with pytest.warns(UserWarning, match="subset_size=1000 is larger than the smaller feature set \\(80"):
        clamped = metrics.kid(a, b, num_subsets=3, subset_size=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explicit = metrics.kid(a, b, num_subsets=3, subset_size=80)
    assert clamped == explicit


@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros((10, 4)), np.zeros((10, 5)), "same feature dim"),
        (np.full((10, 4), np.nan), np.zeros((10, 4)), "non-finite"),
        (np.zeros((1, 4)), np.zeros((10, 4)), "at least 2 samples"),
        (np.zeros(10), np.zeros((10, 4)), "2-D"),
    ],
)
def test_bad_inputs_raise(a, b, match):
    with pytest.raises(ValueError, match=match):
        metrics.kid(a, b, num_subsets=2, subset_size=5)
