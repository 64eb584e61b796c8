"""VQ-VAE trainer (van den Oord et al. 2017): reconstruction + codebook + commitment losses, optional EMA codebook.

loss = E[-log p(x|z_q)] + E||sg[z_e] - z_q||^2 + commitment * E||z_e - sg[z_q]||^2,
with the reconstruction term in nats per image under `objective.likelihood`
(bernoulli, gaussian or logistic, as for the VAEs) and the two vector terms
summed over the latent grid per image, so all three scale with the image.
With `model.ema=True` the codebook term is dropped and the codebook follows
an exponential moving average of its assigned encodings (decay
`model.ema_decay`), summed over devices so the update does not depend on
their number. The step draws no noise: the seed changes only the
initialisation. Learning rate, commitment weight and EMA decay reach the
step as traced values, so `synthjax.sweep --vmap` can stack them.

Sampling decodes codes drawn uniformly at random: the paper fits an
autoregressive prior over the codes afterwards, which is not part of this
trainer, so samples show the code vocabulary rather than digits; use
`reconstruct` for reconstructions. The model has no tractable likelihood
without that prior, so there is no `log_likelihood` (and no 'nll' metric);
eval reports the reconstruction code length `rec_bits_per_dim`.
"""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from synthjax import parallel
from synthjax.data.pipeline import Preprocess
from synthjax.models.vq import build_vqvae, ema_codebook_update, latent_grid
from synthjax.objectives.vae import codebook_loss, commitment_loss, get_likelihood
from synthjax.trainers.base import Metrics, Trainer, adam, global_norm, lr_factor, register, require, scheduled
from synthjax.trainers.vmappable import HParams, apply_scaled, as_hparams, ema_hparams


class VQVAEState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt: Any
    vq: Any  # the EMA codebook collection ({} when the codebook is a parameter)


def perplexity(codes, num_codes: int) -> jax.Array:
    """exp(entropy) of the code usage over the global batch: how many codes are effectively in use."""
    usage = parallel.pmean(jnp.mean(jax.nn.one_hot(codes.reshape(-1), num_codes), axis=0))
    return jnp.exp(-jnp.sum(usage * jnp.log(usage + 1e-10)))


