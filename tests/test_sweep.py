"""synthjax.sweep: axis checking before any run, vmapped runs equal to one-by-one runs, results files."""
import csv
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from synthjax import sweep
from synthjax.checkpoint import Checkpointer
from synthjax.config import load_config
from synthjax.data import build_pipeline, get_source, on_device
from synthjax.errors import UserError
from synthjax.parallel import AXIS, DataParallel, make_mesh
from synthjax.stack import Stack, StackState, stack_trees
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
    """Per-step losses of one member trained alone by its plain step on the data of `data_seed` (drawn from the
    split on the devices, as the loop draws it), keys as train.py derives them."""
    config = load_config(VAE, [*SHORT, *overrides])
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    dp = DataParallel("shard_map")
    dataset = on_device.place(source, dp, config.train.batch_size, trainer.preprocess)
    data_key = on_device.data_key(data_seed)
    init_key, step_key, _, _ = jax.random.split(jax.random.key(config.seed), 4)
    state = dp.put_state(jax.jit(trainer.create_state)(init_key))
    step = dp.compile_step(lambda st, ds, key: trainer.train_step(st, ds.draw(st.step, data_key), key), batch_spec=P(AXIS))
    losses = []
    for _ in range(steps):
        state, metrics = step(state, dataset, step_key)
        losses.append(float(dp.metrics(metrics)["loss"]))
    return losses


def runs_state(workdir, step):
    from helpers import runs

    return runs.read_state(workdir, step)


def _curve(workdir, member, key="loss"):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return [r[key] for r in rows if r.get("member") == member and key in r]


def test_vmapped_sweep_equals_runs_one_by_one(tmp_path):
    """beta x seed stacked in one program: each member equals train_and_evaluate of its own config (its own seed
    shuffles its data); with sweep.shared_data_order=True a member equals its plain step on the first seed's data."""
    axes = ["objective.beta=1,4", "seed=0:2"]
    overrides = [*SHORT, "opt.lr=3e-3"]
    stacked = sweep.run_sweep(VAE, str(tmp_path / "vmap"), axes, vmap=True, overrides=overrides, log=lambda _: None)
    # Both axes are numeric: all four points are members of one stack.
    assert [(r.workdir, r.member) for r in stacked.runs] == [(str(tmp_path / "vmap" / "stack"), i) for i in range(4)]
    rows = _rows(stacked.csv_path)
    for name, row in rows.items():  # each member trained on its own beta: loss = rec + beta * kl
        np.testing.assert_allclose(float(row["loss"]), float(row["rec"]) + float(row["objective.beta"]) * float(row["kl"]), rtol=1e-5)
    # 1. Every beta=4 member equals the normal loop's run of the same config (its own data order, keys, evaluation).
    alone = sweep.run_sweep(VAE, str(tmp_path / "seq"), ["objective.beta=4", "seed=0:2"], overrides=overrides, log=lambda _: None)
    for seed in (0, 1):
        got, want = rows[f"objective.beta=4.0__seed={seed}"], _rows(alone.csv_path)[f"objective.beta=4.0__seed={seed}"]
        for key in ("loss", "kl", "rec", "neg_elbo", "grad_norm", "eval/neg_elbo", "eval/bits_per_dim"):
            np.testing.assert_allclose(float(got[key]), float(want[key]), rtol=1e-5, err_msg=f"seed {seed} {key}")
    stack_dir = str(tmp_path / "vmap" / "stack")
    ckpt = Checkpointer(stack_dir)
    assert ckpt.latest_step() == 4  # the whole stack is checkpointed
    ckpt.close()
    assert os.path.exists(os.path.join(stack_dir, "samples", "objective.beta=4.0__seed=1", "step_0000004.png"))
    from synthjax.sample import load_run  # synthjax.sample reads one member of the stack's checkpoint

    _, _, member_state, step = load_run(stack_dir, member="objective.beta=4.0__seed=1")
    whole = runs_state(stack_dir, 4)
    assert step == 4 and np.array_equal(jax.tree.leaves(member_state.params)[0], jax.tree.leaves(whole["members"]["params"])[0][3])
    with pytest.raises(UserError, match="holds a stack of 4 runs; pass --member with one of"):
        load_run(stack_dir)
    assert len(_curve(stack_dir, 3)) == 2 and _curve(stack_dir, 2) != _curve(stack_dir, 3)
    # 2. Shared data order: the seed-1 member equals its plain step run alone on the data of the config's seed (0).
    shared = sweep.run_sweep(VAE, str(tmp_path / "shared"), ["objective.beta=4", "seed=0:2"], vmap=True,
                             overrides=[*overrides, "sweep.shared_data_order=True"], log=lambda _: None)
    losses = _manual_losses(["objective.beta=4", "opt.lr=3e-3", "seed=1"], data_seed=0, steps=4)
    np.testing.assert_allclose(_curve(shared.runs[1].workdir, 1), [np.mean(losses[:2]), np.mean(losses[2:])], rtol=1e-5)
    assert "shared one data order" in open(shared.table_path).read()
    # 3. The results: CSV rows, a Markdown table of mean ± std [95% CI] over seeds per beta, the plot.
    assert "| objective.beta | n | neg_elbo | eval/bits_per_dim |" in stacked.table
    assert stacked.table.count("| 2 |") == 2 and "±" in stacked.table and "[" in stacked.table
    assert os.path.getsize(stacked.plot_path) > 1000 and stacked.plot_path.endswith("neg_elbo.png")
    # 4. A rerun finds every run finished and trains nothing.
    again = sweep.run_sweep(VAE, str(tmp_path / "vmap"), axes, vmap=True, overrides=overrides, log=lambda _: None)
    assert again.summaries == stacked.summaries


