"""Process settings for the CPU backend: the allocator and the train step's XLA options, skipped where the user decides."""
import ctypes
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax import runtime


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
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", runtime.OPT_OUT):
        monkeypatch.delenv(var, raising=False)
    return fake


def test_sets_both_thresholds_on_cpu(libc):
    assert runtime.tune_cpu_allocator("cpu")
    assert libc.calls == [(runtime.M_MMAP_THRESHOLD, 32 << 20), (runtime.M_TRIM_THRESHOLD, 1 << 30)]


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "0"}, {runtime.OPT_OUT: "default"}])
def test_user_settings_and_opt_out_win(libc, monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert not runtime.tune_cpu_allocator("cpu") and libc.calls == []


def test_other_backends_and_other_libcs_are_left_alone(libc, monkeypatch):
    assert not runtime.tune_cpu_allocator("gpu") and libc.calls == []

    def no_glibc(name):
        raise OSError(name)

    monkeypatch.setattr(ctypes, "CDLL", no_glibc)
    assert not runtime.tune_cpu_allocator("cpu")


# --- XLA:CPU compiler options of the train step -----------------------------------------------
def _conv_then_dot(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (2, 2), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(-1, y.shape[-1]) @ w


def _library_fusions(compiled_text: str, op: str) -> int:
    """Library (YNNPACK) fusions in a compiled module built from the jax op `op`."""
    return len(re.findall(rf"= \S+ fusion\([^\n]*kind=kCustom[^\n]*op_name=\"[^\"]*{op}", compiled_text))


@pytest.fixture
def clean_xla_env(monkeypatch):
    monkeypatch.delenv(runtime.XLA_OPT_OUT, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")


def test_cpu_options_keep_convolutions_with_xla_and_dots_with_ynnpack(clean_xla_env):
    """The option string is one this jaxlib accepts, it moves exactly the convolution, and the numbers agree."""
    keys = jax.random.split(jax.random.key(0), 3)
    args = tuple(jax.random.normal(k, s) for k, s in zip(keys, [(8, 14, 14, 64), (4, 4, 64, 128), (128, 128)]))
    default = jax.jit(_conv_then_dot).lower(*args).compile()
    tuned = jax.jit(_conv_then_dot, compiler_options=runtime.cpu_compiler_options("cpu")).lower(*args).compile()
    assert _library_fusions(default.as_text(), "conv_general_dilated") == 1  # what jaxlib 0.10 does by default
    assert _library_fusions(tuned.as_text(), "conv_general_dilated") == 0  # XLA's own kernel instead
    assert _library_fusions(tuned.as_text(), "dot_general") == _library_fusions(default.as_text(), "dot_general") == 1
    np.testing.assert_allclose(tuned(*args), default(*args), rtol=1e-4, atol=1e-3)  # float32 summation order


def test_cpu_options_only_on_cpu_and_user_settings_win(clean_xla_env, monkeypatch):
    assert runtime.cpu_compiler_options("cpu") == runtime.CPU_COMPILER_OPTIONS
    assert runtime.cpu_compiler_options("gpu") is None and runtime.cpu_compiler_options("tpu") is None
    monkeypatch.setenv("XLA_FLAGS", f"--{runtime.YNN_FUSION_OPTION}=-dot")
    assert runtime.cpu_compiler_options("cpu") is None
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv(runtime.XLA_OPT_OUT, "default")
    assert runtime.cpu_compiler_options("cpu") is None
