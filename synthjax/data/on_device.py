"""The training split held on the devices, with batches drawn inside the compiled step (`data.on_device`).

A per-step Python loop fed by host threads cannot keep an accelerator busy
when a step takes a millisecond. Where the split fits in a share of device
memory, it is placed on the devices once (uint8, sharded over the data axis)
and each step draws its own batch, so the steady state has no host work.

The order is a function of the seed and the step alone: global position
`p = step * B + j` reads example `perm_e[p mod N]` of epoch `e = p // N`, where
`perm_e` is a pseudo-random permutation keyed by `fold_in(data_key, e)`
(`permuted`: each entry computed on its own, so a step costs O(B), not O(N)). So a resumed run
reads the same batches as an uninterrupted one (the step is in the state) and
the batches do not depend on the device count. It is not the grain pipeline's
order (a different generator): a run keeps one or the other (checked on resume).

Each device holds a contiguous block of the (padded) split. It gathers the
rows of the global batch that it holds, zeros for the others, and a
reduce-scatter over the data axis hands every device its block of the batch:
one batch of traffic per step, whatever the dataset size.
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from synthjax import parallel
from synthjax.data.pipeline import Preprocess
from synthjax.data.sources import DataSource
from synthjax.errors import UserError

MODES = ("auto", "on", "off")
DEVICE_MEMORY_SHARE = 0.25  # 'auto': the split may take this share of one device's memory
CPU_LIMIT_BYTES = 2**30  # devices that report no memory (CPU): hold splits up to 1 GiB
# 'auto' holds splits up to CIFAR-10's size (50,000 x 32x32x3 = 147 MiB): a larger tfds split is read
# record by record on the host before it is placed, minutes that the grain pipeline spreads over the run
AUTO_MAX_BYTES = 256 * 2**20
DATA_KEY_SALT = 0x5EED_DA7A  # the order's key: fold_in(key(seed), salt), apart from the step/eval/grid keys


@flax.struct.dataclass
class DeviceDataset:
    """A split on the devices: `images` (N_pad, ...) uint8 and `labels` (N_pad,) int32, sharded over the data axis."""

    images: jax.Array
    labels: jax.Array
    size: int = flax.struct.field(pytree_node=False)  # N: real examples (the rest is padding, never drawn)
    batch_size: int = flax.struct.field(pytree_node=False)  # global
    preprocess: Preprocess = flax.struct.field(pytree_node=False)

    def draw(self, step: jax.Array, data_key: jax.Array) -> dict:
        """This device's block of the global batch of `step`, preprocessed; call inside the mapped step."""
        order_key, noise_key = jax.random.split(data_key)
        index = batch_indices(order_key, step, self.size, self.batch_size)
        images = gather_shard(self.images, index, jnp.float32) / 255.0
        labels = gather_shard(self.labels, index, jnp.int32)
        return {"image": preprocess_on_device(images, self.preprocess, noise_key, step), "label": labels}


def data_key(seed: int) -> jax.Array:
    """The key of a run's data order (and its binarisation noise)."""
    return jax.random.fold_in(jax.random.key(seed), DATA_KEY_SALT)


def batch_indices(key: jax.Array, step: jax.Array, size: int, batch: int) -> jax.Array:
    """Example indices of global batch `step`: positions step*B .. step*B+B-1 of the per-epoch permutations."""
    step = step.astype(jnp.int32)
    # (step * batch) // size and its remainder without forming step * batch (int32 would overflow on long runs)
    q, r = step // size, step % size
    offset = (r * batch) % size + jnp.arange(batch)
    epoch = q * batch + (r * batch) // size + offset // size
    return jax.vmap(lambda e, i: permuted(key, e, i, size))(epoch, offset % size)


FEISTEL_ROUNDS = 6


