"""VAE trainer: the reparameterised ELBO (Kingma & Welling), a beta-VAE, or the IWAE bound.

z = mu + sigma * eps with eps ~ N(0, I) drawn inside the step (never dropped:
without the noise the model is a plain autoencoder and the bound is wrong).
The reconstruction term and the KL are reported separately, per image in nats.

`objective.beta` weights the analytic KL (beta > 1: a beta-VAE, Higgins et al.
2017). `objective.iwae_k` = K > 1 trains on the importance-weighted bound of
Burda et al. (2016) with K samples per image instead (the KL is then a Monte
Carlo term inside the bound, so beta must stay 1); K = 1 is the plain ELBO
with the analytic KL. Learning rate and beta reach the step as traced values
(`hparams()`), so seeds, learning rates and betas can be vmapped by
`synthjax.sweep --vmap`.
"""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from synthjax import parallel
from synthjax.data.pipeline import Preprocess
from synthjax.models.vae import build_vae
from synthjax.metrics import importance_weighted_log_likelihood
from synthjax.objectives.vae import LOG_2PI, gaussian_kl, gaussian_log_weights, get_likelihood, iwae_bound, negative_elbo
from synthjax.trainers.base import (
    Metrics,
    Trainer,
    adam,
    global_norm,
    lr_factor,
    register,
    require,
    scheduled,
    truncated_normal,
)
from synthjax.trainers.vmappable import HParams, apply_scaled, as_hparams


class VAEState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt: Any


