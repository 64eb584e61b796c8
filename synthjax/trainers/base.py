"""The interface between the training loop and a model family.

The loop knows only this: a trainer is built from a config and the data's
shape, says how it wants its images preprocessed, and offers four pure
functions: `create_state`, `train_step`, `eval_step`, `sample`. Each family
(GAN, VAE, ...) implements them in its own module and registers under the
name used in `model.family`.

Optional capabilities are declared on `Trainer` with defaults that say "not
offered", so the loop, the sweep and the evaluator read an attribute instead
of probing with `hasattr`; a family overrides what it offers:
- `log_likelihood_kind` ('none', 'bound' or 'exact') with `log_likelihood(state, x,
  key, num_samples) -> (B,)`: log p(x) in nats per image for a batch `x`
  preprocessed as `preprocess` says (synthjax.evaluate's `nll` metric). A
  'bound' is stochastic (the VAE: IWAE with `num_samples` importance
  samples); an 'exact' one ignores `key` and `num_samples`.
  `likelihood_estimator(num_samples)` names the estimate for eval.json.
- `vmappable_keys` with `hparams()` and `train_step_with(hp, state, batch,
  key)`: the config keys `synthjax.sweep --vmap` may stack
  (synthjax.trainers.vmappable says what they promise).
- `requires_labels`: the family needs a labelled dataset (checked before
  anything compiles); `num_labels`, set per instance, is the number of
  classes its samples are drawn for (0: unconditional).
- `sweep_metric`: the training metric a sweep's table and plot show by default.
`register` checks that a declared capability comes with its method.
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


LIKELIHOOD_KINDS = ("none", "bound", "exact")


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a trainer available as `model.family = name` once its declared capabilities check out."""

    def wrap(cls: type) -> type:
        check_capabilities(cls)
        TRAINERS[name] = cls
        cls.family = name
        return cls

    return wrap


def check_capabilities(cls: type) -> None:
    """A class that declares a capability must override the method behind it (a developer error, raised at import)."""
    if cls.log_likelihood_kind not in LIKELIHOOD_KINDS:
        raise TypeError(f"{cls.__name__}.log_likelihood_kind={cls.log_likelihood_kind!r}; expected one of {LIKELIHOOD_KINDS}")
    needs = {"log_likelihood": cls.log_likelihood_kind != "none", "train_step_with": bool(cls.vmappable_keys),
             "hparams": bool(cls.vmappable_keys)}
    for method, declared in needs.items():
        if declared and getattr(cls, method) is getattr(Trainer, method):
            raise TypeError(f"{cls.__name__} declares a capability that needs {method}() but does not define it")


def build_trainer(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], num_classes: int = 0) -> "Trainer":
    """The trainer of `config.model.family` for data of this shape."""
    family = config.model.family
    if family not in TRAINERS:
        raise unknown_name("model family", family, TRAINERS, key="model.family")
    return TRAINERS[family](config, tuple(image_shape), num_classes)


