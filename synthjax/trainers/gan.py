"""GAN trainer: alternating discriminator and generator updates, EMA generator.

One step is one discriminator update (real vs. detached fake) followed by one
generator update through the updated discriminator, as in the DCGAN paper and
the benchmark spec. The generator's forward pass is run once per step and its
VJP reused for the generator update.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from synthjax import parallel
from synthjax.data.pipeline import Preprocess
from synthjax.models.gan import build_gan
from synthjax.objectives.gan import get_loss
from synthjax.trainers.base import Metrics, Trainer, adam, register, require


class GANState(flax.struct.PyTreeNode):
    """Everything a GAN run needs to continue exactly: both networks, their optimisers, BatchNorm statistics, EMA."""

    step: jax.Array
    g_params: Any
    d_params: Any
    g_stats: Any  # BatchNorm running statistics ({} when the architecture has none)
    d_stats: Any
    g_opt: Any
    d_opt: Any
    ema_params: Any  # exponential moving average of g_params, used for sampling


def ema_update(ema: Any, params: Any, decay: float) -> Any:
    """ema <- decay * ema + (1 - decay) * params; decay 0 makes the EMA track params exactly."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


@register("gan")
class GANTrainer(Trainer):
    """Trains a (generator, discriminator) pair named by `model.arch` with the loss `objective.loss`."""

    def __init__(self, config, image_shape, num_classes=0):
        super().__init__(config, image_shape, num_classes)
        m = config.model
        require(m.z_dim > 0, f"model.z_dim must be positive, got {m.z_dim}")
        require(0.0 <= m.ema_decay < 1.0, f"model.ema_decay must lie in [0, 1), got {m.ema_decay}")
        self.generator, self.discriminator = build_gan(m, image_shape, self.dtype)
        self.loss = get_loss(config.objective.loss)
        d_lr = config.opt.d_lr if config.opt.d_lr > 0 else config.opt.lr
        self.g_tx, self.d_tx = adam(config.opt, config.opt.lr), adam(config.opt, d_lr)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(value_range=(-1.0, 1.0), binarize=False)

    def create_state(self, key: jax.Array) -> GANState:
        g_key, d_key = jax.random.split(key)
        z = jnp.zeros((2, self.config.model.z_dim))
        x = jnp.zeros((2, *self.image_shape))
        # Initialise outside any mapped axis: BatchNorm's axis is only bound inside train steps.
        g_vars = self.generator.init(g_key, z, train=False)
        d_vars = self.discriminator.init(d_key, x, train=False)
        g_params, d_params = g_vars["params"], d_vars["params"]
        return GANState(
            step=jnp.zeros((), jnp.int32),
            g_params=g_params,
            d_params=d_params,
            g_stats=g_vars.get("batch_stats", {}),
            d_stats=d_vars.get("batch_stats", {}),
            g_opt=self.g_tx.init(g_params),
            d_opt=self.d_tx.init(d_params),
            # A separate buffer: donation must not see the same array twice.
            ema_params=jax.tree.map(jnp.copy, g_params),
        )

    def _generate(self, g_params, g_stats, z):
        fake, updates = self.generator.apply(
            {"params": g_params, "batch_stats": g_stats}, z, train=True, mutable=["batch_stats"]
        )
        return fake, updates.get("batch_stats", {})

    def _discriminate(self, d_params, d_stats, x):
        logits, updates = self.discriminator.apply(
            {"params": d_params, "batch_stats": d_stats}, x, train=True, mutable=["batch_stats"]
        )
        return logits, updates.get("batch_stats", {})

    def train_step(self, state: GANState, batch: dict, key: jax.Array) -> tuple[GANState, Metrics]:
        real = batch["image"]
        z = parallel.normal(jax.random.fold_in(key, state.step), (real.shape[0], self.config.model.z_dim))
        fake, g_vjp, g_stats = jax.vjp(lambda p: self._generate(p, state.g_stats, z), state.g_params, has_aux=True)

        def d_objective(d_params):
            real_logits, stats = self._discriminate(d_params, state.d_stats, real)
            fake_logits, stats = self._discriminate(d_params, stats, jax.lax.stop_gradient(fake))
            return self.loss.d(real_logits, fake_logits), (stats, real_logits, fake_logits)

        (d_loss, (d_stats, real_logits, fake_logits)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
            state.d_params
        )
        d_grads = parallel.pmean(d_grads)
        d_updates, d_opt = self.d_tx.update(d_grads, state.d_opt, state.d_params)
        d_params = optax.apply_updates(state.d_params, d_updates)

        def g_objective(fake_images):
            logits, stats = self._discriminate(d_params, d_stats, fake_images)
            return self.loss.g(logits), stats

        (g_loss, d_stats), fake_cotangent = jax.value_and_grad(g_objective, has_aux=True)(fake)
        (g_grads,) = g_vjp(fake_cotangent)
        g_grads = parallel.pmean(g_grads)
        g_updates, g_opt = self.g_tx.update(g_grads, state.g_opt, state.g_params)
        g_params = optax.apply_updates(state.g_params, g_updates)

        new_state = GANState(
            step=state.step + 1,
            g_params=g_params,
            d_params=d_params,
            g_stats=g_stats,
            d_stats=d_stats,
            g_opt=g_opt,
            d_opt=d_opt,
            ema_params=ema_update(state.ema_params, g_params, self.config.model.ema_decay),
        )
        metrics = {
            "d_loss": d_loss,
            "g_loss": g_loss,
            "d_real": jnp.mean(jax.nn.sigmoid(real_logits)),
            "d_fake": jnp.mean(jax.nn.sigmoid(fake_logits)),
            "g_grad_norm": optax.tree.norm(g_grads),
            "d_grad_norm": optax.tree.norm(d_grads),
        }
        return new_state, parallel.pmean(metrics)

    def eval_step(self, state: GANState, batch: dict, key: jax.Array) -> Metrics:
        """Discriminator losses on held-out real images and fresh fakes, with running statistics."""
        real = batch["image"]
        z = parallel.normal(key, (real.shape[0], self.config.model.z_dim))
        fake = self.generator.apply({"params": state.ema_params, "batch_stats": state.g_stats}, z, train=False)
        d_vars = {"params": state.d_params, "batch_stats": state.d_stats}
        real_logits = self.discriminator.apply(d_vars, real, train=False)
        fake_logits = self.discriminator.apply(d_vars, fake, train=False)
        metrics = {
            "d_loss": self.loss.d(real_logits, fake_logits),
            "g_loss": self.loss.g(fake_logits),
            "d_accuracy": 0.5 * (jnp.mean(real_logits > 0) + jnp.mean(fake_logits < 0)),
        }
        return parallel.pmean(metrics)

    def sample(self, state: GANState, key: jax.Array, num: int) -> jax.Array:
        z = jax.random.normal(key, (num, self.config.model.z_dim))
        x = self.generator.apply({"params": state.ema_params, "batch_stats": state.g_stats}, z, train=False)
        return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)
