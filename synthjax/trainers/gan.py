"""GAN trainer: discriminator (critic) updates then one generator update per step, EMA generator.

One step is `objective.n_critic` discriminator updates followed by one
generator update through the updated discriminator (n_critic = 1: the DCGAN
recipe; 5: WGAN, WGAN-GP, SNGAN-ResNet). The last discriminator update and the
generator update share one generator forward pass, whose VJP is reused.

Everything a GAN variant changes is chosen by name in the config and resolved
through small registries, never by branching on the family:
- `objective.loss`: minimax, ns, hinge, wasserstein, lsgan (objectives/gan.py);
- `objective.penalty` + `objective.penalty_weight`: wgan_gp, r1, dragan
  (objectives/penalties.py), added to the discriminator loss;
- `objective.clip` > 0: the original WGAN's weight clipping of every
  discriminator parameter to [-clip, clip] after each of its updates;
- `objective.diffaugment`: DiffAugment ops on every discriminator input
  (synthjax/augment.py);
- `model.arch`, `model.d_norm`, `model.conditional`: architectures, spectral
  normalisation and class conditioning (models/gan.py, models/resnet.py);
- `opt.d_lr`: a separate discriminator learning rate (TTUR); 0 means opt.lr.

n_critic and the batch: the loop feeds one batch per step, of
`train.batch_size` images. The discriminator updates split it: update i sees
the images at positions i, i + n, i + 2n, ... (a strided split, so the split
is the same on 1 or N devices) with fresh noise for its fakes, and the
generator update uses the last split's size. Each update therefore sees
batch_size / n_critic images; set batch_size = n_critic * (per-update batch)
to reproduce a paper's setting (WGAN-GP: 5 * 64). Splitting rather than
reusing one batch n times keeps every critic update on new real images, as
in the papers. Generator BatchNorm statistics are updated by the last
forward pass only; the earlier critic updates draw their fakes in training
mode but discard the running-statistic updates.

Randomness per step, all from `k = fold_in(key, step)`: the last critic
update's noise is drawn from `k` itself (as before n_critic existed), the
earlier updates' from `split(fold_in(k, 1), n_critic - 1)`; each update's
augmentation and penalty noise from `fold_in(its key, 2)`, the generator
update's augmentation from `fold_in(k, 3)`.

Class-conditional models (`model.conditional=True`) read `batch['label']`;
fakes are generated for the labels of the real images they are compared
with, so both sides of every discriminator update have the same classes.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from synthjax import parallel
from synthjax.augment import diff_augment, parse_policy
from synthjax.data.pipeline import Preprocess
from synthjax.errors import UserError
from synthjax.models.gan import build_gan, merge_two_pass_stats, two_passes_mergeable
from synthjax.objectives.gan import get_loss
from synthjax.objectives.penalties import get_penalty
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
from synthjax.trainers.vmappable import HParams, apply_scaled, as_hparams, ema_hparams, ema_update


class GANState(flax.struct.PyTreeNode):
    """Everything a GAN run needs to continue exactly: both networks, their optimisers, BatchNorm statistics, EMA."""

    step: jax.Array
    g_params: Any
    d_params: Any
    g_stats: Any  # BatchNorm running statistics and spectral-norm vectors ({} when there are none)
    d_stats: Any
    g_opt: Any
    d_opt: Any
    ema_params: Any  # exponential moving average of g_params, used for sampling


class Critic(flax.struct.PyTreeNode):
    """The discriminator's part of the state, carried through the critic updates of one step."""

    params: Any
    stats: Any
    opt: Any


# `model.d_joint_pass`: run the discriminator's real and fake passes as one batched pass (see
# GANTrainer._discriminate_both). 'auto' turns it on where it was measured faster (GPU); on CPU it
# was slower, TPU was not measured. Figures: docs/performance.md.
JOINT_PASS = {"auto": None, "on": True, "off": False, "true": True, "false": False}
# Backends where the joint pass writes the stacked real + fake batch out before the discriminator reads
# it (an optimisation barrier). Left to itself XLA:GPU fuses the stack into the discriminator's first
# layer, whose space-to-depth gather then runs as one slow loop over both sources (docs/performance.md).
MATERIALISE_JOINT_BATCH = ("gpu",)


def resolve_joint_pass(value: Any, backend: str | None = None) -> bool:
    """`model.d_joint_pass` ('auto', 'on'/'off', or a bool) -> whether the trainer runs the joint pass."""
    key = str(value).lower()
    if key not in JOINT_PASS:
        raise UserError(f"model.d_joint_pass={value!r}: expected one of {', '.join(JOINT_PASS)}")
    choice = JOINT_PASS[key]
    return (backend or jax.default_backend()) == "gpu" if choice is None else choice


