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
# What the recurrent families' evaluations must report, checked on each reference run.
EVAL_KEYS = {
    "pixelrnn": {"eval/nll", "eval/bits_per_dim"},
    "draw": {"eval/neg_elbo", "eval/rec", "eval/kl"},
    "convlstm": {"eval/bce_per_frame", "eval/mse_per_frame", "eval/copy_last_mse_per_frame"},
}


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: os.path.basename(c).split(".")[0])
def test_run_killed_between_checkpoints_resumes_bit_exact(config, tmp_path):
    kill_and_resume(config, tmp_path, OVERRIDES, frozenset(EVAL_KEYS.get(config.partition(".py")[0], ())))


# The loop's other paths: K steps per compiled call (cut at the cadences), and the host (grain) pipeline
# instead of the split on the devices, whose position is saved in the checkpoint.
LOOP_PATHS = {"K=3": ("--config.train.steps_per_call=3",), "grain,K=2": ("--config.train.steps_per_call=2", "--config.data.on_device=off")}


@pytest.mark.slow
@pytest.mark.parametrize("path", LOOP_PATHS)
def test_loop_paths_resume_bit_exact(path, tmp_path):
    kill_and_resume("vae_mlp.py:smoke", tmp_path, (*OVERRIDES, *LOOP_PATHS[path]))


def kill_and_resume(config: str, tmp_path, overrides: tuple[str, ...], eval_keys: frozenset[str] = frozenset()) -> None:
    """Run `config` to the end; run it again, SIGKILL it between checkpoints, rerun it; both must agree bit for bit."""
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    result = runs.run(runs.train_args(config, ref, *overrides))
    assert result.returncode == 0, result.stderr[-3000:]
    # The reference is also each family's end-to-end run (tests/test_train_e2e.py runs the other configs).
    runs.assert_complete_run(ref, result.stdout, NUM_STEPS, log_every=2, sample_every=3, ckpt_every=3, eval_keys=eval_keys)

    seed = random.randrange(2**32)
    log = str(tmp_path / "cut.log")
    proc = runs.start(runs.train_args(config, cut, *overrides, delay=STEP_DELAY), log=log)
    try:
        runs.wait_for(lambda: runs.committed_steps(cut), [proc], 240, "the first checkpoint")
        time.sleep(random.Random(seed).uniform(0, 4 * STEP_DELAY))  # somewhere in steps 3..7
    finally:
        runs.sigkill([proc])
    assert proc.returncode == -signal.SIGKILL, runs.tail(log)
    survived = runs.committed_steps(cut)
    assert survived and max(survived) < NUM_STEPS, f"kill (seed {seed}) must land before the end; left {survived}"

    resumed = runs.run(runs.train_args(config, cut, *overrides))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {cut} from step {max(survived)}" in resumed.stdout
    runs.assert_bitwise_equal(runs.read_state(ref, NUM_STEPS), runs.read_state(cut, NUM_STEPS))
    assert runs.read_meta(ref, NUM_STEPS)["data"] == runs.read_meta(cut, NUM_STEPS)["data"]
    assert read(os.path.join(cut, "metrics.jsonl")) == read(os.path.join(ref, "metrics.jsonl")), f"kill seed {seed}"


def sweep_args(workdir: str, delay: float | None = None) -> list[str]:
    """A vmapped seed sweep of the VAE: one stack of two members in workdir/stack."""
    argv = runs.train_args("vae_mlp.py:smoke", workdir, *OVERRIDES, delay=delay)
    entry = argv.index("--config")
    head = argv[:entry] if delay else argv[:1]  # the slowed launcher, or the interpreter alone
    return [*head, "-m", "synthjax.sweep", *argv[entry:], "--sweep", "seed=0:2", "--vmap"]


@pytest.mark.slow
def test_stack_killed_between_checkpoints_resumes_bit_exact(tmp_path):
    """A vmapped sweep (a stack of two members) SIGKILLed mid-way and rerun ends as if left alone."""
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    result = runs.run(sweep_args(ref))
    assert result.returncode == 0, result.stderr[-3000:]
    seed = random.randrange(2**32)
    log = str(tmp_path / "cut.log")
    proc = runs.start(sweep_args(cut, delay=STEP_DELAY), log=log)
    stack_ref, stack_cut = os.path.join(ref, "stack"), os.path.join(cut, "stack")
    try:
        runs.wait_for(lambda: runs.committed_steps(stack_cut), [proc], 240, "the first checkpoint")
        time.sleep(random.Random(seed).uniform(0, 4 * STEP_DELAY))
    finally:
        runs.sigkill([proc])
    assert proc.returncode == -signal.SIGKILL, runs.tail(log)
    survived = runs.committed_steps(stack_cut)
    assert survived and max(survived) < NUM_STEPS, f"kill (seed {seed}) must land before the end; left {survived}"
    resumed = runs.run(sweep_args(cut))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {stack_cut} from step {max(survived)}" in resumed.stdout
    runs.assert_bitwise_equal(runs.read_state(stack_ref, NUM_STEPS), runs.read_state(stack_cut, NUM_STEPS))
    assert runs.read_meta(stack_ref, NUM_STEPS)["data"] == runs.read_meta(stack_cut, NUM_STEPS)["data"]
    assert read(os.path.join(stack_cut, "metrics.jsonl")) == read(os.path.join(stack_ref, "metrics.jsonl")), f"kill seed {seed}"
    losses = [[row.split(",")[1:3] for row in read(os.path.join(d, "results.csv")).splitlines()[1:]] for d in (ref, cut)]
    assert losses[0] == losses[1] and len(losses[0]) == 2  # the sweep's table of the resumed stack


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
