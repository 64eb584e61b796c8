"""Features of a model's samples, drawn and extracted on every device of every process.

Sample i is image `i % chunk` of chunk `c = i // chunk`, drawn as
`trainer.sample(state, fold_in(key(seed), c), chunk)`: exactly the images
`python -m synthjax.sample --num N --seed S` exports (`synthjax.sample.generate`,
chunk 1000). The chunks are dealt out in rounds over the data axis of a mesh
of all devices (of all processes, each owning a contiguous block): in round r
the device at data position j draws chunk `r * devices + j`, turns it into
uint8 and runs the feature extractor on it, in one compiled program. A
round's features are gathered on every process (`process_allgather`) and
folded chunk by chunk, in chunk order, into a float64
`GaussianStatsAccumulator`. A chunk's noise depends on its index alone, so
the images, features and statistics are the same on 1, 4 or 64 devices; the
last round's chunks past the end are drawn and discarded.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from synthjax.metrics import FeatureExtractor, GaussianStatsAccumulator
from synthjax.parallel import AXIS, make_mesh

CHUNK = 1000  # synthjax.sample.generate's batch: the same draws


def round_chunks(num_chunks: int, num_devices: int) -> np.ndarray:
    """(rounds, devices) chunk indices: round r, data position j draws chunk r * devices + j; indices
    >= num_chunks are padding, drawn and dropped."""
    rounds = -(-num_chunks // num_devices)
    return np.arange(rounds * num_devices).reshape(rounds, num_devices)


def process_chunks(num_chunks: int, device_processes: Sequence[int], process: int) -> list[int]:
    """The chunks `process` draws, in order (padding included), given the process of each device
    along the data axis."""
    positions = [j for j, p in enumerate(device_processes) if p == process]
    return round_chunks(num_chunks, len(device_processes))[:, positions].ravel().tolist()


def to_uint8(images01: jax.Array) -> jax.Array:
    """`synthjax.images.to_uint8` in JAX: [0, 1] floats -> uint8, rounding half to even like np.rint."""
    return jnp.clip(jnp.rint(images01.astype(jnp.float32) * 255.0), 0, 255).astype(jnp.uint8)


def extract_in_batches(fn: Callable, variables: Any, images: jax.Array, batch: int) -> dict:
    """`fn(variables, images)` over `batch`-image slices (lax.map, one compiled shape), the last padded
    with copies of the first image as `FeatureExtractor.__call__` pads."""
    n = images.shape[0]
    batch = min(batch, n)
    pad = -n % batch
    if pad:
        images = jnp.concatenate([images, jnp.repeat(images[:1], pad, axis=0)])
    out = jax.lax.map(lambda x: fn(variables, x), images.reshape(-1, batch, *images.shape[1:]))
    return {k: v.reshape(-1, *v.shape[2:])[:n] for k, v in out.items() if v is not None}


def _replicate(tree: Any, mesh: Mesh) -> Any:
    """Host or single-device arrays as arrays replicated over `mesh` (every process passes the same values)."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


class SampleFeatures:
    """Draws a model's samples and extracts their features over `mesh` (default: all devices).

    `__call__(state, num, seed)` returns, on every process, `features` (num, D)
    and the extractor's other outputs (logits), plus `stats`: the float64
    (mu, sigma) of the features. Extractors without a `device_form` run on the
    host after the images are gathered.
    """

    def __init__(self, trainer, extractor: FeatureExtractor, mesh: Mesh | None = None, chunk: int = CHUNK):
        self.trainer, self.extractor, self.chunk = trainer, extractor, chunk
        self.mesh = mesh or make_mesh()
        self.devices = self.mesh.shape[AXIS]
        form = extractor.device_form()
        self.fn, variables = form if form is not None else (None, {})
        self.variables = _replicate(variables, self.mesh)
        self._program = self._compile()

    def _compile(self) -> Callable:
        sample, fn, chunk = self.trainer.sample, self.fn, self.chunk
        channels, batch, variables_spec = self.extractor.input_spec.channels, self.extractor.batch_size, P()

        def per_device(state, variables, key_data):
            images = to_uint8(sample(state, jax.random.wrap_key_data(key_data[0]), chunk))
            if images.shape[-1] == 1 and channels == 3:  # grey to RGB extractors, as evaluate.to_extractor_input
                images = jnp.repeat(images, 3, axis=-1)
            return {"images": images} if fn is None else extract_in_batches(fn, variables, images, batch)

        mapped = jax.shard_map(per_device, mesh=self.mesh, in_specs=(P(), variables_spec, P(AXIS)),
                               out_specs=P(AXIS), check_vma=False)
        return jax.jit(mapped)

    def chunk_keys(self, seed: int, num_chunks: int) -> np.ndarray:
        """(rounds * devices, 2) raw keys: row c is `fold_in(key(seed), c)`, as `synthjax.sample.generate` draws."""
        base = jax.random.key(seed)
        count = round_chunks(num_chunks, self.devices).size
        return np.asarray(jax.vmap(lambda c: jax.random.key_data(jax.random.fold_in(base, c)))(jnp.arange(count)))

    def __call__(self, state: Any, num: int, seed: int) -> dict:
        num_chunks = -(-num // self.chunk)
        keys, state = self.chunk_keys(seed, num_chunks), _replicate(state, self.mesh)
        sharding = NamedSharding(self.mesh, P(AXIS))
        acc, parts = GaussianStatsAccumulator(), []
        for row in round_chunks(num_chunks, self.devices):
            round_keys = keys[row]
            key_array = jax.make_array_from_callback(round_keys.shape, sharding, lambda index: round_keys[index])
            out = multihost_utils.process_allgather(self._program(state, self.variables, key_array), tiled=True)
            for j, c in enumerate(row[row < num_chunks]):
                rows = slice(j * self.chunk, j * self.chunk + min(self.chunk, num - c * self.chunk))
                part = {k: np.asarray(v[rows]) for k, v in out.items()}
                if self.fn is None:
                    part = self.extractor(part.pop("images"))
                acc.update(part["features"])
                parts.append(part)
        result = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if parts[0][k] is not None}
        result["stats"] = acc.finalize(allow_singular=True)
        return result
