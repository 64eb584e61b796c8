"""VAE objectives: likelihoods p(x|z), the Gaussian KL, the IWAE bound and the VQ-VAE terms, as pure functions.

Log-likelihoods are summed over pixels and channels and returned per image
(shape (B,)), in nats. `LIKELIHOODS` maps `objective.likelihood` names to a
`Likelihood` with the number of decoder outputs per pixel, the log-density
and the mean (for grids).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from synthjax.errors import unknown_name
from synthjax.objectives.likelihood import sigmoid_bce, sum_pixels

LOG_2PI = math.log(2.0 * math.pi)  # a Python float: importing must not start the JAX backend


def gaussian_kl(mu, logvar):
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over latent dims, per example."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1)


def bernoulli_log_prob(params, x):
    """log Bernoulli(x | sigmoid(logits)) for x in {0, 1} (or [0, 1] as a cross-entropy)."""
    return -sum_pixels(sigmoid_bce, 3, params[..., 0], x)


def gaussian_log_prob(params, x, sigma: float = 0.1):
    """log N(x | mean, sigma^2) with a fixed sigma, mean = sigmoid(output) in [0, 1]."""
    def nll(output, x):
        return 0.5 * ((x - jax.nn.sigmoid(output)) / sigma) ** 2 + math.log(sigma) + 0.5 * LOG_2PI

    return -sum_pixels(nll, 3, params[..., 0], x)


def discretized_logistic_log_prob(params, x, num_bins: int = 256):
    """log P(x) for 8-bit data under a discretised logistic (PixelCNN++ style, one component).

    `x` holds pixel values scaled to [0, 1] (k / (num_bins - 1)); the bin of
    width 1/(num_bins-1) around x gets the logistic CDF mass, the edge bins take
    the tails. This is a probability mass: -log P is a code length in nats.
    """
    half_bin = 0.5 / (num_bins - 1)

    def log_mass(mean_output, log_scale_output, x):
        mean, inv_scale = jax.nn.sigmoid(mean_output), jnp.exp(-jnp.maximum(log_scale_output, -7.0))
        upper = jnp.where(x >= 1.0 - 1e-6, 1.0, jax.nn.sigmoid((x + half_bin - mean) * inv_scale))
        lower = jnp.where(x <= 1e-6, 0.0, jax.nn.sigmoid((x - half_bin - mean) * inv_scale))
        return jnp.log(jnp.maximum(upper - lower, 1e-12))

    return sum_pixels(log_mass, 3, params[..., 0], params[..., 1], x)


class Likelihood(NamedTuple):
    num_params: int
    log_prob: Callable
    mean: Callable  # decoder output -> expected image in [0, 1]


LIKELIHOODS = {
    "bernoulli": Likelihood(1, bernoulli_log_prob, lambda p: jax.nn.sigmoid(p[..., 0])),
    "gaussian": Likelihood(1, gaussian_log_prob, lambda p: jax.nn.sigmoid(p[..., 0])),
    "logistic": Likelihood(2, discretized_logistic_log_prob, lambda p: jax.nn.sigmoid(p[..., 0])),
}


def get_likelihood(name: str) -> Likelihood:
    if name not in LIKELIHOODS:
        raise unknown_name("likelihood", name, LIKELIHOODS, key="objective.likelihood")
    return LIKELIHOODS[name]


def negative_elbo(log_px_z, kl, beta: float = 1.0):
    """Batch mean of -(log p(x|z) - beta * KL); beta=1 is the VAE bound, beta>1 a beta-VAE."""
    return jnp.mean(-log_px_z + beta * kl)


def gaussian_log_weights(log_px_z, z, eps, logvar):
    """log p(x|z) + log p(z) - log q(z|x) per sample, for z = mu + sigma * eps.

    `log_px_z` has shape (..., B) or (B, K); `z` and `eps` end in the latent
    axis, `logvar` broadcasts against them. log q is evaluated through eps,
    which is exact for the reparameterised Gaussian and cheaper than via z.
    """
    log_pz = -0.5 * jnp.sum(z**2 + LOG_2PI, axis=-1)
    log_qz = -0.5 * jnp.sum(eps**2 + LOG_2PI + logvar, axis=-1)
    return log_px_z + log_pz - log_qz


def iwae_bound(log_w_bk):
    """The importance-weighted bound log (1/K) sum_k w_k per example (Burda et al. 2016), from log w of shape (B, K).

    K = 1 is a one-sample ELBO; the bound tightens towards log p(x) as K grows.
    """
    k = log_w_bk.shape[-1]
    return jax.nn.logsumexp(log_w_bk, axis=-1) - jnp.log(float(k))


def codebook_loss(z_e, z_q):
    """||sg[z_e] - z_q||^2 summed over latent positions and channels, per image: moves the codes to the encodings."""
    return jnp.sum((jax.lax.stop_gradient(z_e) - z_q) ** 2, axis=tuple(range(1, z_e.ndim)))


def commitment_loss(z_e, z_q):
    """||z_e - sg[z_q]||^2 per image: keeps the encoder close to its chosen codes (weighted by objective.commitment)."""
    return jnp.sum((z_e - jax.lax.stop_gradient(z_q)) ** 2, axis=tuple(range(1, z_e.ndim)))
