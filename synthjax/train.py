"""The training loop: cadence of logging, evaluation, sample grids and checkpoints.

`train_and_evaluate(config, workdir)` is all of it. It talks to the model
family only through the trainer interface (`synthjax.trainers.base`), so
every family trains, resumes, logs and samples the same way.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from synthjax import config as config_lib
from synthjax import images
from synthjax.checkpoint import Checkpointer
from synthjax.data import build_pipeline, get_source, prefetch_to_device
from synthjax.errors import UserError
from synthjax.parallel import DataParallel
from synthjax.trainers import build_trainer
from synthjax.trainers.base import all_finite

# Keys whose change makes an existing checkpoint meaningless for this config.
STRUCTURAL_PREFIXES = ("model.", "data.name", "data.image_size", "data.path", "data.binarize", "objective.likelihood")
MIN_FREE_BYTES = 200 * 2**20


class Diverged(UserError):
    """Training produced a non-finite loss or gradient and the policy is 'halt'."""


def guard_nonfinite(step: Callable, policy: str) -> Callable:
    """Wrap a train step to flag non-finite metrics on device; with 'skip', drop such updates in the step.

    The flag travels with the metrics, so detection costs no host sync; the
    loop reads it at logging and checkpoint cadence.
    """

    def guarded(state, batch, key):
        new_state, metrics = step(state, batch, key)
        ok = all_finite(metrics)
        if policy == "skip":
            new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
            new_state = new_state.replace(step=state.step + 1)
        return new_state, {**metrics, "nonfinite": 1.0 - ok.astype(jnp.float32)}

    return guarded


class MetricWriter:
    """metrics.jsonl plus TensorBoard event files; only process 0 writes."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        if enabled:
            from tensorboardX import SummaryWriter

            self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Create the workdir, prove it writable with free space, and refuse a workdir of another config."""
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, ".write_probe")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"workdir {workdir!r} is not writable ({e.strerror}); choose another --workdir") from None
    free = shutil.disk_usage(workdir).free
    if free < MIN_FREE_BYTES:
        raise UserError(f"workdir {workdir!r} has only {free // 2**20} MiB free; at least {MIN_FREE_BYTES // 2**20} MiB needed")
    path = os.path.join(workdir, "config.json")
    new = flatten(config_lib.to_dict(config))
    if os.path.exists(path):
        with open(path) as f:
            old = flatten(json.load(f))
        diffs = [
            f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
            for k in sorted(set(old) | set(new))
            if k.startswith(STRUCTURAL_PREFIXES) and old.get(k) != new.get(k)
        ]
        if diffs:
            raise UserError(
                f"workdir {workdir!r} holds a run of a different model or data ({'; '.join(diffs)}); "
                "refusing to resume it. Use a new --workdir, or restore the original config"
            )
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(config_lib.to_dict(config), f, indent=2, sort_keys=True)


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def fetch_mean(pending: list[dict], dp: DataParallel) -> dict[str, float]:
    """Bring the metrics of the last steps to the host (one sync) and average them."""
    host = jax.device_get([dp.metrics(m) for m in pending])
    return {k: float(np.mean([m[k] for m in host])) for k in host[0]}


def evaluate(eval_fn, state, pipeline, dp: DataParallel, key: jax.Array, num_batches: int) -> dict[str, float]:
    """Average the trainer's eval metrics over `num_batches` held-out batches."""
    results = [eval_fn(state, dp.put_batch(next(pipeline)), jax.random.fold_in(key, i)) for i in range(num_batches)]
    return {f"eval/{k}": v for k, v in fetch_mean(results, dp).items()}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir`, resuming from its latest checkpoint; returns the final metrics."""
    dp = DataParallel(config.train.parallel)
    config_lib.validate(config, dp.num_devices)
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    prepare_workdir(workdir, config)
    is_main = jax.process_index() == 0
    t = config.train

    pipeline = build_pipeline(source, t.batch_size, config.seed, trainer.preprocess, config.data.num_threads, config.data.prefetch)
    eval_pipeline = build_pipeline(source, t.batch_size, config.seed + 7919, trainer.preprocess, 0, 2)
    init_key, step_key, eval_key, grid_key = jax.random.split(jax.random.key(config.seed), 4)

    checkpointer = Checkpointer(workdir, keep=t.keep)
    state = jax.jit(trainer.create_state)(init_key)  # one compile beats op-by-op initialisation
    restored = checkpointer.restore(state)
    start = 0
    if restored is not None:
        state, meta, start = restored
        pipeline.set_state(meta["data"])
        print(f"synthjax: resuming {workdir} from step {start}")
    state = dp.put_state(state)

    step_fn = dp.compile_step(guard_nonfinite(trainer.train_step, t.on_nonfinite))
    eval_fn = dp.compile_eval(trainer.eval_step)
    sample_fn = jax.jit(trainer.sample, static_argnums=2)
    writer = MetricWriter(workdir, is_main)
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)

    def save_grid(step: int) -> str:
        path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
        if is_main:  # the same grid noise every time, so progress is visible
            images.save_grid(path, np.asarray(sample_fn(dp.host_state(state), grid_key, t.num_grid)))
        return path

    last_good = checkpointer.latest_step()

    def check_finite(step: int, scalars: dict[str, float]) -> None:
        if t.on_nonfinite == "halt" and scalars.get("nonfinite", 0.0) > 0:
            bad = {k: v for k, v in scalars.items() if not np.isfinite(v)}
            where = f"checkpoint step {last_good} in {checkpointer.directory} (left intact)" if last_good else "no checkpoint yet"
            raise Diverged(
                f"training diverged by step {step}: non-finite {bad or 'gradients'}; last good: {where}. "
                "Lower opt.lr, or set train.on_nonfinite='skip' to drop such updates"
            )

    batches = prefetch_to_device(pipeline, dp.put_batch)
    pending: list[dict] = []
    scalars: dict[str, float] = {}
    progress = ProgressBar(start, t.num_steps, t.progress and is_main)
    t0, step = time.perf_counter(), start
    for step in range(start + 1, t.num_steps + 1):
        batch, data_state = next(batches)
        state, metrics = step_fn(state, batch, step_key)
        pending.append(metrics)
        if step % t.log_every == 0 or step == t.num_steps:
            scalars = fetch_mean(pending, dp)
            pending = []
            check_finite(step, scalars)
            scalars["steps_per_sec"] = (step - start) / (time.perf_counter() - t0)
            writer.write(step, scalars)
            progress.update(step, scalars)
        if t.eval_every and step % t.eval_every == 0:
            writer.write(step, evaluate(eval_fn, state, eval_pipeline, dp, eval_key, t.eval_batches))
        if step % t.sample_every == 0:
            save_grid(step)
        if step % t.ckpt_every == 0 or step == t.num_steps:
            if pending:  # never checkpoint a state that went non-finite since the last check
                check_finite(step, fetch_mean(pending, dp))
            checkpointer.save(step, dp.host_state(state), {"data": data_state, "step": step, "family": trainer.family})
            last_good = step
    progress.close()

    elapsed = time.perf_counter() - t0
    final_eval = evaluate(eval_fn, state, eval_pipeline, dp, eval_key, t.eval_batches)
    writer.write(step, final_eval)
    grid = save_grid(step)
    checkpointer.close()
    writer.close()
    summary = {**scalars, **final_eval, "step": step, "seconds": elapsed}
    done = step - start
    rate = f"{done / elapsed:.2f} steps/s" if done and elapsed > 0 else "no new steps"
    losses = ", ".join(f"{k}={v:.4g}" for k, v in final_eval.items())
    print(f"synthjax: {config.model.family}/{config.model.arch} step {step}/{t.num_steps} ({rate}); {losses}; grid {grid}; checkpoints {checkpointer.directory}")
    return summary


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
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in scalars.items() if k != "nonfinite"}, refresh=False)
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
