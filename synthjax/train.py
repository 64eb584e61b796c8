"""The training loop: cadence of logging, evaluation, sample grids and checkpoints.

`train_and_evaluate(config, workdir)` is all of it. It talks to the model
family only through the trainer interface (`synthjax.trainers.base`), so
every family trains, resumes, logs and samples the same way.

Reliability contract (tested in tests/test_resume.py and friends):
- Exact resume: a checkpoint holds the TrainState (parameters, optimiser,
  EMA and BatchNorm state, step), the data iterator's position and the
  per-step metrics not yet logged; keys are derived from the seed and the
  step. A run killed at any point and rerun with the same command reaches
  the same parameters, bit for bit on CPU, and the same metrics.jsonl.
- metrics.jsonl is a pure function of config and seed (byte-identical on
  CPU); wall-clock figures go to timing.jsonl instead.
- Non-finite losses or gradients are flagged inside the step (no host sync)
  and acted on at logging/checkpoint cadence: `train.on_nonfinite='halt'`
  stops before any later checkpoint is written; 'skip' drops the update
  inside the step and counts it in the `skipped` metric.
- Multi-host: every process runs this same function; only process 0 writes
  config.json, metrics, TensorBoard files and sample grids; orbax
  coordinates the checkpoint writes.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from synthjax import config as config_lib
from synthjax import images
from synthjax.checkpoint import Checkpointer
from synthjax.data import build_pipeline, get_source, prefetch_to_device
from synthjax.errors import UserError
from synthjax.evaluate import periodic_evaluator
from synthjax.models import formulations
from synthjax.parallel import DataParallel
from synthjax.trainers import build_trainer
from synthjax.trainers.base import all_finite

# Keys whose change makes an existing checkpoint meaningless for this config.
# Config keys a checkpoint depends on (the model, or the shape and kind of its inputs): a change refuses the workdir.
STRUCTURAL_PREFIXES = ("model.", "data.name", "data.image_size", "data.path", "data.binarize", "data.seq_len",
                       "data.frame_size", "objective.likelihood")
MIN_FREE_BYTES = 200 * 2**20
BARRIER_TIMEOUT_S = 3600  # how long processes wait for each other to compile (big models, slow hosts)
NONFINITE = "nonfinite"  # per-step flag added by guard_nonfinite; becomes the `skipped` count in the logs


class Diverged(UserError):
    """Training produced a non-finite loss or gradient and the policy is 'halt'."""


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


class MetricWindow:
    """The per-step metrics since the last log line.

    Device arrays are appended every step and brought to the host in one
    transfer at logging or checkpoint cadence. The host values are saved in
    checkpoints, so a resumed run averages exactly the same numbers into its
    next log line as an uninterrupted one.
    """

    def __init__(self, host: list | None = None):
        self.device: list[tuple[int, Any]] = []
        self.host: list[tuple[int, dict[str, float]]] = [(s, m) for s, m in (host or [])]

    def add(self, step: int, metrics: Any) -> None:
        self.device.append((step, metrics))

    def sync(self, dp: DataParallel) -> None:
        """Fetch the pending device metrics (one host sync)."""
        if not self.device:
            return
        fetched = jax.device_get([dp.metrics(m) for _, m in self.device])
        self.host += [(s, {k: float(v) for k, v in m.items()}) for (s, _), m in zip(self.device, fetched)]
        self.device = []

    def first_nonfinite(self) -> tuple[int, dict[str, float]] | None:
        """(step, metrics) of the first step flagged non-finite, if any."""
        return next(((s, m) for s, m in self.host if m.get(NONFINITE, 0.0) > 0), None)

    def summary(self) -> dict[str, float]:
        """Means over the steps whose update was applied, plus `skipped`: how many were dropped."""
        good = [m for _, m in self.host if m.get(NONFINITE, 0.0) == 0]
        keys = sorted({k for m in good for k in m} - {NONFINITE})
        out = {k: float(np.mean([m[k] for m in good])) for k in keys}
        out["skipped"] = len(self.host) - len(good)
        return out

    def clear(self) -> None:
        self.host = []

    def to_meta(self) -> list:
        """JSON-safe host values (a skipped step keeps only its flag: its losses are NaN)."""
        return [[s, m if m.get(NONFINITE, 0.0) == 0 else {NONFINITE: 1.0}] for s, m in self.host]


class MetricWriter:
    """metrics.jsonl (deterministic), timing.jsonl (wall clock) and TensorBoard files; only process 0 writes."""

    def __init__(self, workdir: str, enabled: bool, start_step: int):
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
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self.jsonl.flush()
        self._tensorboard(step, scalars)

    def write_timing(self, step: int, timing: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.timing.write(json.dumps({"step": step, **timing}) + "\n")
        self.timing.flush()
        self._tensorboard(step, timing)

    def _tensorboard(self, step: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            if not isinstance(value, str):  # e.g. eval/split: in metrics.jsonl, not a TensorBoard scalar
                self.tb.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.timing.close()
            self.tb.close()


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


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drop lines logged after `last_step` (by a run killed after its last checkpoint); atomic."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    # A kill can also leave a torn last line: keep only complete lines up to last_step.
    kept = [line for line in lines if line.endswith("\n") and _jsonl_step(line) <= last_step]
    if len(kept) != len(lines):
        write_atomic(path, "".join(kept))


def _jsonl_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename, so readers never see half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Create the workdir, prove it writable with free space, and refuse a workdir of another config.

    Runs before anything is compiled or trained, so these mistakes cost seconds.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_probe{jax.process_index()}")  # one per process: no races
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"workdir {workdir!r} is not writable ({e.strerror or e}); choose another --workdir") from None
    free = shutil.disk_usage(workdir).free
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"workdir {workdir!r} has only {free // 2**20} MiB free; at least {MIN_FREE_BYTES // 2**20} MiB are needed "
            "for checkpoints and samples. Free some space or choose another --workdir"
        )
    path = os.path.join(workdir, "config.json")
    new = flatten(config_lib.to_dict(config))
    if os.path.exists(path):
        old = flatten(_read_json(path))
        # A field the code no longer has (deleted because nothing read it) cannot have shaped the saved run.
        retired = sorted(set(old) - set(new))
        if retired and jax.process_index() == 0:
            print(f"synthjax: ignoring settings of {workdir}/config.json that are no longer config fields: {', '.join(retired)}")
        changed = [k for k in sorted(new) if old.get(k) != new.get(k)]
        structural = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed if k.startswith(STRUCTURAL_PREFIXES)]
        if structural:
            raise UserError(
                f"workdir {workdir!r} holds a run of a different model or data ({'; '.join(structural)}); "
                "refusing to resume it. Use a new --workdir, or restore the original config"
            )
        if changed and jax.process_index() == 0:
            print(f"synthjax: continuing {workdir} with changed settings: " + "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed))
    if jax.process_index() == 0:
        write_atomic(path, json.dumps(config_lib.to_dict(config), indent=2, sort_keys=True))


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}); it should hold the config of the run in this workdir. Fix or remove it") from None


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_inputs(trainer, source) -> None:
    """Requirements a trainer declares (`Trainer.requires_labels`), checked before anything is compiled."""
    if trainer.requires_labels and not source.has_labels:
        raise UserError(
            f"model.family={trainer.family!r} is conditional and needs class labels, but dataset {source.name!r} has none; "
            "use a labelled dataset (an .npz with a 'labels' array, or a folder with one sub-folder per class)"
        )


def run_description(config: ml_collections.ConfigDict, trainer) -> str:
    """The backend, devices, compute dtype, convolution formulations and XLA flags this run uses."""
    convs = formulations.plan_for(config.model, trainer.dtype)
    devices = f"{jax.device_count()} {jax.default_backend()} device(s)"
    flags = os.environ.get("XLA_FLAGS", "") or "none"
    return (f"{devices}, compute {jnp.dtype(trainer.dtype).name}; {formulations.summary_line(convs, trainer.dtype)}; "
            f"XLA_FLAGS: {flags}")


def state_sharding(dp: DataParallel) -> jax.sharding.Sharding:
    """Where one logical copy of the state lives: replicated over the mesh (shard_map) or on the first local device (pmap)."""
    if dp.mode == "pmap":
        return SingleDeviceSharding(dp.local_devices[0])
    return NamedSharding(dp.mesh, P())


def init_state(trainer, key: jax.Array, dp: DataParallel) -> Any:
    """A fresh state, initialised in one compiled program (not op by op) and placed for `dp`.

    Under shard_map every process runs the same program, so multi-host runs
    get one global replicated array per leaf without any host transfer.
    """
    return jax.jit(trainer.create_state, out_shardings=state_sharding(dp))(key)


def abstract_state(trainer, key: jax.Array, dp: DataParallel) -> Any:
    """Shapes, dtypes and shardings of the state, for restoring a checkpoint without initialising."""
    shapes = jax.eval_shape(trainer.create_state, key)
    sharding = state_sharding(dp)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def local_copy(tree: Any) -> Any:
    """This process's copy of a replicated state: usable by one process alone (no collectives)."""
    return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def warm_up(dp: DataParallel, programs: list[tuple[Callable, tuple]], compile_sampler: Callable, is_main: bool) -> None:
    """Compile the step, eval and sampler programs now, then wait until every process has.

    Processes finish compiling at different times (a persistent-cache hit on
    one, a fresh compile on another: JAX only writes the cache from process
    0, and CPU cache keys differ between processes). The first collective
    would then wait for the slowest one, and gloo (JAX's CPU collectives)
    gives up after 30 s. Compiling ahead and meeting at a coordination-service
    barrier (which waits up to BARRIER_TIMEOUT_S) removes that skew. The jit
    calls in the loop then reuse these compilations.
    """
    for fn, args in programs:
        fn.lower(*args).compile()
    if is_main:
        compile_sampler()  # only process 0 draws sample grids; it must not keep the others waiting later
    barrier("synthjax_compiled")


