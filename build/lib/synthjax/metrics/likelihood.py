"""Likelihood bookkeeping: nats <-> bits/dim, change of data scale, and importance-weighted bounds.

Conventions (the usual ones of the image-likelihood literature):

* 8-bit images x in {0, ..., 255}^D. A *discrete* model (PixelCNN softmax,
  discretised logistic) gives -log P(x) in nats directly, and
  bits/dim = -log P(x) / (D ln 2).
* A *continuous* density p evaluated on uniformly dequantised data
  x + u, u ~ U[0, 1)^D, bounds the discrete likelihood of the model
  P(x) = int p(x + u) du by Jensen: E_u[-log p(x + u)] >= -log P(x). So
  bits/dim of a dequantised continuous model is an upper bound on (a
  comparable number to) discrete bits/dim, and it must be measured on the
  [0, 256) scale.
* If the density is defined on rescaled data y = x / s + c (s = 256 for
  [0, 1), s = 128 with c = -1 for [-1, 1)), then p_x(x) = p_y(y) / s^D, so
  -log p_x = -log p_y + D ln s. Forgetting the D ln s term is the usual way a
  [0, 1]-scaled flow reports a (wrong, often negative) bits/dim;
  `nll_in_original_units` adds it.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from synthjax.metrics._checks import MetricInputError, check_positive_int

LN2 = math.log(2.0)


def nats_to_bits_per_dim(nats_per_image, num_dims: int):
    """Convert a negative log-likelihood in nats per image to bits per dimension: nats / (D ln 2).

    `num_dims` is D = H * W * C of the image. The NLL must already be that of
    the 8-bit data: either a discrete model's -log P(x), or a continuous
    density on uniformly dequantised [0, 256)-scale data (an upper bound on the
    discrete one); convert densities on rescaled data with
    `nll_in_original_units` first. Works on floats and arrays alike.
    """
    num_dims = check_positive_int(num_dims, "num_dims")
    return nats_per_image / (num_dims * LN2)


def bits_per_dim_to_nats(bits_per_dim, num_dims: int):
    """Inverse of `nats_to_bits_per_dim`: bits/dim * D * ln 2 nats per image."""
    num_dims = check_positive_int(num_dims, "num_dims")
    return bits_per_dim * num_dims * LN2


def nll_in_original_units(nll_nats_scaled, num_dims: int, scale: float = 256.0):
    """NLL (nats) of data x given the NLL of its rescaled version y = x / scale + shift.

    Adds the log-Jacobian D ln(scale): a density on [0, 1)-scaled 8-bit data
    (scale=256) or on [-1, 1) data made as x/128 - 1 (scale=128) becomes a
    density on the [0, 256) scale, where bits/dim are comparable. The shift
    does not matter; `scale` must be positive.
    """
    num_dims = check_positive_int(num_dims, "num_dims")
    if not scale > 0:
        raise MetricInputError(f"scale must be positive (y = x / scale + shift); got {scale!r}")
    return nll_nats_scaled + num_dims * math.log(scale)


def log_mean_exp(log_w: jax.Array, axis: int = -1) -> jax.Array:
    """log(mean(exp(log_w))) along `axis`, computed stably as logsumexp - log n."""
    return jax.nn.logsumexp(log_w, axis=axis) - jnp.log(log_w.shape[axis])


def importance_weighted_log_likelihood(
    log_weight_fn: Callable[[jax.Array, int], jax.Array],
    key: jax.Array,
    num_samples: int,
    chunk_size: int = 500,
) -> jax.Array:
    """IWAE estimate log (1/K) sum_k w_k of log p(x), with K = `num_samples`, in bounded memory.

    `log_weight_fn(key, n)` must return a (batch, n) array of log importance
    weights log p(x, z_i) - log q(z_i | x) for n fresh samples z_i ~ q(. | x),
    one row per data point. Samples are drawn `chunk_size` at a time inside a
    `lax.scan` that keeps a running logsumexp, so memory is O(batch *
    chunk_size) for any K; chunk i uses `jax.random.split(key, num_chunks)[i]`
    and surplus samples of the last chunk are masked out. The expectation of
    the result is a lower bound on log p(x) that increases with K (Burda et al.
    2016). Returns a (batch,) array; jit the caller to compile once.
    """
    num_samples = check_positive_int(num_samples, "num_samples")
    chunk_size = min(check_positive_int(chunk_size, "chunk_size"), num_samples)
    num_chunks = -(-num_samples // chunk_size)
    spec = jax.eval_shape(lambda k: log_weight_fn(k, chunk_size), key)
    shape = spec.shape
    if len(shape) != 2 or shape[1] != chunk_size:
        raise MetricInputError(
            f"log_weight_fn(key, n={chunk_size}) must return shape (batch, {chunk_size}); got {shape}"
        )

    def step(running_lse, inputs):
        chunk_key, chunk_index = inputs
        log_w = log_weight_fn(chunk_key, chunk_size)
        # Only the last chunk can overrun num_samples; masked weights are exp(-inf) = 0.
        sample_index = chunk_index * chunk_size + jnp.arange(chunk_size)
        log_w = jnp.where(sample_index[None, :] < num_samples, log_w, -jnp.inf)
        return jnp.logaddexp(running_lse, jax.nn.logsumexp(log_w, axis=1)), None

    init = jnp.full((shape[0],), -jnp.inf, dtype=spec.dtype)
    keys = jax.random.split(key, num_chunks)
    total, _ = jax.lax.scan(step, init, (keys, jnp.arange(num_chunks)))
    return total - jnp.log(num_samples)