@register("vqvae")
class VQVAETrainer(Trainer):
    """Trains the VQ-VAE of `model.arch` with `model.num_codes` codes; `model.ema` picks the codebook update."""

    vmappable_keys = ("seed", "opt.lr", "objective.commitment", "model.ema_decay")
    sweep_metric = "rec"

    def __init__(self, config, image_shape, num_classes=0):
        super().__init__(config, image_shape, num_classes)
        obj, m = config.objective, config.model
        self.likelihood = get_likelihood(obj.likelihood)
        if obj.likelihood == "bernoulli":
            require(config.data.binarize, "objective.likelihood='bernoulli' models binary pixels: set data.binarize=True")
        require(obj.commitment >= 0, f"objective.commitment must be >= 0, got {obj.commitment}")
        require(0.0 <= m.ema_decay < 1.0, f"model.ema_decay must lie in [0, 1), got {m.ema_decay}")
        self.model = build_vqvae(m, image_shape, self.likelihood.num_params, self.dtype)
        self.tx = adam(config.opt, 1.0)  # unit rate: the rate comes from hparams()
        self.lr_factor = lr_factor(config.opt, config.train.num_steps)  # opt.schedule, applied to that rate
        self.num_dims = math.prod(image_shape)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(value_range=(0.0, 1.0), binarize=self.config.data.binarize)

    def hparams(self) -> HParams:
        c = self.config
        return as_hparams({"lr": c.opt.lr, "commitment": c.objective.commitment, **ema_hparams(c.model.ema_decay)})

    def create_state(self, key: jax.Array) -> VQVAEState:
        variables = self.model.init(key, jnp.zeros((2, *self.image_shape)))
        params = variables["params"]
        return VQVAEState(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params), vq=variables.get("vq", {}))

    def _variables(self, params, vq) -> dict:
        return {"params": params, **({"vq": vq} if vq else {})}

    def _terms(self, params, vq, x) -> dict:
        """Per-image reconstruction NLL, codebook and commitment terms, and what the EMA update needs."""
        out, z_e, z_q, codes = self.model.apply(self._variables(params, vq), x)
        return {
            "rec": -self.likelihood.log_prob(out, x),
            "codebook": codebook_loss(z_e, z_q),
            "commitment": commitment_loss(z_e, z_q),
            "z_e": z_e,
            "codes": codes,
            "out": out,
        }

    def train_step(self, state: VQVAEState, batch: dict, key: jax.Array) -> tuple[VQVAEState, Metrics]:
        return self.train_step_with(self.hparams(), state, batch, key)

    def train_step_with(self, hp: HParams, state: VQVAEState, batch: dict, key: jax.Array) -> tuple[VQVAEState, Metrics]:
        """`train_step` with learning rate, commitment weight and EMA decay as arguments (trainers/vmappable.py)."""
        x = batch["image"]
        ema = self.config.model.ema

        def objective(params):
            t = self._terms(params, state.vq, x)
            loss = jnp.mean(t["rec"]) + hp["commitment"] * jnp.mean(t["commitment"])
            if not ema:  # with EMA the codebook is not a parameter: its loss has no gradient to give
                loss = loss + jnp.mean(t["codebook"])
            return loss, t

        (loss, t), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grads = parallel.pmean(grads)
        updates, opt = self.tx.update(grads, state.opt, state.params)
        vq = state.vq
        if ema:
            z_flat = t["z_e"].reshape(-1, t["z_e"].shape[-1])
            total = lambda v: jax.lax.psum(v, parallel.AXIS)  # noqa: E731
            vq = ema_codebook_update(vq, z_flat, t["codes"].reshape(-1), hp["ema_decay"], hp["ema_rate"], total)
        new_state = VQVAEState(step=state.step + 1, params=apply_scaled(state.params, updates, scheduled(hp["lr"], self.lr_factor, state.step)), opt=opt, vq=vq)
        metrics = {
            "loss": loss,
            "rec": jnp.mean(t["rec"]),
            # The codebook term has the value of the commitment term (they differ only in where gradients go).
            "commitment": jnp.mean(t["commitment"]),
            "grad_norm": global_norm(grads),
        }
        return new_state, {**parallel.pmean(metrics), "perplexity": perplexity(t["codes"], self.config.model.num_codes)}

    def eval_step(self, state: VQVAEState, batch: dict, key: jax.Array) -> Metrics:
        """Reconstruction NLL (nats per image and bits per dimension), commitment and code perplexity on held-out images."""
        t = self._terms(state.params, state.vq, batch["image"])
        rec = jnp.mean(t["rec"])
        metrics = {"rec": rec, "rec_bits_per_dim": rec / (self.num_dims * jnp.log(2.0)), "commitment": jnp.mean(t["commitment"])}
        return {**parallel.pmean(metrics), "perplexity": perplexity(t["codes"], self.config.model.num_codes)}

    def reconstruct(self, state: VQVAEState, x: jax.Array) -> jax.Array:
        """The decoder's expected image in [0, 1] for images x in the model's range."""
        out = self.model.apply(self._variables(state.params, state.vq), x)[0]
        return self.likelihood.mean(out)

    def sample(self, state: VQVAEState, key: jax.Array, num: int) -> jax.Array:
        """Decoded uniformly random codes (no learnt prior; see the module docstring)."""
        codes = jax.random.randint(key, (num, *latent_grid(self.image_shape)), 0, self.config.model.num_codes)
        out = self.model.apply(self._variables(state.params, state.vq), codes, method="decode_codes")
        return self.likelihood.mean(out)
