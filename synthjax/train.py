"""The training loop: cadence of logging, evaluation, sample grids and checkpoints.

`train_and_evaluate(config, workdir)` is all of it. It talks to the model
family only through the trainer interface (`synthjax.trainers.base`), so
every family trains, resumes, logs and samples the same way. Beside it:
`synthjax.workdir` (which run a workdir holds), `synthjax.writers`
(metrics.jsonl, TensorBoard, sample grids), `synthjax.checkpoint`.

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

import contextlib
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P, SingleDeviceSharding

import synthjax.data
from synthjax import config as config_lib
from synthjax import steps as steps_lib
from synthjax.bench import bench_record
from synthjax.checkpoint import Checkpointer, checksums_program
from synthjax.data import build_pipeline, get_source, on_device
from synthjax.errors import UserError
from synthjax.evaluate import periodic_evaluator
from synthjax.models import formulations
from synthjax.parallel import AXIS, DataParallel, make_mesh
from synthjax.stack import NONFINITE, Stack, stack_configs
from synthjax.trainers import build_trainer
from synthjax.workdir import prepare_members, prepare_workdir
from synthjax.writers import MetricWriter, ProgressBar

BARRIER_TIMEOUT_S = 3600  # how long processes wait for each other to compile (big models, slow hosts)


class Diverged(UserError):
    """Training produced a non-finite loss or gradient and the policy is 'halt'."""


class StackData:
    """A stack's batches: one pipeline per member, each shuffled by its own seed, stacked on a leading axis;
    a single pipeline (plain batches) for one member or when the members share one data order."""

    def __init__(self, pipelines: list, stacked: bool):
        self.pipelines, self.stacked = pipelines, stacked

    def __iter__(self) -> "StackData":
        return self

    def __next__(self) -> dict:
        batches = [next(p) for p in self.pipelines]
        return jax.tree.map(lambda *xs: np.stack(xs), *batches) if self.stacked else batches[0]

    def get_state(self) -> Any:
        states = [p.get_state() for p in self.pipelines]
        return states if self.stacked else states[0]

    def set_state(self, state: Any) -> None:
        for p, s in zip(self.pipelines, state if self.stacked else [state]):
            p.set_state(s)


def stack_data(source, configs: list, stack: Stack, seed_offset: int, threads: int, prefetch: int) -> StackData:
    """Training (seed_offset 0) or evaluation batches of the stack, each member's order from its own seed."""
    seeds = [c.seed for c in configs] if stack.per_member_batches else [configs[0].seed]
    batch = configs[0].train.batch_size
    pipelines = [build_pipeline(source, batch, s + seed_offset, stack.preprocess, threads, prefetch) for s in seeds]
    return StackData(pipelines, stack.per_member_batches)


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
    """Where one logical copy of the state lives: on the mesh (shard_map; a stack's members split over its
    `members` axis, if any) or on the first local device (pmap)."""
    if dp.mode == "pmap":
        return SingleDeviceSharding(dp.local_devices[0])
    return dp.state_sharding()


def init_state(stack: Stack, keys: jax.Array, dp: DataParallel) -> Any:
    """A fresh state, initialised in one compiled program (not op by op) and placed for `dp`.

    Under shard_map every process runs the same program, so multi-host runs
    get one global replicated array per leaf without any host transfer.
    """
    return jax.jit(stack.create_state, out_shardings=state_sharding(dp))(keys)


def abstract_state(stack: Stack, keys: jax.Array, dp: DataParallel) -> Any:
    """Shapes, dtypes and shardings of the state, for restoring a checkpoint without initialising."""
    shapes = jax.eval_shape(stack.create_state, keys)
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


