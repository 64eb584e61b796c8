"""Where a train step's time goes on the GPU, and which variants of it are faster: one process, one short slot.

    python benchmarks/gpu_profile.py --workload dcgan64 --batch-size 256 --dtype bfloat16 \
        --variant base: --variant joint:model.d_joint_pass=true --profile base --out $OUT/prof.json

Each `--variant NAME:KEY=VALUE;KEY=VALUE` is a set of config overrides (empty: the defaults). All
variants are compiled first, then timed in alternating rounds; the table gives each variant's median
step time and its median per-round ratio to the first variant (and to the PyTorch peer, with
`--peer`). Variants named in `--profile` are then traced with `jax.profiler` for a few steps and the
trace is summed here (no TensorBoard needed): GPU busy time per step (hold it against the untraced
step time in the table: the difference is time the GPU waits for the host), kernels per step, time
per kernel class and the longest kernels. XLA's fusions keep their HLO names as kernel names;
`--hlo-dir` writes each profiled variant's optimised HLO to map them (and cuDNN calls) to the model.

Two pseudo-overrides change the shape instead of the config: `members=N` times a stack of N members
(`synthjax.bench.prepare_stack`, the backend's stack overrides applied) and `batch=B` another batch
size, e.g. `--variant one: --variant big:batch=512 --variant stack:members=8`; images per second count
every member. `--loop-steps N` also traces N steps of the whole training loop (`train_and_evaluate` as
`synthjax.bench --loop` runs it), whose GPU busy time and kernels per step compare with the bench step's.

XLA flags are per process: run this once per XLA_FLAGS setting and give each run a `--tag`.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from synthjax import bench  # noqa: E402


def parse_variant(spec: str) -> tuple[str, list[str]]:
    name, _, overrides = spec.partition(":")
    return name, [o for o in overrides.split(";") if o]


SHAPE_KEYS = ("members", "batch")  # pseudo-overrides: the step's shape, not a config field


def prepare_variant(workload: str, batch_size: int, dtype: str, overrides: list[str]):
    """(prepared step, images per step) of a variant: a single run, or a stack with `members=N`."""
    shape = {k: int(v) for k, _, v in (o.partition("=") for o in overrides) if k in SHAPE_KEYS}
    rest = [o for o in overrides if o.partition("=")[0] not in SHAPE_KEYS]
    batch, members = shape.get("batch", batch_size), shape.get("members", 1)
    if members > 1:
        return bench.prepare_stack(workload, batch, members, dtype, rest)[0], batch * members
    return bench.prepare(workload, batch, dtype, rest), batch


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    busy, end = 0, -1
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        busy += stop - max(start, end)
        end = stop
    return busy


def summarise_trace(xspace_path: str, steps: int) -> dict:
    """Per-step GPU busy time, kernel count, time per kernel class and every kernel from one trace file."""
    from jax._src.lib import _profile_data

    data = _profile_data.ProfileData.from_file(xspace_path)
    out = {"lines": {}}
    kernels = collections.defaultdict(lambda: [0, 0])
    intervals = []
    for plane in data.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            events = list(line.events)
            total = sum(e.duration_ns for e in events)
            out["lines"][f"{plane.name} {line.name}"] = {"ms_per_step": total / 1e6 / steps, "events_per_step": len(events) / steps}
            if not line.name.startswith("Stream"):
                continue
            for e in events:
                kernels[e.name][0] += e.duration_ns
                kernels[e.name][1] += 1
                intervals.append((int(e.start_ns), int(e.start_ns + e.duration_ns)))
    out["gpu_busy_ms_per_step"] = _union_ns(intervals) / 1e6 / steps
    by_kind = collections.Counter()
    for name, (t, _) in kernels.items():
        by_kind[kernel_kind(name)] += t / 1e6 / steps
    out["ms_per_step_by_kind"] = dict(by_kind.most_common())
    out["kernels_per_step"] = sum(c for _, c in kernels.values()) / steps
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])
    out["kernels"] = [{"name": n[:120], "ms_per_step": t / 1e6 / steps, "calls_per_step": c / steps} for n, (t, c) in ranked]
    return out


def kernel_kind(name: str) -> str:
    """A coarse class of a GPU kernel, from its name (cuDNN, cuBLAS and XLA's fusion naming)."""
    for kind, marks in (("convolution (cuDNN)", ("fprop", "dgrad", "wgrad", "conv")),
                        ("GEMM", ("nvjet", "gemm", "cutlass", "cublas")),
                        ("transpose/copy", ("transpose", "copy", "memcpy", "memset")),
                        ("reduction fusion", ("reduce",))):
        if any(m in name.lower() for m in marks):
            return kind
    return "other fusion"


def profile(p, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        p.time(2)
        t0 = time.perf_counter()
        with jax.profiler.trace(d):
            p.time(steps)
        wall = (time.perf_counter() - t0) / steps
        files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        if not files:
            return {"error": "no trace file written"}
        summary = summarise_trace(files[0], steps)
    summary["traced_wall_ms_per_step"] = 1000 * wall
    return summary


def profile_loop(workload: str, batch: int, dtype: str, overrides: list[str], steps: int) -> dict:
    """`train_and_evaluate` as `synthjax.bench --loop` runs it, traced: once untraced first, so the traced run
    finds its programs (and their autotuning) in the compilation cache."""
    config, image_shape = bench.workload_config(workload, batch, dtype, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        data = bench.loop_data(config, image_shape, tmp)
        loop_config = bench.workload_config(workload, batch, dtype, [*overrides, *data, f"train.num_steps={steps}"])[0]
        untraced = bench.loop_round(loop_config, os.path.join(tmp, "untraced"))
        with tempfile.TemporaryDirectory() as d:
            with jax.profiler.trace(d):
                traced = bench.loop_round(loop_config, os.path.join(tmp, "traced"))
            files = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
            summary = summarise_trace(files[0], steps) if files else {"error": "no trace file written"}
    summary["traced_wall_ms_per_step"] = 1000 * traced["seconds"] / steps
    summary["untraced_wall_ms_per_step"] = 1000 * untraced["seconds"] / steps
    summary["cadence_seconds"] = {"untraced": untraced.get("cadence_seconds"), "traced": traced.get("cadence_seconds")}
    return summary


def print_profile(name: str, s: dict, top: int) -> None:
    print(f"\n## profile {name}: GPU busy {s['gpu_busy_ms_per_step']:.3f} ms/step, "
          f"{s['kernels_per_step']:.0f} kernels/step, traced wall {s['traced_wall_ms_per_step']:.3f} ms/step")
    if "cadence_seconds" in s:
        print(f"  untraced wall {s['untraced_wall_ms_per_step']:.3f} ms/step; host seconds in cadence actions: "
              f"{s['cadence_seconds']}")
    for kind, ms in s.get("ms_per_step_by_kind", {}).items():
        print(f"  {kind}: {ms:.3f} ms")
    for line, v in s["lines"].items():
        print(f"  line {line}: {v['ms_per_step']:.3f} ms, {v['events_per_step']:.0f} events")
    print("  top kernels:")
    for row in s["kernels"][:top]:
        print(f"    {row['ms_per_step']:8.4f} ms  x{row['calls_per_step']:<5.1f} {row['name']}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="dcgan64")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE;KEY=VALUE (repeatable)")
    ap.add_argument("--profile", default="", help="comma-separated variant names to trace ('best': the fastest)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--round-s", type=float, default=0.4, help="seconds per variant per round")
    ap.add_argument("--trace-steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=30, help="kernels printed (the JSON keeps them all)")
    ap.add_argument("--tag", default="", help="names this process's XLA_FLAGS setting in the output")
    ap.add_argument("--out", default="")
    ap.add_argument("--hlo-dir", default="")
    ap.add_argument("--loop-steps", type=int, default=0,
                    help="also trace the whole training loop (train_and_evaluate, the first variant's overrides) for "
                         "this many steps: GPU busy time and kernels per step against the bench step's")
    ap.add_argument("--peer", default="", help="path to torch_peer.py: time its eager step (and bf16 autocast) in the rounds too")
    ap.add_argument("--peer-compile", action="store_true", help="time the peer's step under torch.compile too (30-60 s to compile)")
    args = ap.parse_args(argv)
    variants = dict(parse_variant(v) for v in (args.variant or ["base:"]))

    prepared, failed, images = {}, {}, {}
    for name, overrides in variants.items():
        try:
            prepared[name], images[name] = prepare_variant(args.workload, args.batch_size, args.dtype, overrides)
            prepared[name].time(3)
        except Exception as e:  # a variant that does not compile is a result, not the end of the run
            failed[name] = f"{type(e).__name__}: {e}"[:300]
            print(f"variant {name} failed: {failed[name]}", file=sys.stderr)
    if not prepared:
        raise SystemExit("no variant compiled")
    ours = list(prepared)
    prepared.update(peer_runners(args.peer, args.workload, args.batch_size, args.dtype, args.peer_compile))
    per_step = time_alternating(prepared, args.rounds, args.round_s)
    first = ours[0]
    peers = [n for n in prepared if n not in ours]
    peer_best = [min(per_step[p][i] for p in peers) for i in range(args.rounds)] if peers else None
    rows = []
    for n in prepared:
        ratios = [a / b for a, b in zip(per_step[first], per_step[n])]
        ms = 1000 * statistics.median(per_step[n])
        rows.append({"variant": n, "overrides": variants.get(n, []), "step_ms": ms,
                     "images_per_sec": images.get(n, args.batch_size) / ms * 1000, "speedup_vs_first": statistics.median(ratios),
                     "vs_peer_best": statistics.median([b / a for a, b in zip(per_step[n], peer_best)]) if peers else None,
                     "compile_s": prepared[n].compile_s, "rounds_ms": [1000 * t for t in per_step[n]]})

    profiles = {}
    fastest = min(ours, key=lambda n: statistics.median(per_step[n]))
    for n in dict.fromkeys(fastest if n == "best" else n for n in filter(None, args.profile.split(","))):
        if n in ours:
            profiles[n] = profile(prepared[n], args.trace_steps)
            if args.hlo_dir:
                os.makedirs(args.hlo_dir, exist_ok=True)
                path = os.path.join(args.hlo_dir, f"hlo_{args.workload}_{args.tag or 'default'}_{n}.txt")
                with open(path, "w") as f:
                    f.write(prepared[n].compiled.as_text())

    if args.loop_steps:
        profiles["loop"] = profile_loop(args.workload, args.batch_size, args.dtype, variants[ours[0]], args.loop_steps)

    record = {"workload": args.workload, "batch_size": args.batch_size, "dtype": args.dtype, "tag": args.tag,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "device": bench.device_name(), "jax": jax.__version__,
              "variants": rows, "failed": failed, "profiles": profiles}
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")
    for n, s in profiles.items():
        if "error" not in s:
            print_profile(n, s, args.top)
    title = f"{args.workload} b{args.batch_size} {args.dtype} [{args.tag or 'default flags'}] on {bench.device_name()}"
    print_table(title, rows, failed, bench_flops(args.workload))


def time_alternating(runners: dict, rounds: int, round_s: float) -> dict[str, list[float]]:
    """Seconds per step of every runner, per round; each round runs every runner for about `round_s`."""
    probe = {n: r.time(3)[0] / 3 for n, r in runners.items()}
    steps = {n: max(3, int(round_s / max(t, 1e-5))) for n, t in probe.items()}
    per_step = {n: [] for n in runners}
    for _ in range(rounds):
        for n, r in runners.items():
            per_step[n].append(r.time(steps[n])[0] / steps[n])
    return per_step


def print_table(title: str, rows: list[dict], failed: dict, flops: float) -> None:
    first = rows[0]["variant"]
    print(f"\n## {title}\n| variant | step ms | img/s | TFLOP/s* | speed-up vs {first} | vs PyTorch best | compile s |")
    for r in rows:
        tf = f"{flops * r['images_per_sec'] / 1e12:.0f}" if flops else "-"
        vs = f"{r['vs_peer_best']:.2f}x" if r["vs_peer_best"] else "-"
        print(f"| {r['variant']} | {r['step_ms']:.3f} | {r['images_per_sec']:,.0f} | {tf} | {r['speedup_vs_first']:.3f} | {vs} | "
              f"{r['compile_s']:.1f} |")
    for n, e in failed.items():
        print(f"| {n} | failed: {e[:100]} |")


def peer_runners(path: str, workload: str, batch: int, dtype: str, compiled: bool = False) -> dict:
    """The PyTorch peer's eager step (bf16 autocast for bfloat16; each under torch.compile too with
    `compiled`), as gpu_suite.py builds them; {} without it. A variant that fails to build is reported
    and left out."""
    if not path:
        return {}
    import gpu_suite  # benchmarks/ is on the path when this file runs as a script

    peer = gpu_suite.load_peer(path)
    if peer is None:
        print(f"no PyTorch peer: {path} missing or torch not importable", file=sys.stderr)
        return {}
    kinds = [("eager", False)] + ([("amp", True)] if dtype == "bfloat16" else [])
    kinds = [(label, amp, False) for label, amp in kinds] + ([(f"{label}+compile", amp, True) for label, amp in kinds] if compiled else [])
    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    runners = {}
    for label, amp, comp in kinds:
        try:
            runners[f"torch:{label}"] = gpu_suite.PeerStep(peer, workload, batch, device, amp, comp)
        except Exception as e:  # torch.compile failing is a finding, not the end of the slot
            print(f"torch:{label} failed: {type(e).__name__}: {str(e)[:300]}", file=sys.stderr)
    return runners


def bench_flops(workload: str) -> float:
    """Model FLOPs per image of a train step, from the benchmark spec (0 where it gives none)."""
    return {"dcgan28": 0.280e9, "dcgan64": 2.482e9, "vae_mlp": 0.00328e9}.get(workload, 0.0)


if __name__ == "__main__":
    main()
