"""Objectives against closed forms and float64 numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax.errors import UserError
from synthjax.objectives import gan, likelihood, vae



def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_gan_losses_match_their_definitions():
    r = np.array([-2.0, 0.3, 4.0])
    f = np.array([1.5, -0.7, -3.0])
    np.testing.assert_allclose(gan.d_loss_bce(r, f), -np.mean(np.log(_sigmoid(r))) - np.mean(np.log(1 - _sigmoid(f))), rtol=1e-5)
    np.testing.assert_allclose(gan.g_loss_minimax(f), np.mean(np.log(1 - _sigmoid(f))), rtol=1e-5)
    np.testing.assert_allclose(gan.g_loss_non_saturating(f), -np.mean(np.log(_sigmoid(f))), rtol=1e-5)
    np.testing.assert_allclose(gan.d_loss_hinge(r, f), np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f)), rtol=1e-6)
    np.testing.assert_allclose(gan.d_loss_wasserstein(r, f), f.mean() - r.mean(), rtol=1e-6)
    np.testing.assert_allclose(gan.d_loss_least_squares(r, f), 0.5 * np.mean((r - 1) ** 2) + 0.5 * np.mean(f**2), rtol=1e-6)


def test_unknown_loss_lists_valid_ones():
    with pytest.raises(UserError, match="unknown GAN loss 'wgan'.*hinge.*minimax.*ns"):
        gan.get_loss("wgan")


def test_gaussian_kl_matches_closed_form_and_monte_carlo():
    mu, logvar = np.array([[0.5, -1.0]]), np.array([[0.2, -0.4]])
    var = np.exp(logvar)
    closed = 0.5 * np.sum(var + mu**2 - 1 - logvar)
    np.testing.assert_allclose(vae.gaussian_kl(jnp.array(mu), jnp.array(logvar)), [closed], rtol=1e-6)
    rng = np.random.default_rng(0)
    z = mu + np.sqrt(var) * rng.standard_normal((200000, 2))
    log_q = -0.5 * np.sum((z - mu) ** 2 / var + logvar + np.log(2 * np.pi), axis=1)
    log_p = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=1)
    np.testing.assert_allclose(np.mean(log_q - log_p), closed, rtol=2e-2)


def test_bernoulli_log_prob_matches_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 3, 1, 1)).astype(np.float32)
    x = (rng.random((2, 3, 3, 1)) > 0.5).astype(np.float32)
    p = _sigmoid(logits[..., 0].astype(np.float64))
    want = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=(1, 2, 3))
    np.testing.assert_allclose(vae.bernoulli_log_prob(jnp.array(logits), jnp.array(x)), want, rtol=1e-5)


def test_sigmoid_bce_and_its_gradient_match_float64_for_any_logit():
    logits = np.array([-200.0, -30.0, -1.5, -1e-3, 0.0, 1e-3, 2.0, 30.0, 200.0], np.float32)
    for t in (0.0, 0.3, 1.0):
        x = logits.astype(np.float64)
        want = np.logaddexp(0.0, x) - t * x  # softplus(l) - t * l
        want_grad = _sigmoid(x) - t
        got = likelihood.sigmoid_bce(jnp.array(logits), t)
        got_grad = jax.vmap(jax.grad(likelihood.sigmoid_bce), in_axes=(0, None))(jnp.array(logits), t)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got_grad, want_grad, rtol=1e-6, atol=1e-6)


def test_sum_pixels_equals_the_sum_over_unflattened_axes():
    rng = np.random.default_rng(1)
    a, b = (jnp.array(rng.standard_normal((2, 4, 3, 5, 2)), jnp.float32) for _ in range(2))
    assert likelihood.flat_pixels(a, 3).shape == (2, 4, 30)
    got = likelihood.sum_pixels(lambda u, v: u * v + u, 3, a, b)
    np.testing.assert_allclose(got, jnp.sum(a * b + a, axis=(2, 3, 4)), rtol=1e-5)


def test_discretized_logistic_is_a_normalised_distribution():
    # Summing P over all 256 levels of one pixel must give 1.
    levels = jnp.arange(256, dtype=jnp.float32)[:, None, None, None] / 255.0
    params = jnp.broadcast_to(jnp.array([0.3, -2.0]), (256, 1, 1, 1, 2))
    total = jnp.sum(jnp.exp(vae.discretized_logistic_log_prob(params, levels)))
    np.testing.assert_allclose(total, 1.0, rtol=1e-4)


def test_gaussian_log_prob_matches_numpy():
    params = jnp.zeros((1, 2, 2, 1, 1))
    x = jnp.array([0.2, 0.5, 0.7, 1.0]).reshape(1, 2, 2, 1)
    sigma = 0.1
    want = np.sum(-0.5 * ((np.asarray(x) - 0.5) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(vae.gaussian_log_prob(params, x, sigma), [want], rtol=1e-5)
