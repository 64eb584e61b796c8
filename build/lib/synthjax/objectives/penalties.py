"""Discriminator regularisers as pure functions: WGAN-GP, R1 and DRAGAN gradient penalties.

Every penalty has the signature
`penalty(d_fn, real, fake, key, uniform=jax.random.uniform, batch_mean=jnp.mean) -> scalar`:
`d_fn` maps images to one logit per image (the discriminator with its
parameters closed over, so `jax.grad` of the penalty reaches them), `real` and
`fake` are the images the discriminator saw this step, `uniform(key, shape)`
draws the interpolation noise and `batch_mean` averages over the global batch.
The trainer passes device-count-invariant versions of the last two
(`synthjax.parallel`), so a penalty gives the same numbers on 1 or N devices.
The trainer adds `objective.penalty_weight * penalty` to the discriminator loss.
`PENALTIES` maps the config names (`objective.penalty`) to the functions.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from synthjax.errors import unknown_name

DiscriminatorFn = Callable[[jax.Array], jax.Array]  # images (B, H, W, C) -> logits (B,)
Penalty = Callable[..., jax.Array]


def input_gradient_norms(d_fn: DiscriminatorFn, x_bhwc: jax.Array) -> jax.Array:
    """||dD(x_i)/dx_i||_2 per image, shape (B,).

    One gradient of sum_i D(x_i) gives every image's own gradient because the
    logits of different images do not interact (exactly so without BatchNorm
    in the discriminator, which is why WGAN-GP critics drop it). The 1e-12
    keeps the norm differentiable at a zero gradient.
    """
    grads = jax.grad(lambda x: jnp.sum(d_fn(x)))(x_bhwc)
    return jnp.sqrt(jnp.sum(grads.reshape(grads.shape[0], -1) ** 2, axis=-1) + 1e-12)


def gradient_penalty(d_fn, real, fake, key, uniform=jax.random.uniform, batch_mean=jnp.mean) -> jax.Array:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad D(x_hat)||_2 - 1)^2], x_hat uniform on real-fake segments."""
    alpha = uniform(key, (real.shape[0], 1, 1, 1))
    x_hat = alpha * real + (1.0 - alpha) * fake
    return batch_mean((input_gradient_norms(d_fn, x_hat) - 1.0) ** 2)


def r1_penalty(d_fn, real, fake, key, uniform=jax.random.uniform, batch_mean=jnp.mean) -> jax.Array:
    """R1 (Mescheder et al. 2018): 0.5 E[||grad D(x_real)||^2]; `penalty_weight` is their gamma."""
    return 0.5 * batch_mean(input_gradient_norms(d_fn, real) ** 2)


def dragan_penalty(d_fn, real, fake, key, uniform=jax.random.uniform, batch_mean=jnp.mean) -> jax.Array:
    """DRAGAN (Kodali et al. 2017): the WGAN-GP term around noisy reals x + alpha * 0.5 std(x) * U[0, 1).

    As in the authors' code, the perturbation scale is half the standard
    deviation of the whole real batch (all pixels), and the point is drawn
    uniformly on the segment from x to the perturbed x.
    """
    noise_key, alpha_key = jax.random.split(key)
    std = jnp.sqrt(jnp.maximum(batch_mean(jnp.mean(real**2, axis=(1, 2, 3))) - batch_mean(jnp.mean(real, axis=(1, 2, 3))) ** 2, 0.0))
    alpha = uniform(alpha_key, (real.shape[0], 1, 1, 1))
    x_hat = real + alpha * 0.5 * jax.lax.stop_gradient(std) * uniform(noise_key, real.shape)
    return batch_mean((input_gradient_norms(d_fn, x_hat) - 1.0) ** 2)


PENALTIES: dict[str, Penalty | None] = {
    "none": None,
    "wgan_gp": gradient_penalty,
    "r1": r1_penalty,
    "dragan": dragan_penalty,
}


def get_penalty(name: str) -> Penalty | None:
    """The penalty named by `objective.penalty`; None for '' or 'none' (no penalty)."""
    name = name or "none"
    if name not in PENALTIES:
        raise unknown_name("discriminator penalty", name, PENALTIES, key="objective.penalty")
    return PENALTIES[name]
