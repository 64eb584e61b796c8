"""Throughput of synthjax's own train steps on a fixed on-device batch.

    python -m synthjax.bench --workload dcgan28 --batch-size 128 --steps 200 [--dtype bfloat16] [--json]
    python -m synthjax.bench --workload dcgan28 --members 8 --steps 10 --json   # a stack vs. its members one by one
    python -m synthjax.bench --workload dcgan --loop --json   # the whole training loop vs. the bench step

Workloads are the reference ones of the benchmark spec (dcgan28, dcgan64,
vae_mlp) plus each model family's default config (any `configs/<name>.py`,
e.g. gan_mlp, vae_conv, pixelrnn, draw, convlstm; `--workload NAME.py` names
the config file where a reference workload has its name, e.g. vae_mlp.py).
A plain run's figure is kept, and `train.py` shows it beside the run's own
throughput in its closing line when it trains the same step on this machine.
The step is the one `train.py` runs (trainer.train_step under the data-parallel wrapper, state
donated), so the figure measures the model and step, not the input pipeline.
Prints one JSON line with the peer's keys (`images_per_sec`, `step_ms`,
`warmup_s`) plus `compile_s`, `device`, `dtype`, the compiled step's device memory
(`step_memory_bytes`: arguments + outputs + temporaries, donated state counted
once) and, on GPUs, the allocator's peak. `--loop` runs the whole training
loop instead and reports `loop_vs_bench` (docs/performance.md, "The loop").
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from synthjax import tuning
from synthjax.config import load_config, split_overrides
from synthjax.errors import UserError
from synthjax.data import get_source
from synthjax.data.sources import TFDS_DATASETS, tfds_image_shape
from synthjax.models import formulations
from synthjax.parallel import DataParallel
from synthjax.stack import Stack, guard_nonfinite, stack_configs, stack_overrides
from synthjax.trainers import build_trainer

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# Reference workloads: (config file, overrides, image shape or None for the config's data).
# The spec's DCGAN step is unconditional, has no penalty and Adam 2e-4; configs/dcgan.py trains a class-conditional
# model with R1 (a second backward pass through D) at 2e-3, with networks half as wide.
SPEC_DCGAN = ["model.conditional=false", "model.d_width=64", "objective.penalty=", "opt.lr=2e-4"]
REFERENCE = {
    "dcgan28": ("dcgan.py", ["model.g_width=128", *SPEC_DCGAN], None),
    "dcgan64": ("dcgan.py", ["model.g_width=64", "model.use_bias=false", "model.project_bn=channel", *SPEC_DCGAN], (64, 64, 3)),
    # the spec's 784-400-20 at a constant rate (configs/vae_mlp.py trains a 50-d latent with a decay)
    "vae_mlp": ("vae_mlp.py", ["model.latent=20", "opt.schedule=constant"], None),
}


def workload_config(name: str, batch_size: int, dtype: str, extra: Sequence[str] = ()):
    """(config, image_shape) of a reference workload or of configs/<name>.py, with `extra` overrides.

    A name ending in '.py' (optionally with the config's argument, 'vae_mlp.py:smoke') is always the config
    file, also where a reference workload has its stem ('vae_mlp.py' is configs/vae_mlp.py; 'vae_mlp' is
    the spec's 784-400-20 VAE).
    """
    if name.partition(":")[0].endswith(".py"):
        file, overrides, shape = name, [], None
    else:
        file, overrides, shape = REFERENCE.get(name, (f"{name}.py", [], None))
    path = os.path.join(CONFIG_DIR, file)
    if not os.path.exists(path.partition(":")[0]):
        valid = sorted(set(REFERENCE) | {f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py")})
        raise SystemExit(f"unknown workload {name!r}; valid: {', '.join(valid)}")
    batch = [f"train.batch_size={batch_size}"] if batch_size else []  # 0: the config's own
    config = load_config(path, [*overrides, *extra, *batch, f"train.dtype={dtype}"])
    return config, shape or data_image_shape(config.data)


def data_image_shape(data_cfg) -> tuple[int, int, int]:
    """The config's image shape; for tfds datasets without loading them (the bench needs shapes only)."""
    if data_cfg.name in TFDS_DATASETS:
        return tfds_image_shape(data_cfg)
    return get_source(data_cfg).image_shape


def default_batch_size(name: str) -> int:
    """The batch size a reference workload or configs/<name>.py trains with by default."""
    return workload_config(name, 0, "float32")[0].train.batch_size


SPEC_BATCH = 128  # the reference workloads' batch in ../shared/bench/SPEC.md


def cli_batch_size(name: str, given: int) -> int:
    """`--batch-size` as given; if not given, the spec's 128 for a reference workload, else the config's own
    (which respects its constraints, e.g. WGAN-GP's multiple of n_critic)."""
    return given or (SPEC_BATCH if name in REFERENCE else default_batch_size(name))


def fixed_batch(trainer, image_shape, batch_size: int, seed: int = 0) -> dict:
    """A random batch in the trainer's value range (binary where it binarises), as the pipeline would give."""
    rng = np.random.default_rng(seed)
    lo, hi = trainer.preprocess.value_range
    x = rng.random((batch_size, *image_shape), dtype=np.float32)
    if trainer.preprocess.binarize:
        x = (x > 0.5).astype(np.float32)
    labels = rng.integers(0, max(trainer.num_classes, 1), batch_size).astype(np.int32)
    return {"image": x * (hi - lo) + lo, "label": labels}


def peak_memory_bytes() -> int | None:
    """The device allocator's high-water mark for this process (GPU/TPU; None on CPU)."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def step_memory_bytes(compiled) -> int | None:
    """What one compiled step needs on the device: its arguments, outputs and temporaries,
    less the outputs that reuse donated arguments (so a donated state is counted once)."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # not every backend or jax version reports it
        return None


@dataclasses.dataclass
class PreparedStep:
    """A compiled train step with its state and fixed batch, ready to be timed repeatedly."""

    config: Any
    compiled: Any
    state: Any
    batch: dict
    key: jax.Array
    compile_s: float
    num_devices: int

    def time(self, steps: int) -> tuple[float, dict]:
        """Runs `steps` steps (state donated and carried on); returns (seconds, last metrics)."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.state, metrics = self.compiled(self.state, self.batch, self.key)
        jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t0, metrics


def prepare(workload: str, batch_size: int, dtype: str = "float32", overrides: Sequence[str] = ()) -> PreparedStep:
    """Builds and compiles the train step `train.py` would run for a workload."""
    config, image_shape = workload_config(workload, batch_size, dtype, overrides)
    trainer = build_trainer(config, image_shape, 10)
    dp = DataParallel("shard_map")
    state = dp.put_state(jax.jit(trainer.create_state)(jax.random.key(0)))
    batch = dp.put_batch(fixed_batch(trainer, image_shape, batch_size))
    key = jax.random.key(1)
    step = dp.compile_step(guard_nonfinite(trainer.train_step, "halt"))
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    return PreparedStep(config, compiled, state, batch, key, time.perf_counter() - t0, dp.num_devices)


RECORD_KEYS = ("model", "objective", "data.name", "data.image_size", "train.batch_size", "train.dtype")


def record_path(config, image_shape: Sequence[int]) -> str:
    """Where the bench figure of this config on this machine is kept: `$SYNTHJAX_CACHE/bench/<hash>.json`,
    keyed by the config fields that shape the step and by the devices."""
    from synthjax.config import flat_dict
    from synthjax.metrics.classifier import cache_dir

    flat = {k: v for k, v in flat_dict(config).items() if k.startswith(RECORD_KEYS)}
    key = json.dumps({"config": flat, "image_shape": list(image_shape), "device": device_name(), "devices": jax.device_count()},
                     sort_keys=True, default=str)
    return os.path.join(cache_dir(), "bench", hashlib.sha256(key.encode()).hexdigest()[:16] + ".json")


def save_record(config, image_shape: Sequence[int], result: dict) -> None:
    """Keep a bench result for `train.py`'s closing line (best effort: a read-only cache is no error)."""
    path = record_path(config, image_shape)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f)
    except OSError:
        pass


def bench_record(config, image_shape: Sequence[int]) -> dict | None:
    """The bench result last measured for this config and image shape on this machine, if any."""
    try:
        with open(record_path(config, image_shape)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def device_name() -> str:
    d = jax.devices()[0]
    return f"{d.platform}:{d.device_kind}"


def run(workload: str, batch_size: int, steps: int, dtype: str = "float32", warmup: int = 5,
        overrides: Sequence[str] = ()) -> dict:
    """Compile, warm up and time `steps` train steps; returns the result record."""
    prepared = prepare(workload, batch_size, dtype, overrides)
    warmup_s, _ = prepared.time(warmup)
    seconds, metrics = prepared.time(steps)
    return {
        "framework": "synthjax",
        "version": jax.__version__,
        "workload": workload,
        "batch_size": batch_size,
        "steps": steps,
        "images_per_sec": batch_size * steps / seconds,
        "step_ms": 1000 * seconds / steps,
        "warmup_s": warmup_s,
        "compile_s": prepared.compile_s,
        "device": device_name(),
        "num_devices": prepared.num_devices,
        "dtype": dtype,
        "overrides": list(overrides),
        "peak_memory_bytes": peak_memory_bytes(),
        "step_memory_bytes": step_memory_bytes(prepared.compiled),
        "finite": bool(jax.device_get(metrics["nonfinite"]) == 0),
        **code_path(prepared.config, dtype),
    }


def code_path(config, dtype: str) -> dict:
    """Which code ran: the convolution formulation per layer role (and why oneDNN did not, on CPU) and the
    process-level CPU tuning; every bench record carries it."""
    return {"convolutions": formulations.describe(formulations.plan_for(config.model, jnp.dtype(dtype))),
            "tuning": tuning.describe()}


def prepare_stack(workload: str, batch_size: int, members: int, dtype: str = "float32",
                  overrides: Sequence[str] = ()) -> tuple[PreparedStep, list]:
    """The train step of a stack of `members` (seeds 0..N-1, each its own batch) as `synthjax.train` compiles it;
    also the stack's configs (with the backend's `sweep.*_stack_overrides` applied)."""
    config, image_shape = workload_config(workload, batch_size, dtype, overrides)
    configs = [workload_config(workload, batch_size, dtype, [*overrides, f"seed={i}"])[0] for i in range(members)]
    configs = stack_configs(configs, jax.default_backend(), log=lambda _: None)
    stack = Stack([build_trainer(c, image_shape, 10) for c in configs], "halt", shared_data_order=False)
    dp = DataParallel("shard_map", stacked_state=True, stacked_batch=True)
    init_keys, step_keys, _, _ = stack.keys(range(members))
    state = dp.put_state(jax.jit(stack.create_state)(init_keys))
    batches = [fixed_batch(stack.trainer, image_shape, batch_size, seed=i) for i in range(members)]
    batch = dp.put_batch(jax.tree.map(lambda *xs: np.stack(xs), *batches))
    step = dp.compile_step(stack.train_step)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, step_keys).compile()
    return PreparedStep(configs[0], compiled, state, batch, step_keys, time.perf_counter() - t0, dp.num_devices), configs


def run_members(workload: str, batch_size: int, steps: int, members: int, dtype: str = "float32", warmup: int = 2,
                rounds: int = 3, overrides: Sequence[str] = ()) -> dict:
    """A stack of `members` against the same members run one after another, in this process.

    A single run's step (its default config) and the stack's step are timed in
    alternating rounds of `steps` steps (the median round counts), so load on
    a shared machine hits both alike. N single runs one after another process
    images at one run's rate, so that is `sequential_images_per_sec`;
    `images_per_sec` sums the stack's members.
    """
    single = prepare(workload, batch_size, dtype, overrides)
    stacked, configs = prepare_stack(workload, batch_size, members, dtype, overrides)
    single.time(warmup)
    stacked.time(warmup)
    single_s, stacked_s = [], []
    for _ in range(rounds):
        single_s.append(single.time(steps)[0])
        seconds, metrics = stacked.time(steps)
        stacked_s.append(seconds)
    seq_ips = batch_size * steps / float(np.median(single_s))
    stack_ips = members * batch_size * steps / float(np.median(stacked_s))
    return {
        "framework": "synthjax", "version": jax.__version__, "workload": workload, "members": members,
        "batch_size": batch_size, "steps": steps, "rounds": rounds,
        "images_per_sec": stack_ips, "sequential_images_per_sec": seq_ips, "speedup_vs_sequential": stack_ips / seq_ips,
        "stack_step_ms": 1000 * float(np.median(stacked_s)) / steps, "single_step_ms": 1000 * float(np.median(single_s)) / steps,
        "compile_s": stacked.compile_s, "device": device_name(), "num_devices": stacked.num_devices, "dtype": dtype,
        "overrides": list(overrides), "stack_overrides": stack_overrides(single.config, jax.default_backend()),
        "finite": bool(np.all(jax.device_get(metrics["nonfinite"]) == 0)),
        **code_path(single.config, dtype),
        "stack_convolutions": code_path(configs[0], dtype)["convolutions"],
    }


LOOP_DATA_IMAGES = 10_000  # a synthetic split for workloads whose image shape no offline dataset has


def loop_data(config, image_shape: Sequence[int], directory: str) -> list[str]:
    """Overrides that give the loop a training split of `image_shape`: the config's own data when it has that
    shape, else random uint8 images in an npz (throughput does not depend on the pixels)."""
    if config.data.name not in TFDS_DATASETS and tuple(get_source(config.data).image_shape) == tuple(image_shape):
        return []
    path = os.path.join(directory, "images.npz")
    images = np.random.default_rng(0).integers(0, 256, (LOOP_DATA_IMAGES, *image_shape), dtype=np.uint8)
    np.savez(path, images=images)
    return ["data.name=npz", f"data.path={path}", f"data.image_size={image_shape[0]}"]


def loop_round(config, workdir: str) -> dict:
    """One `train_and_evaluate` run; its last timing row (throughput since the start, compile excluded)."""
    from synthjax.train import train_and_evaluate  # synthjax.train reads bench records: import it only here

    with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the JSON line
        train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "timing.jsonl")) as f:
        return json.loads(f.read().splitlines()[-1])