def evaluate(eval_fn, state, pipeline, dp: DataParallel, keys: jax.Array, num_batches: int, stack: Stack) -> list[dict[str, float]]:
    """Per member: the trainer's eval metrics averaged over `num_batches` batches."""
    results = [eval_fn(state, dp.put_batch(next(pipeline)), fold_in(keys, i)) for i in range(num_batches)]
    host = jax.device_get([dp.metrics(m) for m in results])
    per_member = [[stack.member_metrics(m, i) for m in host] for i in range(stack.size)]
    return [{f"eval/{k}": float(np.mean([m[k] for m in rows])) for k in sorted(rows[0])} for rows in per_member]


def fold_in(keys: jax.Array, data: int) -> jax.Array:
    """`jax.random.fold_in` of one key, or of each member's key of a stack."""
    return jax.random.fold_in(keys, data) if keys.ndim == 0 else jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


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
    return train_stack([config], workdir)[0]


def train_stack(configs: list[ml_collections.ConfigDict], workdir: str, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Train the members `configs` (alike but for seeds and `vmappable_keys` values) as one program in `workdir`.

    One config is an ordinary run. Resumes from the latest checkpoint of the
    whole stack; returns each member's final metrics (for several members
    with `diverged_at`, the step its training went non-finite, 0: never).
    """
    configs = stack_configs(configs, jax.default_backend())
    config = configs[0]
    dp = make_parallel(config, len(configs))
    for c in configs:
        config_lib.validate(c, dp.data_shards)
    source = get_source(config.data)
    stack = Stack([build_trainer(c, source.image_shape, source.num_classes) for c in configs],
                  config.train.on_nonfinite, config.sweep.shared_data_order)
    check_inputs(stack.trainer, source)
    prepare_workdir(workdir, config)
    names = prepare_members(workdir, configs, names)
    if jax.process_index() == 0:
        print(f"synthjax: {run_description(config, stack.trainer)}")
    run = StackRun(configs, workdir, names, dp, stack, source)
    try:
        return run.train()
    finally:
        run.close()


def make_parallel(config: ml_collections.ConfigDict, members: int) -> DataParallel:
    """The DataParallel of a stack of `members`: its member axis split over `sweep.member_shards` devices."""
    mode, shards = config.train.parallel, config.sweep.member_shards if members > 1 else 1
    if mode == "pmap" and jax.process_count() > 1:
        raise UserError(
            "train.parallel='pmap' runs on one process only (its per-device state copies cannot be checkpointed "
            "by several hosts); use the default train.parallel='shard_map' for multi-host runs"
        )
    if members > 1 and mode == "pmap":
        raise UserError(f"a stack of {members} members runs under train.parallel='shard_map' only; drop train.parallel='pmap'")
    if not isinstance(shards, int) or shards < 1 or members % shards or jax.device_count() % shards:
        raise UserError(
            f"sweep.member_shards={shards!r} must divide both the {members} members and the {jax.device_count()} devices; "
            "use 1 (members on every device) or a common divisor"
        )
    shared = config.sweep.shared_data_order
    return DataParallel(mode, make_mesh(member_shards=shards), stacked_state=members > 1, stacked_batch=members > 1 and not shared)


HIGHER_IS_BETTER = ("is", "precision", "recall")
BEST_DIR = "checkpoints.best"


class BestCheckpoint:
    """`train.keep_best=METRIC`: the checkpoint with the best value of eval/METRIC so far, in checkpoints.best/.

    The best value is read back from that checkpoint's metadata, so it survives
    a resume. Only evaluations of a single run count (a stack's members would
    each need their own best state).
    """

    def __init__(self, workdir: str, metric: str, members: int):
        self.metric = metric if metric.startswith("eval/") else f"eval/{metric}"
        if members > 1:
            raise UserError(f"train.keep_best={metric!r} keeps one run's best checkpoint; a stack of {members} members "
                            "cannot (set train.keep_best='' for stacks, or run the members one by one)")
        self.sign = -1.0 if self.metric.removeprefix("eval/") in HIGHER_IS_BETTER else 1.0
        self.checkpointer = Checkpointer(workdir, keep=1, name=BEST_DIR)
        last = self.checkpointer.latest_step()
        self.value = self.checkpointer.read_meta(last)["best"]["value"] if last is not None else None

    def offer(self, step: int, values: dict[str, float], state: Any, meta: dict) -> None:
        """Save `state` as the best when `values` hold the metric and it beats the best so far."""
        value = values.get(self.metric)
        if value is None or not np.isfinite(value):
            return
        if self.value is None or self.sign * value < self.sign * self.value:
            self.value = value
            self.checkpointer.save(step, state, {**meta, "best": {"metric": self.metric, "value": value, "step": step}})

    def close(self) -> None:
        self.checkpointer.close()


ON_DEVICE = {"on_device": True}  # a checkpoint's data position when the split is on the devices: the step is the position


class StackRun:
    """One training run of a stack: its state, data, writers and the cadences of the loop.

    Talks to the model only through the Stack's trainer interface
    (create_state, train_step, eval_step, sample). The loop dispatches one
    compiled call per `train.steps_per_call` steps (synthjax/steps.py), cut
    short where a cadence (logging, evaluation, grids, checkpoints) falls.
    """

    def __init__(self, configs, workdir, names, dp, stack, source):
        self.configs, self.workdir, self.names, self.dp, self.stack = configs, workdir, names, dp, stack
        self.image_shape = source.image_shape
        self.t = t = configs[0].train
        self.is_main = jax.process_index() == 0
        d = configs[0].data
        self.checkpointer = Checkpointer(workdir, keep=t.keep)
        held = data_on_device(d.on_device, source, dp, self.checkpointer)
        # The training split: on the devices, each step drawing its batch there, or read by the grain pipeline.
        self.dataset = on_device.place(source, dp, t.batch_size, stack.preprocess) if held else None
        self.pipeline = None if held else stack_data(source, configs, stack, 0, d.num_threads, d.prefetch)
        self.data_keys = stack.data_keys([c.seed for c in configs])
        # Held out: eval_step batches come from data.eval_split ('test'), never from the training images.
        self.eval_pipeline = stack_data(get_source(d, d.eval_split), configs, stack, 7919, 0, 2)
        init_keys, self.step_keys, self.eval_keys, self.grid_keys = stack.keys([c.seed for c in configs])
        self.steps_per_call = resolve_steps_per_call(t.steps_per_call, dp)
        # One jit of the step, called inside every compiled call and traced for the metric shapes: jax caches a
        # jitted function's trace by its arguments' shapes, so the step is traced once, not once more per use.
        self.step_fn = jax.jit(stack.train_step)
        self.calls: dict[int, Callable] = {}
        if self.is_main:
            where = (f"on the devices ({on_device.split_bytes(source) / dp.data_shards / 2**20:.1f} MiB each)" if held
                     else "from the grain pipeline")
            print(f"synthjax: training data {where}; {self.steps_per_call} step(s) per compiled call")
        self._restore(init_keys)
        self.writer = MetricWriter(workdir, self.is_main, self.start, names)
        self.eval_fn = dp.compile_eval(stack.eval_step)
        self.sample_fn = jax.jit(stack.sample, static_argnums=2)
        self.eval_start = self.eval_pipeline.get_state()  # every evaluation reads the same batches: comparable, exact on resume
        # FID/KID/IS/PR/NLL at eval.every steps; None when off. Built before step 1 so a bad eval config fails fast.
        log = print if self.is_main else lambda _: None
        self.sample_evals = [periodic_evaluator(c, tr, log=log) for c, tr in zip(configs, stack.trainers)]
        self.best = BestCheckpoint(workdir, t.keep_best, stack.size) if t.keep_best else None
        self.last_good = self.checkpointer.latest_step()
        self.reported: set[int] = set(stack.diverged(self.state))

    def _restore(self, init_keys) -> None:
        restored = self.checkpointer.restore(abstract_state(self.stack, init_keys, self.dp))
        self.start, saved = 0, None
        if restored is None:
            print(f"synthjax: starting {self.workdir} at step 0")
            state = init_state(self.stack, init_keys, self.dp)
        else:
            state, meta, self.start = restored
            if meta.get("family", self.stack.family) != self.stack.family:
                raise UserError(f"the checkpoint in {self.checkpointer.directory} is a {meta['family']!r} model, "
                                f"not {self.stack.family!r}; use a new --workdir")
            if self.pipeline is not None:
                self.pipeline.set_state(meta["data"])
            saved = meta.get("window")
            print(f"synthjax: resuming {self.workdir} from step {self.start}")
        self.state = self.dp.put_state(state)
        self.empty_window = steps_lib.empty_window(self._metric_shapes())
        self.window = self.dp.put_state(steps_lib.restore_window(saved, self.empty_window, self.stack.size))

    def _metric_shapes(self) -> dict:
        """Shapes of one step's metrics (per member in a stack), traced without running anything."""
        data, draw = self._data_for(1), self._draw()
        spec = P(AXIS) if draw else self.dp.steps_batch_spec()
        step = lambda st, d, key: self.step_fn(st, draw(d, st) if draw else jax.tree.map(lambda x: x[0], d), key)
        shapes = jax.eval_shape(self.dp.compile_step(step, donate_state=False, batch_spec=spec), self.state, data, self.step_keys)
        return self.dp.logical_shapes(shapes[1])

    def _draw(self) -> Callable | None:
        """How a step draws its batch from the split on the devices (None: batches come from the host)."""
        if self.dataset is None:
            return None
        return lambda dataset, state: self.stack.draw(dataset, state, self.data_keys)

    def _data_for(self, k: int) -> Any:
        """The data argument of a call of k steps: the split on the devices, or k stacked host batches
        (read without moving the pipeline when it is only for tracing)."""
        if self.dataset is not None:
            return self.dataset
        before = self.pipeline.get_state()
        batches = [next(self.pipeline) for _ in range(k)]
        self.pipeline.set_state(before)
        return self.dp.put_batches(jax.tree.map(lambda *xs: np.stack(xs), *batches))

    def call(self, k: int) -> Callable:
        """The compiled call of k steps (a few distinct k per run: K, and shorter ones where cadences cut in)."""
        if k not in self.calls:
            spec = P(AXIS) if self.dataset is not None else self.dp.steps_batch_spec()
            self.calls[k] = self.dp.compile_call(steps_lib.scan_call(self.step_fn, self._draw(), k), spec)
        return self.calls[k]

    def close(self) -> None:
        self.checkpointer.close()  # waits for an async save in flight, so the last checkpoint is complete
        if getattr(self, "best", None) is not None:
            self.best.close()
        if hasattr(self, "writer"):
            self.writer.close()

    def member_state(self, i: int) -> Any:
        """Member i's TrainState as this process's local copy (for sampling and host-side evaluation)."""
        return local_copy(self.stack.member(self.dp.host_state(self.state), i))

    # ---- the loop

    def cadences(self) -> list[int]:
        """Every how many steps the loop must stop to log, evaluate, draw grids or checkpoint."""
        t = self.t
        every = [t.log_every, t.ckpt_every, t.sample_every, t.eval_every]
        if self.sample_evals[0] is not None:
            every.append(self.sample_evals[0].every)
        return [e for e in every if e]

    def train(self) -> list[dict[str, Any]]:
        """Steps `start+1 .. num_steps` with logging, evaluation, grids and checkpoints at their cadences."""
        t = self.t
        os.makedirs(os.path.join(self.workdir, "samples"), exist_ok=True)
        sizes = call_sizes(self.start, t.num_steps, self.steps_per_call, self.cadences())
        feed = synthjax.data.feed_calls(self._next_call_data, sizes, depth=2)
        self._warm_up(sizes)
        self.scalars = [{} for _ in range(self.stack.size)]
        self.cadence_s: dict[str, float] = {}  # host seconds in each cadence action since the (re)start
        progress = ProgressBar(self.start, t.num_steps, t.progress and self.is_main)
        self.t0 = self.t_log = time.perf_counter()
        step = self.step_log = self.start
        for k, (data, data_state) in zip(sizes, feed):
            self.state, self.window = self.call(k)(self.state, self.window, data, self.step_keys)
            step += k
            self._at_cadences(step, data_state, progress)
        progress.close()
        return self._finish(step, time.perf_counter() - self.t0)

    def _next_call_data(self, k: int) -> tuple[Any, Any]:
        """(data argument, data state after it) of the next call of k steps."""
        if self.dataset is not None:
            return self.dataset, ON_DEVICE
        batches = [next(self.pipeline) for _ in range(k)]
        return self.dp.put_batches(jax.tree.map(lambda *xs: np.stack(xs), *batches)), self.pipeline.get_state()

    def _warm_up(self, sizes: list[int]) -> None:
        """Compile every call size the run will use, the eval step and the sampler before the first step."""
        if not sizes:
            return
        before = self.eval_pipeline.get_state()
        eval_batch = self.dp.put_batch(next(self.eval_pipeline))
        self.eval_pipeline.set_state(before)
        programs = [(self.call(k), (self.state, self.window, self._data_for(k), self.step_keys)) for k in sorted(set(sizes))]
        programs.append((self.eval_fn, (self.state, eval_batch, self.eval_keys)))
        programs.append(checksums_program(self.dp.host_state(self.state)))
        sample_state = self.member_state(0)
        warm_up(self.dp, programs,
                lambda: self.sample_fn.lower(sample_state, self.stack.member(self.grid_keys, 0), self.t.num_grid).compile(),
                self.is_main)

    def _at_cadences(self, step: int, data_state, progress) -> None:
        t = self.t
        if step % t.log_every == 0 or step == t.num_steps:
            with self.timed("log"):
                self._log(step, progress)
        if t.eval_every and step % t.eval_every == 0:
            with self.timed("eval"):
                self._write_evals(step, self.run_eval(), data_state)
        if self.sample_evals[0] is not None and self.sample_evals[0].due(step, t.num_steps):
            with self.timed("sample_eval"):
                if self.is_main:  # host-only work, no collectives
                    self._write_evals(step, [ev(self.member_state(i)) for i, ev in enumerate(self.sample_evals)], data_state)
                # The other processes wait here rather than inside the next step's all-reduce,
                # which gloo (CPU collectives) abandons after 30 s.
                barrier(f"synthjax_sample_eval_{step}")
        if step % t.ckpt_every == 0 or step == t.num_steps:
            with self.timed("checkpoint"):
                self._checkpoint(step, data_state)
        if step % t.sample_every == 0:
            with self.timed("grids"):
                self.save_grids(step)

    @contextlib.contextmanager
    def timed(self, action: str):
        """Add the host time of a cadence action (waits for the device included) to `cadence_seconds`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.cadence_s[action] = self.cadence_s.get(action, 0.0) + time.perf_counter() - t0

    def _write_members(self, step: int, values: list[dict[str, float]]) -> None:
        for i, v in enumerate(values):
            self.writer.write(step, v, i)

    def _write_evals(self, step: int, values: list[dict[str, float]], data_state) -> None:
        """Evaluation results to the logs, and to the best checkpoint when asked (train.keep_best)."""
        self._write_members(step, values)
        if self.best is not None:
            meta = {"data": data_state, "step": step, "family": self.stack.family, "window": None}
            self.best.offer(step, values[0], self.dp.host_state(self.state), meta)

    def _log(self, step: int, progress) -> None:
        window = self.check_finite(step)
        member = (lambda i: None) if self.stack.size == 1 else (lambda i: i)
        self.scalars = [steps_lib.summary(window, member(i)) for i in range(self.stack.size)]
        self.window = self.dp.put_state(self.empty_window)
        self._write_members(step, self.scalars)
        now = time.perf_counter()
        rate = (step - self.start) / (now - self.t0)
        interval = (step - self.step_log) / (now - self.t_log)
        images = self.t.batch_size * self.stack.size  # per step, summed over the members
        # since the (re)start, and over this log interval alone (what a throughput comparison wants)
        self.writer.write_timing(step, {"steps_per_sec": rate, "interval_steps_per_sec": interval,
                                        "images_per_sec": rate * images, "interval_images_per_sec": interval * images,
                                        "seconds": now - self.t0, "steps_per_call": self.steps_per_call,
                                        "data_on_device": self.dataset is not None,
                                        "cadence_seconds": {k: round(v, 4) for k, v in self.cadence_s.items()}})
        self.t_log, self.step_log = now, step
        progress.update(step, {**self.scalars[0], "img/s": interval * images})

    def _checkpoint(self, step: int, data_state) -> None:
        window = self.check_finite(step)  # never checkpoint a state that went non-finite since the last check
        meta = {"data": data_state, "step": step, "family": self.stack.family, "window": window}
        self.checkpointer.save(step, self.dp.host_state(self.state), meta)
        self.last_good = step

    def check_finite(self, step: int) -> dict:
        """Fetch the metric window (JSON-safe); under 'halt', stop a single run that went non-finite, report
        each member of a stack that diverged (frozen inside the step) and stop when all of them have."""
        window = steps_lib.to_host(jax.device_get(self.dp.metrics(self.window)))
        if self.t.on_nonfinite != "halt":
            return window
        if self.stack.size == 1:
            bad = steps_lib.first_nonfinite(window)
            if bad is not None:
                raise Diverged(divergence_message(step, bad, self.last_good, self.checkpointer.directory))
            return window
        diverged = self.stack.diverged(self.state)
        for i in sorted(set(diverged) - self.reported):
            print(f"synthjax: member {i} ({self.names[i]}) diverged at step {diverged[i]}: frozen (its updates are "
                  f"dropped); the other members go on")
        self.reported |= set(diverged)
        if len(diverged) == self.stack.size:
            raise Diverged(all_diverged_message(step, diverged, self.names, self.last_good, self.checkpointer.directory))
        return window

    def run_eval(self) -> list[dict[str, Any]]:
        """Each member's eval_step metrics on the held-out split, which the rows name (eval/split)."""
        self.eval_pipeline.set_state(self.eval_start)
        values = evaluate(self.eval_fn, self.state, self.eval_pipeline, self.dp, self.eval_keys, self.t.eval_batches, self.stack)
        return [{**v, "eval/split": self.configs[0].data.eval_split} for v in values]

    def save_grids(self, step: int) -> list[str]:
        """Each member's sample grid (the same grid noise every time, so progress is visible), as PNG and in TensorBoard."""
        paths = []
        for i in range(self.stack.size):
            folder = os.path.join(self.workdir, "samples", *([self.names[i]] if self.names else []))
            paths.append(os.path.join(folder, f"step_{step:07d}.png"))
            if self.is_main:
                os.makedirs(folder, exist_ok=True)
                samples = self.sample_fn(self.member_state(i), self.stack.member(self.grid_keys, i), self.t.num_grid)
                self.writer.write_grid(paths[-1], step, samples, i)
        return paths

    def _finish(self, step: int, elapsed: float) -> list[dict[str, Any]]:
        done = step - self.start
        final_eval = self.run_eval()
        if done:  # a rerun of a finished run adds nothing to its logs
            self._write_members(step, final_eval)
        grids = self.save_grids(step)
        self.writer.wait()
        diverged = self.stack.diverged(self.state)
        extra = [{"diverged_at": diverged.get(i, 0)} if self.stack.size > 1 else {} for i in range(self.stack.size)]
        summaries = [{**sc, **ev, **ex, "step": step, "seconds": elapsed} for sc, ev, ex in zip(self.scalars, final_eval, extra)]
        if self.is_main:
            c = self.configs[0]
            who = f"{self.stack.size} members, step" if self.stack.size > 1 else "step"
            losses = ", ".join(f"{k}={v:.4g}" for k, v in final_eval[0].items() if not isinstance(v, str))
            print(f"synthjax: {c.model.family}/{c.model.arch} {who} {step}/{self.t.num_steps} ({self._rate(done, elapsed)}); "
                  f"{losses}; grid {grids[0]}; checkpoints {self.checkpointer.directory}")
        return summaries

    def _rate(self, done: int, elapsed: float) -> str:
        """The run's throughput, beside the benchmark's for this config on this machine when one was measured."""
        if not done or elapsed <= 0:
            return "no new steps"
        images = done * self.t.batch_size * self.stack.size / elapsed
        text = f"{done / elapsed:.2f} steps/s, {images:.0f} img/s"
        bench = bench_record(self.configs[0], self.image_shape)
        if bench:
            text += f" (bench step: {bench['images_per_sec']:.0f} img/s, {bench['device']})"
        return text


