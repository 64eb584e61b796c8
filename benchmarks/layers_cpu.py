"""Per-layer timing of the DCGAN up/down-sampling formulations (and PyTorch's).

Times forward and forward+backward (output plus gradients wrt input and
params, as a GAN step needs) of every `UpConv2x` / `DownConv2x` impl against
Flax's own `nn.ConvTranspose` / `nn.Conv`, for the four dcgan28 layers, and
PyTorch's ConvTranspose2d / Conv2d in the same run when torch is importable.
Compile time (lower + compile) is reported separately. After one warm-up
call each, the candidates of a layer are timed round-robin (`--reps` rounds,
each call synchronised), so load from other processes hits them alike;
median and min are printed. Usage, from the repository root:

    python -m benchmarks.layers_cpu [--batch 128] [--reps 7] [--dtype bfloat16]
        [--layers up256,up128,down1,down64] [--skip-slow]
"""

import argparse
import datetime
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from synthjax.kernels import onednn
from synthjax.models import formulations, layers
from synthjax.models.formulations import ConvChoice
from synthjax.tuning import cpu_compiler_options

# name: (kind, Cin, Cout, input H=W) for the dcgan28 workload of bench/SPEC.md ...
DCGAN28_LAYERS = {
    "up256": ("up", 256, 128, 7),
    "up128": ("up", 128, 1, 14),
    "down1": ("down", 1, 64, 28),
    "down64": ("down", 64, 128, 14),
}
# ... and up-convolutions of falling output width, where `auto` switches impl on CPU
# (layers.CPU_SUBPIXEL_MIN_FEATURES): `--layers up64to32,up64to8,up64to4,up64to1`.
WIDTH_LAYERS = {f"up64to{c}": ("up", 64, c, 14) for c in (32, 16, 8, 4, 1)}
LAYERS = DCGAN28_LAYERS | WIDTH_LAYERS
NAN = float("nan")
SLOW_S = 2.0  # a call slower than this at warm-up is timed in the first round only


def flax_reference(kind: str, cout: int, dtype: Any) -> nn.Module:
    """Flax's own layer with PyTorch's k=4 s=2 p=1 semantics."""
    if kind == "up":
        return nn.ConvTranspose(cout, (4, 4), (2, 2), padding=((2, 2), (2, 2)), dtype=dtype)
    return nn.Conv(cout, (4, 4), (2, 2), padding=((1, 1), (1, 1)), dtype=dtype)


def onednn_runs(dtype: Any) -> bool:
    """The oneDNN impl takes float32 and needs its library (`make native`)."""
    return jnp.dtype(dtype) == jnp.float32 and onednn.available()


def candidates(kind: str, cout: int, dtype: Any) -> dict[str, nn.Module]:
    """Flax's own layer first, then every concrete impl of ours."""
    cls, impls = ((layers.UpConv2x, formulations.UP_FORMULATIONS) if kind == "up"
                  else (layers.DownConv2x, formulations.DOWN_FORMULATIONS))
    mods = {"flax": flax_reference(kind, cout, dtype)}
    runnable = [impl for impl in impls if impl != "onednn" or onednn_runs(dtype)]
    chunk = formulations.CPU_BATCH_CHUNK
    mods.update({impl: cls(cout, dtype=dtype, conv=ConvChoice(impl, None if impl == "onednn" else chunk)) for impl in runnable})
    return mods


def compiled_calls(module: nn.Module, x: jax.Array, cot: jax.Array, skip_bwd: bool) -> dict:
    """Compile seconds and a synchronising zero-argument call, for fwd and fwd+bwd."""
    params = module.init(jax.random.key(0), x)

    def fwd(p, x):
        return module.apply(p, x)

    def fwd_bwd(p, x, cot):
        y, vjp = jax.vjp(fwd, p, x)
        return y, *vjp(cot)

    out = {}
    for what, fn, args in (("fwd", fwd, (params, x)), ("fb", fwd_bwd, (params, x, cot))):
        if what == "fb" and skip_bwd:
            out[what] = (NAN, None)
            continue
        t0 = time.perf_counter()
        # The options the train steps compile with (parallel.DataParallel.compile_step).
        compiled = jax.jit(fn).lower(*args).compile(compiler_options=cpu_compiler_options(jax.default_backend()))
        out[what] = (time.perf_counter() - t0, lambda c=compiled, a=args: jax.block_until_ready(c(*a)))
    return out


