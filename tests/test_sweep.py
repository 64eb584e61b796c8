"""synthjax.sweep: axis checking before any run, vmapped runs equal to one-by-one runs, results files."""
import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from synthjax import sweep
from synthjax.checkpoint import Checkpointer
from synthjax.config import load_config
from synthjax.data import build_pipeline, get_source
from synthjax.errors import UserError
from synthjax.parallel import DataParallel
from synthjax.trainers import build_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DCGAN = os.path.join(REPO, "configs", "dcgan.py:smoke")
VAE = os.path.join(REPO, "configs", "vae_mlp.py:smoke")
GAN_MLP = os.path.join(REPO, "configs", "gan_mlp.py:smoke")
SHORT = ["train.num_steps=4", "train.log_every=2", "train.eval_batches=1", "train.num_grid=4"]


@pytest.mark.parametrize(
    "axes, vmap, message",
    [
        (["objective.los=ns,hinge"], False, r"sweep axis 'objective.los' is not a config key; did you mean 'objective.loss'"),
        (["opt.lr=fast"], False, r"'opt.lr' is a float; got 'fast'"),
        (["objective.n_critic=1.5"], False, r"'objective.n_critic' is a int; got '1.5'"),
        ({"model.z_dim": [8, 1.5]}, False, r"model.z_dim: value 1.5 \(float\) does not fit"),
        (["opt.lr=0:3"], False, r"range syntax A:B is for integer keys"),
        (["seed=0,1", "seed=2"], False, r"sweep axis given twice: 'seed'"),
        (["objective.loss=ns,wgan"], False, r"sweep run objective.loss=wgan: unknown GAN loss 'wgan'.*valid: hinge"),
        (["model.g_width=8,16", "seed=0:2"], "model.g_width", r"cannot stack model.g_width.*vmapped for model.family gan: "
         r"model.ema_decay, objective.penalty_weight, opt.d_lr, opt.lr, seed"),
        (["model.g_width=8,16"], True, r"none of the sweep axes \(model.g_width\) can be vmapped.*opt.lr"),
    ],
)
def test_bad_axes_fail_before_any_run_starts(tmp_path, axes, vmap, message):
    workdir = str(tmp_path / "sweep")
    with pytest.raises(UserError, match=message):
        sweep.run_sweep(DCGAN, workdir, axes, vmap=vmap, log=lambda _: None)
    assert not os.path.exists(workdir)  # nothing was created, let alone trained


def test_axes_are_typed_and_get_sweep_is_the_default():
    config, file_sweep = sweep.load_config_and_sweep(os.path.join(REPO, "configs", "beta_vae.py:smoke"))
    axes = sweep.build_axes(config, file_sweep)
    assert [(a.key, a.values) for a in axes] == [("objective.beta", (1.0, 2.0, 4.0, 8.0)), ("seed", (0, 1))]
    (seeds,) = sweep.build_axes(config, ["seed=0:6:2"])
    assert seeds.values == (0, 2, 4)
    runs = sweep.expand(config, axes, "/tmp/x")
    assert len(runs) == 8 and runs[1].name == "objective.beta=1.0__seed=1" and runs[1].config.objective.beta == 1.0
    dcgan_config, none = sweep.load_config_and_sweep(DCGAN)
    with pytest.raises(UserError, match="no sweep axes: pass --sweep"):
        sweep.build_axes(dcgan_config, none)


def test_cli_reports_a_bad_axis_in_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "synthjax.sweep", "--config", DCGAN, "--sweep", "opt.lr=fast", "--workdir", str(tmp_path / "s")],
        cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "error: config key 'opt.lr' is a float" in result.stderr
    assert "Traceback" not in result.stderr


def _rows(path):
    with open(path) as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def _manual_losses(overrides, data_seed, steps):
    """Per-step losses of one member trained alone by its plain step on the data of `data_seed`, keys as train.py derives them."""
    config = load_config(VAE, [*SHORT, *overrides])
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    dp = DataParallel("shard_map")
    pipeline = build_pipeline(source, config.train.batch_size, data_seed, trainer.preprocess, num_threads=0)
    init_key, step_key, _, _ = jax.random.split(jax.random.key(config.seed), 4)
    state = dp.put_state(jax.jit(trainer.create_state)(init_key))
    step = dp.compile_step(trainer.train_step)
    losses = []
    for _ in range(steps):
        state, metrics = step(state, dp.put_batch(next(pipeline)), step_key)
        losses.append(float(dp.metrics(metrics)["loss"]))
    return losses


