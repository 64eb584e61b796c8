"""Speed-up of training N seeds as one vmapped program (synthjax.sweep --vmap) over N sequential runs.

    python -m benchmarks.vmap_seeds [--config configs/dcgan.py] [--seeds 8] [--rounds 3] [--batch 128]
        [--impl auto|matmul] [--vmap-impl auto|matmul] [--end-to-end STEPS]

On one device, for the networks of configs/dcgan.py (batch 128 by
default): compiles the plain train step once and the N-seed vmapped step
once (compile times reported separately), then times `rounds` rounds of
[one step of each of the N seeds run one after another, one vmapped step of
all N], interleaved so that load from other processes hits both alike. All
seeds read the same batches (as --vmap does). Reports seconds per round for
each, the throughput speed-up, the end-to-end estimate for N separate
`train.py` runs of S steps (each paying its own compile) vs one vmapped run,
and the largest relative difference between the vmapped members' states and
the sequential runs' after the timed steps (float reordering only).

`--end-to-end STEPS` instead times the whole `synthjax.sweep` over
`seed=0:N` for STEPS steps, once as N sequential `train_and_evaluate` runs
(each compiling its own step, evaluation and sampler, writing logs, grids
and checkpoints) and once with --vmap, in temporary workdirs.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np


def timed(fn):
    """(fn(), seconds), waiting for any arrays it returns."""
    t0 = time.perf_counter()
    out = fn()
    jax.tree.map(lambda x: x.block_until_ready() if isinstance(x, jax.Array) else x, out)
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/dcgan.py")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3, help="timed steps per seed (after one warm-up step)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=1500, help="run length S for the end-to-end estimate")
    p.add_argument("--impl", default="", help="model.conv_impl for both programs ('' = the config's)")
    p.add_argument("--vmap-impl", default="", help="model.conv_impl for the vmapped program only (default: --impl)")
    p.add_argument("--end-to-end", type=int, default=0, metavar="STEPS", help="time whole sweeps of STEPS steps instead")
    a = p.parse_args(argv)
    if a.end_to_end:
        print(json.dumps(end_to_end(a), indent=1))
        return

    from synthjax import sweep
    from synthjax.config import load_config
    from synthjax.data import build_pipeline, get_source
    from synthjax.parallel import DataParallel, make_mesh
    from synthjax.trainers import build_trainer

    overrides = [f"train.batch_size={a.batch}", *([f"model.conv_impl={a.impl}"] if a.impl else [])]
    config = load_config(a.config, overrides)
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    dp = DataParallel("shard_map", make_mesh(jax.devices()[:1]))
    pipeline = build_pipeline(source, a.batch, config.seed, trainer.preprocess, num_threads=0)
    batches = [dp.put_batch(next(pipeline)) for _ in range(a.rounds + 1)]
    keys = [jax.random.split(jax.random.key(seed), 4) for seed in range(a.seeds)]
    init = jax.jit(trainer.create_state)
    hp = trainer.hparams()

    # Sequential: one compiled step shared by all seeds (separate train.py runs would each compile it).
    seq_states = [dp.put_state(init(k[0])) for k in keys]
    plain = dp.compile_step(trainer.train_step, donate_state=False)
    compiled_plain, seq_compile = timed(lambda: plain.lower(seq_states[0], batches[0], keys[0][1]).compile())
    # Vmapped: the same member step stacked over seeds.
    vtrainer = trainer
    if a.vmap_impl:  # same parameters and function, another formulation of the convolutions
        vtrainer = build_trainer(load_config(a.config, [*overrides, f"model.conv_impl={a.vmap_impl}"]),
                                 source.image_shape, source.num_classes)
    carry = dp.put_state((sweep._stack([init(k[0]) for k in keys]), sweep._stack([hp] * a.seeds)))
    step_keys = jax.numpy.stack([k[1] for k in keys])
    stacked = dp.compile_step(sweep._stacked_step(vtrainer, "halt"), donate_state=False)
    compiled_stacked, vmap_compile = timed(lambda: stacked.lower(carry, batches[0], step_keys).compile())

    seq_times, vmap_times = [], []
    for r, batch in enumerate(batches):
        round_seq = 0.0
        for i in range(a.seeds):
            (seq_states[i], _), dt = timed(lambda: compiled_plain(seq_states[i], batch, keys[i][1]))
            round_seq += dt
        (carry, _), dt = timed(lambda: compiled_stacked(carry, batch, step_keys))
        if r:  # round 0 is the warm-up
            seq_times.append(round_seq)
            vmap_times.append(dt)

    # ||x - y|| / ||y|| per state leaf (parameters, BatchNorm statistics, Adam moments), the worst one named.
    diff, where = 0.0, ""
    for i in range(a.seeds):
        member = jax.tree_util.tree_flatten_with_path(sweep._member(carry[0], i))[0]
        for (path, x), y in zip(member, jax.tree.leaves(seq_states[i])):
            x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
            rel = float(np.linalg.norm(x - y) / (np.linalg.norm(y) + 1e-30))
            if rel > diff:
                diff, where = rel, f"seed {i} {jax.tree_util.keystr(path)}"
    seq, vm = statistics.median(seq_times), statistics.median(vmap_times)
    result = {
        "config": a.config, "seeds": a.seeds, "batch": a.batch, "timed_rounds": a.rounds,
        "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "machine": platform.platform(),
        "load_avg_1min": os.getloadavg()[0],
        "compile_s": {"plain_step": round(seq_compile, 2), "vmapped_step": round(vmap_compile, 2)},
        "seconds_per_round": {"sequential_n_seeds": round(seq, 3), "vmapped_n_seeds": round(vm, 3)},
        "throughput_speedup": round(seq / vm, 2),
        f"end_to_end_{a.steps}_steps_s": {
            "n_separate_runs": round(a.seeds * (seq_compile + a.steps * seq / a.seeds), 1),
            "one_vmapped_run": round(vmap_compile + a.steps * vm, 1),
        },
        "max_rel_state_diff_vmapped_vs_sequential": {"value": diff, "leaf": where},
        "conv_impl": {"sequential": config.model.get("conv_impl", "auto"), "vmapped": a.vmap_impl or config.model.get("conv_impl", "auto")},
    }
    print(json.dumps(result, indent=1))


def end_to_end(a) -> dict:
    """Wall time of `synthjax.sweep` over N seeds, sequential vs --vmap (each in a fresh temporary workdir)."""
    import tempfile

    from synthjax import sweep

    steps = a.end_to_end
    base = [f"train.batch_size={a.batch}", f"train.num_steps={steps}", f"train.log_every={steps}", f"train.sample_every={steps}",
            f"train.ckpt_every={steps}", "train.eval_batches=1", "train.num_grid=16", "train.progress=False"]
    out = {"config": a.config, "seeds": a.seeds, "batch": a.batch, "steps": steps, "cpu_count": os.cpu_count(),
           "load_avg_1min_start": os.getloadavg()[0]}
    for name, vmap, impl in (("sequential", False, a.impl), ("vmapped", True, a.vmap_impl or a.impl)):
        overrides = base + ([f"model.conv_impl={impl}"] if impl else [])
        with tempfile.TemporaryDirectory() as workdir:
            t0 = time.perf_counter()
            sweep.run_sweep(a.config, workdir, [f"seed=0:{a.seeds}"], vmap=vmap, overrides=overrides, log=lambda _: None)
            out[f"{name}_s"] = round(time.perf_counter() - t0, 1)
        out[f"{name}_conv_impl"] = impl or "config"
    out["speedup"] = round(out["sequential_s"] / out["vmapped_s"], 2)
    out["load_avg_1min_end"] = os.getloadavg()[0]
    return out


if __name__ == "__main__":
    main()
