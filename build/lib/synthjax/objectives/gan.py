"""GAN objectives as pure functions of discriminator logits.

Each loss is a pair (discriminator loss, generator loss), both minimised.
`LOSSES` maps the config names (`objective.loss`) to the pair.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax.numpy as jnp
from jax.nn import relu, softplus

from synthjax.errors import unknown_name


def d_loss_bce(real_logits, fake_logits):
    """-log D(x) - log(1 - D(G(z))): the original discriminator loss, as BCE with logits."""
    return jnp.mean(softplus(-real_logits)) + jnp.mean(softplus(fake_logits))


def g_loss_minimax(fake_logits):
    """log(1 - D(G(z))): Goodfellow et al.'s minimax generator loss (saturates early in training)."""
    return -jnp.mean(softplus(fake_logits))


def g_loss_non_saturating(fake_logits):
    """-log D(G(z)): the non-saturating generator loss."""
    return jnp.mean(softplus(-fake_logits))


def d_loss_hinge(real_logits, fake_logits):
    """Hinge loss of Lim & Ye / Miyato et al."""
    return jnp.mean(relu(1.0 - real_logits)) + jnp.mean(relu(1.0 + fake_logits))


def g_loss_hinge(fake_logits):
    return -jnp.mean(fake_logits)


def d_loss_wasserstein(real_logits, fake_logits):
    """Critic loss of WGAN: E[D(G(z))] - E[D(x)]; needs a Lipschitz constraint (clipping or a penalty)."""
    return jnp.mean(fake_logits) - jnp.mean(real_logits)


def g_loss_wasserstein(fake_logits):
    return -jnp.mean(fake_logits)


def d_loss_least_squares(real_logits, fake_logits):
    """LSGAN (Mao et al.) with targets 1 for real, 0 for fake."""
    return 0.5 * jnp.mean((real_logits - 1.0) ** 2) + 0.5 * jnp.mean(fake_logits**2)


def g_loss_least_squares(fake_logits):
    return 0.5 * jnp.mean((fake_logits - 1.0) ** 2)


class GANLoss(NamedTuple):
    d: Callable
    g: Callable


LOSSES = {
    "minimax": GANLoss(d_loss_bce, g_loss_minimax),
    "ns": GANLoss(d_loss_bce, g_loss_non_saturating),
    "hinge": GANLoss(d_loss_hinge, g_loss_hinge),
    "wasserstein": GANLoss(d_loss_wasserstein, g_loss_wasserstein),
    "lsgan": GANLoss(d_loss_least_squares, g_loss_least_squares),
}


def get_loss(name: str) -> GANLoss:
    if name not in LOSSES:
        raise unknown_name("GAN loss", name, LOSSES, key="objective.loss")
    return LOSSES[name]