def barrier(name: str) -> None:
    """Wait until all processes get here (a no-op with one process); not a device collective."""
    if jax.process_count() > 1:
        from orbax.checkpoint import multihost

        multihost.get_barrier_sync_fn()(key=name, timeout_ms=BARRIER_TIMEOUT_S * 1000)


def evaluate(eval_fn, state, pipeline, dp: DataParallel, key: jax.Array, num_batches: int) -> dict[str, float]:
    """Average the trainer's eval metrics over `num_batches` batches."""
    results = [eval_fn(state, dp.put_batch(next(pipeline)), jax.random.fold_in(key, i)) for i in range(num_batches)]
    host = jax.device_get([dp.metrics(m) for m in results])
    return {f"eval/{k}": float(np.mean([m[k] for m in host])) for k in sorted(host[0])}


def divergence_message(policy_step: int, bad: tuple[int, dict[str, float]], last_good: int | None, directory: str) -> str:
    """Name the step that blew up, its non-finite values, and the checkpoint to go back to."""
    step, metrics = bad
    values = {k: v for k, v in metrics.items() if k != NONFINITE and not np.isfinite(v)}
    what = ", ".join(f"{k}={v}" for k, v in values.items()) or "the gradients"
    if last_good is not None:
        where = f"step {last_good} in {directory} (left intact; nothing later was saved)"
        rerun = "rerun the same command to resume from it"
    else:
        where = "none (no checkpoint had been written yet)"
        rerun = "rerun to start again"
    return (
        f"training diverged at step {step} (detected at step {policy_step}): non-finite {what}. "
        f"Last good checkpoint: {where}. Lower opt.lr (or set opt.grad_clip), or set "
        f"train.on_nonfinite='skip' to drop such updates; {rerun}"
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Train `config` in `workdir`, resuming from its latest checkpoint; returns the final metrics."""
    dp = DataParallel(config.train.parallel)
    config_lib.validate(config, dp.num_devices)
    if dp.mode == "pmap" and jax.process_count() > 1:
        raise UserError(
            "train.parallel='pmap' runs on one process only (its per-device state copies cannot be checkpointed "
            "by several hosts); use the default train.parallel='shard_map' for multi-host runs"
        )
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    check_inputs(trainer, source)
    prepare_workdir(workdir, config)
    if jax.process_index() == 0:
        print(f"synthjax: {run_description(config, trainer)}")
    t = config.train

    pipeline = build_pipeline(source, t.batch_size, config.seed, trainer.preprocess, config.data.num_threads, config.data.prefetch)
    # Held out: eval_step batches come from data.eval_split ('test'), never from the training images.
    eval_pipeline = build_pipeline(get_source(config.data, config.data.eval_split), t.batch_size, config.seed + 7919,
                                   trainer.preprocess, 0, 2)
    init_key, step_key, eval_key, grid_key = jax.random.split(jax.random.key(config.seed), 4)

    checkpointer = Checkpointer(workdir, keep=t.keep)
    restored = checkpointer.restore(abstract_state(trainer, init_key, dp))
    start, window = 0, MetricWindow()
    if restored is None:
        print(f"synthjax: starting {workdir} at step 0")
        state = init_state(trainer, init_key, dp)
    else:
        state, meta, start = restored
        if meta.get("family", trainer.family) != trainer.family:
            raise UserError(f"the checkpoint in {checkpointer.directory} is a {meta['family']!r} model, not {trainer.family!r}; use a new --workdir")
        pipeline.set_state(meta["data"])
        window = MetricWindow(meta.get("window"))
        print(f"synthjax: resuming {workdir} from step {start}")
    state = dp.put_state(state)
    writer = MetricWriter(workdir, jax.process_index() == 0, start)
    try:
        return _loop(config, workdir, dp, trainer, pipeline, eval_pipeline, checkpointer, writer, state, window, start,
                     step_key, eval_key, grid_key)
    finally:
        checkpointer.close()  # waits for an async save in flight, so the last checkpoint is complete
        writer.close()


def _loop(config, workdir, dp, trainer, pipeline, eval_pipeline, checkpointer, writer, state, window, start,
          step_key, eval_key, grid_key) -> dict[str, Any]:
    """Steps `start+1 .. num_steps` with logging, evaluation, grids and checkpoints at their cadences."""
    t = config.train
    is_main = jax.process_index() == 0
    step_fn = dp.compile_step(guard_nonfinite(trainer.train_step, t.on_nonfinite))
    eval_fn = dp.compile_eval(trainer.eval_step)
    sample_fn = jax.jit(trainer.sample, static_argnums=2)
    eval_start = eval_pipeline.get_state()  # every evaluation reads the same batches: comparable, and exact on resume
    # FID/KID/IS/PR/NLL at eval.every steps; None when off. Built before step 1 so a bad eval config fails fast.
    sample_eval = periodic_evaluator(config, trainer, log=print if is_main else lambda _: None)
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)

    def run_eval() -> dict[str, float]:
        eval_pipeline.set_state(eval_start)
        return evaluate(eval_fn, state, eval_pipeline, dp, eval_key, t.eval_batches)

    def save_grid(step: int) -> str:
        path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
        if is_main:  # the same grid noise every time, so progress is visible
            images.save_grid(path, np.asarray(sample_fn(local_copy(dp.host_state(state)), grid_key, t.num_grid)))
        return path

    last_good = checkpointer.latest_step()

    def check_finite(step: int) -> None:
        window.sync(dp)
        bad = window.first_nonfinite()
        if bad is not None and t.on_nonfinite == "halt":
            raise Diverged(divergence_message(step, bad, last_good, checkpointer.directory))

    batches = prefetch_to_device(pipeline, dp.put_batch)
    if start < t.num_steps:
        first = next(batches)
        warm_up(dp, [(step_fn, (state, first[0], step_key)), (eval_fn, (state, first[0], eval_key))],
                lambda: sample_fn.lower(local_copy(dp.host_state(state)), grid_key, t.num_grid).compile(), is_main)
        batches = itertools.chain([first], batches)
    scalars: dict[str, float] = {}
    progress = ProgressBar(start, t.num_steps, t.progress and is_main)
    t0, step = time.perf_counter(), start
    t_log, step_log = t0, start
    for step in range(start + 1, t.num_steps + 1):
        batch, data_state = next(batches)
        state, metrics = step_fn(state, batch, step_key)
        window.add(step, metrics)
        if step % t.log_every == 0 or step == t.num_steps:
            check_finite(step)
            scalars = window.summary()
            window.clear()
            writer.write(step, scalars)
            now = time.perf_counter()
            rate = (step - start) / (now - t0)
            # since the (re)start, and over this log interval alone (what a throughput comparison wants)
            writer.write_timing(step, {"steps_per_sec": rate, "interval_steps_per_sec": (step - step_log) / (now - t_log)})
            t_log, step_log = now, step
            progress.update(step, {**scalars, "steps_per_sec": rate})
        if t.eval_every and step % t.eval_every == 0:
            writer.write(step, {**run_eval(), "eval/split": config.data.eval_split})
        if sample_eval is not None and sample_eval.due(step, t.num_steps):
            if is_main:  # host-only work, no collectives
                writer.write(step, sample_eval(local_copy(dp.host_state(state))))
            # The other processes wait here rather than inside the next step's all-reduce,
            # which gloo (CPU collectives) abandons after 30 s.
            barrier(f"synthjax_sample_eval_{step}")
        if step % t.ckpt_every == 0 or step == t.num_steps:
            check_finite(step)  # never checkpoint a state that went non-finite since the last check
            meta = {"data": data_state, "step": step, "family": trainer.family, "window": window.to_meta()}
            checkpointer.save(step, dp.host_state(state), meta)
            last_good = step
        if step % t.sample_every == 0:
            save_grid(step)
    progress.close()
    elapsed = time.perf_counter() - t0
    done = step - start

    final_eval = run_eval()
    if done:  # a rerun of a finished run adds nothing to its logs
        writer.write(step, {**final_eval, "eval/split": config.data.eval_split})
    grid = save_grid(step)
    summary = {**scalars, **final_eval, "eval/split": config.data.eval_split, "step": step, "seconds": elapsed}
    rate = f"{done / elapsed:.2f} steps/s" if done and elapsed > 0 else "no new steps"
    losses = ", ".join(f"{k}={v:.4g}" for k, v in final_eval.items())
    if is_main:
        print(
            f"synthjax: {config.model.family}/{config.model.arch} step {step}/{t.num_steps} ({rate}); {losses}; "
            f"grid {grid}; checkpoints {checkpointer.directory}"
        )
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
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in scalars.items()}, refresh=False)
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
