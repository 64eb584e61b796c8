"""VAE trainer: the reparameterised ELBO (Kingma & Welling), optionally a beta-VAE.

z = mu + sigma * eps with eps ~ N(0, I) drawn inside the step (never dropped:
without the noise the model is a plain autoencoder and the bound is wrong).
The reconstruction term and the KL are reported separately, per image in nats.
"""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from synthjax import parallel
from synthjax.data.pipeline import Preprocess
from synthjax.models.vae import build_vae
from synthjax.objectives.vae import gaussian_kl, get_likelihood, negative_elbo
from synthjax.trainers.base import Metrics, Trainer, adam, register, require


class VAEState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt: Any


@register("vae")
class VAETrainer(Trainer):
    """Trains the encoder/decoder named by `model.arch` with the likelihood `objective.likelihood`."""

    def __init__(self, config, image_shape, num_classes=0):
        super().__init__(config, image_shape, num_classes)
        obj = config.objective
        self.likelihood = get_likelihood(obj.likelihood)
        require(obj.beta >= 0, f"objective.beta must be >= 0, got {obj.beta}")
        require(config.model.latent > 0, f"model.latent must be positive, got {config.model.latent}")
        if obj.likelihood == "bernoulli":
            require(config.data.binarize, "objective.likelihood='bernoulli' models binary pixels: set data.binarize=True")
        self.model = build_vae(config.model, image_shape, self.likelihood.num_params, self.dtype)
        self.tx = adam(config.opt, config.opt.lr)
        self.num_dims = math.prod(image_shape)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(value_range=(0.0, 1.0), binarize=self.config.data.binarize)

    def create_state(self, key: jax.Array) -> VAEState:
        x = jnp.zeros((2, *self.image_shape))
        eps = jnp.zeros((2, self.config.model.latent))
        params = self.model.init(key, x, eps)["params"]
        return VAEState(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params))

    def _elbo_terms(self, params, x, eps):
        out, mu, logvar = self.model.apply({"params": params}, x, eps)
        return self.likelihood.log_prob(out, x), gaussian_kl(mu, logvar)

    def train_step(self, state: VAEState, batch: dict, key: jax.Array) -> tuple[VAEState, Metrics]:
        x = batch["image"]
        eps = parallel.normal(jax.random.fold_in(key, state.step), (x.shape[0], self.config.model.latent))

        def objective(params):
            log_px_z, kl = self._elbo_terms(params, x, eps)
            loss = negative_elbo(log_px_z, kl, self.config.objective.beta)
            return loss, (log_px_z, kl)

        (loss, (log_px_z, kl)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grads = parallel.pmean(grads)
        updates, opt = self.tx.update(grads, state.opt, state.params)
        new_state = VAEState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt=opt)
        metrics = {
            "loss": loss,
            "rec": -jnp.mean(log_px_z),
            "kl": jnp.mean(kl),
            "neg_elbo": jnp.mean(kl - log_px_z),
            "grad_norm": optax.tree.norm(grads),
        }
        return new_state, parallel.pmean(metrics)

    def eval_step(self, state: VAEState, batch: dict, key: jax.Array) -> Metrics:
        """The negative ELBO (an upper bound on -log p(x)) in nats per image and bits per dimension."""
        x = batch["image"]
        eps = parallel.normal(key, (x.shape[0], self.config.model.latent))
        log_px_z, kl = self._elbo_terms(state.params, x, eps)
        neg_elbo = jnp.mean(kl - log_px_z)
        metrics = {
            "neg_elbo": neg_elbo,
            "rec": -jnp.mean(log_px_z),
            "kl": jnp.mean(kl),
            "bits_per_dim": neg_elbo / (self.num_dims * jnp.log(2.0)),
        }
        return parallel.pmean(metrics)

    def decode_mean(self, state: VAEState, z: jax.Array) -> jax.Array:
        """The decoder's expected image in [0, 1] for latents z (for grids and interpolations)."""
        out = self.model.apply({"params": state.params}, z, method="decode")
        return self.likelihood.mean(out)

    def encode(self, state: VAEState, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(mu, logvar) of q(z|x) for images x in the model's range."""
        return self.model.apply({"params": state.params}, x, method="encode")

    def sample(self, state: VAEState, key: jax.Array, num: int) -> jax.Array:
        z = jax.random.normal(key, (num, self.config.model.latent))
        return self.decode_mean(state, z)
