"""Orbax checkpoints of the whole run: TrainState, data-iterator position and run metadata.

Saves are asynchronous (training continues while files are written) and
atomic (orbax writes into a temporary directory and renames it when
complete, so a kill mid-save leaves no directory that looks finished). On
restore the newest checkpoint that loads is used; a damaged one is reported
and skipped, never deleted.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from synthjax.errors import UserError


class Checkpointer:
    """Save, list and restore `(state, meta)` checkpoints under `workdir/checkpoints`."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start writing checkpoint `step` (returns before the files are written when async)."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, target: Any) -> tuple[Any, dict, int] | None:
        """Restore the newest loadable checkpoint into the structure of `target`; None if there is none.

        A checkpoint that fails to load (truncated or corrupted files) is
        skipped with a warning naming it and the one used instead.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        failed = []
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
                )
            except Exception as e:  # orbax/tensorstore raise many kinds for damaged files
                failed.append((step, f"{type(e).__name__}: {str(e)[:200]}"))
                continue
            if failed:
                names = ", ".join(f"step {s} ({why})" for s, why in failed)
                warnings.warn(f"checkpoint(s) could not be loaded: {names}; resumed from step {step} instead")
            return restored["state"], restored["meta"], step
        if failed:
            names = ", ".join(f"step {s} ({why})" for s, why in failed)
            # Starting afresh here would let max_to_keep delete the user's checkpoints.
            raise UserError(
                f"no checkpoint in {self.directory} could be loaded: {names}. They are left untouched; "
                "move them away or use another --workdir to start a new run"
            )
        return None

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
