"""A stack of N runs trained as one program: the trainer interface, vmapped over a member axis.

Runs that differ only in their seed or in numeric hyperparameters (a
trainer's `vmappable_keys`, see synthjax/trainers/base.py) have the same
program; `Stack` offers the four functions the loop calls (`create_state`,
`train_step`, `eval_step`, `sample`) for all of them at once.

- One member (an ordinary run) is the trainer itself: no member axis, the
  trainer's own `train_step`, so its numbers and checkpoints are exactly
  those of a plain run.
- N > 1 members: the state is a `StackState` whose leaves carry a leading
  member axis; the step is `jax.vmap` of the trainer's `train_step_with`
  over the members' hyperparameters, states, keys and (unless
  `sweep.shared_data_order`) batches. Under a mesh with a `members` axis
  each device trains its block of members (synthjax/parallel.py).
- A member whose loss or gradients go non-finite is frozen: from that step
  on its updates are dropped inside the step (no host sync), and
  `StackState.diverged_at` records the step (0: never), so the freeze
  survives checkpoints. The others go on.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np

from synthjax.data import on_device
from synthjax.errors import UserError
from synthjax.parallel import member_block
from synthjax.trainers.base import all_finite

NONFINITE = "nonfinite"  # per-step flag in the metrics: the update was dropped (or the member is frozen)


@flax.struct.dataclass
class StackState:
    """The members' TrainStates stacked on a leading axis, and the step at which each diverged (0: never)."""

    members: Any
    diverged_at: jax.Array  # (N,) int32


def guard_nonfinite(step: Callable, policy: str) -> Callable:
    """Wrap a train step to flag non-finite metrics on device; with 'skip', drop such updates in the step.

    The trainers' metrics hold their losses and gradient norms, so one
    reduction over a handful of scalars covers both (a NaN anywhere in the
    gradients makes the global norm NaN). The flag travels with the metrics,
    so detection costs no host sync; the loop reads it at logging and
    checkpoint cadence. A skipped step still advances `state.step`, so the
    next step draws fresh noise instead of repeating the same blow-up.
    """

    def guarded(state, batch, key):
        new_state, metrics = step(state, batch, key)
        ok = all_finite(metrics)
        if policy == "skip":
            new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
            new_state = new_state.replace(step=state.step + 1)
        return new_state, {**metrics, NONFINITE: 1.0 - ok.astype(jnp.float32)}

    return guarded


# The config field of overrides for stacks, per backend: formulations that stay fast under vmap
# (docs/performance.md, "Stacks of members").
STACK_OVERRIDES_FIELD = {"cpu": "cpu_stack_overrides", "gpu": "gpu_stack_overrides"}


def stack_overrides(config: Any, backend: str) -> str:
    """The 'KEY=VALUE;...' a stack of several members applies on `backend` ('' for none)."""
    field = STACK_OVERRIDES_FIELD.get(backend)
    return config.sweep.get(field, "") if field else ""  # .get: configs saved before a field existed


def stack_configs(configs: Sequence[Any], backend: str, log: Callable[[str], None] = print) -> list:
    """The members' configs with the backend's `sweep.<backend>_stack_overrides` applied when there are
    several members (said in the log)."""
    from synthjax import config as config_lib

    spec = stack_overrides(configs[0], backend)
    if len(configs) == 1 or not spec:
        return list(configs)
    out = []
    for c in configs:
        c = c.copy_and_resolve_references()
        c.unlock()
        for item in filter(None, (x.strip() for x in spec.split(";"))):
            key, _, value = item.partition("=")
            config_lib.set_value(c, key, value)
        c.lock()
        out.append(c)
    log(f"synthjax: a stack of {len(configs)} members on {backend}: applying sweep.{STACK_OVERRIDES_FIELD[backend]}={spec!r}")
    return out


