"""The GPU rows of the loop and stack tables, in one process for one short device slot.

    python benchmarks/gpu_loop_stacks.py --out $OUT/loop_stacks.jsonl --budget-s 300 [--cases 0:7 | 1,0,4] [--quick]

Runs the cases below in order of importance through `synthjax.bench`'s own
functions (`run_loop`: `train_and_evaluate` against the bench step, medians of
alternating rounds; `run_members`: a vmapped stack against its members one by
one), appends one JSON line per case to `--out`, and prints a table last. A case
is skipped when less budget is left than its estimate, so a short slot still
returns the first rows. `--quick` shrinks batches and steps (the CPU self-test).
Set JAX_COMPILATION_CACHE_DIR so repeated rounds reuse their compilations.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from synthjax import bench  # noqa: E402

# (kind, workload, batch, dtype, overrides, estimated seconds): the loop targets, the stack targets, then the
# measurements behind the default of train.steps_per_call on GPU, then the `make train` config.
CASES = [
    ("loop", "dcgan28", 1024, "float32", [], 60),
    ("loop", "dcgan64", 256, "bfloat16", [], 60),
    ("loop", "vae_mlp", 128, "float32", [], 50),
    ("loop", "gan_mlp", 128, "float32", [], 30),
    ("members", "dcgan28", 64, "float32", [], 45),
    ("members", "vae_mlp", 128, "float32", [], 20),
    ("members", "gan_mlp", 128, "float32", [], 20),
    ("members", "dcgan28", 64, "float32", ["sweep.gpu_stack_overrides=model.conv_impl=matmul"], 45),
    ("members", "dcgan", 64, "float32", [], 45),
    ("members", "dcgan28", 64, "float32", ["model.d_joint_pass=off"], 45),
    ("loop", "gan_mlp", 128, "float32", ["train.steps_per_call=32"], 30),
    ("loop", "dcgan64", 256, "bfloat16", ["train.steps_per_call=32"], 70),
    ("loop", "vae_mlp", 128, "float32", ["train.steps_per_call=1"], 45),
    ("loop", "gan_mlp", 128, "float32", ["train.steps_per_call=1"], 30),
    ("loop", "dcgan28", 1024, "float32", ["train.steps_per_call=1"], 50),
    ("loop", "dcgan", 64, "float32", [], 50),
    ("loop", "vae_mlp", 128, "float32", ["train.steps_per_call=32"], 40),
]

T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def run_case(kind: str, workload: str, batch: int, dtype: str, overrides: list[str], quick: bool) -> dict:
    if kind == "loop":
        return bench.run_loop(workload, batch, dtype, rounds=1 if quick else 3, overrides=overrides,
                              steps=4 if quick else 0)
    return bench.run_members(workload, batch, steps=2 if quick else 100, members=2 if quick else 8, dtype=dtype,
                             rounds=1 if quick else 3, overrides=overrides)


def row(r: dict) -> str:
    name = f"{r['workload']} b{r['batch_size']} {r['dtype']} {' '.join(r['overrides'])}".strip()
    if r["kind"] == "loop":
        return (f"loop    {name:58s} K={r['steps_per_call']:<3} loop {r['loop_images_per_sec']:10.0f} "
                f"bench {r['bench_images_per_sec']:10.0f} img/s  {r['loop_vs_bench']:.3f}")
    return (f"members {name:58s} x{r['members']:<3} stack {r['images_per_sec']:9.0f} "
            f"seq {r['sequential_images_per_sec']:9.0f} img/s  {r['speedup_vs_sequential']:.2f}x")


def select(cases: list, spec: str) -> list:
    """The cases a `--cases` spec names: a slice ('0:7', '7:') or indices in the order to run them ('1,0,4')."""
    if ":" in spec:
        start, _, stop = spec.partition(":")
        return cases[int(start or 0):int(stop or len(cases))]
    return [cases[int(i)] for i in spec.split(",")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--budget-s", type=float, default=300, help="start no case whose estimate exceeds what is left")
    p.add_argument("--only", default="loop,members", help="kinds to run")
    p.add_argument("--cases", default=":", help="a slice of CASES ('0:7', '7:') or indices in order ('1,0,4')")
    p.add_argument("--quick", action="store_true", help="tiny batches and steps: the CPU self-test")
    a = p.parse_args()
    results = []
    for kind, workload, batch, dtype, overrides, estimate in select(CASES, a.cases):
        left = a.budget_s - (time.perf_counter() - T0)
        label = f"{kind} {workload} b{batch} {dtype} {overrides}"
        if kind not in a.only.split(",") or (not a.quick and left < estimate):
            log(f"skip {label} ({left:.0f} s left)")
            continue
        log(f"start {label}")
        try:
            r = {"kind": kind, **run_case(kind, workload, 4 if a.quick else batch, dtype, overrides, a.quick)}
        except Exception as e:  # one failing case must not cost the others
            traceback.print_exc()
            r = {"kind": kind, "workload": workload, "batch_size": batch, "dtype": dtype, "overrides": overrides,
                 "error": repr(e)[:500]}
        r["wall_s"] = round(time.perf_counter() - T0, 1)
        results.append(r)
        with open(a.out, "a") as f:
            f.write(json.dumps(r) + "\n")
        log(f"done {label}: {row(r) if 'error' not in r else r['error']}")
    print(f"\n{bench.device_name()}, jax {bench.jax.__version__}")
    for r in results:
        print(row(r) if "error" not in r else f"{r['kind']:7s} {r['workload']} b{r['batch_size']} FAILED {r['error'][:150]}")


if __name__ == "__main__":
    main()
