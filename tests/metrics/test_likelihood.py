"""Likelihood helpers: unit conversions and the IWAE estimator on a tractable linear-Gaussian VAE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from synthjax import metrics


def test_nats_bits_round_trip_and_known_value():
    d = 32 * 32 * 3
    assert metrics.nats_to_bits_per_dim(3.0 * d * math.log(2), d) == pytest.approx(3.0, rel=1e-15)
    values = np.array([0.5, 1234.5, 9876.0])
    np.testing.assert_allclose(metrics.bits_per_dim_to_nats(metrics.nats_to_bits_per_dim(values, d), d), values)


def test_uniform_density_on_unit_cube_is_eight_bits_per_dim():
    # U[0,1)^D has -log p = 0 on the [0,1) scale; on the 8-bit [0,256) scale it is D ln 256: 8 bits/dim
    d = 784
    nats = metrics.nll_in_original_units(0.0, d, scale=256.0)
    assert metrics.nats_to_bits_per_dim(nats, d) == pytest.approx(8.0, rel=1e-15)


@pytest.mark.parametrize("bad", [0, -3, 2.5])
def test_bad_num_dims_raise(bad):
    with pytest.raises(ValueError, match="num_dims"):
        metrics.nats_to_bits_per_dim(1.0, bad)


def test_log_mean_exp_is_stable():
    log_w = jnp.array([[1000.0, 1000.0 + math.log(3.0)], [-1000.0, -1000.0]])
    np.testing.assert_allclose(metrics.log_mean_exp(log_w, axis=1), [1000.0 + math.log(2.0), -1000.0], rtol=1e-6)


class LinearGaussianVAE:
    """z ~ N(0, I), x | z ~ N(W z + b, s^2 I): p(x) = N(b, W W^T + s^2 I) is exact.

    The encoder q(z | x) is the true posterior with its mean shifted and its
    covariance inflated, so importance weights vary and the IWAE bound is
    strictly below log p(x) for small K.
    """

    def __init__(self, seed=0, dx=5, dz=2, s=0.5, shift=0.4, inflate=2.0):
        rng = np.random.default_rng(seed)
        self.w, self.b, self.s = rng.normal(size=(dx, dz)), rng.normal(size=dx), s
        self.post_cov = np.linalg.inv(np.eye(dz) + self.w.T @ self.w / s**2)
        self.q_cov = inflate * self.post_cov
        self.q_chol = np.linalg.cholesky(self.q_cov)
        self.shift = shift

    def exact_log_px(self, x):
        cov = self.w @ self.w.T + self.s**2 * np.eye(len(self.b))
        return multivariate_normal(self.b, cov).logpdf(x)

    def log_weight_fn(self, x):
        q_mean = jnp.asarray((x - self.b) @ self.w @ self.post_cov.T / self.s**2 + self.shift, jnp.float32)
        w, b, chol = (jnp.asarray(a, jnp.float32) for a in (self.w, self.b, self.q_chol))
        q_prec = jnp.asarray(np.linalg.inv(self.q_cov), jnp.float32)
        q_logdet = float(np.linalg.slogdet(self.q_cov)[1])
        xs = jnp.asarray(x, jnp.float32)
        dz, dx = w.shape[1], w.shape[0]

        def fn(key, n):
            eps = jax.random.normal(key, (xs.shape[0], n, dz))
            z = q_mean[:, None, :] + eps @ chol.T
            log_prior = -0.5 * jnp.sum(z**2, -1) - 0.5 * dz * math.log(2 * math.pi)
            resid = xs[:, None, :] - (z @ w.T + b)
            log_lik = -0.5 * jnp.sum(resid**2, -1) / self.s**2 - dx * math.log(self.s)
            log_lik = log_lik - 0.5 * dx * math.log(2 * math.pi)
            log_q = -0.5 * jnp.einsum("bni,ij,bnj->bn", eps @ chol.T, q_prec, eps @ chol.T)
            log_q = log_q - 0.5 * q_logdet - 0.5 * dz * math.log(2 * math.pi)
            return log_prior + log_lik - log_q

        return fn


def test_iwae_increases_with_k_and_converges_to_exact_log_likelihood():
    model = LinearGaussianVAE()
    x = np.random.default_rng(1).normal(size=(8, 5)) + model.b
    exact = model.exact_log_px(x)
    repeats = 64  # independent estimates per point, so E[L_k] is measured, not one noisy draw
    fn = model.log_weight_fn(np.repeat(x, repeats, axis=0))
    means, stderrs = [], []
    for i, k in enumerate([1, 10, 100, 5000]):
        est = metrics.importance_weighted_log_likelihood(fn, jax.random.key(i), k, chunk_size=512)
        gap = np.asarray(est, np.float64).reshape(8, repeats) - exact[:, None]  # estimate - log p(x)
        means.append(gap.mean())
        stderrs.append(gap.mean(axis=0).std(ddof=1) / np.sqrt(repeats))
    for (m0, s0), (m1, s1) in zip(zip(means, stderrs), zip(means[1:], stderrs[1:])):
        assert m1 > m0 + 3 * np.hypot(s0, s1), (means, stderrs)
    assert means[0] < -0.1  # the K=1 ELBO is visibly loose for this encoder
    assert abs(means[-1]) < 0.01, means  # K=5000 recovers log p(x) to within 0.01 nats


def test_chunk_remainder_is_masked():
    # 10 samples in chunks of 4 draw 12; the documented key schedule lets us rebuild the exact answer
    def fn(key, n):
        return jax.random.normal(key, (3, n)) * 2.0

    key = jax.random.key(0)
    got = metrics.importance_weighted_log_likelihood(fn, key, num_samples=10, chunk_size=4)
    log_w = jnp.concatenate([fn(k, 4) for k in jax.random.split(key, 3)], axis=1)[:, :10]
    np.testing.assert_allclose(got, metrics.log_mean_exp(log_w, axis=1), rtol=1e-6)


def test_single_chunk_equals_log_mean_exp():
    fn = lambda key, n: jax.random.normal(key, (2, n))  # noqa: E731
    key = jax.random.key(3)
    got = metrics.importance_weighted_log_likelihood(fn, key, num_samples=7, chunk_size=100)
    np.testing.assert_allclose(got, metrics.log_mean_exp(fn(jax.random.split(key, 1)[0], 7), axis=1), rtol=1e-6)


def test_wrong_log_weight_shape_raises():
    with pytest.raises(ValueError, match=r"must return shape \(batch, 4\); got \(4,\)"):
        metrics.importance_weighted_log_likelihood(lambda key, n: jnp.zeros(n), jax.random.key(0), 8, chunk_size=4)
