"""Golden one-step metrics: where they are kept and how a new config's are recorded.

`tests/fixtures/golden_steps.json` maps each config's smoke variant to the
metrics of its first train step (CPU, float32, the four simulated devices of
tests/conftest.py). A config without an entry fails test_one_step_golden_values
with the command that records it:

    python -m tests.helpers.golden vae_mlp.py:smoke [more configs ...]

`--check` compares instead of recording (exit status 1 on a mismatch).

Record only for a new config, or when a change is meant to move the numbers
(say why in the commit).
"""
from __future__ import annotations

import json
import os
import sys

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "golden_steps.json")
RECORD_COMMAND = "python -m tests.helpers.golden"


def load() -> dict[str, dict[str, float]]:
    """config name -> {metric: value} pinned so far."""
    with open(PATH) as f:
        return json.load(f)


def missing_message(config_name: str, got: dict[str, float]) -> str:
    return (f"no golden one-step values recorded for {config_name} (this run gave {got}); record them with "
            f"`{RECORD_COMMAND} {config_name}` and commit {os.path.relpath(PATH)}")


def record(config_names: list[str]) -> None:
    """Run one step of each config and write every scalar metric it logs into the golden file."""
    from tests.test_trainers import one_step_metrics

    golden = load()
    for name in config_names:
        golden[name] = one_step_metrics(name)
        print(f"{name}: {golden[name]}")
    with open(PATH, "w") as f:
        json.dump(dict(sorted(golden.items())), f, indent=1)
        f.write("\n")


def mismatches(config_names: list[str], rtol: float = 2e-5, atol: float = 1e-6) -> list[str]:
    """One line per pinned metric that this process computes differently (the tolerance of the golden test)."""
    from tests.test_trainers import one_step_metrics

    golden, lines = load(), []
    for name in config_names:
        got = one_step_metrics(name)
        for key, want in golden[name].items():
            if abs(got[key] - want) > atol + rtol * abs(want):
                lines.append(f"{name} {key}: got {got[key]!r}, pinned {want!r}")
    return lines


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax

    jax.config.update("jax_num_cpu_devices", 4)  # as tests/conftest.py: the golden values are 4-device runs
    if sys.argv[1:2] == ["--check"]:
        bad = mismatches(sys.argv[2:])
        print("\n".join(bad) or "golden values reproduced")
        sys.exit(1 if bad else 0)
    record(sys.argv[1:])
