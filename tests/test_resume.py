"""Exact resume and determinism, end to end through train.py in subprocesses.

A run SIGKILLed at a random step between two checkpoints and rerun with the
same command must end with the same parameters, optimiser, EMA and BatchNorm
state, bit for bit, as the same run left alone, and with a byte-identical
metrics.jsonl. Two fresh runs of one config and seed must agree the same way.
"""
import os
import random
import signal
import time

import pytest
from helpers import families, runs

# One config per model family, found in configs/: a new family is covered once its config exists.
CONFIGS = families.family_configs()

NUM_STEPS = 12
# Checkpoints at 3, 6, 9, 12; log lines at even steps, so a checkpoint falls inside a
# logging window (the resumed run must finish that window's average exactly); an
# evaluation every 4 steps (it must read the same batches after a resume).
OVERRIDES = (
    f"--config.train.num_steps={NUM_STEPS}",
    "--config.train.ckpt_every=3",
    "--config.train.log_every=2",
    "--config.train.eval_every=4",
)
STEP_DELAY = 0.25  # seconds per step in the run to be killed, so the kill lands between checkpoints


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: os.path.basename(c).split(".")[0])
def test_run_killed_between_checkpoints_resumes_bit_exact(config, tmp_path):
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    result = runs.run(runs.train_args(config, ref, *OVERRIDES))
    assert result.returncode == 0, result.stderr[-3000:]

    seed = random.randrange(2**32)
    log = str(tmp_path / "cut.log")
    proc = runs.start(runs.train_args(config, cut, *OVERRIDES, delay=STEP_DELAY), log=log)
    try:
        runs.wait_for(lambda: runs.committed_steps(cut), [proc], 240, "the first checkpoint")
        time.sleep(random.Random(seed).uniform(0, 4 * STEP_DELAY))  # somewhere in steps 3..7
    finally:
        runs.sigkill([proc])
    assert proc.returncode == -signal.SIGKILL, runs.tail(log)
    survived = runs.committed_steps(cut)
    assert survived and max(survived) < NUM_STEPS, f"kill (seed {seed}) must land before the end; left {survived}"

    resumed = runs.run(runs.train_args(config, cut, *OVERRIDES))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {cut} from step {max(survived)}" in resumed.stdout
    runs.assert_bitwise_equal(runs.read_state(ref, NUM_STEPS), runs.read_state(cut, NUM_STEPS))
    assert runs.read_meta(ref, NUM_STEPS)["data"] == runs.read_meta(cut, NUM_STEPS)["data"]
    assert read(os.path.join(cut, "metrics.jsonl")) == read(os.path.join(ref, "metrics.jsonl")), f"kill seed {seed}"


@pytest.mark.slow
def test_same_config_and_seed_give_identical_metrics_and_parameters(tmp_path):
    """metrics.jsonl holds no wall-clock figures (those go to timing.jsonl), so it is byte-identical."""
    dirs = [str(tmp_path / name) for name in ("a", "b")]
    # Different hash seeds: nothing may depend on set or dict-of-set ordering.
    procs = [
        runs.start(runs.train_args("vae_mlp.py:smoke", d), env=runs.jax_env(PYTHONHASHSEED=str(i)), log=f"{d}.log")
        for i, d in enumerate(dirs)
    ]
    for p, d in zip(procs, dirs):
        assert p.wait(timeout=300) == 0, runs.tail(f"{d}.log")
    a, b = (read(os.path.join(d, "metrics.jsonl")) for d in dirs)
    assert a == b and "steps_per_sec" not in a
    assert "steps_per_sec" in read(os.path.join(dirs[0], "timing.jsonl"))
    runs.assert_bitwise_equal(runs.read_state(dirs[0], 6), runs.read_state(dirs[1], 6))
