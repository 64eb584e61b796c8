"""Test-wide setup: four simulated CPU devices, so data-parallel code is exercised everywhere.

Must run before JAX initialises its backends, which is why it lives here.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Tests compile without LLVM's optimisation passes (XLA's own HLO passes still run): the same numbers,
# compiles 3-8x faster, and compiling is most of what a test of a small model spends. The golden values
# hold at both levels; test_trainers checks them at the default level in a fresh process. Set the option
# in XLA_FLAGS yourself to test at another level.
OPT_LEVEL_FLAG = "--xla_backend_optimization_level"
if OPT_LEVEL_FLAG not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {OPT_LEVEL_FLAG}=0".strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def repo_root() -> str:
    return REPO


def config_path(name: str) -> str:
    """Absolute path of configs/<name>."""
    return os.path.join(REPO, "configs", name)
