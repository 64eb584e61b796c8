"""Checkpoint integrity: atomic saves, damaged checkpoints skipped and set aside, `keep`, other models refused."""
import glob
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import runs

from synthjax.checkpoint import (DAMAGED_DIR, Checkpointer, CheckpointUnreadable, DamagedCheckpoint, checksums,
                                 proves_damage, verify_checksums)
from synthjax.errors import UserError

SAVE_FOREVER = os.path.join(runs.REPO, "tests", "helpers", "save_forever.py")


def state_for(step: int) -> dict:
    return {"w": jnp.arange(50_000, dtype=jnp.float32) + step, "b": {"c": jnp.full((3, 4), float(step))}, "step": jnp.int32(step)}


def save_steps(workdir: str, steps, keep: int = 10) -> None:
    ckpt = Checkpointer(workdir, keep=keep)
    for step in steps:
        ckpt.save(step, state_for(step), {"step": step})
    ckpt.close()


def largest_file(workdir: str, step: int) -> str:
    files = [f for f in glob.glob(os.path.join(workdir, "checkpoints", str(step), "**"), recursive=True) if os.path.isfile(f)]
    return max(files, key=os.path.getsize)


def restore(workdir: str):
    return Checkpointer(workdir).restore(state_for(0))


def test_truncated_latest_checkpoint_falls_back_with_a_warning_naming_both(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir, [1, 2, 3])
    data = largest_file(workdir, 3)  # the OCDBT data file holding the arrays
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    with pytest.warns(UserWarning, match=r"could not be loaded: step 3 .*resumed from step 2 instead"):
        state, meta, step = restore(workdir)
    assert step == 2 and meta["step"] == 2 and float(state["w"][0]) == 2.0
    # Set aside (not deleted), so the resumed run can save step 3 again.
    assert os.listdir(os.path.join(workdir, DAMAGED_DIR))[0].startswith("3-")
    ckpt = Checkpointer(workdir)
    assert ckpt.steps() == [1, 2]
    ckpt.save(3, state_for(3), {"step": 3})
    ckpt.close()
    assert restore(workdir)[2] == 3


def test_corrupted_metadata_falls_back(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir, [1, 2])
    with open(os.path.join(workdir, "checkpoints", "2", "state", "_METADATA"), "w") as f:
        f.write('{"tree_metadata": {"w"')
    with pytest.warns(UserWarning, match="step 2"):
        assert restore(workdir)[2] == 1


def test_checksums_catch_a_flipped_bit_that_decodes_without_error():
    """Orbax reads a flipped byte inside a compressed chunk back as wrong numbers without complaint;
    the per-array checksums saved in the checkpoint's metadata notice."""
    state = state_for(5)
    expected = checksums(state)
    bits = np.asarray(state["w"]).view(np.uint32).copy()
    bits[1234] ^= 1 << 7
    damaged = {**state, "w": jnp.asarray(bits.view(np.float32))}
    with pytest.raises(DamagedCheckpoint, match="checksum mismatch in w"):
        verify_checksums(damaged, expected)
    verify_checksums(state, expected)  # and the intact state passes


def test_byte_flip_in_the_data_file_never_loads_silently(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir, [1, 2])
    data = largest_file(workdir, 2)
    raw = bytearray(open(data, "rb").read())
    raw[len(raw) // 2] ^= 0xFF
    open(data, "wb").write(raw)
    with pytest.warns(UserWarning, match="step 2"):  # by orbax's decoder or our checksum, whichever sees it
        state, _, step = restore(workdir)
    assert step == 1 and float(state["w"][7]) == 8.0


def test_no_loadable_checkpoint_is_a_user_error_and_files_stay(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir, [1])
    os.remove(largest_file(workdir, 1))
    with pytest.raises(UserError, match="no checkpoint in .* could be loaded: step 1"):
        restore(workdir)
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "1"))


def test_checkpoint_of_another_model_is_refused_naming_the_difference(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir, [1])
    other = {**state_for(0), "w": jnp.zeros((60_000,)), "extra": jnp.zeros(2)}
    with pytest.raises(UserError, match=r"different model: extra: missing from the checkpoint; w: \(50000,\) float32 in the checkpoint, \(60000,\) float32 now"):
        Checkpointer(workdir).restore(other)
    assert not os.path.exists(os.path.join(workdir, DAMAGED_DIR))  # refused, not mistaken for damage


