"""DDPM trainer (Ho et al. 2020): a U-Net regresses the noise (or x_0, or v) of q(x_t | x_0) at a random t.

The loss is the simplified objective, the mean squared error on the target
(`objective.prediction`); `objective.schedule` is 'linear' (Ho et al.) or
'cosine' (Nichol & Dhariwal). With `model.class_cond` the U-Net takes the
label, replaced by a "no label" token with probability
`objective.label_dropout`, so one network is both conditional and
unconditional; sampling mixes them with `sample.guidance` (classifier-free
guidance, Ho & Salimans 2022: 1 = plain conditional, > 1 sharper classes).

Samples (`sample`, used by synthjax.sample and the periodic FID) come from
the EMA weights through `sample.sampler` 'ddim' (deterministic) or 'ddpm'
(ancestral) in `sample.steps` steps. Learning rate and EMA decay reach the
step as traced values (`hparams()`), so `synthjax.sweep --vmap` can stack
seeds, learning rates and decays.
"""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from synthjax import parallel
from synthjax.data.pipeline import Preprocess
from synthjax.models.unet import build_unet
from synthjax.objectives import diffusion as D
from synthjax.trainers.base import Metrics, Trainer, adam, global_norm, register, require
from synthjax.trainers.vmappable import HParams, apply_scaled, as_hparams, ema_hparams, ema_update, warm_up_ema


class DDPMState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    ema_params: Any  # exponential moving average of params, used for sampling and the bound
    opt: Any