def stack_trees(trees: Sequence[Any]) -> Any:
    """Trees of equal structure stacked leaf by leaf on a new leading axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


class Stack:
    """`trainers` (one per member, alike but for `vmappable_keys` values) as one trainer; see the module docstring."""

    def __init__(self, trainers: Sequence[Any], policy: str, shared_data_order: bool):
        self.trainers = list(trainers)
        self.trainer = self.trainers[0]
        self.size = len(self.trainers)
        self.policy = policy
        self.per_member_batches = self.size > 1 and not shared_data_order
        if self.size > 1 and not self.trainer.vmappable_keys:
            raise UserError(
                f"model.family={self.trainer.family!r} cannot train a stack of members (its trainer has no "
                "train_step_with); run the members one by one (python -m synthjax.sweep without --vmap)"
            )
        self.hparams = stack_trees([t.hparams() for t in self.trainers]) if self.size > 1 else None

    @property
    def family(self) -> str:
        return self.trainer.family

    @property
    def preprocess(self):
        return self.trainer.preprocess

    def keys(self, seeds: Sequence[int]) -> tuple[jax.Array, ...]:
        """(init, step, eval, grid) keys, each member's split from its own seed as a single run splits them."""
        per_member = [jax.random.split(jax.random.key(s), 4) for s in seeds]
        if self.size == 1:
            return tuple(per_member[0])
        return tuple(jnp.stack([k[j] for k in per_member]) for j in range(4))

    def data_keys(self, seeds: Sequence[int]) -> jax.Array:
        """Keys of the members' on-device data order: each member's own, or the first seed's when they share one."""
        if not self.per_member_batches:
            return on_device.data_key(seeds[0])
        return jnp.stack([on_device.data_key(s) for s in seeds])

    def draw(self, dataset: on_device.DeviceDataset, state: Any, data_keys: jax.Array) -> dict:
        """This device's batch of the next step, drawn from a split on the devices (per member: a member axis first)."""
        if self.size == 1:
            return dataset.draw(state.step, data_keys)
        steps = _member_steps(state.members)
        if not self.per_member_batches:  # every member reads the first member's order (all step together)
            return dataset.draw(steps[0], data_keys)
        return jax.vmap(dataset.draw)(steps, member_block(data_keys))

    def create_state(self, keys: jax.Array) -> Any:
        if self.size == 1:
            return self.trainer.create_state(keys)
        return StackState(jax.vmap(self.trainer.create_state)(keys), jnp.zeros((self.size,), jnp.int32))

    def train_step(self, state: Any, batch: dict, keys: jax.Array) -> tuple[Any, dict]:
        """One step of every member on this device (its block of members when the mesh has a `members` axis)."""
        if self.size == 1:
            return guard_nonfinite(self.trainer.train_step, self.policy)(state, batch, keys)
        hp, keys = member_block(self.hparams), member_block(keys)
        def member(s, b, k, h):
            return guard_nonfinite(functools.partial(self.trainer.train_step_with, h), self.policy)(s, b, k)

        new, metrics = jax.vmap(member, in_axes=(0, self._batch_axis, 0, 0))(state.members, batch, keys, hp)
        return self._freeze(state, new, metrics)

    def _freeze(self, state: StackState, new: Any, metrics: dict) -> tuple[StackState, dict]:
        """Drop the updates of members that are non-finite now or diverged before; record when each diverged."""
        bad_now = metrics[NONFINITE] > 0
        frozen = (state.diverged_at > 0) | bad_now
        if self.policy == "skip":  # the guard already dropped this step's bad updates; nobody stays frozen
            return StackState(new, state.diverged_at), metrics
        keep_old = lambda n, o: jnp.where(frozen.reshape((-1,) + (1,) * (n.ndim - 1)), o, n)
        members = jax.tree.map(keep_old, new, state.members)
        step = _member_steps(state.members) + 1
        diverged_at = jnp.where((state.diverged_at == 0) & bad_now, step, state.diverged_at)
        return StackState(members, diverged_at), {**metrics, NONFINITE: frozen.astype(jnp.float32)}

    @property
    def _batch_axis(self) -> int | None:
        return 0 if self.per_member_batches else None

    def eval_step(self, state: Any, batch: dict, keys: jax.Array) -> dict:
        if self.size == 1:
            return self.trainer.eval_step(state, batch, keys)
        return jax.vmap(self.trainer.eval_step, in_axes=(0, self._batch_axis, 0))(state.members, batch, member_block(keys))

    def sample(self, state: Any, key: jax.Array, num: int) -> jax.Array:
        """Samples of one member's state (see `member`)."""
        return self.trainer.sample(state, key, num)

    def member(self, tree: Any, i: int) -> Any:
        """Member i's part of a stacked state (its TrainState), key or metrics; the tree itself for one member."""
        if self.size == 1:
            return tree
        if isinstance(tree, StackState):
            tree = tree.members
        return jax.tree.map(lambda x: x[i], tree)

    def member_metrics(self, metrics: dict, i: int) -> dict[str, float]:
        """Host metrics (numpy) of member i as floats."""
        return {k: float(np.asarray(v)[i] if self.size > 1 else v) for k, v in metrics.items()}

    def diverged(self, state: Any) -> dict[int, int]:
        """{member index: step it diverged at} (one small host transfer); {} for a single run, which halts instead."""
        if self.size == 1:
            return {}
        steps = np.asarray(jax.device_get(state.diverged_at))
        return {i: int(s) for i, s in enumerate(steps) if s > 0}


def _member_steps(states: Any) -> jax.Array:
    """The members' step counters (every TrainState has `step`)."""
    return states.step