@register("gan")
class GANTrainer(Trainer):
    """Trains a (generator, discriminator) pair named by `model.arch` with the loss `objective.loss`."""

    vmappable_keys = ("seed", "opt.lr", "opt.d_lr", "model.ema_decay", "objective.penalty_weight")
    sweep_metric = "d_loss"

    def __init__(self, config, image_shape, num_classes=0):
        super().__init__(config, image_shape, num_classes)
        m, obj = config.model, config.objective
        require(m.z_dim > 0, f"model.z_dim must be positive, got {m.z_dim}")
        require(0.0 <= m.ema_decay < 1.0, f"model.ema_decay must lie in [0, 1), got {m.ema_decay}")
        self.requires_labels = bool(m.get("conditional", False))
        if self.requires_labels and not num_classes:
            raise UserError(
                f"model.conditional=True generates images per class, but data.name={config.data.name!r} has no labels; "
                "use a labelled dataset (mnist_bundled, mnist, cifar10, an .npz with 'labels', a folder of class "
                "sub-folders) or set model.conditional=False"
            )
        self.num_labels = num_classes if self.requires_labels else 0
        self.generator, self.discriminator = build_gan(m, image_shape, self.dtype, self.num_labels)
        self.loss = get_loss(obj.loss)
        self.penalty = get_penalty(obj.get("penalty", ""))
        self.augment = parse_policy(obj.get("diffaugment", ""))
        self.n_critic = obj.get("n_critic", 1)
        self.clip = obj.get("clip", 0.0)
        self.joint_pass = resolve_joint_pass(m.get("d_joint_pass", "auto"))
        require(isinstance(self.n_critic, int) and self.n_critic >= 1, f"objective.n_critic must be an integer >= 1, got {self.n_critic!r}")
        require(self.clip >= 0, f"objective.clip must be >= 0 (0: no weight clipping), got {self.clip}")
        require(obj.get("penalty_weight", 0.0) >= 0, f"objective.penalty_weight must be >= 0, got {obj.get('penalty_weight')}")
        require(
            config.train.batch_size % self.n_critic == 0,
            f"train.batch_size={config.train.batch_size} must be a multiple of objective.n_critic={self.n_critic}: "
            f"each of the {self.n_critic} critic updates takes an equal share of the batch "
            f"(e.g. --config.train.batch_size={self.n_critic * max(1, config.train.batch_size // self.n_critic)})",
        )
        # Unit learning rates: the rates come from hparams() so they can be traced (vmapped) values.
        self.g_tx, self.d_tx = adam(config.opt, 1.0), adam(config.opt, 1.0)
        self.lr_factor = lr_factor(config.opt, config.train.num_steps)  # opt.schedule, applied to both rates

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(value_range=(-1.0, 1.0), binarize=False)

    def hparams(self) -> HParams:
        c = self.config
        d_lr = c.opt.d_lr if c.opt.d_lr > 0 else c.opt.lr
        penalty_weight = c.objective.get("penalty_weight", 0.0)
        return as_hparams({"g_lr": c.opt.lr, "d_lr": d_lr, "penalty_weight": penalty_weight, **ema_hparams(c.model.ema_decay)})

    def _labels(self, n: int) -> jax.Array | None:
        """Placeholder labels for initialisation (None for an unconditional model)."""
        return jnp.zeros((n,), jnp.int32) if self.num_labels else None

    def create_state(self, key: jax.Array) -> GANState:
        g_key, d_key = jax.random.split(key)
        z = jnp.zeros((2, self.config.model.z_dim))
        x = jnp.zeros((2, *self.image_shape))
        # Initialise outside any mapped axis: BatchNorm's axis is only bound inside train steps.
        g_vars = self.generator.init(g_key, z, self._labels(2), train=False)
        d_vars = self.discriminator.init(d_key, x, self._labels(2), train=False)
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

    def _generate(self, g_params, g_stats, z, y):
        fake, updates = self.generator.apply(
            {"params": g_params, "batch_stats": g_stats}, z, y, train=True, mutable=["batch_stats"]
        )
        return fake, updates.get("batch_stats", {})

    def _discriminate(self, d_params, d_stats, x, y):
        logits, updates = self.discriminator.apply(
            {"params": d_params, "batch_stats": d_stats}, x, y, train=True, mutable=["batch_stats"]
        )
        return logits, updates.get("batch_stats", {})

    def _discriminate_both(self, d_params, d_stats, real, fake, y):
        """(real logits, fake logits, statistics after both passes): two passes in a row, as in the papers.

        With `model.d_joint_pass` the two passes run side by side under vmap, so
        every convolution sees both batches at once (one larger GEMM, half the
        kernel launches), while BatchNorm still normalises each batch by its own
        statistics; the running statistics are merged to what two passes in a
        row give. Discriminators whose statistics cannot be merged that way
        (spectral norm) keep the two passes.
        """
        if self.joint_pass and two_passes_mergeable(d_stats):
            both = jnp.stack([real, fake.astype(real.dtype)])
            if jax.default_backend() in MATERIALISE_JOINT_BATCH:
                both = jax.lax.optimization_barrier(both)
            logits, stacked = jax.vmap(lambda x: self._discriminate(d_params, d_stats, x, y))(both)
            return logits[0], logits[1], merge_two_pass_stats(d_stats, stacked)
        real_logits, stats = self._discriminate(d_params, d_stats, real, y)
        fake_logits, stats = self._discriminate(d_params, stats, fake, y)
        return real_logits, fake_logits, stats

    def _augment(self, x, key):
        return diff_augment(x, key, self.augment, parallel.uniform) if self.augment else x

    def _noise(self, key, n: int) -> jax.Array:
        return parallel.normal(key, (n, self.config.model.z_dim))

    def _critic_splits(self, batch: dict) -> tuple[jax.Array, jax.Array | None]:
        """(n_critic, b / n_critic, ...) real images (and labels): split i holds positions i, i + n, ..."""
        n = self.n_critic

        def split(x):
            if x.shape[0] % n:
                raise UserError(f"the per-device batch of {x.shape[0]} is not divisible by objective.n_critic={n}; "
                                f"make train.batch_size a multiple of n_critic * devices")
            return x.reshape((x.shape[0] // n, n, *x.shape[1:])).swapaxes(0, 1)

        labels = split(batch["label"].astype(jnp.int32)) if self.num_labels else None
        return split(batch["image"]), labels

    def _critic_update(self, hp: HParams, critic: Critic, real, fake, y, key) -> tuple[Critic, dict]:
        """One discriminator update on real vs. (detached) fake images; returns the new critic and its metrics."""
        real_key, fake_key, penalty_key = jax.random.split(jax.random.fold_in(key, 2), 3)

        def objective(d_params):
            real_in = self._augment(real, real_key)
            fake_in = self._augment(jax.lax.stop_gradient(fake), fake_key)
            real_logits, fake_logits, stats = self._discriminate_both(d_params, critic.stats, real_in, fake_in, y)
            loss = self.loss.d(real_logits, fake_logits)
            aux = {"real_logits": real_logits, "fake_logits": fake_logits}
            if self.penalty is not None:
                d_fn = lambda x: self._discriminate(d_params, stats, x, y)[0]  # noqa: E731  (statistic updates discarded)
                penalty = self.penalty(d_fn, real_in, fake_in, penalty_key, parallel.uniform, lambda v: parallel.pmean(jnp.mean(v)))
                loss, aux["penalty"] = loss + hp["penalty_weight"] * penalty, penalty
            return loss, (stats, aux)

        (loss, (stats, aux)), grads = jax.value_and_grad(objective, has_aux=True)(critic.params)
        grads = parallel.pmean(grads)
        updates, opt = self.d_tx.update(grads, critic.opt, critic.params)
        params = apply_scaled(critic.params, updates, hp["d_lr"])
        if self.clip > 0:
            params = jax.tree.map(lambda p: jnp.clip(p, -self.clip, self.clip), params)
        return Critic(params, stats, opt), {"d_loss": loss, "d_grads": grads, **aux}

    def _extra_critic_updates(self, hp, state: GANState, critic: Critic, reals, labels, key) -> Critic:
        """The n_critic - 1 critic updates before the last one, each on its split with fresh fakes (a scan)."""

        def body(critic, xs):
            real, y, k = xs
            fake, _ = self._generate(state.g_params, state.g_stats, self._noise(k, real.shape[0]), y)
            critic, _ = self._critic_update(hp, critic, real, fake, y, k)
            return critic, None

        keys = jax.random.split(jax.random.fold_in(key, 1), self.n_critic - 1)
        earlier = None if labels is None else labels[:-1]
        critic, _ = jax.lax.scan(body, critic, (reals[:-1], earlier, keys))
        return critic

    def train_step(self, state: GANState, batch: dict, key: jax.Array) -> tuple[GANState, Metrics]:
        return self.train_step_with(self.hparams(), state, batch, key)

    def train_step_with(self, hp: HParams, state: GANState, batch: dict, key: jax.Array) -> tuple[GANState, Metrics]:
        """`train_step` with the numeric hyperparameters `hp` (see trainers/vmappable.py) as arguments.

        opt.schedule scales both learning rates by its multiplier at the generator step
        (every critic update of one step uses the same rate)."""
        hp = {**hp, **{k: scheduled(hp[k], self.lr_factor, state.step) for k in ("g_lr", "d_lr")}}
        key = jax.random.fold_in(key, state.step)
        reals, labels = self._critic_splits(batch)
        critic = Critic(state.d_params, state.d_stats, state.d_opt)
        if self.n_critic > 1:
            critic = self._extra_critic_updates(hp, state, critic, reals, labels, key)
        real, y = reals[-1], None if labels is None else labels[-1]

        z = self._noise(key, real.shape[0])
        fake, g_vjp, g_stats = jax.vjp(lambda p: self._generate(p, state.g_stats, z, y), state.g_params, has_aux=True)
        critic, d_out = self._critic_update(hp, critic, real, fake, y, key)

        g_aug_key = jax.random.fold_in(key, 3)

        def g_objective(fake_images):
            logits, stats = self._discriminate(critic.params, critic.stats, self._augment(fake_images, g_aug_key), y)
            return self.loss.g(logits), stats

        (g_loss, d_stats), fake_cotangent = jax.value_and_grad(g_objective, has_aux=True)(fake)
        (g_grads,) = g_vjp(fake_cotangent)
        g_grads = parallel.pmean(g_grads)
        g_updates, g_opt = self.g_tx.update(g_grads, state.g_opt, state.g_params)
        g_params = apply_scaled(state.g_params, g_updates, hp["g_lr"])

        new_state = GANState(
            step=state.step + 1,
            g_params=g_params,
            d_params=critic.params,
            g_stats=g_stats,
            d_stats=d_stats,
            g_opt=g_opt,
            d_opt=critic.opt,
            ema_params=ema_update(state.ema_params, g_params, hp),
        )
        metrics = {
            "d_loss": d_out["d_loss"],
            "g_loss": g_loss,
            "d_real": jnp.mean(jax.nn.sigmoid(d_out["real_logits"])),
            "d_fake": jnp.mean(jax.nn.sigmoid(d_out["fake_logits"])),
            "g_grad_norm": global_norm(g_grads),
            "d_grad_norm": global_norm(d_out["d_grads"]),
        }
        if "penalty" in d_out:
            metrics["penalty"] = d_out["penalty"]
        return new_state, parallel.pmean(metrics)

    def eval_step(self, state: GANState, batch: dict, key: jax.Array) -> Metrics:
        """Discriminator losses on held-out real images and fresh fakes (of the same classes), with running statistics."""
        real = batch["image"]
        y = batch["label"].astype(jnp.int32) if self.num_labels else None
        z = parallel.normal(key, (real.shape[0], self.config.model.z_dim))
        fake = self.generator.apply({"params": state.ema_params, "batch_stats": state.g_stats}, z, y, train=False)
        d_vars = {"params": state.d_params, "batch_stats": state.d_stats}
        real_logits = self.discriminator.apply(d_vars, real, y, train=False)
        fake_logits = self.discriminator.apply(d_vars, fake, y, train=False)
        metrics = {
            "d_loss": self.loss.d(real_logits, fake_logits),
            "g_loss": self.loss.g(fake_logits),
            "d_accuracy": 0.5 * (jnp.mean(real_logits > 0) + jnp.mean(fake_logits < 0)),
        }
        return parallel.pmean(metrics)

    def sample(self, state: GANState, key: jax.Array, num: int) -> jax.Array:
        """`num` images from the EMA generator; a conditional model cycles through the classes (0, 1, ..., 0, 1, ...)."""
        return self.decode_latents(state, jax.random.normal(key, (num, self.config.model.z_dim)))

    def sample_latents(self, key: jax.Array, num: int, truncation: float = 0.0) -> jax.Array:
        """Generator inputs z (num, z_dim), truncated to [-truncation, truncation] when it is > 0."""
        return truncated_normal(key, (num, self.config.model.z_dim), truncation)

    def decode_latents(self, state: GANState, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """The EMA generator's images in [0, 1] for inputs z; a conditional model draws class `labels[i]` for
        image i, or cycles through the classes when `labels` is None."""
        y = None
        if self.num_labels:
            y = jnp.arange(z.shape[0], dtype=jnp.int32) % self.num_labels if labels is None else labels.astype(jnp.int32)
        x = self.generator.apply({"params": state.ema_params, "batch_stats": state.g_stats}, z, y, train=False)
        return jnp.clip((x + 1.0) * 0.5, 0.0, 1.0)