def run_loop(workload: str, batch_size: int, dtype: str = "float32", rounds: int = 3, overrides: Sequence[str] = (),
             steps: int = 0) -> dict:
    """The whole training loop against the bench step, in alternating rounds; medians of `rounds`.

    Each round runs `train_and_evaluate` as `train.py` would (the config's
    logging, grid and checkpoint cadences, its data path) for `steps` steps,
    by default two checkpoint intervals so every cadence falls inside the
    timed span; then times the bench step for as many steps.
    """
    config, image_shape = workload_config(workload, batch_size, dtype, overrides)
    t = config.train
    steps = steps or 2 * max(t.ckpt_every, t.sample_every, t.log_every)
    prepared = prepare(workload, batch_size, dtype, overrides)
    prepared.time(5)
    loop, bench, rows = [], [], []
    with tempfile.TemporaryDirectory(prefix="synthjax-loop-") as tmp:
        data = loop_data(config, image_shape, tmp)
        loop_config = workload_config(workload, batch_size, dtype, [*overrides, *data, f"train.num_steps={steps}"])[0]
        for r in range(rounds):
            rows.append(loop_round(loop_config, os.path.join(tmp, f"round{r}")))
            loop.append(rows[-1]["images_per_sec"])
            bench.append(batch_size * steps / prepared.time(steps)[0])
    return {
        "framework": "synthjax", "version": jax.__version__, "workload": workload, "batch_size": batch_size,
        "steps": steps, "rounds": rounds, "loop_images_per_sec": float(np.median(loop)),
        "bench_images_per_sec": float(np.median(bench)),
        "loop_vs_bench": float(np.median(np.asarray(loop) / np.asarray(bench))),
        "rounds_loop_images_per_sec": loop, "rounds_bench_images_per_sec": bench,
        "steps_per_call": rows[-1]["steps_per_call"], "data_on_device": rows[-1]["data_on_device"],
        "rounds_cadence_seconds": [r.get("cadence_seconds", {}) for r in rows],
        "synthetic_data": bool(data), "cadences": {k: t[k] for k in ("log_every", "sample_every", "ckpt_every", "eval_every")},
        "device": device_name(), "num_devices": prepared.num_devices, "dtype": dtype, "overrides": list(overrides),
        **code_path(config, dtype),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="dcgan28")
    p.add_argument("--batch-size", type=int, default=0,
                   help="default: 128 for the reference workloads, the config's own for a config name")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 200)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, the same as --config.KEY=VALUE or --config.KEY VALUE (repeatable)")
    p.add_argument("--members", type=int, default=0,
                   help="time a stack of this many members against them run one by one (speedup_vs_sequential)")
    p.add_argument("--loop", action="store_true",
                   help="time train_and_evaluate (logging, grids, checkpoints at the config's cadences) against the "
                        "bench step: loop_vs_bench; --steps 0 (default in this mode): two checkpoint intervals")
    p.add_argument("--rounds", type=int, default=3, help="--loop/--members: alternating rounds (the median counts)")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    try:
        rest, overrides = split_overrides(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        p.error(str(e))
    a = p.parse_args(rest)
    a.set = [*a.set, *overrides]
    a.steps_given, a.steps = a.steps is not None, 200 if a.steps is None else a.steps
    a.batch_size = cli_batch_size(a.workload, a.batch_size)
    tuning.apply(workload_config(a.workload, a.batch_size, a.dtype, a.set)[0].train.cpu_allocator)
    if a.loop:
        result = run_loop(a.workload, a.batch_size, a.dtype, a.rounds, a.set, steps=a.steps if a.steps_given else 0)
        if not a.json:
            print(f"{a.workload} b{a.batch_size} loop on {result['device']}: {result['loop_images_per_sec']:.1f} img/s, "
                  f"bench step {result['bench_images_per_sec']:.1f} img/s ({result['loop_vs_bench']:.2f}x)")
        print(json.dumps(result))
        return
    if a.members:
        result = run_members(a.workload, a.batch_size, a.steps, a.members, a.dtype, min(a.warmup, 2), a.rounds, overrides=a.set)
        if not a.json:
            print(f"{a.workload} b{a.batch_size} x{a.members} members on {result['device']}: {result['images_per_sec']:.1f} img/s "
                  f"stacked, {result['sequential_images_per_sec']:.1f} sequential ({result['speedup_vs_sequential']:.2f}x)")
        print(json.dumps(result))
        return
    result = run(a.workload, a.batch_size, a.steps, a.dtype, a.warmup, a.set)
    save_record(*workload_config(a.workload, a.batch_size, a.dtype, a.set), result)
    if not a.json:
        print(f"{a.workload} b{a.batch_size} {a.dtype} on {result['device']}: {result['images_per_sec']:.1f} img/s, "
              f"{result['step_ms']:.2f} ms/step, compile {result['compile_s']:.1f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
