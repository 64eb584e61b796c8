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


# Run order of the single tests (pytest-xdist hands them out in this order, after its `xdist_group` units,
# which it sends first): the resume tests first, as they are the longest and compile each family's smoke
# programs into the shared persistent cache (tests/helpers/runs.py); the notebooks next, whose kernels then
# find those programs compiled; everything else after, in file order.
RUN_FIRST = ("test_resume.py", "test_notebook_")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = os.path.basename(str(item.fspath))
        return next((i for i, prefix in enumerate(RUN_FIRST) if name.startswith(prefix)), len(RUN_FIRST))

    items.sort(key=rank)  # stable: file order within each rank


def pytest_configure(config):
    """Under `--dist loadgroup`, pytest-xdist sends the tests of one `xdist_group` (modules whose tests share an
    expensive fixture) to one worker by rewriting each test's `_nodeid`; pytest 9.2 no longer reads that
    attribute, so the groups would be silently ignored and each shared fixture built once per worker."""
    if config.getoption("dist", "no") == "loadgroup" and not hasattr(pytest.Item, "_nodeid"):
        raise pytest.UsageError(f"pytest {pytest.__version__} ignores pytest-xdist's xdist_group marks; install the "
                                "pytest version that pyproject.toml's dev extra names (make install)")
