"""Fréchet distance against closed forms and scipy, near-singular inputs, streaming statistics."""

import numpy as np
import pytest
import scipy.linalg

from synthjax import metrics


def _random_orthogonal(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _random_spd(rng, d):
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


def _closed_form_commuting(mu1, eig1, mu2, eig2):
    # S1 = Q diag(eig1) Q^T, S2 = Q diag(eig2) Q^T commute: tr sqrt(S1 S2) = sum sqrt(eig1 * eig2)
    return np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(eig1) - np.sqrt(eig2)) ** 2)


def _scipy_reference(mu1, s1, mu2, s2):
    # the pytorch-fid formula without its eps retry
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real)


def test_diagonal_covariances_match_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    eig1, eig2 = rng.uniform(0.1, 5, 16), rng.uniform(0.1, 5, 16)
    got = metrics.frechet_distance(mu1, np.diag(eig1), mu2, np.diag(eig2))
    np.testing.assert_allclose(got, _closed_form_commuting(mu1, eig1, mu2, eig2), rtol=1e-12)


def test_commuting_rotated_covariances_match_closed_form():
    rng = np.random.default_rng(1)
    d = 48
    q = _random_orthogonal(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    eig1, eig2 = rng.uniform(0.01, 10, d), rng.uniform(0.01, 10, d)
    got = metrics.frechet_distance(mu1, (q * eig1) @ q.T, mu2, (q * eig2) @ q.T)
    np.testing.assert_allclose(got, _closed_form_commuting(mu1, eig1, mu2, eig2), rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_sqrtm_on_random_spd(seed):
    rng = np.random.default_rng(seed)
    d = 64
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    got = metrics.frechet_distance(mu1, s1, mu2, s2)
    np.testing.assert_allclose(got, _scipy_reference(mu1, s1, mu2, s2), rtol=1e-9)


def test_rank_deficient_covariances_stay_accurate():
    # rank 10 and rank 20 covariances in 64-d: sqrtm(S1 S2) of such products is where
    # pytorch-fid needs its eps retry; the symmetric route needs no offset.
    rng = np.random.default_rng(3)
    d = 64
    q = _random_orthogonal(rng, d)
    eig1 = np.concatenate([rng.uniform(0.5, 5, 10), np.zeros(d - 10)])
    eig2 = np.concatenate([rng.uniform(0.5, 5, 20), np.zeros(d - 20)])
    mu = rng.normal(size=d)
    got = metrics.frechet_distance(mu, (q * eig1) @ q.T, mu, (q * eig2) @ q.T)
    expected = _closed_form_commuting(mu, eig1, mu, eig2)
    assert np.isfinite(got)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_singular_sample_covariance_with_allow_singular_is_finite():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(20, 50))  # 20 samples in 50-d: rank 19
    b = rng.normal(size=(20, 50)) + 0.5
    mu1, s1 = metrics.gaussian_stats(a, allow_singular=True)
    mu2, s2 = metrics.gaussian_stats(b, allow_singular=True)
    value = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(value) and value > 0


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(5)
    s = _random_spd(rng, 32)
    mu = rng.normal(size=32)
    assert metrics.frechet_distance(mu, s, mu, s) == pytest.approx(0.0, abs=1e-9 * np.trace(s))


def test_symmetric_in_its_arguments():
    rng = np.random.default_rng(6)
    mu1, mu2, s1, s2 = rng.normal(size=8), rng.normal(size=8), _random_spd(rng, 8), _random_spd(rng, 8)
    np.testing.assert_allclose(
        metrics.frechet_distance(mu1, s1, mu2, s2), metrics.frechet_distance(mu2, s2, mu1, s1), rtol=1e-10
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda mu, s: (np.append(mu, 0.0), s), "shape"),
        (lambda mu, s: (mu, s + np.triu(np.ones_like(s), 1)), "not symmetric"),
        (lambda mu, s: (mu, s - 10 * np.eye(len(s))), "positive semi-definite"),
        (lambda mu, s: (np.where(np.arange(len(mu)) == 2, np.nan, mu), s), "non-finite"),
    ],
)
def test_bad_gaussians_raise(change, match):
    rng = np.random.default_rng(7)
    mu, s = rng.normal(size=6), _random_spd(rng, 6)
    bad_mu, bad_s = change(mu, s)
    with pytest.raises(ValueError, match=match):
        metrics.frechet_distance(bad_mu, bad_s, mu, s)


def test_gaussian_stats_match_numpy():
    x = np.random.default_rng(8).normal(size=(500, 12))
    mu, sigma = metrics.gaussian_stats(x)
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-14)


def test_streaming_batches_and_merge_equal_one_shot():
    # a large common offset is where sum(x x^T) - n mu mu^T would lose digits
    x = 1e4 + np.random.default_rng(9).normal(size=(1003, 10))
    acc = metrics.GaussianStatsAccumulator()
    for start in range(0, 600, 64):
        acc.update(x[start : min(start + 64, 600)])
    other = metrics.GaussianStatsAccumulator().update(x[600:800]).update(x[800:])
    mu, sigma = acc.merge(other).finalize()
    assert acc.count == 1003
    np.testing.assert_allclose(mu, x.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-11)


def test_too_few_samples_names_the_counts():
    x = np.random.default_rng(10).normal(size=(10, 32))
    with pytest.raises(ValueError, match=r"got 10 samples of 32-d.*need at least 33"):
        metrics.gaussian_stats(x)
    mu, sigma = metrics.gaussian_stats(x, allow_singular=True)
    assert sigma.shape == (32, 32) and np.linalg.matrix_rank(sigma) == 9


def test_non_finite_features_raise():
    x = np.random.default_rng(11).normal(size=(100, 4))
    x[17, 2] = np.inf
    acc = metrics.GaussianStatsAccumulator().update(x[:10])
    with pytest.raises(ValueError, match=r"non-finite.*first rows: \[7\]"):
        acc.update(x[10:])


def test_changing_feature_dim_raises():
    acc = metrics.GaussianStatsAccumulator().update(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="dim 5; earlier batches had 4"):
        acc.update(np.zeros((3, 5)))
