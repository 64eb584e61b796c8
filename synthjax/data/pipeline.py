"""The one batching pipeline: shuffle, repeat, preprocess, shard by process, batch, prefetch.

Built on grain's `MapDataset`, so an iterator's position is a small dict
(`get_state` / `set_state`) that checkpoints hold, and a resumed run reads the
same batches as an uninterrupted one. Randomness (shuffle order, dynamic
binarisation) depends only on the seed and the global element index, so the
batches do not depend on how many processes read them.
"""
from __future__ import annotations

import collections
import dataclasses
import sys
from typing import Any, Callable, Iterable, Iterator

import grain
import numpy as np

from synthjax.data.sources import DataSource


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a trainer wants its images: value range and optional dynamic binarisation."""

    value_range: tuple[float, float] = (-1.0, 1.0)
    binarize: bool = False

    def __call__(self, record: dict, rng: np.random.Generator) -> dict:
        x = record["image"].astype(np.float32) / 255.0
        if self.binarize:
            # Dynamic binarisation: a fresh Bernoulli draw per visit, the standard
            # protocol for binarised-MNIST likelihoods.
            x = (rng.random(x.shape, dtype=np.float32) < x).astype(np.float32)
        lo, hi = self.value_range
        return {"image": x * (hi - lo) + lo, "label": record["label"]}


class ProcessBlocks(grain.MapDataset):
    """This process's contiguous block of every global batch.

    Process p of P takes elements [p*b, (p+1)*b) of each global batch of
    P*b elements, so device d of a multi-host run sees exactly the elements
    device d of a single-host run with the same global batch would see.
    """

    def __init__(self, parent: grain.MapDataset, index: int, count: int, per_process_batch: int):
        super().__init__(parent)
        self._index, self._count, self._b = index, count, per_process_batch

    def __len__(self) -> int:
        return len(self._parent) // self._count

    def __getitem__(self, k):
        if isinstance(k, slice):
            return self.slice(k)
        batch, r = divmod(k, self._b)
        return self._parent[(batch * self._count + self._index) * self._b + r]

    def __str__(self) -> str:
        return f"ProcessBlocks({self._index}/{self._count})"


@dataclasses.dataclass
class Pipeline:
    """A checkpointable iterator of per-process numpy batches `{'image', 'label'}`."""

    iterator: Any
    per_process_batch: int

    def __iter__(self) -> "Pipeline":
        return self

    def __next__(self) -> dict:
        return next(self.iterator)

    def get_state(self) -> dict:
        return self.iterator.get_state()

    def set_state(self, state: dict) -> None:
        self.iterator.set_state(state)


def build_pipeline(
    source: DataSource,
    global_batch: int,
    seed: int,
    preprocess: Preprocess,
    num_threads: int = 2,
    prefetch: int = 8,
    shard: grain.sharding.ShardOptions | None = None,
) -> Pipeline:
    """Shuffle (a new order each epoch), repeat forever, preprocess, take this process's block, batch."""
    shard = shard or grain.sharding.ShardByJaxProcess(drop_remainder=True)
    if global_batch % shard.shard_count:
        raise ValueError(f"global batch {global_batch} not divisible by {shard.shard_count} processes")
    per_process = global_batch // shard.shard_count
    ds = grain.MapDataset.source(source.records).shuffle(seed=seed).repeat()
    ds = ds.random_map(preprocess, seed=seed + 1)
    ds = ProcessBlocks(ds, shard.shard_index, shard.shard_count, per_process)
    ds = ds.batch(per_process, drop_remainder=True)
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return Pipeline(iter(ds.to_iter_dataset(read)), per_process)


def feed_calls(next_call: Callable[[int], Any], sizes: Iterable[int], depth: int = 2) -> Iterator[Any]:
    """Yield `next_call(k)` for each call size k of the loop, `depth` calls ahead.

    The training loop's data feed: `next_call` reads and transfers the
    batches of one compiled call (k steps) and returns them with the data
    state just after them, which is what a checkpoint taken after that call
    must hold (the pipeline itself has run ahead by the prefetch depth).
    """
    sizes = iter(sizes)
    queue: collections.deque = collections.deque()

    def enqueue() -> None:
        k = next(sizes, None)
        if k is not None:
            queue.append(next_call(k))

    for _ in range(depth):
        enqueue()
    while queue:
        enqueue()
        yield queue.popleft()
