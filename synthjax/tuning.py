"""Opt-in process-level tuning for the CPU backend: the allocator and XLA:CPU's compiler options.

The entry points (`train.py`, `synthjax.bench`, `synthjax.sweep`,
`synthjax.evaluate`, `synthjax.sample`) call `apply(config.train.cpu_allocator)`
first thing; in a notebook, run `synthjax.tuning.apply("heap")` (or
"threshold") before the first jax computation. Library code never calls it:
without it synthjax computes the same numbers with glibc's and XLA's defaults.
Measurements behind each setting: docs/performance.md.

1. glibc's allocator (`mallopt`). XLA:CPU mallocs a step's buffers and frees
   them when the step ends; under glibc's defaults a block above the mmap
   threshold is a fresh mmap every time, faulted in and zeroed by the kernel.
   * 'threshold' (the default): mmap threshold at glibc's maximum (32 MiB) and
     a 1 GiB trim threshold, so blocks up to 32 MiB stay in the process.
   * 'heap': one arena, no mmap, the same trim threshold: for steps whose
     temporaries exceed 32 MiB (dcgan28 at batch 128), which then reuse one
     heap block step after step. Small steps lose to the single arena's lock,
     so only configs measured faster set it (dcgan).
   * 'default': glibc's own behaviour.
   glibc applies the arena limit only to threads that have not allocated yet,
   hence before jax starts its backend. Skipped when the user set glibc's own
   `MALLOC_*` variables or `GLIBC_TUNABLES`, with `SYNTHJAX_CPU_MALLOC=default`,
   off the CPU backend, and where the C library is not glibc.
2. XLA:CPU compiler options (`XLA_FLAGS`, read when jax starts its backend):
   jaxlib 0.10 hands single convolutions to YNNPACK by default; XLA's own
   kernels are faster for our models' convolutions, while dots and reductions
   stay on YNNPACK. Passed only to a jaxlib known to accept the option
   (`COMPILER_OPTIONS_BY_JAXLIB`), skipped with `SYNTHJAX_CPU_XLA=default` or
   when the user's `XLA_FLAGS` already set it.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import pkgutil

import jax

from synthjax.errors import UserError

try:  # jax's own record of whether a backend has started; private, so guarded
    from jax._src.xla_bridge import backends_are_initialized as _backends_started
except ImportError:  # pragma: no cover - a jax without it: assume started, and apply nothing to XLA
    def _backends_started() -> bool:
        return True

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
# By jaxlib minor version: the options known to be accepted there. jaxlib 0.10's default YNNPACK
# fusion list, less LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION. Other versions get XLA's defaults.
COMPILER_OPTIONS_BY_JAXLIB = {
    (0, 10): {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
}


def _configured_platforms() -> str | None:
    return jax.config.jax_platforms


def expected_backend() -> str:
    """The platform jax runs on ('cpu', 'gpu', 'tpu'), without starting a backend when none is started yet:
    the first of `jax_platforms` if set, else 'gpu' or 'tpu' where an accelerator plugin is installed
    (jax prefers those), else 'cpu'."""
    if _backends_started():
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


def jaxlib_version() -> tuple[int, int]:
    """(major, minor) of the installed jaxlib."""
    import jaxlib

    major, minor = jaxlib.__version__.split(".")[:2]
    return int(major), int(minor)


def cpu_compiler_options(backend: str | None = None, version: tuple[int, int] | None = None) -> dict | None:
    """The XLA:CPU options this module applies on `backend` with this jaxlib (None: XLA's defaults)."""
    options = COMPILER_OPTIONS_BY_JAXLIB.get(version or jaxlib_version())
    if options is None or (backend or expected_backend()) != "cpu" or os.environ.get(XLA_OPT_OUT) == "default":
        return None
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None  # the user's own setting wins
    return dict(options)


def set_cpu_compiler_options() -> bool:
    """Adds `cpu_compiler_options()` to `XLA_FLAGS`; True if they will take effect (no backend started yet)."""
    options = cpu_compiler_options()
    if not options or _backends_started():
        return False
    flags = " ".join(f"--{name}={value}" for name, value in options.items())
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip()
    return True


def apply(allocator: str = "threshold") -> dict[str, bool]:
    """Applies the allocator mode and the compiler options; says which took effect. Call before jax computes."""
    return {"allocator": tune_cpu_allocator(allocator), "compiler_options": set_cpu_compiler_options()}


def describe() -> dict[str, str]:
    """What is in effect, for the first lines of a run and benchmark records."""
    flags = os.environ.get("XLA_FLAGS", "")
    return {"xla_flags": flags or "(none)", "jaxlib": ".".join(map(str, jaxlib_version()))}
