"""Which configs the cross-family tests run, derived from configs/ and the trainer registry.

Tests that must cover every model family (resume, mixed precision, golden
steps) take their lists from here, so a new family or architecture is
covered as soon as its config file exists, without editing the tests.
- `all_configs()`: every `configs/*.py`, as 'name.py:smoke'.
- `arch_configs()`: one config per (model.family, model.arch), the one named
  after the family, the architecture or both ('dcgan', 'vae_mlp', 'pixelrnn')
  where there is one, else the first by name.
- `family_configs()`: one per family: the first of its `arch_configs()`.
"""
from __future__ import annotations

import functools
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_DIR = os.path.join(REPO, "configs")


def all_configs() -> list[str]:
    """Every config file's smoke variant, sorted by file name."""
    files = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_"))
    return [f"{f}:smoke" for f in files]


@functools.cache
def family_and_arch(config_name: str) -> tuple[str, str]:
    """(model.family, model.arch) of configs/<config_name>."""
    from synthjax.config import load_config

    model = load_config(os.path.join(CONFIG_DIR, config_name), []).model
    return model.family, str(model.get("arch", ""))


def _named_after(config_name: str, family: str, arch: str) -> bool:
    stem = config_name.partition(".py")[0]
    return stem in {family, arch, f"{family}_{arch}"}


def arch_configs() -> list[str]:
    """One smoke config per (family, architecture)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in all_configs():
        groups.setdefault(family_and_arch(name), []).append(name)
    chosen = [next((n for n in names if _named_after(n, *group)), names[0]) for group, names in groups.items()]
    return sorted(chosen)


def family_configs() -> list[str]:
    """One smoke config per model family."""
    firsts: dict[str, str] = {}
    for name in arch_configs():
        firsts.setdefault(family_and_arch(name)[0], name)
    return sorted(firsts.values())


def registered_families() -> set[str]:
    """Every `model.family` a trainer registered under."""
    from synthjax.trainers import TRAINERS

    return set(TRAINERS)
