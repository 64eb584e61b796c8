"""Orbax checkpoints of the whole run: TrainState, data-iterator position and run metadata.

Saves are asynchronous (training continues while files are written) and
atomic: orbax writes into `<step>.orbax-checkpoint-tmp` and renames it when
complete, so a kill mid-save leaves no directory that looks finished, and the
leftover is deleted when the next run opens the directory.

Every checkpoint also records a checksum of each array (a position-weighted
wrapping sum of its bit patterns, computed on device). Orbax notices truncated
or missing files by itself, but a flipped byte inside a compressed chunk can
decode to wrong numbers without any error; the checksum catches that.

On restore the newest checkpoint that loads and matches its checksums is
used. A checkpoint whose contents are proven damaged (a checksum mismatch,
an array or metadata file that does not decode) is reported (a warning
naming it and the one used instead) and moved to `checkpoints.damaged/`,
never deleted: the run then continues from the older checkpoint and saves
under the same step numbers again. Any other failure while reading (an I/O
error, out of memory, a sharding that does not fit these devices) says
nothing about the files, so it stops the run with a `CheckpointUnreadable`
error naming the step and the cause, and touches nothing. A checkpoint of a
different model (other parameter names or shapes) is refused with a
`UserError` saying what differs, rather than skipped.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from synthjax.errors import UserError

DAMAGED_DIR = "checkpoints.damaged"


class DamagedCheckpoint(Exception):
    """A checkpoint whose files load but whose arrays do not match the checksums saved with them."""


class CheckpointUnreadable(UserError):
    """Reading a checkpoint failed for a reason that does not prove its files damaged; nothing was moved."""


# Decoder errors of tensorstore/orbax that mean the bytes on disk are wrong (truncated, corrupted), as
# opposed to the reader failing (I/O, memory, sharding). Matched against the messages of the exception chain.
DAMAGE_MARKERS = ("DATA_LOSS", "OUT_OF_RANGE", "Truncated", "corrupt", "Corrupt", "Failed to decode", "Error decoding")
NOT_DAMAGE_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "sharding", "Sharding")


def _chain(e: BaseException) -> list[BaseException]:
    """`e` and its causes/contexts, outermost first."""
    out = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def proves_damage(e: BaseException) -> bool:
    """True only when the error shows the checkpoint's contents are damaged: a checksum mismatch, undecodable
    metadata (bad JSON) or an array the decoder rejects. I/O errors, out-of-memory and sharding errors are not."""
    chain = _chain(e)
    text = " ".join(str(x) for x in chain)
    if any(isinstance(x, MemoryError) for x in chain) or any(m in text for m in NOT_DAMAGE_MARKERS):
        return False
    if any(isinstance(x, DamagedCheckpoint) for x in chain):
        return True
    if any(isinstance(x, json.JSONDecodeError) for x in chain):
        return True
    if any(isinstance(x, OSError) for x in chain):
        return False
    return any(m in text for m in DAMAGE_MARKERS)


class Checkpointer:
    """Save, list and restore `(state, meta)` checkpoints under `workdir/checkpoints`."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True, name: str = "checkpoints"):
        self.directory = os.path.abspath(os.path.join(workdir, name))
        self.damaged_directory = os.path.abspath(os.path.join(workdir, DAMAGED_DIR))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True
        )
        # Explicit handlers so metadata (names, shapes) can be read without restoring the arrays.
        handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Start writing checkpoint `step` (returns before the files are written when async).

        Every process of a multi-host run must call this with the same step.
        """
        meta = {**meta, "checksum": checksums(state)}
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

    def steps(self) -> list[int]:
        """Steps of the finished (committed) checkpoints, oldest first."""
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def read_meta(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, target: Any) -> tuple[Any, dict, int] | None:
        """Restore the newest loadable checkpoint into the structure of `target`; None if there is none.

        `target` holds arrays or `jax.ShapeDtypeStruct`s (with the shardings
        the restored arrays should have). A checkpoint that fails to load
        because its contents are damaged (see `proves_damage`) is skipped with a
        warning naming it and the one used instead, and moved aside; any other
        read failure raises `CheckpointUnreadable` and moves nothing; one whose
        parameter names or shapes differ from `target` raises a UserError.
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        failed: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            try:
                self._check_structure(step, abstract)
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore())
                )
                verify_checksums(restored["state"], restored["meta"].get("checksum"))
            except UserError:
                raise
            except Exception as e:  # orbax/tensorstore raise many kinds; only proven damage moves a checkpoint
                if not proves_damage(e):
                    raise CheckpointUnreadable(
                        f"could not read checkpoint step {step} in {self.directory}: {type(e).__name__}: {str(e)[:300]}. "
                        "This is not proven damage (an I/O error, out of memory or a sharding that does not fit these "
                        "devices), so every checkpoint was left in place; fix the cause and rerun the same command"
                    ) from e
                failed.append((step, f"{type(e).__name__}: {str(e)[:200]}"))
                continue
            if failed:
                moved = self._set_aside([s for s, _ in failed])
                names = ", ".join(f"step {s} ({why})" for s, why in failed)
                warnings.warn(
                    f"checkpoint(s) in {self.directory} could not be loaded: {names}; moved to {moved}; "
                    f"resumed from step {step} instead",
                    stacklevel=2,
                )
            return restored["state"], restored["meta"], step
        if failed:
            names = ", ".join(f"step {s} ({why})" for s, why in failed)
            # Starting afresh here would let max_to_keep delete the user's checkpoints.
            raise UserError(
                f"no checkpoint in {self.directory} could be loaded: {names}. They are left untouched; "
                "move them away or use another --workdir to start a new run"
            )
        return None

    def _check_structure(self, step: int, abstract: Any) -> None:
        """Raise a UserError when checkpoint `step` holds other parameter names or shapes than `abstract`."""
        saved = {path: _shape_dtype(m) for path, m in _named_leaves(self.manager.item_metadata(step)["state"])}
        wanted = {path: _shape_dtype(s) for path, s in _named_leaves(abstract)}
        if saved == wanted:
            return
        diffs = [f"{p}: only in the checkpoint" for p in sorted(set(saved) - set(wanted))]
        diffs += [f"{p}: missing from the checkpoint" for p in sorted(set(wanted) - set(saved))]
        diffs += [
            f"{p}: {saved[p][0]} {saved[p][1]} in the checkpoint, {wanted[p][0]} {wanted[p][1]} now"
            for p in sorted(set(saved) & set(wanted))
            if saved[p] != wanted[p]
        ]
        more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
        raise UserError(
            f"checkpoint step {step} in {self.directory} holds a different model: {'; '.join(diffs[:5])}{more}. "
            "Refusing to resume it: use a new --workdir, or the config that wrote it"
        )

    def _set_aside(self, steps: list[int]) -> str:
        """Move damaged checkpoints out of orbax's directory, so their step numbers can be saved again."""
        if jax.process_index() == 0:
            os.makedirs(self.damaged_directory, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            for step in steps:
                os.replace(os.path.join(self.directory, str(step)), os.path.join(self.damaged_directory, f"{step}-{stamp}"))
        if jax.process_count() > 1:
            # A coordination-service barrier, not a device collective: no compile, no gloo timeout.
            ocp.multihost.get_barrier_sync_fn()(key=f"synthjax_set_aside_{'_'.join(map(str, steps))}", timeout_ms=600_000)
        self.manager.reload()
        return self.damaged_directory

    def wait(self) -> None:
        """Block until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _named_leaves(tree: Any) -> list[tuple[str, Any]]:
    """(slash-separated path, leaf) pairs; dataclass fields and dict keys name the same path."""
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))[0]
    return [("/".join(_key_name(k) for k in path), leaf) for path, leaf in leaves]


def _shape_dtype(leaf: Any) -> tuple[tuple[int, ...], str]:
    """(shape, dtype name) as stored: PRNG keys are stored as their uint32 key data."""
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.eval_shape(jax.random.key_data, leaf)
    return tuple(leaf.shape), np.dtype(leaf.dtype).name


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _bits_u32(x: jax.Array) -> jax.Array:
    """The array's bit patterns as flat uint32 (key data for PRNG keys, widened for 8/16-bit types)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.reshape(-1).astype(jnp.uint32)
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize]
    return jax.lax.bitcast_convert_type(x, unsigned).reshape(-1).astype(jnp.uint32)


