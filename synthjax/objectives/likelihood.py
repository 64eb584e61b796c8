"""Exact likelihoods of autoregressive pixel models and frame losses, as pure functions.

Negative log-likelihoods are summed over an image's pixels and channels and
returned per example, in nats; `bits_per_dim` converts. `PIXEL_LIKELIHOODS`
maps `objective.likelihood` names to the per-pixel distribution a PixelRNN
predicts: 'bernoulli' (one logit, binarised data) or 'categorical' (a 256-way
softmax over 8-bit values).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from synthjax.errors import unknown_name

NUM_LEVELS = 256  # 8-bit pixel values


def sigmoid_bce(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Elementwise binary cross-entropy of targets in [0, 1] under Bernoulli(sigmoid(logits)), stable for any logit."""
    return jnp.logaddexp(0.0, logits) - targets * logits


def sum_per_example(values: jax.Array, event_dims: int) -> jax.Array:
    """Sum the trailing `event_dims` axes (one example's pixels) of `values`."""
    return jnp.sum(values, axis=tuple(range(values.ndim - event_dims, values.ndim)))


def flat_pixels(x: jax.Array, event_dims: int) -> jax.Array:
    """`x` with its trailing `event_dims` axes (one example's pixels and channels) merged into one (a free reshape).

    Elementwise work on whole images should run on this view. XLA:CPU vectorises a loop along the
    minor axis, which for one-channel images is the channel axis, of size 1 (about 4x slower; see
    docs/performance.md).
    """
    return x.reshape(*x.shape[: x.ndim - event_dims], -1)


def sum_pixels(elementwise: Callable, event_dims: int, *arrays: jax.Array) -> jax.Array:
    """Per example, the sum over its pixels of `elementwise(*arrays)`, computed on `flat_pixels` views."""
    return jnp.sum(elementwise(*(flat_pixels(a, event_dims) for a in arrays)), axis=-1)


def bits_per_dim(nll_nats: jax.Array, num_dims: int) -> jax.Array:
    """Nats per example -> bits per dimension (pixel and channel)."""
    return nll_nats / (num_dims * jnp.log(2.0))


def bernoulli_nll(logits_bhwck: jax.Array, x_bhwc: jax.Array) -> jax.Array:
    """-log p(x) in nats per image for binary x under one Bernoulli logit per pixel and channel."""
    return sum_pixels(sigmoid_bce, 3, logits_bhwck[..., 0], x_bhwc)


def pixel_levels(x01: jax.Array) -> jax.Array:
    """8-bit values k from pixels k / 255 in [0, 1] (rounded, so float error cannot shift a bin)."""
    return jnp.clip(jnp.round(x01 * (NUM_LEVELS - 1)), 0, NUM_LEVELS - 1).astype(jnp.int32)


def categorical_nll(logits_bhwck: jax.Array, x_bhwc: jax.Array) -> jax.Array:
    """-log p(x) in nats per image under a 256-way softmax per pixel and channel; x holds k / 255."""
    log_probs = jax.nn.log_softmax(logits_bhwck, axis=-1)
    picked = jnp.take_along_axis(log_probs, pixel_levels(x_bhwc)[..., None], axis=-1)[..., 0]
    return -sum_per_example(picked, 3)


def bernoulli_sample(key: jax.Array, logits_k: jax.Array) -> jax.Array:
    """A binary pixel value (0. or 1.) per logit vector (..., 1)."""
    return jax.random.bernoulli(key, jax.nn.sigmoid(logits_k[..., 0])).astype(jnp.float32)


def categorical_sample(key: jax.Array, logits_k: jax.Array) -> jax.Array:
    """A pixel value k / 255 per logit vector (..., 256)."""
    return jax.random.categorical(key, logits_k, axis=-1).astype(jnp.float32) / (NUM_LEVELS - 1)


class PixelLikelihood(NamedTuple):
    num_logits: int  # logits per pixel and channel
    nll: Callable  # (logits (B, H, W, C, K), x (B, H, W, C)) -> nats per image (B,)
    sample: Callable  # (key, logits (..., K)) -> pixel values in [0, 1]
    binary: bool  # whether the data must be binarised


PIXEL_LIKELIHOODS = {
    "bernoulli": PixelLikelihood(1, bernoulli_nll, bernoulli_sample, binary=True),
    "categorical": PixelLikelihood(NUM_LEVELS, categorical_nll, categorical_sample, binary=False),
}


def get_pixel_likelihood(name: str) -> PixelLikelihood:
    if name not in PIXEL_LIKELIHOODS:
        raise unknown_name("pixel likelihood", name, PIXEL_LIKELIHOODS, key="objective.likelihood")
    return PIXEL_LIKELIHOODS[name]


def frame_bce(logits_bthwc: jax.Array, frames_bthwc: jax.Array) -> jax.Array:
    """Binary cross-entropy in nats per frame (B, T) of frames in [0, 1] under Bernoulli logits."""
    return sum_pixels(sigmoid_bce, 3, logits_bthwc, frames_bthwc)


def frame_probs_bce(probs_bthwc: jax.Array, frames_bthwc: jax.Array, eps: float) -> jax.Array:
    """Binary cross-entropy per frame (B, T) of predicted probabilities, clipped to [eps, 1 - eps]."""
    def log_likelihood(probs, frames):
        p = jnp.clip(probs, eps, 1.0 - eps)
        return frames * jnp.log(p) + (1.0 - frames) * jnp.log1p(-p)

    return -sum_pixels(log_likelihood, 3, probs_bthwc, frames_bthwc)


def frame_squared_error(pred_bthwc: jax.Array, frames_bthwc: jax.Array) -> jax.Array:
    """Squared error summed over each frame's pixels (B, T): the 'MSE per frame' of video-prediction papers."""
    return sum_pixels(lambda pred, frames: (pred - frames) ** 2, 3, pred_bthwc, frames_bthwc)
