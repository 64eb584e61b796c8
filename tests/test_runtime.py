"""The CPU allocator setting: applied on glibc CPU processes, skipped where the user decides."""
import ctypes

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