@jax.jit
def _checksum_leaves(leaves: list[jax.Array]) -> list[jax.Array]:
    # Position weights catch swapped values; uint32 arithmetic wraps, so the
    # sum is exact and independent of the reduction order.
    def one(x):
        bits = _bits_u32(x)
        return jnp.sum(bits * (jnp.arange(bits.size, dtype=jnp.uint32) * 2 + 1), dtype=jnp.uint32)

    return [one(x) for x in leaves]


def checksums_program(state: Any) -> tuple[Callable, tuple]:
    """(jitted function, arguments) of the checksums of `state`, for a loop to compile before its first step:
    otherwise the first checkpoint pays the compile inside the timed steps."""
    return _checksum_leaves, (jax.tree.leaves(state),)


def checksums(state: Any) -> list[int]:
    """One uint32 checksum per array of `state`, in flattening order (computed on device)."""
    return [int(c) for c in jax.device_get(_checksum_leaves(jax.tree.leaves(state)))]


def verify_checksums(state: Any, expected: list[int] | None) -> None:
    """Raise DamagedCheckpoint naming the first array whose checksum differs (no-op without checksums)."""
    if expected is None:
        return
    got = checksums(state)
    if len(got) != len(expected):
        raise DamagedCheckpoint(f"{len(expected)} checksums saved for {len(got)} arrays")
    for (path, _), g, e in zip(_named_leaves(state), got, expected):
        if g != e:
            raise DamagedCheckpoint(f"checksum mismatch in {path}: the file changed after it was written")
