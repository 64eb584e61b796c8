"""DRAW trainer: the variational bound of Gregor et al. (2015) with T-step canvases.

Loss per image, in nats: the reconstruction term L^x, the binary
cross-entropy of the data under Bernoulli(sigmoid(c_T)), plus the latent
term L^z, the sum over the T steps of KL(q(z_t | h_enc_t) || N(0, I)). The
noise of all T steps is drawn once per step from `fold_in(key, state.step)`.
Samples run the decoder alone from prior latents; `canvas_sequence` returns
every intermediate canvas for display.
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
from synthjax.models.rnn import DRAW
from synthjax.objectives.likelihood import bits_per_dim, sigmoid_bce, sum_pixels
from synthjax.objectives.vae import gaussian_kl
from synthjax.trainers.base import Metrics, Trainer, adam, global_norm, register, require


class DRAWState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt: Any


@register("draw")
class DRAWTrainer(Trainer):
    """Trains DRAW with attention (`model.attention=True`, N x N read/write grids) or on whole images."""

    log_likelihood_kind = "bound"  # the ELBO: analytic per-step KLs leave no importance weights to average

    def __init__(self, config, image_shape, num_classes=0):
        super().__init__(config, image_shape, num_classes)
        self._check(config)
        m = config.model
        self.model = DRAW(
            image_shape=tuple(image_shape),
            steps=m.steps,
            hidden=m.hidden,
            latent=m.latent,
            attention=m.attention,
            read_n=m.read_n,
            write_n=m.write_n,
            dtype=self.dtype,
        )
        self.tx = adam(config.opt, config.opt.lr, config.train.num_steps)
        self.num_dims = math.prod(image_shape)

    def _check(self, config) -> None:
        m = config.model
        for key in ("steps", "hidden", "latent"):
            require(isinstance(m[key], int) and m[key] > 0, f"model.{key} must be a positive integer, got {m[key]!r}")
        require(config.data.binarize, "DRAW's bound uses a Bernoulli likelihood of binary pixels: set data.binarize=True")
        if m.attention:
            height, width = self.image_shape[:2]
            for key in ("read_n", "write_n"):
                require(
                    isinstance(m[key], int) and 1 <= m[key] <= min(height, width),
                    f"model.{key}={m[key]!r}: the N x N attention grid must fit the {height}x{width} image (1 <= N <= {min(height, width)})",
                )

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(value_range=(0.0, 1.0), binarize=True)

    def create_state(self, key: jax.Array) -> DRAWState:
        x = jnp.zeros((1, *self.image_shape))
        eps = jnp.zeros((self.config.model.steps, 1, self.config.model.latent))
        params = jax.jit(self.model.init)(key, x, eps)["params"]
        return DRAWState(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params))

    def _noise(self, key: jax.Array, batch: int, normal=parallel.normal) -> jax.Array:
        """Posterior noise (T, B, latent): by default this device's share of the global batch (inside the
        data-parallel step); `normal=jax.random.normal` draws it for `batch` images outside one."""
        m = self.config.model
        # Drawn 2-D and reshaped: XLA:CPU compiles rank-3 random draws several times slower.
        eps = normal(key, (batch, m.steps * m.latent)).reshape((batch, m.steps, m.latent))
        return jnp.swapaxes(eps, 0, 1)

    def bound_terms(self, params: Any, x: jax.Array, eps_tbz: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(L^x, L^z) per image in nats: reconstruction BCE of sigmoid(c_T) and the summed per-step KL."""
        canvas, mu, logvar = self.model.apply({"params": params}, x, eps_tbz)
        return sum_pixels(sigmoid_bce, 3, canvas, x), jnp.sum(gaussian_kl(mu, logvar), axis=0)

    def train_step(self, state: DRAWState, batch: dict, key: jax.Array) -> tuple[DRAWState, Metrics]:
        x = batch["image"]
        eps = self._noise(jax.random.fold_in(key, state.step), x.shape[0])

        def objective(params):
            rec, kl = self.bound_terms(params, x, eps)
            return jnp.mean(rec + kl), (rec, kl)

        (loss, (rec, kl)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grads = parallel.pmean(grads)
        updates, opt = self.tx.update(grads, state.opt, state.params)
        new_state = DRAWState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt=opt)
        metrics = {"loss": loss, "rec": jnp.mean(rec), "kl": jnp.mean(kl), "neg_elbo": loss, "grad_norm": global_norm(grads)}
        return new_state, parallel.pmean(metrics)

    def eval_step(self, state: DRAWState, batch: dict, key: jax.Array) -> Metrics:
        """The bound (an upper bound on -log p(x)) per image in nats, its two terms, and bits per dimension."""
        x = batch["image"]
        rec, kl = self.bound_terms(state.params, x, self._noise(key, x.shape[0]))
        neg_elbo = jnp.mean(rec + kl)
        metrics = {"neg_elbo": neg_elbo, "rec": jnp.mean(rec), "kl": jnp.mean(kl), "bits_per_dim": bits_per_dim(neg_elbo, self.num_dims)}
        return parallel.pmean(metrics)

    def likelihood_estimator(self, num_samples: int) -> str:
        return f"the ELBO averaged over {num_samples} posterior draws (a lower bound on log p(x), so an upper bound on the NLL)"

    def log_likelihood(self, state: DRAWState, x: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
        """The ELBO -(L^x + L^z) in nats per image, shape (B,), averaged over `num_samples` posterior draws.

        A lower bound on log p(x) of the binary images; more draws lower its
        variance, not its bias (the KL terms are analytic, so there is no
        importance-weighted tightening as for the VAE's IWAE bound).
        """

        def one_draw(carry, draw_key):
            rec, kl = self.bound_terms(state.params, x, self._noise(draw_key, x.shape[0], jax.random.normal))
            return carry - (rec + kl), None

        total, _ = jax.lax.scan(one_draw, jnp.zeros(x.shape[0]), jax.random.split(key, num_samples))
        return total / num_samples

    def canvas_sequence(self, state: DRAWState, key: jax.Array, num: int) -> jax.Array:
        """The T canvases sigmoid(c_1) ... sigmoid(c_T) of `num` samples from the prior, (T, num, H, W, C) in [0, 1]."""
        m = self.config.model
        eps = jax.random.normal(key, (m.steps, num, m.latent))
        return jax.nn.sigmoid(self.model.apply({"params": state.params}, eps, method=DRAW.generate))

    def sample(self, state: DRAWState, key: jax.Array, num: int) -> jax.Array:
        return self.canvas_sequence(state, key, num)[-1]
