"""Numeric hyperparameters as traced values, so runs that differ only in them train as one vmapped program.

A trainer supports `python -m synthjax.sweep --vmap` when it declares, besides
the four interface functions (defaults on `synthjax.trainers.base.Trainer`):
- `vmappable_keys`: the config keys whose values reach the step only through
  `hparams()` (always including 'seed', which changes only init and step keys);
- `hparams() -> dict[str, jax.Array]`: those values as float32 scalars;
- `train_step_with(hparams, state, batch, key)`: the train step with the
  values as arguments. `train_step(state, batch, key)` is exactly
  `train_step_with(self.hparams(), state, batch, key)`.

The sweep builds one trainer per member, stacks the members' states and
`hparams()` along a leading axis and runs `jax.vmap(train_step_with)` in one
jitted program; everything else about the step must be identical, which is
why any other config key is refused as a vmap axis. Hyperparameters are
arguments rather than TrainState fields so checkpoints keep their layout and
a resumed run with a changed learning rate uses the new one, as the loop
promises for non-structural settings.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

HParams = dict[str, jax.Array]


def as_hparams(values: dict[str, float]) -> HParams:
    """Python numbers -> float32 scalars (computed on the host in float64 first, then rounded once)."""
    return {name: jnp.asarray(value, jnp.float32) for name, value in values.items()}


def apply_scaled(params: Any, unit_updates: Any, lr: jax.Array) -> Any:
    """params + lr * updates, for updates of an optimiser built with learning rate 1.

    Adam with lr 1 ends in `-1 * u`, and `(-u) * lr` is bit-for-bit `u * (-lr)`,
    so this reproduces `optax.adam(lr)` exactly while lr stays a traced value.
    """
    return optax.apply_updates(params, jax.tree.map(lambda u: u * lr, unit_updates))


def ema_hparams(decay: float) -> dict[str, float]:
    """`decay` and `1 - decay`, the latter computed in float64: traced float32 `1 - decay` would round differently."""
    return {"ema_decay": decay, "ema_rate": 1.0 - decay}


def warm_up_ema(hp: HParams, step: jax.Array) -> HParams:
    """The EMA decay of update `step` (0-based) capped at (1 + step) / (10 + step), as TensorFlow's
    ExponentialMovingAverage does with `num_updates`.

    Without the cap a run of n steps keeps decay**n of the initial weights in
    its average (5% after 3,000 steps at 0.999), which shows as noise in the
    samples of a short run; with it the average covers roughly the last tenth
    of training until the cap reaches `ema_decay`.
    """
    n = step.astype(jnp.float32)
    return {**hp, "ema_decay": jnp.minimum(hp["ema_decay"], (1 + n) / (10 + n)), "ema_rate": jnp.maximum(hp["ema_rate"], 9 / (10 + n))}


def ema_update(ema: Any, params: Any, hp: HParams) -> Any:
    """ema <- decay * ema + (1 - decay) * params with the decay from `hparams()`."""
    return jax.tree.map(lambda e, p: hp["ema_decay"] * e + hp["ema_rate"] * p, ema, params)
