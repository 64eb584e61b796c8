"""The workdir outside its checkpoints: the config it belongs to, a stack's member list, logs cut back on resume.

A workdir holds one run (or one stack of members). `prepare_workdir` proves
it writable before anything compiles and refuses one that holds a run of
another model or data, so a mistyped --workdir cannot overwrite a
checkpoint; settings that do not shape the checkpoint (learning rate,
cadences, step count) may change between resumes, and the run says which.
"""
from __future__ import annotations

import json
import os
import shutil

import jax
import ml_collections

from synthjax import config as config_lib
from synthjax.errors import UserError
from synthjax.files import write_atomic

# Config keys a checkpoint depends on (the model, or the shape and kind of its inputs): a change refuses the workdir.
STRUCTURAL_PREFIXES = ("model.", "data.name", "data.image_size", "data.path", "data.binarize", "data.seq_len",
                       "data.frame_size", "objective.likelihood")
MIN_FREE_BYTES = 200 * 2**20


def truncate_jsonl(path: str, last_step: int) -> None:
    """Drop lines logged after `last_step` (by a run killed after its last checkpoint); atomic."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    # A kill can also leave a torn last line: keep only complete lines up to last_step.
    kept = [line for line in lines if line.endswith("\n") and _jsonl_step(line) <= last_step]
    if len(kept) != len(lines):
        write_atomic(path, "".join(kept))


def _jsonl_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def prepare_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Create the workdir, prove it writable with free space, and refuse a workdir of another config.

    Runs before anything is compiled or trained, so these mistakes cost seconds.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_probe{jax.process_index()}")  # one per process: no races
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"workdir {workdir!r} is not writable ({e.strerror or e}); choose another --workdir") from None
    free = shutil.disk_usage(workdir).free
    if free < MIN_FREE_BYTES:
        raise UserError(
            f"workdir {workdir!r} has only {free // 2**20} MiB free; at least {MIN_FREE_BYTES // 2**20} MiB are needed "
            "for checkpoints and samples. Free some space or choose another --workdir"
        )
    path = os.path.join(workdir, "config.json")
    # Through JSON, as the saved copy went: a tuple field reads back as a list and is the same setting.
    new = config_lib.flatten(json.loads(json.dumps(config_lib.to_dict(config))))
    if os.path.exists(path):
        check_saved_config(workdir, config_lib.flatten(read_json(path)), new)
    if jax.process_index() == 0:
        write_atomic(path, json.dumps(config_lib.to_dict(config), indent=2, sort_keys=True))


def check_saved_config(workdir: str, old: dict, new: dict) -> None:
    """Refuse a workdir whose saved config (flat keys) differs from `new` in the model or data; say what
    else changed.

    Fields are compared only where both configs have them. A field the code
    no longer has was deleted because nothing read it; a field the saved
    config lacks was added to the code since the run began, with a value
    that the log names (one that changed parameter shapes would fail at the
    checkpoint restore, which touches nothing).
    """
    say = print if jax.process_index() == 0 else (lambda _: None)
    retired, added = sorted(set(old) - set(new)), sorted(set(new) - set(old))
    if retired:
        say(f"synthjax: ignoring settings of {workdir}/config.json that are no longer config fields: {', '.join(retired)}")
    if added:
        say(f"synthjax: {workdir}/config.json predates these config fields; continuing with "
            + ", ".join(f"{k}={new[k]!r}" for k in added))
    changed = [k for k in sorted(set(old) & set(new)) if old[k] != new[k]]
    structural = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed if k.startswith(STRUCTURAL_PREFIXES)]
    if structural:
        raise UserError(
            f"workdir {workdir!r} holds a run of a different model or data ({'; '.join(structural)}); "
            "refusing to resume it. Use a new --workdir, or restore the original config"
        )
    if changed:
        say(f"synthjax: continuing {workdir} with changed settings: " + "; ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed))


def read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({e}); it should hold the config of the run in this workdir. Fix or remove it") from None


def prepare_members(workdir: str, configs: list, names: list[str] | None) -> list[str] | None:
    """A stack's member names (None for a single run), written to members.json; a workdir of other members is refused."""
    if len(configs) == 1:
        return None
    names = list(names or [f"seed={c.seed}" for c in configs])
    if len(set(names)) != len(names):
        raise UserError(f"stack members need distinct names, got {names}")
    path = os.path.join(workdir, "members.json")
    members = [{"name": n, "config": config_lib.flat_dict(c)} for n, c in zip(names, configs)]
    if os.path.exists(path) and [m["name"] for m in read_json(path)["members"]] != names:
        raise UserError(f"workdir {workdir!r} holds a stack of other members ({path}); use a new --workdir")
    if jax.process_index() == 0:
        write_atomic(path, json.dumps({"members": members}, indent=1, sort_keys=True))
    return names
