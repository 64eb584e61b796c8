"""Process settings for the CPU backend: the allocator and the train step's XLA options, skipped where the user decides."""
import ctypes
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax import tuning
from synthjax.errors import UserError


class FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append((param, value))
        return 1


@pytest.fixture
def libc(monkeypatch):
    fake = FakeLibc()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: fake)
    for var in (*tuning.USER_ALLOCATOR_ENV, tuning.OPT_OUT):
        monkeypatch.delenv(var, raising=False)
    return fake


def test_each_mode_sets_its_glibc_options_on_cpu(libc):
    assert tuning.tune_cpu_allocator("threshold", "cpu")
    assert libc.calls == [(tuning.M_MMAP_THRESHOLD, 32 << 20), (tuning.M_TRIM_THRESHOLD, 1 << 30)]
    libc.calls.clear()
    assert tuning.tune_cpu_allocator("heap", "cpu")
    assert libc.calls == [(tuning.M_ARENA_MAX, 1), (tuning.M_MMAP_MAX, 0), (tuning.M_TRIM_THRESHOLD, 1 << 30)]
    libc.calls.clear()
    assert not tuning.tune_cpu_allocator("default", "cpu") and libc.calls == []
    with pytest.raises(UserError, match="train.cpu_allocator='fast' is not one of threshold, heap, default"):
        tuning.tune_cpu_allocator("fast", "cpu")