def data_on_device(mode: str, source, dp: DataParallel, checkpointer: Checkpointer) -> bool:
    """Whether this run holds its training split on the devices (`data.on_device`).

    'auto' follows a checkpoint already in the workdir, so a run resumes with
    the data order it started with; an explicit setting that contradicts it is refused.
    """
    held = on_device.wanted(mode, source, dp.data_shards)
    last = checkpointer.latest_step()
    if last is None:
        return held
    was = checkpointer.read_meta(last).get("data") == ON_DEVICE
    if mode != "auto" and was != held:
        how = ("on the devices (data.on_device='on')" if was else "by the grain pipeline (data.on_device='off')")
        raise UserError(f"the checkpoint in {checkpointer.directory} read its data {how}, which fixes its data order; "
                        f"resume with data.on_device='auto' or that setting, or use a new --workdir")
    return was


def resolve_steps_per_call(value: int, dp: DataParallel) -> int:
    """`train.steps_per_call`: 0 picks the backend's default (STEPS_PER_CALL; 1 under pmap, which has no scanned call)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise UserError(f"train.steps_per_call must be a non-negative integer (0: the backend's default), got {value!r}")
    if value == 0 and dp.mode == "pmap":
        return 1
    k = value or STEPS_PER_CALL.get(jax.default_backend(), 1)
    if k > 1 and dp.mode == "pmap":
        raise UserError(f"train.steps_per_call={k} runs under train.parallel='shard_map' only; set train.steps_per_call=1 for pmap")
    return k


# Steps per compiled call when train.steps_per_call=0. CPU: 1, as 8 lifted vae_mlp's loop but slowed
# dcgan's (`make train`). GPU: 8, which kept vae_mlp's loop at 0.91 of the bench step against 0.79 at 1
# (H200); 32 did not beat it on dcgan64. TPU: 8, not measured (docs/performance.md, "The loop end to end").
STEPS_PER_CALL = {"cpu": 1, "gpu": 8, "tpu": 8}


def call_sizes(start: int, end: int, k: int, cadences: list[int]) -> list[int]:
    """The loop's call lengths from step `start` to `end`: k steps, cut short at every multiple of a cadence."""
    sizes, step = [], start
    while step < end:
        stop = min([end, step + k] + [(step // c + 1) * c for c in cadences])
        sizes.append(stop - step)
        step = stop
    return sizes


def all_diverged_message(step: int, diverged: dict[int, int], names: list[str], last_good: int | None, directory: str) -> str:
    """Name every member of a stack and the step at which it diverged."""
    which = ", ".join(f"member {i} ({names[i]}) at step {s}" for i, s in sorted(diverged.items()))
    where = f"step {last_good} in {directory}" if last_good is not None else "none"
    return (f"every member of the stack diverged (detected at step {step}): {which}. Last checkpoint: {where}. "
            "Lower opt.lr (or set opt.grad_clip), or set train.on_nonfinite='skip' to drop such updates")
