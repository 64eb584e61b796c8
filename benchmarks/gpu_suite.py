"""Every GPU measurement issue 3 asks for, in one process and one short device slot.

    python benchmarks/gpu_suite.py --peer PATH/torch_peer.py --out $OUT/gpu.json [--budget-s 420]

1. Layers: forward + backward time of each exact formulation (models/layers.py)
   of the DCGAN layers whose image side has 1-3 channels, plus one wide layer
   each way, so the per-layer choice ('out' and 'in' roles of model.conv_impl)
   rests on a measurement. The fastest per layer makes the 'tuned' variant.
2. Steps: the reference workloads through synthjax's own train step
   (`synthjax.bench.prepare`, the step train.py runs) for several
   `model.conv_impl` variants, and through the PyTorch peer (its own `build`,
   eager, `torch.compile`, and bf16 autocast for bfloat16 cases), all compiled
   first and then timed in alternating rounds in this one process; medians
   over rounds and the median per-round ratio against the peer's best variant.
3. Every model family's default config at its batch size: throughput, compile
   time and step memory.

Order is by importance and a time budget skips what does not fit, so a short
slot still returns the main table. Prints the tables last and writes JSON.
Runs on CPU too (`--quick`, small batches), which is how it is tested.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
import traceback

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # share the GPU with torch in this process

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from synthjax import bench  # noqa: E402
from synthjax.models import formulations, layers  # noqa: E402
from synthjax.models.formulations import ConvChoice  # noqa: E402

T0 = time.perf_counter()

# (name, kind, batch, H, Cin, Cout, dtypes): the layers whose formulation is in question.
LAYER_CASES = [
    ("dcgan28.out", "up", 1024, 14, 128, 1, ("float32",)),
    ("dcgan64.out", "up", 256, 32, 64, 3, ("bfloat16", "float32")),
    ("dcgan28.in", "down", 1024, 28, 1, 64, ("float32",)),
    ("dcgan64.in", "down", 256, 64, 3, 64, ("bfloat16", "float32")),
    ("dcgan28.up", "up", 1024, 7, 256, 128, ("float32",)),
    ("dcgan64.up", "up", 256, 16, 128, 64, ("bfloat16", "float32")),
    ("dcgan64.down", "down", 256, 32, 64, 128, ("bfloat16", "float32")),
    ("dcgan28.down", "down", 1024, 14, 64, 128, ("float32",)),
]
UP_CANDIDATES = tuple(f for f in formulations.UP_FORMULATIONS if f != "onednn")
DOWN_CANDIDATES = tuple(f for f in formulations.DOWN_FORMULATIONS if f != "onednn")

# (workload, batch, dtype) in order of importance; the peer runs the reference workloads.
STEP_CASES = [
    ("dcgan28", 1024, "float32"),
    ("dcgan64", 256, "bfloat16"),
    ("dcgan64", 256, "float32"),
    ("dcgan28", 128, "float32"),
    ("vae_mlp", 128, "float32"),
]
EXTRA_CASES = [("dcgan64", 1024, "bfloat16")]  # after the family table, if time is left
# torch.compile of the peer's dcgan28 step failed in an earlier H100 call (see the spec); try it once, at b1024.
PEER_COMPILE_SKIP = {("dcgan28", 128)}
FAMILY_CONFIGS = ["gan_mlp", "dcgan", "wgan_gp", "sngan", "cgan", "vae_mlp", "vae_conv", "iwae", "vqvae",
                  "pixelrnn", "draw", "convlstm"]


def left_s(budget: float) -> float:
    return budget - (time.perf_counter() - T0)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def time_fn(fn, *args, min_s: float = 0.1, reps: int = 3) -> float:
    """Median seconds per call of a jitted fn (one call to compile, then `reps` timed batches)."""
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    n = max(1, int(min_s / max(time.perf_counter() - t0, 1e-6)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t0) / n)
    return statistics.median(times)


def layer_fwd_bwd(kind: str, impl: str):
    conv = layers.up_conv2x if kind == "up" else layers.down_conv2x

    def loss(x, k, g):
        return jnp.vdot(conv(x, k, ConvChoice(impl)).astype(jnp.float32), g)

    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def bench_layers(quick: bool, budget: float, only: list[str]) -> tuple[list[dict], dict]:
    """Times every candidate for every layer case; returns (rows, {(case, dtype): fastest impl})."""
    rows, best = [], {}
    rng = np.random.default_rng(0)
    for name, kind, batch, h, cin, cout, dtypes in LAYER_CASES:
        if only and name not in only:
            continue
        batch = 8 if quick else batch
        for dtype in dtypes:
            if left_s(budget) < 0:
                log(f"layers: budget spent, skipping {name} {dtype}")
                continue
            hout = 2 * h if kind == "up" else h // 2
            x = jnp.asarray(rng.standard_normal((batch, h, h, cin)), dtype)
            k = jnp.asarray(rng.standard_normal((4, 4, cin, cout)) * 0.05, dtype)
            g = jnp.asarray(rng.standard_normal((batch, hout, hout, cout)), jnp.float32)
            timings = {}
            for impl in UP_CANDIDATES if kind == "up" else DOWN_CANDIDATES:
                try:
                    timings[impl] = 1000 * time_fn(layer_fwd_bwd(kind, impl), x, k, g, min_s=0.02 if quick else 0.1)
                except Exception as e:  # one failing formulation must not cost the rest
                    log(f"layer {name} {impl} {dtype} failed: {e!r}"[:300])
            if timings:
                best[(name, dtype)] = min(timings, key=timings.get)
                rows.append({"layer": name, "kind": kind, "batch": batch, "dtype": dtype, "cin": cin, "cout": cout,
                             "ms": timings, "fastest": best[(name, dtype)]})
                log(f"layer {name} b{batch} {dtype}: " + ", ".join(f"{k} {v:.3f}" for k, v in timings.items()))
    return rows, best


def tuned_impl(workload: str, dtype: str, best: dict) -> str | None:
    """'role=impl,...' from the per-layer winners for this workload (None if nothing was measured)."""
    roles = {"out": f"{workload}.out", "up": f"{workload}.up", "in": f"{workload}.in", "down": f"{workload}.down"}
    picks = {role: best.get((case, dtype)) or best.get((case, "float32")) for role, case in roles.items()}
    picks = {r: p for r, p in picks.items() if p}
    return ",".join(f"{r}={p}" for r, p in picks.items()) or None


# --------------------------------------------------------------------------- PyTorch peer
def load_peer(path: str):
    if not path or not os.path.exists(path):
        return None
    try:
        import torch  # noqa: F401
    except ImportError:
        return None
    spec = importlib.util.spec_from_file_location("torch_peer", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["torch_peer"] = module  # torch.compile re-imports the step's module by name
    spec.loader.exec_module(module)
    return module


class PeerStep:
    """The peer's own step for a workload (its `build`), optionally under bf16 autocast and torch.compile,
    wrapped exactly as its command line does."""

    def __init__(self, peer, workload: str, batch: int, device: str, amp: bool, compiled: bool):
        import torch

        self.torch, self.device = torch, device
        torch.manual_seed(0)
        step, self.data = peer.build(workload, device, batch)
        if amp:
            plain = step

            def step(x):
                with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16):
                    return plain(x)
        self.step = torch.compile(step) if compiled else step
        t0 = time.perf_counter()
        for _ in range(3):  # compile (if asked) and warm up
            self.step(self.data)
        self.sync()
        self.compile_s = time.perf_counter() - t0

    def sync(self):
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def time(self, steps: int) -> tuple[float, None]:
        """Seconds for `steps` steps (same shape of answer as synthjax's PreparedStep.time)."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step(self.data)
        self.sync()
        return time.perf_counter() - t0, None


# --------------------------------------------------------------------------- steps
def steps_for(seconds_per_step: float, target_s: float) -> int:
    return max(3, int(target_s / max(seconds_per_step, 1e-6)))


def prepare_case(workload, batch, dtype, best, peer, device, compile_peer, wanted=("auto", "native", "tuned")):
    """All runners of one case: {label: runner}; failures are logged and skipped. 'auto' is the
    default configuration (what a user gets), 'native' the plain convolutions, 'tuned' the
    per-layer winners of the layer table."""
    runners = {}
    variants = {"auto": [], "native": ["model.conv_impl=native"]}
    tuned = tuned_impl(workload, dtype, best) if workload.startswith("dcgan") else None
    if tuned:
        variants["tuned"] = [f"model.conv_impl={tuned}"]
    variants = {k: v for k, v in variants.items() if k in wanted and (k == "auto" or workload.startswith("dcgan"))}
    for label, overrides in variants.items():
        try:
            runners[f"synthjax:{label}"] = bench.prepare(workload, batch, dtype, overrides)
            log(f"{workload} b{batch} {dtype} synthjax {label}: compiled in {runners[f'synthjax:{label}'].compile_s:.1f}s {overrides}")
        except Exception:
            log(f"{workload} synthjax {label} failed:\n{traceback.format_exc()[-1500:]}")
    if peer is not None:
        peer_variants = [("eager", False, False)]
        if dtype == "bfloat16":
            peer_variants.append(("amp", True, False))
        if compile_peer:
            peer_variants.append(("compile", False, True))
            if dtype == "bfloat16":
                peer_variants.append(("amp+compile", True, True))
        for label, amp, compiled in peer_variants:
            try:
                runners[f"torch:{label}"] = PeerStep(peer, workload, batch, device, amp, compiled)
                log(f"{workload} b{batch} torch {label}: ready in {runners[f'torch:{label}'].compile_s:.1f}s")
            except Exception as e:
                log(f"{workload} torch {label} failed: {e!r}"[:400])
    return runners


def time_case(runners: dict, batch: int, rounds: int, target_s: float) -> dict:
    """Alternating rounds: every runner once per round; img/s per runner per round."""
    per_step = {}
    for name, r in runners.items():  # calibrate the step count per runner on a short run
        per_step[name] = r.time(3)[0] / 3
    results = {name: [] for name in runners}
    for _ in range(rounds):
        for name, r in runners.items():
            n = steps_for(per_step[name], target_s)
            results[name].append(batch * n / r.time(n)[0])
    return results


def summarise_case(workload, batch, dtype, runners, results) -> dict:
    ours = {k: v for k, v in results.items() if k.startswith("synthjax")}
    theirs = {k: v for k, v in results.items() if k.startswith("torch")}
    rounds = len(next(iter(results.values()))) if results else 0
    best_ours = max(ours, key=lambda k: statistics.median(ours[k])) if ours else None
    ratios = {}
    if theirs:
        peer_best = [max(v[i] for v in theirs.values()) for i in range(rounds)]
        ratios = {k: statistics.median([v[i] / peer_best[i] for i in range(rounds)]) for k, v in ours.items()}
        ratios_eager = {k: statistics.median([v[i] / theirs["torch:eager"][i] for i in range(rounds)])
                        for k, v in ours.items()} if "torch:eager" in theirs else {}
    else:
        ratios_eager = {}
    row = {
        "workload": workload, "batch": batch, "dtype": dtype, "rounds": rounds,
        "img_s": {k: statistics.median(v) for k, v in results.items()},
        "img_s_rounds": results,
        "ratio_vs_peer_best": ratios, "ratio_vs_peer_eager": ratios_eager,
        "best_synthjax": best_ours,
        "conv_impl": {k: runners[k].config.model.get("conv_impl", "") for k in ours if hasattr(runners[k].config.model, "get")},
        "compile_s": {k: r.compile_s for k, r in runners.items()},
        "step_memory_bytes": {k: bench.step_memory_bytes(runners[k].compiled) for k in ours},
    }
    gflop_per_image = {"dcgan28": 0.280, "dcgan64": 2.482}.get(workload)  # the spec's counts
    if gflop_per_image and "synthjax:auto" in results:
        row["model_tflops"] = row["img_s"]["synthjax:auto"] * gflop_per_image / 1e3
    return row


def bench_families(names: list[str], quick: bool, budget: float) -> list[dict]:
    rows = []
    for name in names:
        if left_s(budget) < 20:
            log(f"families: budget spent, skipping {name} and the rest")
            break
        try:
            batch = bench.default_batch_size(name)
            r = bench.run(name, max(batch // 8, 5) if quick else batch, 5 if quick else 30, "float32", 3)
            rows.append(r)
            log(f"family {name}: {r['images_per_sec']:.0f} img/s, compile {r['compile_s']:.1f}s")
        except Exception as e:
            log(f"family {name} failed: {e!r}"[:400])
    return rows


# --------------------------------------------------------------------------- output
def fmt(v, spec=",.0f"):
    return "n/a" if v is None else format(v, spec)


def print_tables(layer_rows, step_rows, family_rows) -> None:
    print("\n## Layers: forward + backward, ms (fastest marked *)")
    for r in layer_rows:
        cells = ", ".join(f"{k}{'*' if k == r['fastest'] else ''} {v:.3f}" for k, v in r["ms"].items())
        print(f"- {r['layer']} b{r['batch']} {r['dtype']} ({r['cin']}->{r['cout']}): {cells}")
    print("\n## Train steps: median img/s over alternating rounds; ratio = median per-round synthjax / the peer's best")
    print("| workload | batch | dtype | synthjax default img/s | peer variants img/s | ratio (default) | ratio vs eager | "
          "best variant: img/s, ratio | default TFLOP/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in step_rows:
        auto, b = "synthjax:auto", r["best_synthjax"]
        peers = ", ".join(f"{k[6:]} {fmt(v)}" for k, v in r["img_s"].items() if k.startswith("torch")) or "n/a"
        best = f"{b[9:]} ({r['conv_impl'].get(b) or 'auto'}): {fmt(r['img_s'].get(b))}, {fmt(r['ratio_vs_peer_best'].get(b), '.2f')}"
        print(f"| {r['workload']} | {r['batch']} | {r['dtype']} | {fmt(r['img_s'].get(auto))} | {peers} "
              f"| {fmt(r['ratio_vs_peer_best'].get(auto), '.2f')} | {fmt(r['ratio_vs_peer_eager'].get(auto), '.2f')} "
              f"| {best} | {fmt(r.get('model_tflops'), '.1f')} |")
    print("\n## Every family's default config at its own batch size, float32")
    print("| config | batch | img/s | step ms | compile s | step memory MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in family_rows:
        mem = r["step_memory_bytes"]
        print(f"| {r['workload']} | {r['batch_size']} | {fmt(r['images_per_sec'])} | {r['step_ms']:.2f} | {r['compile_s']:.1f} "
              f"| {fmt(mem / 2**20 if mem else None, '.0f')} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", default=os.environ.get("SYNTHJAX_PEER", ""))
    p.add_argument("--out", default="")
    p.add_argument("--budget-s", type=float, default=420, help="stop starting new work after this many seconds")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--target-s", type=float, default=0.3, help="seconds per timed run")
    p.add_argument("--no-peer-compile", action="store_true")
    p.add_argument("--cases", default="", help="workload:batch:dtype,... (default: the issue's list; 'none': no step cases)")
    p.add_argument("--families", default=",".join(FAMILY_CONFIGS), help="configs for the family table ('' for none)")
    p.add_argument("--layers", default="", help="comma-separated LAYER_CASES names to time (default: all; 'none': none)")
    p.add_argument("--variants", default="auto,native,tuned", help="synthjax variants per case (see prepare_case)")
    p.add_argument("--quick", action="store_true", help="small batches and short runs (CPU self-test)")
    a = p.parse_args()

    device = "cuda" if jax.default_backend() == "gpu" else "cpu"
    peer = load_peer(a.peer)
    info = {"date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "device": bench.device_name(),
            "torch": getattr(sys.modules.get("torch"), "__version__", None)}
    try:
        import flax
        import optax
        info.update(flax=flax.__version__, optax=optax.__version__)
    except ImportError:
        pass
    log(f"{info}")
    cases = [] if a.cases == "none" else [(w, int(b), d) for w, b, d in (c.split(":") for c in a.cases.split(","))] if a.cases else STEP_CASES
    layer_rows, best = bench_layers(a.quick, min(a.budget_s * 0.25, 100), [n for n in a.layers.split(",") if n])
    step_rows, family_rows = [], []

    def save():  # after every part, so a later hang or timeout still leaves the measured part
        if a.out:
            with open(a.out, "w") as f:
                json.dump({**info, "layers": layer_rows, "steps": step_rows, "families": family_rows}, f, indent=1, default=str)

    def run_cases(case_list):
        for workload, batch, dtype in case_list:
            if left_s(a.budget_s) < 30:
                log(f"budget spent, skipping {workload} b{batch} {dtype}")
                continue
            batch = min(batch, 32) if a.quick else batch
            compile_peer = not a.no_peer_compile and left_s(a.budget_s) > 120 and (workload, batch) not in PEER_COMPILE_SKIP
            runners = prepare_case(workload, batch, dtype, best, peer, device, compile_peer, a.variants.split(","))
            results = time_case(runners, batch, 3 if a.quick else a.rounds, 0.05 if a.quick else a.target_s)
            step_rows.append(summarise_case(workload, batch, dtype, runners, results))
            save()

    save()
    run_cases(cases)
    family_rows.extend(bench_families([f for f in a.families.split(",") if f], a.quick, a.budget_s))
    save()
    if not a.cases:
        run_cases(EXTRA_CASES)
    print(json.dumps(info))
    print_tables(layer_rows, step_rows, family_rows)


if __name__ == "__main__":
    main()