def _gan_members():
    base = ["objective.penalty=r1"]
    members = [["seed=0"], ["seed=1", "opt.lr=1e-3", "model.ema_decay=0.9"], ["seed=2", "opt.d_lr=5e-4", "objective.penalty_weight=1"],
               ["seed=3", "opt.lr=5e-4"]]
    configs = [load_config(GAN_MLP, base + m) for m in members]
    source = get_source(configs[0].data)
    trainers = [build_trainer(c, source.image_shape, source.num_classes) for c in configs]
    return configs, source, trainers


def _members_one_by_one(trainer, states, hps, batches, keys, dp):
    """Each member trained alone by its step with the hyperparameters as arguments (one compilation for all)."""
    one_step = dp.compile_step(lambda c, b, k: (lambda out: ((out[0], c[1]), out[1]))(trainer.train_step_with(c[1], c[0], b, k)))
    results = []
    for i in range(len(states)):
        single = dp.put_state((states[i], hps[i]))
        for batch in batches(i):
            single, metrics = one_step(single, batch, keys[i])
        results.append((jax.device_get(single[0]), jax.device_get(metrics)))
    return results


def _assert_members_equal(stack, carry, stacked_metrics, want):
    """Parameters with atol 2e-5: Adam's normalised first steps turn float reordering in near-zero gradients
    (batched vs. single GEMMs) into differences of a small fraction of lr; the metrics agree to 1e-5."""
    for i, (state, metrics) in enumerate(want):
        got = jax.device_get(stack.member(carry, i))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-5, err_msg=f"member {i}"), got, state)
        for k, v in metrics.items():
            np.testing.assert_allclose(jax.device_get(stacked_metrics[k])[i], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_vmapped_gan_step_equals_member_steps():
    """Two optimisers, TTUR, EMA, a penalty weight: stacked GAN members (one shared batch) match their unstacked steps."""
    configs, source, trainers = _gan_members()
    trainer, dp = trainers[0], DataParallel("shard_map")
    pipeline = build_pipeline(source, configs[0].train.batch_size, 0, trainer.preprocess, num_threads=0)
    batches = [dp.put_batch(next(pipeline)) for _ in range(2)]
    init = jax.jit(trainer.create_state)
    states = [init(jax.random.key(c.seed)) for c in configs]
    keys = [jax.random.key(100 + c.seed) for c in configs]
    stack = Stack(trainers, "halt", shared_data_order=True)
    sdp = DataParallel("shard_map", stacked_state=True)
    carry = sdp.put_state(StackState(stack_trees(states), jax.numpy.zeros(len(states), jax.numpy.int32)))
    want = _members_one_by_one(trainer, states, [t.hparams() for t in trainers], lambda i: batches, keys, dp)
    step = sdp.compile_step(stack.train_step)
    for batch in batches:
        carry, stacked_metrics = step(carry, batch, jax.numpy.stack(keys))
    _assert_members_equal(stack, carry, stacked_metrics, want)
    # train_step is train_step_with(hparams()): the plain step of member 1 gives the same numbers.
    plain = dp.compile_step(trainers[1].train_step)
    state = dp.put_state(init(jax.random.key(configs[1].seed)))
    for batch in batches:
        state, plain_metrics = plain(state, batch, keys[1])
    for k, v in jax.device_get(plain_metrics).items():
        np.testing.assert_allclose(jax.device_get(stacked_metrics[k])[1], v, rtol=1e-5, atol=1e-6, err_msg=k)


def test_members_mesh_axis_equals_members_one_by_one():
    """4 members with their own batches on a (members=2, data=2) mesh of the 4 simulated devices: two members
    per device pair, each equal to the member trained alone on all 4 devices."""
    configs, source, trainers = _gan_members()
    trainer = trainers[0]
    pipelines = [build_pipeline(source, configs[0].train.batch_size, c.seed, trainer.preprocess, num_threads=0) for c in configs]
    host = [[next(p) for _ in range(2)] for p in pipelines]  # member -> steps
    init = jax.jit(trainer.create_state)
    states = [init(jax.random.key(c.seed)) for c in configs]
    keys = [jax.random.key(100 + c.seed) for c in configs]
    dp = DataParallel("shard_map")
    stack = Stack(trainers, "halt", shared_data_order=False)
    mdp = DataParallel("shard_map", make_mesh(member_shards=2), stacked_state=True, stacked_batch=True)
    assert mdp.mesh.shape == {"members": 2, "data": 2}
    carry = mdp.put_state(StackState(stack_trees(states), jax.numpy.zeros(len(states), jax.numpy.int32)))
    want = _members_one_by_one(trainer, states, [t.hparams() for t in trainers], lambda i: [dp.put_batch(b) for b in host[i]], keys, dp)
    step = mdp.compile_step(stack.train_step)
    for s in range(2):
        batch = mdp.put_batch(jax.tree.map(lambda *xs: np.stack(xs), *[host[i][s] for i in range(len(configs))]))
        carry, stacked_metrics = step(carry, batch, jax.numpy.stack(keys))
    assert carry.members.step.sharding.spec[0] == "members"  # the members really are split over devices
    _assert_members_equal(stack, carry, stacked_metrics, want)


@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_stacks_take_the_backends_stack_overrides_and_single_runs_keep_their_own(backend):
    """A stack of several members on CPU or GPU takes `sweep.<backend>_stack_overrides` (dcgan: the 'stack'
    formulations); a single run and other backends' stacks keep the config's own; a config saved without the
    field still loads."""
    from synthjax.stack import stack_configs, stack_overrides

    configs = [load_config(DCGAN, [f"seed={i}"]) for i in range(2)]
    logged = []
    assert [c.model.conv_impl for c in stack_configs(configs, backend, log=logged.append)] == ["stack", "stack"]
    assert f"sweep.{backend}_stack_overrides='model.conv_impl=stack'" in logged[0]
    assert [c.model.conv_impl for c in stack_configs(configs[:1], backend, log=logged.append)] == ["auto"]
    assert [c.model.conv_impl for c in stack_configs(configs, "tpu", log=logged.append)] == ["auto", "auto"]
    old = configs[0].copy_and_resolve_references()
    with old.unlocked():
        del old.sweep[f"{backend}_stack_overrides"]
    assert stack_overrides(old, backend) == ""


@pytest.mark.parametrize("onednn_reason", [None, "not built"])
def test_the_stack_formulations_are_gemms_and_onednn_where_it_runs(monkeypatch, onednn_reason):
    """Under vmap oneDNN's calls run member by member; XLA's convolutions with per-member kernels would become
    grouped convolutions, so 'stack' takes GEMMs for every role oneDNN does not run."""
    from synthjax.models import formulations

    monkeypatch.setattr(formulations, "onednn_unused_reason",
                        lambda backend, dtype: onednn_reason if backend == "cpu" else "CPU-only")
    cpu = {role: c.formulation for role, c in formulations.plan("stack", backend="cpu").items()}
    gemms = {"up": "gemm_col2im", "out": "gemm_col2im", "down": "s2d_matmul", "in": "s2d_matmul", "recurrent": "im2col"}
    assert cpu == (gemms if onednn_reason else {**gemms, **dict.fromkeys(formulations.ONEDNN_ROLES, "onednn")})
    assert {role: c.formulation for role, c in formulations.plan("stack", backend="gpu").items()} == gemms
