"""What a run writes for people to read: metrics.jsonl, timing.jsonl, TensorBoard scalars and sample
grids (`MetricWriter`), and the progress bar.

Only process 0 writes. metrics.jsonl is a pure function of config and seed;
wall-clock figures go to timing.jsonl. On resume the lines a killed run
logged after its last checkpoint are dropped first (`synthjax.workdir.truncate_jsonl`),
so the file reads as if the run had never stopped.
"""
from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np

from synthjax import images
from synthjax.files import write_atomic
from synthjax.workdir import truncate_jsonl


class MetricWriter:
    """metrics.jsonl (deterministic), timing.jsonl (wall clock) and TensorBoard files; only process 0 writes.

    A stack of several members writes one metrics.jsonl whose rows carry the
    member's index (`"member": i`, in the order of `members.json`), and one
    TensorBoard run per member (`tensorboard/<member name>`); a single run's
    rows have no `member` field.
    """

    def __init__(self, workdir: str, enabled: bool, start_step: int, members: list[str] | None = None):
        self.enabled = enabled
        if not enabled:
            return
        SummaryWriter = import_summary_writer()
        path = os.path.join(workdir, "metrics.jsonl")
        # Lines after the checkpoint we start from (all of them on a fresh start) were
        # logged by a run that was killed; this run logs those steps again.
        truncate_jsonl(path, start_step)
        self.jsonl = open(path, "a")
        self.timing = open(os.path.join(workdir, "timing.jsonl"), "a")
        tb = os.path.join(workdir, "tensorboard")
        self.stacked = members is not None
        self.tb = [SummaryWriter(os.path.join(tb, name)) for name in members] if self.stacked else [SummaryWriter(tb)]
        # Sample grids are fetched, encoded (once, for the PNG file and TensorBoard) and written by one
        # background thread, so the loop goes on dispatching steps; that thread still shares the interpreter
        # with the loop, hence the cheap encoding (docs/performance.md, "The loop end to end").
        self.grids = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synthjax-grids")
        self.pending: list = []
        self.tb_lock = threading.Lock()  # TensorBoard writes come from both threads

    def write(self, step: int, scalars: dict[str, float], member: int = 0) -> None:
        if not self.enabled:
            return
        index = {"member": member} if self.stacked else {}
        self.jsonl.write(json.dumps({"step": step, **index, **scalars}) + "\n")
        self.jsonl.flush()
        with self.tb_lock:
            self._tensorboard(self.tb[member], step, scalars)

    def write_timing(self, step: int, timing: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.timing.write(json.dumps({"step": step, **timing}) + "\n")
        self.timing.flush()
        with self.tb_lock:
            self._tensorboard(self.tb[0], step, timing)

    def write_grid(self, path: str, step: int, samples: jax.Array, member: int = 0) -> None:
        """Images in [0, 1] (a device array, possibly still being computed) as one PNG grid at `path` and
        a TensorBoard image, written in the background; `wait` returns once they are on disk."""
        if self.enabled:
            self._raise_failed()
            self.pending.append(self.grids.submit(self._write_grid, path, step, samples, member))

    def _write_grid(self, path: str, step: int, samples: jax.Array, member: int) -> None:
        grid = images.make_grid(images.to_uint8(np.asarray(samples)))
        png = images.png_bytes(grid)
        write_atomic(path, png)
        with self.tb_lock:  # the same PNG: tensorboardX's add_image would resample and encode it again
            self.tb[member].file_writer.add_summary(png_summary("samples", grid.shape, png), step)
            self.tb[member].flush()

    def _raise_failed(self) -> None:
        """Re-raise the error of a background grid write that failed (e.g. a full disk)."""
        for f in [f for f in self.pending if f.done()]:
            self.pending.remove(f)
            f.result()

    def wait(self) -> None:
        """Block until every sample grid handed to `write_grid` is written; re-raise a failure."""
        if self.enabled:
            pending, self.pending = self.pending, []
            for f in pending:
                f.result()

    @staticmethod
    def _tensorboard(tb, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            if isinstance(value, (int, float)):  # e.g. eval/split, cadence_seconds: in the JSONL files only
                tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.grids.shutdown(wait=True)
            self.jsonl.close()
            self.timing.close()
            for tb in self.tb:
                tb.close()


def png_summary(tag: str, shape: tuple[int, int, int], png: bytes):
    """A TensorBoard image summary holding an already encoded PNG of `shape` (H, W, C)."""
    from tensorboardX.proto.summary_pb2 import Summary

    image = Summary.Image(height=shape[0], width=shape[1], colorspace=shape[2], encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=image)])


def import_summary_writer():
    """tensorboardX's SummaryWriter, imported without PyTorch.

    tensorboardX imports torch when it is installed only to accept torch
    tensors; that costs seconds at every start (and every resume). Scalars
    never need it, so torch is hidden during the import and left importable
    afterwards.
    """
    import sys

    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


class ProgressBar:
    """tqdm progress bar with step rate and current losses (a no-op when disabled)."""

    def __init__(self, start: int, total: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.last = start

    def update(self, step: int, scalars: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in scalars.items()}, refresh=False)
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
