"""Process-level settings for speed on the CPU backend.

XLA:CPU allocates a step's buffers with malloc and frees them when the step
ends. Under glibc's defaults a block above the mmap threshold is a fresh
mmap every time, faulted in and zeroed by the kernel on first touch, and
freed memory is handed back early. `tune_cpu_allocator(mode)` sets glibc
once per process, by `train.cpu_allocator`:

* 'threshold' (the default): mmap threshold at glibc's maximum (32 MiB) and
  a 1 GiB trim threshold, so blocks up to 32 MiB stay in the process between
  steps (dcgan28 b128 step time x0.956 when it was measured, 30 rounds).
* 'heap': one arena (`M_ARENA_MAX=1`), no mmap (`M_MMAP_MAX=0`), the same
  trim threshold. For steps whose temporaries exceed 32 MiB: XLA allocates
  them as one block (104 MiB for dcgan28 b128), which glibc mmaps in any
  case from the per-thread arenas XLA's workers allocate from (their heaps
  are capped at 64 MiB); from the main arena's heap it is reused step after
  step. dcgan28 b128: 26,600 page faults and ~65 ms of system time per step
  went to none and ~1 ms, step time x0.84 (6 process pairs), resident
  memory +165 MiB. Small steps lose to the single arena's lock (vae_mlp
  0.81-0.86x, gan_mlp 0.88x the img/s; vae_conv even, vqvae 0.84-1.02x in
  three noisy pairs), so only configs measured faster set it (dcgan).
  glibc applies the arena limit only to threads that have not allocated
  yet, so it must be set before jax starts its backend: `train.py`, the
  bench and the sweep call this first.
* 'default': glibc's own behaviour.

Skipped when the user set glibc's own `MALLOC_*` variables or
`GLIBC_TUNABLES`, when `SYNTHJAX_CPU_MALLOC=default`, off the CPU backend
(judged without starting jax's backend: `expected_backend`), and where the
C library is not glibc.

Second, the XLA:CPU compiler options of the train step (`cpu_compiler_options`):
jaxlib 0.10 hands dots, reductions and single convolutions to YNNPACK by
default. For the convolutions of our models XLA's own (Eigen) kernels are
faster on the dev VM (paired alternating step-time medians, 12-24 rounds):
vqvae x0.79, dcgan28 x0.974, vae_conv x0.99; dots and reductions stay on
YNNPACK (dropping those too made dcgan28 13% slower). Skipped with
`SYNTHJAX_CPU_XLA=default` or when the user's `XLA_FLAGS` set the same option.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil

import jax

from synthjax.errors import UserError

# glibc's mallopt parameter numbers (malloc.h) and each mode's settings (module docstring).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -3, -4, -8
TRIM_THRESHOLD_BYTES = 1 << 30
ALLOCATOR_MODES = {
    "threshold": ((M_MMAP_THRESHOLD, 32 << 20), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)),
    "heap": ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)),
    "default": (),
}
# The same settings as glibc's environment variables, for another process (the benchmark's PyTorch peer).
_ENV_NAMES = {M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_", M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_",
              M_MMAP_MAX: "MALLOC_MMAP_MAX_", M_ARENA_MAX: "MALLOC_ARENA_MAX"}
ALLOCATOR_ENV = {mode: {_ENV_NAMES[p]: str(v) for p, v in settings} for mode, settings in ALLOCATOR_MODES.items()}
USER_ALLOCATOR_ENV = (*_ENV_NAMES.values(), "GLIBC_TUNABLES")
OPT_OUT = "SYNTHJAX_CPU_MALLOC"
XLA_OPT_OUT = "SYNTHJAX_CPU_XLA"
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# jaxlib 0.10's default YNNPACK fusion list, less LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
CPU_COMPILER_OPTIONS = {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def _configured_platforms() -> str | None:
    return jax.config.jax_platforms


def expected_backend() -> str:
    """The platform jax runs on ('cpu', 'gpu', 'tpu'), without starting a backend when none is started yet:
    the first of `jax_platforms` if set, else 'gpu' or 'tpu' where an accelerator plugin is installed
    (jax prefers those), else 'cpu'."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return jax.default_backend()
    platforms = [p.strip() for p in (_configured_platforms() or "").split(",") if p.strip()]
    if platforms:
        return {"cuda": "gpu", "rocm": "gpu"}.get(platforms[0], platforms[0])
    plugins = {ep.name for ep in importlib.metadata.entry_points(group="jax_plugins")}
    try:
        import jax_plugins

        plugins |= {m.name for m in pkgutil.iter_modules(jax_plugins.__path__)}
    except ImportError:
        pass
    if importlib.util.find_spec("libtpu") is not None:
        return "tpu"
    return "gpu" if plugins else "cpu"


def tune_cpu_allocator(mode: str = "threshold", backend: str | None = None) -> bool:
    """Applies `mode`'s allocator settings (module docstring); True if they are in effect."""
    if mode not in ALLOCATOR_MODES:
        raise UserError(f"train.cpu_allocator={mode!r} is not one of {', '.join(ALLOCATOR_MODES)}")
    if mode == "default" or (backend or expected_backend()) != "cpu" or os.environ.get(OPT_OUT) == "default":
        return False
    if any(var in os.environ for var in USER_ALLOCATOR_ENV):
        return False  # the user's own glibc tuning wins
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False
    return all([bool(mallopt(param, value)) for param, value in ALLOCATOR_MODES[mode]])


def cpu_compiler_options(backend: str | None = None) -> dict | None:
    """XLA compiler options for a train step on `backend` (None: XLA's defaults), see the module docstring."""
    if (backend or jax.default_backend()) != "cpu" or os.environ.get(XLA_OPT_OUT) == "default":
        return None
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None  # the user's own setting wins
    return dict(CPU_COMPILER_OPTIONS)
