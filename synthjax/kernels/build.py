"""Builds the oneDNN convolution library: `python -m synthjax.kernels.build`.

Compiles `onednn_conv.cc` into `_onednn_conv.so` next to it with g++ (or
`$CXX`, warnings on), against jaxlib's XLA FFI headers (`jax.ffi.include_dir()`)
and the oneDNN headers and library of one release, from the pip packages
`onednn-devel-cpu-gomp` and `onednn-cpu-gomp` (project dependencies on linux
x86_64), which install into `<sys.prefix>/include` and `<sys.prefix>/lib`.
The build checks that the headers' version is the library's. `make native`
runs it. Exits non-zero, saying what is missing, when it cannot build or the
result does not load.
"""
from __future__ import annotations

import ctypes
import os
import re
import shlex
import shutil
import subprocess
import sys

import jax

from synthjax.kernels.onednn import LIBRARY

ONEDNN_PACKAGE = "2023.2.0"  # the pip release of both packages: oneDNN 3.2
SOURCE = os.path.join(os.path.dirname(__file__), "onednn_conv.cc")


def onednn_dirs() -> tuple[str, str]:
    """(include dir, lib dir) of the pip-installed oneDNN."""
    return os.path.join(sys.prefix, "include"), os.path.join(sys.prefix, "lib")


def command(output: str = LIBRARY) -> list[str]:
    include, lib = onednn_dirs()
    cxx = os.environ.get("CXX", "g++")
    # Third-party headers as system headers: the warnings are about our code. OpenMP: the GNU runtime the
    # gomp build of oneDNN runs on, which the call uses to run a stack's members side by side.
    return [cxx, "-O2", "-std=c++17", "-fopenmp", "-shared", "-fPIC", "-Wall", "-Wextra",
            "-isystem", include, "-isystem", jax.ffi.include_dir(), SOURCE, "-o", output,
            f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-Wl,--no-undefined"]


def missing() -> str | None:
    """What the build lacks, or None."""
    include, lib = onednn_dirs()
    cmd = command()
    if shutil.which(cmd[0]) is None:
        return f"no C++ compiler {cmd[0]!r} on PATH (install g++ or set CXX)"
    if not os.path.exists(os.path.join(include, "oneapi", "dnnl", "dnnl.h")):
        return f"no oneDNN headers under {include} (pip install onednn-devel-cpu-gomp=={ONEDNN_PACKAGE})"
    libraries = sorted(f for f in os.listdir(lib) if f.startswith("libdnnl.so.")) if os.path.isdir(lib) else []
    if not os.path.exists(os.path.join(lib, "libdnnl.so")) or not libraries:
        return f"no libdnnl.so under {lib} (pip install onednn-cpu-gomp=={ONEDNN_PACKAGE})"
    headers, library = header_version(include), libraries[-1].removeprefix("libdnnl.so.")
    if not library.startswith(headers):
        return (f"oneDNN headers {headers} do not match the library {library} under {lib}; "
                f"pip install onednn-devel-cpu-gomp=={ONEDNN_PACKAGE} onednn-cpu-gomp=={ONEDNN_PACKAGE}")
    return None


def header_version(include: str) -> str:
    """'MAJOR.MINOR' of the oneDNN headers under `include`."""
    text = open(os.path.join(include, "oneapi", "dnnl", "dnnl_version.h")).read()
    numbers = {name: re.search(rf"#define DNNL_VERSION_{name} (\d+)", text) for name in ("MAJOR", "MINOR")}
    return ".".join(m.group(1) if m else "?" for m in numbers.values())


def build() -> int:
    reason = missing()
    if reason:
        print(f"synthjax.kernels.build: cannot build {LIBRARY}: {reason}", file=sys.stderr)
        return 1
    # Write to a temporary name first, so a failed build never leaves a half-written library.
    tmp = LIBRARY + ".tmp"
    cmd = command(tmp)
    print(shlex.join(cmd))
    result = subprocess.run(cmd)
    if result.returncode != 0:
        print(f"synthjax.kernels.build: {cmd[0]} failed (exit {result.returncode})", file=sys.stderr)
        return result.returncode
    try:  # e.g. a libdnnl.so that needs TBB: fail here, not at the first convolution
        ctypes.CDLL(tmp)
    except OSError as err:
        os.remove(tmp)
        print(f"synthjax.kernels.build: the built library does not load: {err}", file=sys.stderr)
        return 1
    os.replace(tmp, LIBRARY)
    return 0


if __name__ == "__main__":
    sys.exit(build())