class Trainer(abc.ABC):
    """One model family's state, steps and sampler. Subclasses register with `@register(name)`."""

    family: str = ""
    # Optional capabilities (see the module docstring); the defaults offer none.
    log_likelihood_kind: str = "none"
    vmappable_keys: tuple[str, ...] = ()
    requires_labels: bool = False
    num_labels: int = 0
    sweep_metric: str = ""

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

    def log_likelihood(self, state: Any, x: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
        """(B,) log p(x) in nats per image; offered when `log_likelihood_kind` is 'bound' or 'exact'."""
        raise UserError(
            f"model.family={self.family!r} defines no tractable likelihood, so no log_likelihood (and no 'nll' metric); "
            "drop 'nll' from the metrics"
        )

    def likelihood_estimator(self, num_samples: int) -> str:
        """How `log_likelihood` estimates log p(x) with `num_samples`, in one phrase for eval.json."""
        return "exact" if self.log_likelihood_kind == "exact" else "a lower bound on log p(x), so an upper bound on the NLL"

    def hparams(self) -> dict[str, jax.Array]:
        """The values of `vmappable_keys` as float32 scalars (empty when the family offers none)."""
        return {}

    def train_step_with(self, hp: dict[str, jax.Array], state: Any, batch: dict, key: jax.Array) -> tuple[Any, Metrics]:
        """`train_step` with the `vmappable_keys` values as arguments; offered when `vmappable_keys` is not empty."""
        raise UserError(f"model.family={self.family!r} has no vmappable hyperparameters; run this sweep without --vmap")

    # Optional sampling tools (python -m synthjax.sample --mode ...). Families with a Gaussian
    # latent override them; the defaults say plainly that this family has none.

    def sample_latents(self, key: jax.Array, num: int, truncation: float = 0.0) -> jax.Array:
        """`num` prior latents (N, D); with `truncation` T > 0, standard normals truncated to [-T, T]
        (the truncation trick: fidelity for diversity)."""
        raise self._unsupported("latent sampling (--truncation, --mode interpolate)")

    def decode_latents(self, state: Any, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
        """Images (N, H, W, C) in [0, 1] for latents `z` from `sample_latents` (or between them); a
        class-conditional model draws image i of class `labels[i]`, or of class i mod `num_labels` when None."""
        raise self._unsupported("decoding latents (--truncation, --mode interpolate)")

    def reconstruct(self, state: Any, x: jax.Array) -> jax.Array:
        """Images (N, H, W, C) in [0, 1] reconstructed from images `x` preprocessed as `preprocess` says."""
        raise self._unsupported("reconstruction (--mode reconstruct)")

    def _unsupported(self, what: str) -> UserError:
        return UserError(
            f"model.family={self.family!r} does not support {what}: it has no latent space to draw from or encode into; "
            f"use --mode samples without --truncation (interpolation: gan, vae, ...; reconstruction: vae, vqvae)"
        )


def truncated_normal(key: jax.Array, shape: tuple[int, ...], truncation: float) -> jax.Array:
    """Standard normals, truncated to [-truncation, truncation] when it is > 0 (BigGAN's truncation trick)."""
    if truncation < 0:
        raise UserError(f"--truncation must be >= 0 (0: no truncation), got {truncation}")
    if truncation == 0:
        return jax.random.normal(key, shape)
    return jax.random.truncated_normal(key, -truncation, truncation, shape)


SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(opt_cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule | None:
    """The learning-rate multiplier at each update (0-based count), or None for a constant rate.

    `opt.schedule`: 'constant', 'linear' (1 -> opt.end_factor) or 'cosine'
    (1 -> opt.end_factor along half a cosine), after `opt.warmup_steps` of
    linear warm-up from 0. The whole schedule spans `opt.decay_steps`
    updates, warm-up included (0: `train.num_steps`), as in optax's
    `warmup_cosine_decay_schedule`; it holds its final value afterwards.
    A multiplier of a separate peak rate, so the peak stays a traced, vmappable
    value (trainers/vmappable.py) while the shape of the schedule is structural.
    """
    kind = opt_cfg.get("schedule", "constant")
    if kind not in SCHEDULES:
        raise unknown_name("learning-rate schedule", kind, SCHEDULES, key="opt.schedule")
    warmup, end = opt_cfg.get("warmup_steps", 0), opt_cfg.get("end_factor", 0.0)
    total = opt_cfg.get("decay_steps", 0) or num_steps
    require(isinstance(warmup, int) and warmup >= 0, f"opt.warmup_steps must be an integer >= 0, got {warmup!r}")
    require(0.0 <= end <= 1.0, f"opt.end_factor must lie in [0, 1] (a fraction of opt.lr), got {end!r}")
    if kind == "constant" and warmup == 0:
        return None
    require(
        isinstance(total, int) and total > warmup,
        f"opt.decay_steps={total} (0: train.num_steps) must exceed opt.warmup_steps={warmup}; "
        f"set --config.opt.decay_steps or lower --config.opt.warmup_steps",
    )
    decay = {
        "constant": lambda n: optax.constant_schedule(1.0),
        "linear": lambda n: optax.linear_schedule(1.0, end, n),
        "cosine": lambda n: optax.cosine_decay_schedule(1.0, n, alpha=end),
    }[kind](total - warmup)
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), decay], [warmup])


def scheduled(lr: Any, factor: optax.Schedule | None, count: jax.Array) -> Any:
    """`lr` times the schedule's multiplier at update `count` (`lr` itself for a constant rate)."""
    return lr if factor is None else lr * factor(count)


def adam(opt_cfg: ml_collections.ConfigDict, lr: float, num_steps: int = 0) -> optax.GradientTransformation:
    """Adam with the config's betas, learning-rate schedule (`lr_factor`) and optional global-norm clipping.

    `lr` is the peak rate. Trainers whose rate is a traced hyperparameter build
    `adam(opt, 1.0)` and scale the unit updates by `scheduled(hp_lr, lr_factor(...), step)`
    themselves; pass num_steps=0 there, which keeps this transformation unscheduled.
    """
    factor = lr_factor(opt_cfg, num_steps) if num_steps else None
    tx = optax.adam(lr if factor is None else (lambda count: lr * factor(count)), b1=opt_cfg.b1, b2=opt_cfg.b2)
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