def test_the_peer_gets_the_same_settings_as_environment_variables():
    assert tuning.ALLOCATOR_ENV["heap"] == {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                                             "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    assert tuning.ALLOCATOR_ENV["threshold"] == {"MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                                                  "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
    assert tuning.ALLOCATOR_ENV["default"] == {}


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "0"}, {"MALLOC_ARENA_MAX": "4"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}, {tuning.OPT_OUT: "default"}])
def test_user_settings_and_opt_out_win(libc, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert not tuning.tune_cpu_allocator("heap", "cpu") and libc.calls == []


def test_other_backends_and_other_libcs_are_left_alone(libc, monkeypatch):
    assert not tuning.tune_cpu_allocator("heap", "gpu") and libc.calls == []

    def no_glibc(name):
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", no_glibc)
    assert not tuning.tune_cpu_allocator("heap", "cpu")


def test_expected_backend_does_not_start_one(monkeypatch):
    monkeypatch.setattr(tuning, "_backends_started", lambda: False)
    monkeypatch.setattr(jax, "default_backend", lambda: pytest.fail("started a backend"))
    for platforms, want in (("cuda,cpu", "gpu"), ("tpu", "tpu"), ("cpu", "cpu")):
        monkeypatch.setattr(tuning, "_configured_platforms", lambda: platforms)
        assert tuning.expected_backend() == want
    monkeypatch.setattr(tuning, "_configured_platforms", lambda: None)
    assert tuning.expected_backend() == "cpu"  # this test environment has no accelerator plugin


def test_the_heap_mode_ends_the_page_faults_of_a_step(tmp_path):
    """In fresh processes (glibc's arena limit only binds threads that have not allocated yet): a program
    with 80 MiB of temporaries faults them all in on every run under glibc's defaults; tuned, the median
    run faults in none (a run now and then still grows the heap, when the previous run's block is freed
    after the next one is allocated)."""
    script = tmp_path / "faults.py"
    script.write_text(
        "import resource, statistics, sys, jax, jax.numpy as jnp\n"
        "from synthjax import tuning\n"
        "if sys.argv[1] == 'tuned': assert tuning.tune_cpu_allocator('heap')\n"
        "f = jax.jit(lambda x: (lambda y: (y * y).sum())(jax.lax.optimization_barrier(jnp.sin(x))))\n"
        "x, faults = jnp.ones((20 << 20,), jnp.float32), []\n"
        "for _ in range(30):\n"
        "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "    f(x).block_until_ready()\n"
        "    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
        "print(statistics.median(faults[2:]))\n")
    env = {k: v for k, v in os.environ.items() if k not in (*tuning.USER_ALLOCATOR_ENV, tuning.OPT_OUT)}
    env["JAX_PLATFORMS"] = "cpu"
    median = {mode: float(subprocess.run([sys.executable, str(script), mode], env=env, capture_output=True, text=True,
                                         check=True).stdout.split()[-1]) for mode in ("default", "tuned")}
    assert median["default"] > 15000 and median["tuned"] < 500, median  # 80 MiB is 20,480 pages


# --- XLA:CPU compiler options of the train step -----------------------------------------------
def _conv_then_dot(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(-1, y.shape[-1]) @ w


def _library_fusions(compiled_text: str, op: str) -> int:
    """Library (YNNPACK) fusions in a compiled module built from the jax op `op`."""
    return len(re.findall(rf"= \S+ fusion\([^\n]*kind=kCustom[^\n]*op_name=\"[^\"]*{op}", compiled_text))


@pytest.fixture
def clean_xla_env(monkeypatch):
    monkeypatch.delenv(tuning.XLA_OPT_OUT, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")


def test_cpu_options_keep_convolutions_with_xla_and_dots_with_ynnpack(clean_xla_env):
    """The option string is one this jaxlib accepts, it moves exactly the convolution, and the numbers agree."""
    keys = jax.random.split(jax.random.key(0), 3)
    args = tuple(jax.random.normal(k, s) for k, s in zip(keys, [(8, 14, 14, 64), (4, 4, 64, 128), (128, 128)]))
    default = jax.jit(_conv_then_dot).lower(*args).compile()
    options = tuning.cpu_compiler_options("cpu")
    if options is None:
        pytest.skip(f"no compiler options for jaxlib {tuning.jaxlib_version()} (tested on 0.10)")
    tuned = jax.jit(_conv_then_dot, compiler_options=options).lower(*args).compile()
    assert _library_fusions(default.as_text(), "conv_general_dilated") == 1  # what jaxlib 0.10 does by default
    assert _library_fusions(tuned.as_text(), "conv_general_dilated") == 0  # XLA's own kernel instead
    assert _library_fusions(tuned.as_text(), "dot_general") == _library_fusions(default.as_text(), "dot_general") == 1
    np.testing.assert_allclose(tuned(*args), default(*args), rtol=1e-4, atol=1e-3)  # float32 summation order


def test_cpu_options_only_on_cpu_and_user_settings_win(clean_xla_env, monkeypatch):
    assert tuning.cpu_compiler_options("cpu", (0, 10)) == tuning.COMPILER_OPTIONS_BY_JAXLIB[(0, 10)]
    assert tuning.cpu_compiler_options("gpu") is None and tuning.cpu_compiler_options("tpu") is None
    monkeypatch.setenv("XLA_FLAGS", f"--{tuning.YNN_FUSION_OPTION}=-dot")
    assert tuning.cpu_compiler_options("cpu") is None
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(tuning.XLA_OPT_OUT, "default")
    assert tuning.cpu_compiler_options("cpu") is None


def test_compiler_options_only_for_a_jaxlib_known_to_accept_them(clean_xla_env):
    """jaxlib 0.10.x takes the YNNPACK option; 0.11.x (the GPU machines' jaxlib) and unknown versions get none,
    so a renamed or removed option can never abort XLA's flag parsing."""
    assert tuning.cpu_compiler_options("cpu", (0, 10)) is not None
    assert tuning.cpu_compiler_options("cpu", (0, 11)) is None
    assert tuning.cpu_compiler_options("cpu", (1, 0)) is None


def test_apply_sets_xla_flags_before_the_backend_starts_and_not_after(tmp_path):
    """In a fresh process `apply` puts the options in XLA_FLAGS, which XLA reads when the backend starts:
    the convolution then compiles outside YNNPACK. Called after the backend started it changes nothing."""
    script = tmp_path / "apply.py"
    script.write_text(
        "import os, re, jax, jax.numpy as jnp\n"
        "from synthjax import tuning\n"
        "effect = tuning.apply('default')\n"
        "x, k = jnp.ones((2, 8, 8, 16)), jnp.ones((4, 4, 16, 32))\n"
        "f = lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
        "text = jax.jit(f).lower(x, k).compile().as_text()\n"
        "ynn = len(re.findall(r'kind=kCustom[^\\n]*conv_general_dilated', text))\n"
        "print(effect['compiler_options'], ynn, tuning.apply('default')['compiler_options'])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", tuning.XLA_OPT_OUT)}
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, check=True).stdout.split()
    if tuning.cpu_compiler_options("cpu") is None:
        assert out == ["False", out[1], "False"]
    else:
        assert out == ["True", "0", "False"], out
