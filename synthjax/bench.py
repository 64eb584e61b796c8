"""Throughput of synthjax's own train steps on a fixed on-device batch.

    python -m synthjax.bench --workload dcgan28 --batch-size 128 --steps 200 [--dtype bfloat16] [--json]

Workloads are the reference ones of the benchmark spec (dcgan28, dcgan64,
vae_mlp) plus each model family's default config (any `configs/<name>.py`,
e.g. gan_mlp, vae_conv, pixelrnn, draw, convlstm). The step is the one
`train.py` runs (trainer.train_step under the data-parallel wrapper, state
donated), so the figure measures the model and step, not the input pipeline.
Prints one JSON line with the peer's keys (`images_per_sec`, `step_ms`,
`warmup_s`) plus `compile_s`, `device`, `dtype` and, on GPUs, peak memory.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from synthjax.config import load_config
from synthjax.data import get_source
from synthjax.parallel import DataParallel
from synthjax.train import guard_nonfinite
from synthjax.trainers import build_trainer

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
# Reference workloads: (config file, overrides, image shape or None for the config's data).
REFERENCE = {
    "dcgan28": ("dcgan.py", [], None),
    "dcgan64": ("dcgan.py", ["model.g_width=64", "model.use_bias=false", "model.project_bn=channel"], (64, 64, 3)),
    "vae_mlp": ("vae_mlp.py", [], None),
}


def workload_config(name: str, batch_size: int, dtype: str):
    """(config, image_shape) of a reference workload or of configs/<name>.py."""
    file, overrides, shape = REFERENCE.get(name, (f"{name}.py", [], None))
    path = os.path.join(CONFIG_DIR, file)
    if not os.path.exists(path):
        valid = sorted(set(REFERENCE) | {f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py")})
        raise SystemExit(f"unknown workload {name!r}; valid: {', '.join(valid)}")
    config = load_config(path, [*overrides, f"train.batch_size={batch_size}", f"train.dtype={dtype}"])
    return config, shape or get_source(config.data).image_shape


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
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def run(workload: str, batch_size: int, steps: int, dtype: str = "float32", warmup: int = 5) -> dict:
    """Compile, warm up and time `steps` train steps; returns the result record."""
    config, image_shape = workload_config(workload, batch_size, dtype)
    trainer = build_trainer(config, image_shape, 10)
    dp = DataParallel("shard_map")
    state = dp.put_state(jax.jit(trainer.create_state)(jax.random.key(0)))
    batch = dp.put_batch(fixed_batch(trainer, image_shape, batch_size))
    key = jax.random.key(1)
    step = dp.compile_step(guard_nonfinite(trainer.train_step, "halt"))

    t0 = time.perf_counter()
    compiled = step.lower(state, batch, key).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(warmup):
        state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, key)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - t0
    return {
        "framework": "synthjax",
        "version": jax.__version__,
        "workload": workload,
        "batch_size": batch_size,
        "steps": steps,
        "images_per_sec": batch_size * steps / seconds,
        "step_ms": 1000 * seconds / steps,
        "warmup_s": warmup_s,
        "compile_s": compile_s,
        "device": f"{jax.devices()[0].platform}:{jax.devices()[0].device_kind}",
        "num_devices": dp.num_devices,
        "dtype": dtype,
        "peak_memory_bytes": peak_memory_bytes(),
        "finite": bool(jax.device_get(metrics["nonfinite"]) == 0),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="dcgan28")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--json", action="store_true", help="print only the JSON line")
    a = p.parse_args(argv)
    result = run(a.workload, a.batch_size, a.steps, a.dtype, a.warmup)
    if not a.json:
        print(f"{a.workload} b{a.batch_size} {a.dtype} on {result['device']}: {result['images_per_sec']:.1f} img/s, "
              f"{result['step_ms']:.2f} ms/step, compile {result['compile_s']:.1f} s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
