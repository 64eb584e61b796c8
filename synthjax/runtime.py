"""Process-level settings for speed on the CPU backend.

XLA:CPU allocates a step's buffers with malloc and frees them when the step
ends. glibc's defaults hand freed memory above a small threshold straight
back to the kernel (trim) and serve big blocks with fresh mmaps, so each
step faults its buffers in again, and the kernel zeroes every page: on the
2-core dev VM about a sixth of a dcgan28 step was system time. Raising the
mmap threshold to glibc's maximum (32 MiB) and the trim threshold to 1 GiB
keeps that memory in the process between steps: paired alternating medians,
dcgan28 b128 step time x0.956 (30 rounds). The price is a resident size that
stays at its high-water mark, which a training process reaches anyway.

Skipped when the user set glibc's own `MALLOC_MMAP_THRESHOLD_` /
`MALLOC_TRIM_THRESHOLD_`, when `SYNTHJAX_CPU_MALLOC=default`, off the CPU
backend, and where the C library is not glibc.

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
import os

import jax

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest accepted value on 64-bit
TRIM_THRESHOLD_BYTES = 1 << 30
OPT_OUT = "SYNTHJAX_CPU_MALLOC"
XLA_OPT_OUT = "SYNTHJAX_CPU_XLA"
YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# jaxlib 0.10's default YNNPACK fusion list, less LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION.
CPU_COMPILER_OPTIONS = {YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def tune_cpu_allocator(backend: str | None = None) -> bool:
    """Applies the settings above once per process; True if they are in effect."""
    if (backend or jax.default_backend()) != "cpu" or os.environ.get(OPT_OUT) == "default":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user's own glibc tuning wins
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def cpu_compiler_options(backend: str | None = None) -> dict | None:
    """XLA compiler options for a train step on `backend` (None: XLA's defaults), see the module docstring."""
    if (backend or jax.default_backend()) != "cpu" or os.environ.get(XLA_OPT_OUT) == "default":
        return None
    if YNN_FUSION_OPTION in os.environ.get("XLA_FLAGS", ""):
        return None  # the user's own setting wins
    return dict(CPU_COMPILER_OPTIONS)
