"""Test-wide setup: four simulated CPU devices, so data-parallel code is exercised everywhere.

Must run before JAX initialises its backends, which is why it lives here.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
