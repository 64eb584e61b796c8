"""Compiled calls of K train steps, and the metric window they reduce on the device.

The loop (synthjax/train.py) dispatches one call per K steps
(`train.steps_per_call`): a `lax.scan` over the steps, each drawing its batch
on the device (`data.on_device`) or taking the next of K stacked host
batches. Per-step metrics are not returned: each step adds them to a
`Window` of running sums that stays on the device, so between logging points
the host never waits on the device. At a logging point the loop fetches the
window (one small transfer) and starts a new one.

The window is saved in checkpoints, so a resumed run averages exactly the
numbers an uninterrupted one would into its next log line. Steps flagged
non-finite (synthjax.stack.NONFINITE) are left out of the sums and counted;
the first one's step and metrics are kept for the divergence message.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from synthjax.stack import NONFINITE


@flax.struct.dataclass
class Window:
    """Running sums of the metrics since the last log line; leaves carry a member axis in a stack."""

    sums: dict  # metric name -> sum over the applied steps
    applied: jax.Array  # steps whose update was applied
    steps: jax.Array  # steps in the window
    first_bad_step: jax.Array  # step of the first non-finite step (0: none)
    first_bad: dict  # its metrics

    def add(self, metrics: dict, step: jax.Array) -> "Window":
        bad = metrics[NONFINITE] > 0
        values = {k: v for k, v in metrics.items() if k != NONFINITE}
        sums = {k: self.sums[k] + jnp.where(bad, 0.0, v) for k, v in values.items()}
        new_bad = bad & (self.first_bad_step == 0)
        first_bad = {k: jnp.where(new_bad, v, self.first_bad[k]) for k, v in values.items()}
        return Window(sums, self.applied + (~bad).astype(jnp.int32), self.steps + 1,
                      jnp.where(new_bad, step, self.first_bad_step), first_bad)


def empty_window(metric_shapes: dict) -> Window:
    """A window with no steps, for metrics of these shapes (per member in a stack)."""
    # numpy, and a separate array per leaf: the window is donated to each call, and one buffer cannot be donated twice
    values = lambda: {k: np.zeros(s.shape, np.float32) for k, s in metric_shapes.items() if k != NONFINITE}
    count = lambda: np.zeros(metric_shapes[NONFINITE].shape, np.int32)
    return Window(values(), count(), count(), count(), values())


def summary(window: dict, member: int | None) -> dict[str, float]:
    """Means over the applied steps, plus `skipped`: steps whose update was dropped (host values of a window)."""
    pick = (lambda x: np.asarray(x)[member]) if member is not None else np.asarray
    applied, steps = int(pick(window["applied"])), int(pick(window["steps"]))
    out = {k: float(pick(v)) / applied for k, v in sorted(window["sums"].items())} if applied else {}
    out["skipped"] = steps - applied
    return out


def first_nonfinite(window: dict) -> tuple[int, dict[str, float]] | None:
    """(step, metrics) of a single run's first step flagged non-finite in this window, if any."""
    step = int(np.asarray(window["first_bad_step"]))
    return (step, {k: float(np.asarray(v)) for k, v in window["first_bad"].items()}) if step else None


def to_host(window: Window) -> dict:
    """The window as JSON-safe lists/floats (exact: float32 values survive the round trip through float64)."""
    return jax.tree.map(lambda x: np.asarray(x).tolist(), flax.serialization.to_state_dict(window))


def from_host(values: dict, like: Window) -> Window:
    """A window saved by `to_host`, with the dtypes and shapes of `like`."""
    return flax.serialization.from_state_dict(like, jax.tree.map(lambda a, b: np.asarray(b, a.dtype).reshape(a.shape), to_host_arrays(like), values))


def to_host_arrays(window: Window) -> dict:
    return jax.tree.map(np.asarray, flax.serialization.to_state_dict(window))


def restore_window(saved: Any, like: Window, members: int) -> Window:
    """The window a checkpoint saved (`to_host`, or the older per-step list), or `like` (empty) when none."""
    if not saved:
        return like
    return from_host(saved, like) if isinstance(saved, dict) else from_steps(saved, like, members)


def from_steps(steps: list, like: Window, members: int) -> Window:
    """A window rebuilt from a checkpoint of per-step host metrics (the format before device windows),
    so older workdirs resume: [[step, metrics], ...] for a run, one such list per member for a stack."""
    per_member = [steps] if members == 1 else steps
    host = to_host_arrays(like)
    out = jax.tree.map(np.copy, host)
    for i, rows in enumerate(per_member):
        at = () if members == 1 else (i,)
        for step, m in rows or []:
            bad = m.get(NONFINITE, 0.0) > 0
            out["steps"][at] += 1
            if bad and out["first_bad_step"][at] == 0:
                out["first_bad_step"][at] = step
            if not bad:
                out["applied"][at] += 1
                for k in out["sums"]:
                    out["sums"][k][at] += m[k]
    return flax.serialization.from_state_dict(like, out)


def scan_call(step: Callable, draw: Callable | None, k: int) -> Callable:
    """`call(state, window, data, key) -> (state, window)`: k applications of `step(state, batch, key)`.

    With `draw(data, state) -> batch` the batches are drawn on the device from
    `data`; without, `data` holds k stacked batches. k = 1 runs the step
    without a scan, so its program is exactly the plain step's.
    """

    def one(state, window, batch, key):
        state, metrics = step(state, batch, key)
        return state, window.add(metrics, step_count(state))

    def call(state, window, data, key):
        if k == 1:
            return one(state, window, draw(data, state) if draw else jax.tree.map(lambda x: x[0], data), key)

        def body(carry, batch):
            state, window = carry
            return one(state, window, draw(data, state) if draw else batch, key), None

        (state, window), _ = jax.lax.scan(body, (state, window), None if draw else data, length=k)
        return state, window

    return call


def step_count(state: Any) -> jax.Array:
    """The step just taken (a stack's first member's: all members step together)."""
    members = getattr(state, "members", state)
    count = members.step
    return count.reshape(-1)[0] if count.ndim else count