@register("ddpm")
class DDPMTrainer(Trainer):
    """Trains the U-Net of `model` on the diffusion objective of `objective`; samples with `sample`."""

    vmappable_keys = ("seed", "opt.lr", "model.ema_decay")
    log_likelihood_kind = "bound"  # the variational bound (Ho et al.), not exact
    sweep_metric = "loss"

    def __init__(self, config, image_shape, num_classes=0):
        super().__init__(config, image_shape, num_classes)
        m, obj, s = config.model, config.objective, config.sample
        require(0.0 <= m.ema_decay < 1.0, f"model.ema_decay must lie in [0, 1), got {m.ema_decay}")
        require(0.0 <= m.dropout < 1.0, f"model.dropout must lie in [0, 1), got {m.dropout}")
        require(0.0 <= obj.label_dropout < 1.0, f"objective.label_dropout must lie in [0, 1), got {obj.label_dropout}")
        require(
            not m.class_cond or num_classes > 0,
            f"model.class_cond=True needs labelled data; data.name={config.data.name!r} has none (set model.class_cond=False)",
        )
        require(s.sampler in D.SAMPLERS, f"sample.sampler={s.sampler!r} is not one of {', '.join(D.SAMPLERS)}")
        self.prediction = D.check_prediction(obj.prediction)
        self.schedule = D.make_schedule(obj.schedule, obj.num_steps, obj.beta_start, obj.beta_end)
        D.sampling_timesteps(obj.num_steps, s.steps)  # validates sample.steps now rather than at the first sample
        self.num_labels = num_classes if m.class_cond else 0
        self.model = build_unet(m, image_shape, self.num_labels, self.dtype)
        self.tx = adam(config.opt, 1.0)  # unit rate: the rate comes from hparams() as a traced value
        self.num_dims = math.prod(image_shape)

    def hparams(self) -> HParams:
        return as_hparams({"lr": self.config.opt.lr, **ema_hparams(self.config.model.ema_decay)})

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(value_range=(-1.0, 1.0))

    def create_state(self, key: jax.Array) -> DDPMState:
        x = jnp.zeros((2, *self.image_shape))
        t = jnp.zeros((2,), jnp.int32)
        y = jnp.zeros((2,), jnp.int32) if self.num_labels else None
        params = self.model.init(key, x, t, y)["params"]
        return DDPMState(
            step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params), opt=self.tx.init(params)
        )

    def _timesteps(self, key: jax.Array, batch: int) -> jax.Array:
        """Uniform t in 0..T-1 per example, drawn for the global batch (device-count invariant)."""
        num_steps = self.schedule.num_steps
        return jnp.minimum(jnp.floor(parallel.uniform(key, (batch,)) * num_steps), num_steps - 1).astype(jnp.int32)

    def _labels(self, batch: dict, key: jax.Array) -> jax.Array | None:
        """The batch's labels, each replaced by the no-label token with probability objective.label_dropout."""
        if not self.num_labels:
            return None
        y = batch["label"].astype(jnp.int32)
        drop = parallel.uniform(key, y.shape) < self.config.objective.label_dropout
        return jnp.where(drop, self.num_labels, y)

    def _dropout_keys(self, key: jax.Array, batch: int) -> jax.Array | None:
        if self.config.model.dropout == 0.0:
            return None
        return parallel.device_slice(jax.random.split(key, batch * parallel.num_shards()))

    def _loss(self, params, x0: jax.Array, y, key: jax.Array) -> jax.Array:
        t_key, noise_key, drop_key = jax.random.split(key, 3)
        t = self._timesteps(t_key, x0.shape[0])
        noise = parallel.normal(noise_key, x0.shape)
        x_t = D.q_sample(self.schedule, x0, t, noise)
        out = self.model.apply({"params": params}, x_t, t, y, self._dropout_keys(drop_key, x0.shape[0]))
        return jnp.mean(D.mse_loss(out, D.target(self.prediction, self.schedule, x0, t, noise)))

    def train_step(self, state: DDPMState, batch: dict, key: jax.Array) -> tuple[DDPMState, Metrics]:
        return self.train_step_with(self.hparams(), state, batch, key)

    def train_step_with(self, hp: HParams, state: DDPMState, batch: dict, key: jax.Array) -> tuple[DDPMState, Metrics]:
        """`train_step` with the learning rate and EMA decay as arguments (see trainers/vmappable.py)."""
        step_key = jax.random.fold_in(key, state.step)
        loss_key, label_key = jax.random.split(step_key)
        y = self._labels(batch, label_key)
        loss, grads = jax.value_and_grad(lambda p: self._loss(p, batch["image"], y, loss_key))(state.params)
        grads = parallel.pmean(grads)
        updates, opt = self.tx.update(grads, state.opt, state.params)
        params = apply_scaled(state.params, updates, hp["lr"])
        ema_hp = warm_up_ema(hp, state.step) if self.config.model.ema_warmup else hp
        new_state = DDPMState(step=state.step + 1, params=params, ema_params=ema_update(state.ema_params, params, ema_hp), opt=opt)
        return new_state, parallel.pmean({"loss": loss, "grad_norm": global_norm(grads)})

    def eval_step(self, state: DDPMState, batch: dict, key: jax.Array) -> Metrics:
        """The training loss of the EMA weights (no dropout, labels kept) on a held-out batch at random t."""
        x0 = batch["image"]
        y = batch["label"].astype(jnp.int32) if self.num_labels else None
        t_key, noise_key = jax.random.split(key)
        t = self._timesteps(t_key, x0.shape[0])
        noise = parallel.normal(noise_key, x0.shape)
        out = self.model.apply({"params": state.ema_params}, D.q_sample(self.schedule, x0, t, noise), t, y)
        return parallel.pmean({"loss": jnp.mean(D.mse_loss(out, D.target(self.prediction, self.schedule, x0, t, noise)))})

    def denoiser(self, params: Any, y: jax.Array | None, guidance: float) -> D.Denoiser:
        """(x_t, t) -> network output for labels y; with guidance w: out(no label) + w (out(y) - out(no label))."""
        apply = lambda x, t, labels: self.model.apply({"params": params}, x, t, labels)
        if y is None:
            return lambda x, t: apply(x, t, None)
        if guidance == 1.0:
            return lambda x, t: apply(x, t, y)
        null = jnp.full_like(y, self.num_labels)
        return lambda x, t: (lambda u, c: u + guidance * (c - u))(apply(x, t, null), apply(x, t, y))

    def sample(self, state: DDPMState, key: jax.Array, num: int) -> jax.Array:
        """`num` images in [0, 1] from the EMA weights; a conditional model cycles through the classes (0, 1, ...)."""
        s = self.config.sample
        y = jnp.arange(num, dtype=jnp.int32) % self.num_labels if self.num_labels else None
        x = D.sample_loop(self.denoiser(state.ema_params, y, s.guidance), self.prediction, self.schedule,
                          (num, *self.image_shape), key, s.steps, D.SAMPLERS[s.sampler], clip_x0=True)
        return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)

    def likelihood_estimator(self, num_samples: int) -> str:
        terms = "all T terms" if num_samples >= self.schedule.num_steps else f"{num_samples} stratified terms of T"
        return f"the DDPM variational bound over {terms} (a lower bound on log p(x), so an upper bound on the NLL)"

    def log_likelihood(self, state: DDPMState, x: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
        """A variational lower bound on log p(x) in nats per image, shape (B,), of the EMA weights (Ho et al. eq. 5).

        log p(x) >= -(L_T + sum_t L_t), with L_0 the discretized Gaussian decoder
        over the 256 grey levels, so the figure is a bound on the likelihood of
        8-bit images. `num_samples` = K terms: K >= T sums every term, fewer
        estimate the sum by stratified sampling of t (unbiased for the bound;
        its spread shrinks with K). A conditional model is scored without
        labels (its unconditional half).
        """
        y = jnp.full((x.shape[0],), self.num_labels, jnp.int32) if self.num_labels else None
        denoise = self.denoiser(state.ema_params, y, 1.0)

        def denoise_x0(x_t, t):
            return D.to_eps_x0(self.prediction, self.schedule, denoise(x_t, t), x_t, t)[1]

        return -D.negative_bound(denoise_x0, self.schedule, x, key, num_samples)
