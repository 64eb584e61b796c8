"""The interface between the training loop and a model family.

The loop knows only this: a trainer is built from a config and the data's
shape, says how it wants its images preprocessed, and offers four pure
functions: `create_state`, `train_step`, `eval_step`, `sample`. Each family
(GAN, VAE, ...) implements them in its own module and registers under the
name used in `model.family`.

Optional capability, found with `hasattr` (synthjax.evaluate's `nll` metric):
`log_likelihood(state, x, key, num_samples) -> (B,)` log p(x) in nats per
image for a batch `x` preprocessed as `preprocess` says; a pure function,
jitted with `num_samples` static. Latent-variable models return a stochastic
lower bound (the VAE: IWAE with `num_samples` importance samples); exact
models (autoregressive) ignore `key` and `num_samples` and set the class
attribute `log_likelihood_exact = True`.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from synthjax.data.pipeline import Preprocess
from synthjax.errors import UserError, unknown_name

Metrics = dict[str, jax.Array]
TRAINERS: dict[str, type["Trainer"]] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a trainer available as `model.family = name`."""

    def wrap(cls: type) -> type:
        TRAINERS[name] = cls
        cls.family = name
        return cls

    return wrap


def build_trainer(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int = 0) -> "Trainer":
    """The trainer of `config.model.family` for data of this shape."""
    family = config.model.family
    if family not in TRAINERS:
        raise unknown_name("model family", family, TRAINERS, key="model.family")
    return TRAINERS[family](config, tuple(image_shape), num_classes)


class Trainer(abc.ABC):
    """One model family's state, steps and sampler. Subclasses register with `@register(name)`."""

    family: str = ""

    def __init__(self, config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int = 0):
        self.config = config
        self.image_shape = image_shape
        self.num_classes = num_classes
        self.dtype = jnp.bfloat16 if config.train.dtype == "bfloat16" else jnp.float32

    @property
    @abc.abstractmethod
    def preprocess(self) -> Preprocess:
        """The value range (and binarisation) this family's models expect."""

    @abc.abstractmethod
    def create_state(self, key: jax.Array) -> Any:
        """A fresh TrainState (a flax.struct dataclass) with step 0."""

    @abc.abstractmethod
    def train_step(self, state: Any, batch: dict, key: jax.Array) -> tuple[Any, Metrics]:
        """One optimisation step on this device's share of the batch; a pure function.

        Derives its randomness from `fold_in(key, state.step)` and averages
        gradients over the data axis, so it runs under shard_map or pmap.
        """

    @abc.abstractmethod
    def eval_step(self, state: Any, batch: dict, key: jax.Array) -> Metrics:
        """Evaluation metrics on this device's share of a held-out batch (averaged over devices)."""

    @abc.abstractmethod
    def sample(self, state: Any, key: jax.Array, num: int) -> jax.Array:
        """`num` images (N, H, W, C) in [0, 1] from the model (the EMA weights where there are some)."""


def adam(opt_cfg: ml_collections.ConfigDict, lr: float) -> optax.GradientTransformation:
    """Adam with the config's betas and optional global-norm gradient clipping."""
    tx = optax.adam(lr, b1=opt_cfg.b1, b2=opt_cfg.b2)
    if opt_cfg.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt_cfg.grad_clip), tx)
    return tx


def require(condition: bool, message: str) -> None:
    """Raise a UserError with `message` unless `condition` holds."""
    if not condition:
        raise UserError(message)


# Leaves at least this large get their squares summed row by row in `global_norm`.
LARGE_LEAF = 1 << 20


def global_norm(tree: Any) -> jax.Array:
    """The L2 norm of all leaves of `tree` together (the `grad_norm` metrics), as `optax.tree.norm`.

    Large leaves are summed row by row and the row sums fenced off (an optimisation barrier) before
    the total. Why: left to itself XLA:CPU rewrote the sum over a whole large leaf into a 32x32
    reduce-window, which strides across rows and sat on the critical path of a dcgan28 step
    (docs/performance.md). Small leaves keep the plain sum, which XLA may fuse with its neighbours.
    """
    total = jnp.zeros((), jnp.float32)
    for x in jax.tree.leaves(tree):
        x = jnp.asarray(x, jnp.float32)
        if x.size >= LARGE_LEAF and x.ndim > 1:
            row_sums = jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=1)
            total = total + jnp.sum(jax.lax.optimization_barrier(row_sums))
        else:
            total = total + jnp.sum(jnp.square(x))
    return jnp.sqrt(total)


def all_finite(tree: Any) -> jax.Array:
    """True when every leaf of `tree` is finite (checked on device, no host sync)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)
