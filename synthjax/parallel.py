"""Data parallelism: one per-device train step, run under `shard_map` in `jit` or under `pmap`.

A stack of runs (synthjax/stack.py) can also spread its members over devices:
the mesh then has a `members` axis beside `data`, states and per-member
batches are split along it, and each device trains its block of members.

Trainers write their steps per device, averaging gradients and BatchNorm
statistics over the axis `AXIS`. `DataParallel` places states and batches and
compiles a step either way; both give the same numbers. Noise drawn with
`normal` is drawn for the global batch and sliced per device, so a run's
numbers do not depend on how many devices share the batch.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


AXIS = "data"
MEMBERS = "members"
MODES = ("shard_map", "pmap")


def num_shards() -> int:
    """Number of devices along the data axis (a static int inside a mapped step)."""
    return jax.lax.psum(1, AXIS)


def device_slice(x_global: jax.Array) -> jax.Array:
    """This device's contiguous block of a global-batch array."""
    n = x_global.shape[0] // num_shards()
    return jax.lax.dynamic_slice_in_dim(x_global, jax.lax.axis_index(AXIS) * n, n)


def normal(key: jax.Array, local_shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Standard normal noise for this device's share of a global batch (device-count invariant)."""
    global_shape = (local_shape[0] * num_shards(), *local_shape[1:])
    return device_slice(jax.random.normal(key, global_shape, dtype))


def uniform(key: jax.Array, local_shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Uniform [0, 1) noise for this device's share of a global batch (device-count invariant)."""
    global_shape = (local_shape[0] * num_shards(), *local_shape[1:])
    return device_slice(jax.random.uniform(key, global_shape, dtype))


def pmean(tree: Any) -> Any:
    """The mean over the data axis. On one device an optimisation barrier instead of the all-reduce,
    which XLA still emits there as a copy of every gradient. The barrier keeps the values materialised
    where the all-reduce did: dropping both let XLA fuse gradient reductions into each of their
    consumers (measured faster on CPU; docs/performance.md)."""
    if num_shards() == 1:
        return jax.lax.optimization_barrier(tree)
    return jax.lax.pmean(tree, AXIS)


def make_mesh(devices=None, member_shards: int = 1) -> Mesh:
    """A data mesh over all devices, ordered by process so each process owns a contiguous block;
    with `member_shards` > 1 a 2-D (members, data) mesh."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    if member_shards == 1:
        return Mesh(devices, (AXIS,))
    if devices.size % member_shards:
        raise ValueError(f"sweep.member_shards={member_shards} does not divide the {devices.size} devices")
    return Mesh(devices.reshape(member_shards, -1), (MEMBERS, AXIS))


def member_block(tree: Any) -> Any:
    """This device's block of members of replicated per-member arrays (leading axis); all of them without a members axis."""
    try:
        shards = jax.lax.psum(1, MEMBERS)
    except NameError:  # no members axis in this mesh
        return tree

    def block(x):
        n = x.shape[0] // shards
        return jax.lax.dynamic_slice_in_dim(x, jax.lax.axis_index(MEMBERS) * n, n)

    return jax.tree.map(block, tree)


class DataParallel:
    """Places states and batches and compiles per-device steps for one mode ('shard_map' or 'pmap')."""

    def __init__(self, mode: str = "shard_map", mesh: Mesh | None = None, stacked_state: bool = False,
                 stacked_batch: bool = False):
        if mode not in MODES:
            raise ValueError(f"parallel mode {mode!r}; valid: {MODES}")
        self.mode = mode
        self.mesh = mesh or make_mesh()
        self.local_devices = [d for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        members = MEMBERS if MEMBERS in self.mesh.axis_names else None
        # A stack's states (and metrics) carry a leading member axis, split over `members` when the mesh has one;
        # its batches do too unless the members share one data order.
        self.state_spec = P(members) if stacked_state else P()
        self.batch_spec = P(members, AXIS) if stacked_batch else P(AXIS)

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def data_shards(self) -> int:
        """Devices along the data axis (the batch is split over these)."""
        return self.mesh.shape[AXIS]

    def compile_step(self, step: Callable, donate_state: bool = True, batch_spec: P | None = None) -> Callable:
        """Compile `step(state, batch, key) -> (state, metrics)`, written per device (`batch_spec`: the batch
        argument's layout when it is not a batch, e.g. a split held on the devices)."""
        donate = (0,) if donate_state else ()
        if self.mode == "pmap":
            return jax.pmap(step, axis_name=AXIS, in_axes=(0, 0, None), donate_argnums=donate, devices=self.local_devices)
        # check_vma=False: custom VJPs (the fast conv layers) and BatchNorm's pmean mix
        # replicated parameters with per-device activations in ways the checker rejects;
        # replication of the outputs is ensured by the pmean of gradients and metrics,
        # and tests compare against pmap and a single device.
        specs = self.state_spec
        in_specs = (specs, batch_spec or self.batch_spec, P())
        mapped = jax.shard_map(step, mesh=self.mesh, in_specs=in_specs, out_specs=specs, check_vma=False)
        return jax.jit(mapped, donate_argnums=donate)

    def compile_eval(self, fn: Callable) -> Callable:
        """Compile `fn(state, batch, key) -> metrics`, written per device; the state is not donated."""
        return self.compile_step(fn, donate_state=False)

    def _stacked(self) -> NamedSharding:
        """pmap's layout: a leading axis of size len(local_devices), one slice per device."""
        return NamedSharding(Mesh(np.asarray(self.local_devices), ("pmap",)), P("pmap"))

    def put_state(self, state: Any) -> Any:
        """Replicate a state on every device."""
        if self.mode == "pmap":
            n = len(self.local_devices)
            stacked = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), state)
            return jax.device_put(stacked, self._stacked())
        return jax.device_put(state, self.state_sharding())

    def state_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, self.state_spec)

    def host_state(self, state: Any) -> Any:
        """The state as one logical copy (for checkpoints, sampling and comparisons)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: x[0], state)
        return state

    def put_batch(self, local_batch: Any) -> Any:
        """Turn this process's numpy batch into device-sharded global arrays."""
        if self.mode == "pmap":
            n = len(self.local_devices)
            split = jax.tree.map(lambda x: x.reshape((n, x.shape[0] // n, *x.shape[1:])), local_batch)
            return jax.device_put(split, self._stacked())
        sharding = NamedSharding(self.mesh, self.batch_spec)
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)

    def put_dataset(self, arrays: dict) -> dict:
        """Numpy arrays of a whole split (the same on every process), each device holding a contiguous block
        of rows along the data axis (replicated over a `members` axis); rows must divide evenly."""
        if self.mode == "pmap":
            n = len(self.local_devices)
            split = {k: v.reshape((n, v.shape[0] // n, *v.shape[1:])) for k, v in arrays.items()}
            return jax.device_put(split, self._stacked())
        sharding = NamedSharding(self.mesh, P(AXIS))
        return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx]) for k, v in arrays.items()}

    def compile_call(self, call: Callable, data_spec: P) -> Callable:
        """Compile `call(state, window, data, key) -> (state, window)`, written per device; the state and the
        window (per-member like the state) are donated, `data` is laid out as `data_spec` (pmap: axis 0)."""
        if self.mode == "pmap":
            return jax.pmap(call, axis_name=AXIS, in_axes=(0, 0, 0, None), donate_argnums=(0, 1), devices=self.local_devices)
        specs = (self.state_spec, self.state_spec, data_spec, P())
        mapped = jax.shard_map(call, mesh=self.mesh, in_specs=specs, out_specs=(self.state_spec, self.state_spec), check_vma=False)
        return jax.jit(mapped, donate_argnums=(0, 1))

    def steps_batch_spec(self) -> P:
        """The layout of K stacked batches (K, batch...): the batch layout behind a replicated steps axis."""
        return P(None, *self.batch_spec)

    def put_batches(self, local_batches: Any) -> Any:
        """Like `put_batch` for this process's K stacked batches (K, local batch, ...)."""
        if self.mode == "pmap":
            n = len(self.local_devices)
            split = jax.tree.map(lambda x: np.swapaxes(x.reshape((x.shape[0], n, x.shape[1] // n, *x.shape[2:])), 0, 1), local_batches)
            return jax.device_put(split, self._stacked())
        sharding = NamedSharding(self.mesh, self.steps_batch_spec())
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batches)

    def logical_shapes(self, shapes: Any) -> Any:
        """`jax.eval_shape` results of a compiled step as one logical copy (pmap's have a device axis first)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape[1:], s.dtype), shapes)
        return shapes

    def metrics(self, metrics: Any) -> Any:
        """Metrics as one logical copy (pmap returns one per device, all equal after pmean)."""
        return self.host_state(metrics)