def torch_calls(kind: str, cin: int, cout: int, hw: int, batch: int) -> dict | None:
    """PyTorch's layer (NCHW, eager), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    layer = (torch.nn.ConvTranspose2d if kind == "up" else torch.nn.Conv2d)(cin, cout, 4, 2, 1)
    x = torch.randn(batch, cin, hw, hw, requires_grad=True)

    def fwd():
        with torch.no_grad():
            layer(x)

    def fwd_bwd():
        y = layer(x)
        y.backward(torch.ones_like(y))

    return {"fwd": (NAN, fwd), "fb": (NAN, fwd_bwd)}


def round_robin(calls: dict[str, Callable[[], Any]], reps: int) -> dict[str, list[float]]:
    """Seconds per call: one warm-up each, then `reps` rounds over all calls."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    slow = set()
    for name, fn in calls.items():
        t0 = time.perf_counter()
        fn()
        slow.update([name] if time.perf_counter() - t0 > SLOW_S else [])
    for r in range(reps):
        for name, fn in calls.items():
            if r and name in slow:
                continue
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def machine_line() -> str:
    """Date, CPU model, core count and load, so a table says where it came from."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{datetime.datetime.now():%Y-%m-%d %H:%M} | {model} | {os.cpu_count()} cpus | load {load} | "
            f"jax {jax.__version__} ({jax.default_backend()})")


def bench_layer(name: str, batch: int, dtype: Any, reps: int, skip_slow: bool, rng: np.random.Generator) -> None:
    """Times every candidate of one dcgan28 layer and prints its rows."""
    if name not in LAYERS:
        raise SystemExit(f"--layers: unknown layer {name!r}; valid: {', '.join(LAYERS)}")
    kind, cin, cout, hw = LAYERS[name]
    out_hw = 2 * hw if kind == "up" else hw // 2
    x = jnp.asarray(rng.standard_normal((batch, hw, hw, cin), dtype=np.float32), dtype)
    cot = jnp.asarray(rng.standard_normal((batch, out_hw, out_hw, cout), dtype=np.float32), dtype)
    rows = {}
    for impl, module in candidates(kind, cout, dtype).items():
        skip = skip_slow and impl in ("flax", "native") and name == "up256"
        rows[impl] = compiled_calls(module, x, cot, skip)
    torch_row = torch_calls(kind, cin, cout, hw, batch) if dtype == jnp.float32 else None
    if torch_row is not None:
        rows["torch"] = torch_row
    calls = {(impl, what): fn for impl, r in rows.items() for what, (_, fn) in r.items() if fn is not None}
    times = round_robin(calls, reps)

    def ms(impl: str, what: str) -> str:
        t = times.get((impl, what))
        return f"{1e3 * statistics.median(t):9.1f} {1e3 * min(t):8.1f}" if t else f"{'-':>9s} {'-':>8s}"

    role = {"up": "out" if cout < 8 else "up", "down": "in" if cin < 8 else "down"}[kind]
    auto = formulations.plan("auto", dtype)[role].formulation
    label = f"{name} {cin}->{cout} {hw}->{out_hw}"
    print(f"{label}: auto = {auto}")
    for impl, r in rows.items():
        print(f"{label:22s} {impl:13s} {ms(impl, 'fwd')} {ms(impl, 'fb')}  "
              f"{r['fwd'][0]:9.2f} {r['fb'][0]:9.2f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--layers", default=",".join(DCGAN28_LAYERS))
    ap.add_argument("--skip-slow", action="store_true", help="skip fwd+bwd of Flax's ConvTranspose 256->128 (seconds)")
    args = ap.parse_args()
    print(machine_line())
    print(f"batch {args.batch}, {args.dtype}, {args.reps} round-robin reps, "
          f"XLA:CPU options {cpu_compiler_options(jax.default_backend())}")
    header = (f"{'layer':22s} {'impl':13s} {'fwd ms':>9s} {'(min)':>8s} {'f+b ms':>9s} {'(min)':>8s}  "
              f"{'compile f':>9s} {'compile fb':>9s}")
    print(header + "\n" + "-" * len(header))
    rng = np.random.default_rng(0)
    for name in args.layers.split(","):
        bench_layer(name, args.batch, jnp.dtype(args.dtype), args.reps, args.skip_slow, rng)
    print(machine_line())


if __name__ == "__main__":
    main()