def permuted(key: jax.Array, epoch: jax.Array, position: jax.Array, size: int) -> jax.Array:
    """Entry `position` of epoch `epoch`'s pseudo-random permutation of range(size), computed alone.

    A Feistel network keyed by fold_in(key, epoch) permutes the smallest even
    power of two >= size; cycle-walking (applying it again while the value is
    out of range) restricts that to a permutation of range(size). Each batch
    costs O(batch), where materialising the permutation (a sort of the whole
    split) per step cost more than the step of a small model.
    """
    half = max(1, (int(size - 1).bit_length() + 1) // 2)
    mask = jnp.uint32((1 << half) - 1)
    round_keys = jax.random.bits(jax.random.fold_in(key, epoch), (FEISTEL_ROUNDS,), jnp.uint32)

    def feistel(x):
        left, right = x >> half, x & mask
        for k in range(FEISTEL_ROUNDS):
            left, right = right, left ^ (_mix(right ^ round_keys[k]) & mask)
        return (left << half) | right

    x = feistel(position.astype(jnp.uint32))
    x = jax.lax.while_loop(lambda x: x >= size, feistel, x)
    return x.astype(jnp.int32)


def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash (murmur3's finaliser): the Feistel round function."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
    x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def gather_shard(block: jax.Array, index: jax.Array, dtype) -> jax.Array:
    """Rows `index` (global) of a dataset split over the data axis, this device's contiguous share of them."""
    shards = parallel.num_shards()
    if shards == 1:
        return block[index].astype(dtype)
    rows = block.shape[0]
    mine = (index // rows) == jax.lax.axis_index(parallel.AXIS)
    picked = block[index % rows].astype(dtype)
    picked = jnp.where(mine.reshape((-1,) + (1,) * (picked.ndim - 1)), picked, jnp.zeros((), dtype))
    return jax.lax.psum_scatter(picked, parallel.AXIS, scatter_dimension=0, tiled=True)


def preprocess_on_device(x01: jax.Array, preprocess: Preprocess, key: jax.Array, step: jax.Array) -> jax.Array:
    """The pipeline's preprocessing (data/pipeline.py) in jnp: dynamic binarisation, then the value range."""
    if preprocess.binarize:
        noise = parallel.uniform(jax.random.fold_in(key, step), x01.shape)  # drawn for the global batch: device-count invariant
        x01 = (noise < x01).astype(jnp.float32)
    lo, hi = preprocess.value_range
    return x01 * (hi - lo) + lo


def split_bytes(source: DataSource) -> int:
    """Bytes of the split as uint8 images."""
    return len(source) * int(np.prod(source.image_shape))


def device_budget_bytes() -> int:
    """What `auto` lets a split take on each device."""
    stats = jax.local_devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return int(limit * DEVICE_MEMORY_SHARE) if limit else CPU_LIMIT_BYTES


def wanted(mode: str, source: DataSource, data_shards: int) -> bool:
    """Whether to hold the split on the devices: 'on', 'off', or 'auto' (when its share per device fits the
    budget and the split is at most AUTO_MAX_BYTES)."""
    if mode not in MODES:
        raise UserError(f"data.on_device={mode!r} is not one of {', '.join(MODES)}")
    fits = split_bytes(source) / data_shards <= device_budget_bytes()
    if mode == "auto":
        return fits and split_bytes(source) <= AUTO_MAX_BYTES
    if mode == "on" and not fits:
        raise UserError(
            f"data.on_device='on' but the {source.name} split ({split_bytes(source) / 2**20:.0f} MiB as uint8) exceeds "
            f"{device_budget_bytes() / 2**20:.0f} MiB per device; use data.on_device='auto' or 'off' (the grain pipeline)"
        )
    return mode == "on"


def materialise(source: DataSource) -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8) and labels (int32) of a source, read once."""
    records = source.records
    if hasattr(records, "images"):  # in-memory arrays (bundled MNIST, npz, folders)
        images = np.asarray(records.images, np.uint8)
        labels = records.labels if records.labels is not None else np.full(len(images), -1)
        return images, np.asarray(labels, np.int32)
    rows = [records[i] for i in range(len(records))]
    return np.stack([r["image"] for r in rows]).astype(np.uint8), np.asarray([r["label"] for r in rows], np.int32)


def place(source: DataSource, dp: Any, batch_size: int, preprocess: Preprocess) -> DeviceDataset:
    """The split on the devices of `dp`, padded to a multiple of its data shards."""
    images, labels = materialise(source)
    pad = -len(images) % dp.data_shards
    if pad:
        images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
        labels = np.concatenate([labels, np.full(pad, -1, labels.dtype)])
    placed = dp.put_dataset({"images": images, "labels": labels})
    return DeviceDataset(placed["images"], placed["labels"], len(source), batch_size, preprocess)
