"""The divergence guard: a NaN injected at a chosen step halts the run (leaving the last good checkpoint)
or, with train.on_nonfinite='skip', is dropped inside the compiled step and counted."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import runs

from synthjax.config import load_config
from synthjax.train import Diverged, train_and_evaluate, train_stack
from synthjax.trainers.vae import VAETrainer

BASE = ["train.num_steps=12", "train.ckpt_every=3", "train.log_every=4", "train.keep=10"]


def poison(monkeypatch, bad_steps: set[int]) -> None:
    """Make loop steps in `bad_steps` produce a NaN loss and NaN parameters (as a blow-up would)."""
    original = VAETrainer.train_step

    def train_step(self, state, batch, key):
        new_state, metrics = original(self, state, batch, key)
        bad = jnp.isin(state.step + 1, jnp.asarray(sorted(bad_steps)))  # loop step n runs on state.step n-1
        params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new_state.params)
        return new_state.replace(params=params), {**metrics, "loss": jnp.where(bad, jnp.nan, metrics["loss"])}

    monkeypatch.setattr(VAETrainer, "train_step", train_step)


def log_lines(workdir: str) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


# K steps per compiled call: calls are cut at the cadences, so detection and the counts are the same for any K.
STEPS_PER_CALL = pytest.mark.parametrize("k", [1, 5], ids=lambda k: f"K={k}")


@STEPS_PER_CALL
def test_halt_names_the_step_and_loss_and_keeps_the_last_good_checkpoint(monkeypatch, tmp_path, k):
    bad_step = 5  # between checkpoints 3 and 6; found by the check that precedes saving 6
    poison(monkeypatch, {bad_step})
    workdir = str(tmp_path)
    with pytest.raises(Diverged) as info:
        train_and_evaluate(load_config(runs.config_path("vae_mlp.py:smoke"), [*BASE, f"train.steps_per_call={k}"]), workdir)
    message = str(info.value)
    assert f"diverged at step {bad_step} (detected at step 6)" in message
    assert "loss=nan" in message and "Last good checkpoint: step 3" in message and "left intact" in message
    assert runs.committed_steps(workdir) == [3] and not runs.tmp_checkpoints(workdir)  # nothing later was written
    good = runs.flat(runs.read_state(workdir, 3))
    assert all(np.all(np.isfinite(v)) for v in good.values() if v.dtype.kind == "f")
    assert [r["step"] for r in log_lines(workdir)] == [4]


@STEPS_PER_CALL
def test_skip_drops_the_update_inside_the_step_and_counts_it(monkeypatch, tmp_path, k):
    poison(monkeypatch, {4, 5, 6})
    workdir = str(tmp_path)
    train_and_evaluate(load_config(runs.config_path("vae_mlp.py:smoke"), [*BASE, "train.on_nonfinite=skip", f"train.steps_per_call={k}"]), workdir)
    lines = [r for r in log_lines(workdir) if "skipped" in r]
    assert [(r["step"], r["skipped"]) for r in lines] == [(4, 1), (8, 2), (12, 0)]
    assert all(np.isfinite(v) for r in lines for v in r.values())  # means over the applied steps only
    at3, at6 = runs.read_state(workdir, 3), runs.read_state(workdir, 6)
    # Steps 4-6 were dropped whole: parameters and optimiser state are exactly those of step 3.
    runs.assert_bitwise_equal({"params": at3["params"], "opt": at3["opt"]}, {"params": at6["params"], "opt": at6["opt"]})
    assert int(at6["step"]) == 6  # the step counter still advanced (fresh noise after a skip)
    final = runs.flat(runs.read_state(workdir, 12))
    assert all(np.all(np.isfinite(v)) for v in final.values() if v.dtype.kind == "f")


def poison_members(monkeypatch, min_beta: float, from_step: int) -> None:
    """Members with objective.beta >= min_beta blow up (NaN loss and parameters) from loop step `from_step` on."""
    original = VAETrainer.train_step_with

    def train_step_with(self, hp, state, batch, key):
        new_state, metrics = original(self, hp, state, batch, key)
        bad = (hp["beta"] >= min_beta) & (state.step + 1 >= from_step)
        params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), new_state.params)
        return new_state.replace(params=params), {**metrics, "loss": jnp.where(bad, jnp.nan, metrics["loss"])}

    monkeypatch.setattr(VAETrainer, "train_step_with", train_step_with)


def stack_configs(*betas):
    return [load_config(runs.config_path("vae_mlp.py:smoke"), [*BASE, f"objective.beta={b}", f"seed={i}"]) for i, b in enumerate(betas)]


def test_a_diverged_member_is_frozen_and_named_while_the_others_go_on(monkeypatch, tmp_path, capsys):
    poison_members(monkeypatch, min_beta=8, from_step=5)
    workdir = str(tmp_path)
    summaries = train_stack(stack_configs(1, 8), workdir, ["beta=1", "beta=8"])
    assert "member 1 (beta=8) diverged at step 5: frozen" in capsys.readouterr().out
    assert [s["diverged_at"] for s in summaries] == [0, 5]
    at6, at12 = runs.read_state(workdir, 6)["members"], runs.read_state(workdir, 12)["members"]
    frozen = lambda tree, i: jax.tree.map(lambda x: x[i], tree)  # noqa: E731
    runs.assert_bitwise_equal(frozen(at6["params"], 1), frozen(at12["params"], 1))  # no update applied after step 4
    assert all(np.all(np.isfinite(v)) for v in runs.flat(at12["params"]).values())
    live6, live12 = runs.flat(frozen(at6["params"], 0)), runs.flat(frozen(at12["params"], 0))
    assert any(not np.array_equal(live6[k], live12[k]) for k in live6)  # member 0 kept training
    rows = [r for r in log_lines(workdir) if r.get("member") == 1 and "skipped" in r]
    assert [(r["step"], r["skipped"]) for r in rows] == [(4, 0), (8, 4), (12, 4)]


def test_halt_stops_a_stack_only_when_every_member_diverged_and_names_them(monkeypatch, tmp_path):
    poison_members(monkeypatch, min_beta=1, from_step=5)
    with pytest.raises(Diverged, match=r"every member of the stack diverged .*member 0 \(beta=1\) at step 5, member 1 \(beta=8\) at step 5"):
        train_stack(stack_configs(1, 8), str(tmp_path), ["beta=1", "beta=8"])
    assert runs.committed_steps(str(tmp_path)) == [3]  # the check before saving step 6 stopped it