def test_vmapped_sweep_equals_runs_one_by_one(tmp_path):
    """beta x seed stacked in one program == train_and_evaluate per run (same seed) == a plain loop (other seed)."""
    axes = ["objective.beta=1,4", "seed=0:2"]
    stacked = sweep.run_sweep(VAE, str(tmp_path / "vmap"), axes, vmap=True, overrides=[*SHORT, "opt.lr=3e-3"], log=lambda _: None)
    assert len(stacked.runs) == 4
    rows = _rows(stacked.csv_path)
    for name, row in rows.items():  # each member trained on its own beta: loss = rec + beta * kl
        np.testing.assert_allclose(float(row["loss"]), float(row["rec"]) + float(row["objective.beta"]) * float(row["kl"]), rtol=1e-5)
    # 1. The seed-0 member equals the normal loop's run of the same config (same data, keys, evaluation).
    alone = sweep.run_sweep(VAE, str(tmp_path / "seq"), ["objective.beta=4"], overrides=[*SHORT, "opt.lr=3e-3"], log=lambda _: None)
    got, want = rows["objective.beta=4.0__seed=0"], _rows(alone.csv_path)["objective.beta=4.0"]
    for key in ("loss", "kl", "rec", "neg_elbo", "grad_norm", "eval/neg_elbo", "eval/bits_per_dim"):
        np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-5, err_msg=key)
    # 2. The seed-1 member equals its plain step run alone on the shared data stream (the config's seed, 0).
    losses = _manual_losses(["objective.beta=4", "opt.lr=3e-3", "seed=1"], data_seed=0, steps=4)
    member = os.path.join(str(tmp_path / "vmap"), "objective.beta=4.0__seed=1")
    ckpt = Checkpointer(member)
    assert ckpt.latest_step() == 4  # the member's workdir is a normal run's: sample and evaluate work on it
    ckpt.close()
    logged = [float(r["loss"]) for r in map(json.loads, open(os.path.join(member, "metrics.jsonl"))) if "loss" in r]
    np.testing.assert_allclose(logged, [np.mean(losses[:2]), np.mean(losses[2:])], rtol=1e-5)
    # 3. The results: CSV rows, a Markdown table of mean ± std over seeds per beta, the plot.
    assert "| objective.beta | n | neg_elbo | eval/bits_per_dim |" in stacked.table
    assert stacked.table.count("| 2 |") == 2 and "±" in stacked.table
    assert os.path.getsize(stacked.plot_path) > 1000 and stacked.plot_path.endswith("neg_elbo.png")
    # 4. A rerun finds every run finished and trains nothing.
    again = sweep.run_sweep(VAE, str(tmp_path / "vmap"), axes, vmap=True, overrides=[*SHORT, "opt.lr=3e-3"], log=lambda _: None)
    assert again.summaries == stacked.summaries


def test_vmapped_gan_step_equals_member_steps():
    """Two optimisers, TTUR, EMA, a penalty weight: stacked GAN members match their unstacked steps.

    Parameters are compared with atol 2e-5: Adam's normalised first steps
    turn float reordering in near-zero gradients (batched vs. single GEMMs)
    into differences of a small fraction of lr; the metrics agree to 1e-5.
    """
    base = ["objective.penalty=r1"]
    members = [["seed=0"], ["seed=1", "opt.lr=1e-3", "model.ema_decay=0.9"], ["seed=2", "opt.d_lr=5e-4", "objective.penalty_weight=1"]]
    configs = [load_config(GAN_MLP, base + m) for m in members]
    source = get_source(configs[0].data)
    trainers = [build_trainer(c, source.image_shape, source.num_classes) for c in configs]
    trainer, dp = trainers[0], DataParallel("shard_map")
    pipeline = build_pipeline(source, configs[0].train.batch_size, 0, trainer.preprocess, num_threads=0)
    batches = [dp.put_batch(next(pipeline)) for _ in range(2)]
    init = jax.jit(trainer.create_state)
    states = [init(jax.random.key(c.seed)) for c in configs]
    hps = [t.hparams() for t in trainers]
    keys = [jax.random.key(100 + c.seed) for c in configs]

    stacked_step = dp.compile_step(sweep._stacked_step(trainer, "halt"))
    carry = dp.put_state((sweep._stack(states), sweep._stack(hps)))
    for batch in batches:
        carry, stacked_metrics = stacked_step(carry, batch, jax.numpy.stack(keys))
    # The same member step, unstacked, with the hyperparameters as arguments: one compilation for all members.
    one_step = dp.compile_step(lambda c, b, k: (lambda out: ((out[0], c[1]), out[1]))(trainer.train_step_with(c[1], c[0], b, k)))
    for i in range(len(configs)):
        single = dp.put_state((states[i], hps[i]))
        for batch in batches:
            single, metrics = one_step(single, batch, keys[i])
        want, got = jax.device_get(single[0]), jax.device_get(sweep._member(carry[0], i))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5, err_msg=f"member {i}"), got, want)
        for k, v in jax.device_get(metrics).items():
            np.testing.assert_allclose(jax.device_get(stacked_metrics[k])[i], v, rtol=1e-5, atol=1e-6, err_msg=k)
    # train_step is train_step_with(hparams()): the plain step of member 1 gives the same numbers.
    plain = dp.compile_step(trainers[1].train_step)
    state = dp.put_state(init(jax.random.key(configs[1].seed)))  # states[1] was donated above
    for batch in batches:
        state, plain_metrics = plain(state, batch, keys[1])
    for k, v in jax.device_get(plain_metrics).items():
        np.testing.assert_allclose(jax.device_get(stacked_metrics[k])[1], v, rtol=1e-5, atol=1e-6, err_msg=k)