@register("vae")
class VAETrainer(Trainer):
    """Trains the encoder/decoder named by `model.arch` with the likelihood `objective.likelihood`."""

    log_likelihood_kind = "bound"  # an IWAE lower bound
    vmappable_keys = ("seed", "opt.lr", "objective.beta")
    sweep_metric = "neg_elbo"

    def __init__(self, config, image_shape, num_classes=0):
        super().__init__(config, image_shape, num_classes)
        obj = config.objective
        self.likelihood = get_likelihood(obj.likelihood)
        require(obj.beta >= 0, f"objective.beta must be >= 0, got {obj.beta}")
        self.iwae_k = obj.get("iwae_k", 1)
        require(isinstance(self.iwae_k, int) and self.iwae_k >= 1, f"objective.iwae_k must be an integer >= 1, got {self.iwae_k!r}")
        require(
            self.iwae_k == 1 or obj.beta == 1.0,
            f"objective.iwae_k={self.iwae_k} trains the IWAE bound, which has no KL weight; set objective.beta=1 "
            f"(got {obj.beta}) or objective.iwae_k=1 for a beta-VAE",
        )
        require(config.model.latent > 0, f"model.latent must be positive, got {config.model.latent}")
        if obj.likelihood == "bernoulli":
            require(config.data.binarize, "objective.likelihood='bernoulli' models binary pixels: set data.binarize=True")
        self.model = build_vae(config.model, image_shape, self.likelihood.num_params, self.dtype)
        self.tx = adam(config.opt, 1.0)  # unit rate: the rate comes from hparams() as a traced value
        self.lr_factor = lr_factor(config.opt, config.train.num_steps)  # opt.schedule, applied to that rate
        self.num_dims = math.prod(image_shape)

    def hparams(self) -> HParams:
        return as_hparams({"lr": self.config.opt.lr, "beta": self.config.objective.beta})

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

    def _iwae_terms(self, params, x, eps_bkn):
        """(IWAE bound, log p(x|z_k), log q(z_k|x) - log p(z_k)) per image and sample, for K draws eps of shape (B, K, L)."""
        mu, logvar = self.model.apply({"params": params}, x, method="encode")
        batch, k, latent = eps_bkn.shape
        z = mu[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps_bkn
        out = self.model.apply({"params": params}, z.reshape(batch * k, latent), method="decode")
        x_rep = jnp.repeat(x, k, axis=0)  # image b's K copies are rows b*K .. b*K + K-1, like z.reshape
        log_px_z = self.likelihood.log_prob(out, x_rep).reshape(batch, k)
        log_w = gaussian_log_weights(log_px_z, z, eps_bkn, logvar[:, None])
        return iwae_bound(log_w), log_px_z, log_px_z - log_w

    def _loss(self, hp: HParams, params, x, key) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """(loss, (log p(x|z), KL)) for the ELBO (iwae_k = 1) or the negative IWAE bound (K samples, terms averaged)."""
        latent = self.config.model.latent
        if self.iwae_k == 1:
            log_px_z, kl = self._elbo_terms(params, x, parallel.normal(key, (x.shape[0], latent)))
            return negative_elbo(log_px_z, kl, hp["beta"]), (log_px_z, kl)
        bound, log_px_z, kl = self._iwae_terms(params, x, parallel.normal(key, (x.shape[0], self.iwae_k, latent)))
        return -jnp.mean(bound), (jnp.mean(log_px_z, axis=1), jnp.mean(kl, axis=1))

    def train_step(self, state: VAEState, batch: dict, key: jax.Array) -> tuple[VAEState, Metrics]:
        return self.train_step_with(self.hparams(), state, batch, key)

    def train_step_with(self, hp: HParams, state: VAEState, batch: dict, key: jax.Array) -> tuple[VAEState, Metrics]:
        """`train_step` with the learning rate and beta as arguments (see trainers/vmappable.py)."""
        x = batch["image"]
        step_key = jax.random.fold_in(key, state.step)
        (loss, (log_px_z, kl)), grads = jax.value_and_grad(
            lambda p: self._loss(hp, p, x, step_key), has_aux=True
        )(state.params)
        grads = parallel.pmean(grads)
        updates, opt = self.tx.update(grads, state.opt, state.params)
        new_state = VAEState(step=state.step + 1, params=apply_scaled(state.params, updates, scheduled(hp["lr"], self.lr_factor, state.step)), opt=opt)
        metrics = {
            "loss": loss,
            "rec": -jnp.mean(log_px_z),
            "kl": jnp.mean(kl),
            "neg_elbo": jnp.mean(kl - log_px_z),
            "grad_norm": global_norm(grads),
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

    def sample_latents(self, key: jax.Array, num: int, truncation: float = 0.0) -> jax.Array:
        """Prior latents z (num, latent), truncated to [-truncation, truncation] when it is > 0."""
        return truncated_normal(key, (num, self.config.model.latent), truncation)

    def decode_latents(self, state: VAEState, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        return self.decode_mean(state, z)  # unconditional: no labels

    def reconstruct(self, state: VAEState, x: jax.Array) -> jax.Array:
        """The decoder's mean image at the posterior mean: decode(mu(x)), a deterministic reconstruction."""
        mu, _ = self.encode(state, x)
        return self.decode_mean(state, mu)

    def likelihood_estimator(self, num_samples: int) -> str:
        return f"IWAE bound with k={num_samples} (a lower bound on log p(x), so an upper bound on the NLL)"

    def log_likelihood(self, state: VAEState, x: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
        """IWAE estimate of log p(x) in nats per image, shape (B,), from `num_samples` draws z_k ~ q(z|x).

        log (1/K) sum_k p(x|z_k) p(z_k) / q(z_k|x) (Burda et al. 2016): a lower
        bound on log p(x) whose expectation rises with K towards it; K = 1 is a
        one-sample ELBO. With the Bernoulli likelihood it is the log-probability
        of binary images, with 'logistic' of 8-bit images; a 'gaussian' density
        on undequantised [0, 1] data is no likelihood of either, so it is refused.
        Jit with `num_samples` static; memory is bounded by drawing ~10k (image,
        sample) pairs per chunk.
        """
        require(
            self.config.objective.likelihood != "gaussian",
            "objective.likelihood='gaussian' is a density on [0, 1]-scaled, undequantised pixels: its value is not a "
            "likelihood of the 8-bit or binarised data; use 'bernoulli' (data.binarize=True) or 'logistic' for an nll",
        )
        mu, logvar = self.encode(state, x)
        batch, latent = mu.shape

        def log_weights(chunk_key: jax.Array, n: int) -> jax.Array:
            eps = jax.random.normal(chunk_key, (n, batch, latent))
            z = mu + jnp.exp(0.5 * logvar) * eps
            out = self.model.apply({"params": state.params}, z.reshape(n * batch, latent), method="decode")
            x_rep = jnp.broadcast_to(x, (n, *x.shape)).reshape(n * batch, *x.shape[1:])
            log_px_z = self.likelihood.log_prob(out, x_rep).reshape(n, batch)
            log_pz = -0.5 * jnp.sum(z**2 + LOG_2PI, axis=-1)
            log_qz = -0.5 * jnp.sum(eps**2 + LOG_2PI + logvar, axis=-1)  # N(z; mu, sigma^2) at z = mu + sigma * eps
            return (log_px_z + log_pz - log_qz).T

        chunk = max(1, min(num_samples, 10_000 // batch))
        return importance_weighted_log_likelihood(log_weights, key, num_samples, chunk)