def test_keep_bounds_the_number_of_checkpoints_and_disk_use(tmp_path):
    workdir = str(tmp_path)
    save_steps(workdir, [1], keep=2)
    one = sum(os.path.getsize(f) for f in glob.glob(os.path.join(workdir, "checkpoints", "1", "**"), recursive=True) if os.path.isfile(f))
    save_steps(workdir, range(2, 9), keep=2)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["7", "8"]
    total = sum(os.path.getsize(f) for f in glob.glob(os.path.join(workdir, "checkpoints", "**"), recursive=True) if os.path.isfile(f))
    assert total <= 2.2 * one


@pytest.mark.slow
def test_checkpoint_half_written_by_a_kill_is_never_loaded(tmp_path):
    workdir = str(tmp_path)
    for attempt in range(3):  # a kill can miss the save window; then try again
        proc = runs.start([sys.executable, SAVE_FOREVER, workdir], log=str(tmp_path / "save.log"))
        try:
            runs.wait_for(lambda: any(not os.path.basename(p).startswith("1.") for p in runs.tmp_checkpoints(workdir)),
                          [proc], 120, "a save in progress", poll=0.002)
        finally:
            runs.sigkill([proc])
        half = runs.tmp_checkpoints(workdir)
        if half:
            break
    assert half, "the kill never landed inside a save"
    committed = runs.committed_steps(workdir)
    half_step = int(os.path.basename(half[0]).split(".")[0])
    assert half_step not in committed and committed

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a half-written save is not "damage": no warning, just ignored
        ckpt = Checkpointer(workdir, keep=100)
        assert ckpt.steps() == committed
        here = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        state, meta, step = ckpt.restore({f"w{i:02d}": jax.ShapeDtypeStruct((1 << 20,), jnp.float32, sharding=here) for i in range(24)})
    assert step == committed[-1] == meta["step"] and float(state["w03"][0]) == step * 100 + 3
    assert not runs.tmp_checkpoints(workdir)  # opening the directory cleared the leftover
    ckpt.close()


def _xla_oom() -> Exception:
    return RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes.")


@pytest.mark.parametrize(
    "fault, what",
    [
        (lambda: OSError(5, "Input/output error"), "OSError"),
        (lambda: MemoryError(), "MemoryError"),
        (_xla_oom, "RESOURCE_EXHAUSTED"),
        (lambda: ValueError("Sharding NamedSharding(mesh=...) is incompatible with the 3 devices of the checkpoint"), "Sharding"),
    ],
)
def test_read_errors_that_do_not_prove_damage_stop_and_touch_nothing(tmp_path, monkeypatch, fault, what):
    """An I/O error, OOM or sharding mismatch while restoring says nothing about the files: no checkpoint is moved."""
    workdir = str(tmp_path)
    save_steps(workdir, [1, 2])
    before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    ckpt = Checkpointer(workdir)

    def failing_restore(step, args=None):
        raise fault()

    monkeypatch.setattr(ckpt.manager, "restore", failing_restore)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "moved aside" warning either
        with pytest.raises(CheckpointUnreadable, match=rf"could not read checkpoint step 2 .*{what}.*left in place"):
            ckpt.restore(state_for(0))
    ckpt.close()
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
    assert not os.path.exists(os.path.join(workdir, DAMAGED_DIR))
    assert restore(workdir)[2] == 2  # the same checkpoints load once the fault is gone


def test_only_decoder_and_checksum_errors_prove_damage():
    import json as json_lib

    assert proves_damage(DamagedCheckpoint("checksum mismatch in w"))
    assert proves_damage(json_lib.JSONDecodeError("Expecting ':'", "{", 1))
    try:
        try:
            raise ValueError('OUT_OF_RANGE: Error reading "w/0" in OCDBT database: Requested byte range is not valid')
        except ValueError as inner:
            raise Exception("Encountered error while reading array index") from inner
    except Exception as wrapped:
        assert proves_damage(wrapped)  # the tensorstore cause is found behind orbax's wrapper
    assert not proves_damage(OSError(28, "No space left on device"))
    assert not proves_damage(_xla_oom())
    assert not proves_damage(RuntimeError("something unexpected"))
