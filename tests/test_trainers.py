"""Trainers: one-step golden values, learning on a tiny problem, and data-parallel equivalence.

The golden values were computed once with this code on CPU (float32) and
pinned: a change to a model, objective, initialiser or the RNG derivation
shows up here first. If a change is intended, recompute them and say why in
the commit.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax.config import load_config
from synthjax.data import build_pipeline, get_source
from synthjax.parallel import DataParallel, make_mesh
from synthjax.trainers import build_trainer
from tests.helpers import families, golden
from tests.helpers.runs import ADAM_EQUIVALENCE_LR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def setup(config_name, overrides=(), devices=None, mode="shard_map"):
    config = load_config(os.path.join(REPO, "configs", config_name), list(overrides))
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape, source.num_classes)
    dp = DataParallel(mode, make_mesh(devices))
    batches = build_pipeline(source, config.train.batch_size, config.seed, trainer.preprocess, num_threads=0)
    state = dp.put_state(jax.jit(trainer.create_state)(jax.random.key(config.seed)))
    return trainer, dp, batches, state


def run_steps(trainer, dp, batches, state, n):
    step = dp.compile_step(trainer.train_step)
    history = []
    for _ in range(n):
        state, metrics = step(state, dp.put_batch(next(batches)), jax.random.key(42))
        history.append(jax.device_get(dp.metrics(metrics)))
    return state, history


def one_step_metrics(config_name: str) -> dict[str, float]:
    """Every scalar metric of the first train step of `config_name` (what the golden file pins)."""
    trainer, dp, batches, state = setup(config_name)
    state, (metrics,) = run_steps(trainer, dp, batches, state, 1)
    assert int(dp.host_state(state).step) == 1
    return {k: float(v) for k, v in sorted(metrics.items()) if np.ndim(v) == 0}


@pytest.mark.parametrize("config_name", families.all_configs())
def test_one_step_golden_values(config_name):
    """Every config in configs/ has pinned first-step metrics (tests/helpers/golden.py says how to record them)."""
    got = one_step_metrics(config_name)
    pinned = golden.load().get(config_name)
    assert pinned, golden.missing_message(config_name, got)
    for key, want in pinned.items():
        assert key in got, f"{config_name}: pinned metric {key!r} is no longer logged; logged: {sorted(got)}"
        np.testing.assert_allclose(got[key], want, rtol=2e-5, atol=1e-6, err_msg=f"{config_name} {key}")


def test_golden_values_hold_at_the_default_xla_optimisation_level():
    """The suite compiles at LLVM level 0 (tests/conftest.py); users' runs compile at the default level.

    Two configs (a convolutional GAN on oneDNN and a VAE) reproduce their pinned step in a fresh process without
    that option, so the numbers the suite checks are the numbers users get.
    """
    flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_backend_optimization_level"))
    env = {**os.environ, "XLA_FLAGS": flags}
    cmd = [sys.executable, "-m", "tests.helpers.golden", "--check", "dcgan.py:smoke", "vae_mlp.py:smoke"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


def test_every_registered_family_has_a_config():
    """The cross-family tests derive their lists from configs/, so a family without a config would go untested."""
    covered = {families.family_and_arch(name)[0] for name in families.all_configs()}
    missing = families.registered_families() - covered
    assert not missing, f"model families {sorted(missing)} have no configs/*.py; add configs/<family>.py with a :smoke variant"


def test_vae_learns_a_tiny_dataset():
    # train.num_steps=60: the steps taken here, so the config's decaying learning rate spans them (past
    # train.num_steps a schedule holds its final value, 0 for the cosine)
    trainer, dp, batches, state = setup("vae_mlp.py:smoke", ["opt.lr=3e-3", "train.num_steps=60"])
    fixed = next(batches)
    step = dp.compile_step(trainer.train_step)
    losses = []
    for _ in range(60):
        state, metrics = step(state, dp.put_batch(fixed), jax.random.key(0))
        losses.append(float(dp.metrics(metrics)["neg_elbo"]))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses[::10]


def test_gan_discriminator_learns_to_separate_real_from_fake():
    trainer, dp, batches, state = setup("gan_mlp.py:smoke", ["opt.lr=1e-3"])
    state, history = run_steps(trainer, dp, batches, state, 30)
    assert history[-1]["d_real"] > history[0]["d_real"]
    assert all(np.isfinite(h["d_loss"]) and np.isfinite(h["g_loss"]) for h in history)


def test_gan_state_holds_everything_and_ema_tracks_params():
    trainer, dp, batches, state = setup("dcgan.py:smoke")
    state, _ = run_steps(trainer, dp, batches, state, 2)
    host = dp.host_state(state)
    assert host.g_stats and host.d_stats  # BatchNorm statistics live in the state
    diff = jax.tree.map(lambda e, p: float(jnp.max(jnp.abs(e - p))), host.ema_params, host.g_params)
    assert 0 < max(jax.tree.leaves(diff))  # EMA lags the parameters


def _params_after(config_name, n, overrides, devices, mode):
    trainer, dp, batches, state = setup(config_name, overrides, devices, mode)
    state, history = run_steps(trainer, dp, batches, state, n)
    return jax.device_get(dp.host_state(state)), history


@pytest.mark.parametrize("config_name", ["dcgan.py:smoke", "vae_mlp.py:smoke"])
def test_shard_map_pmap_and_one_device_agree(config_name):
    """4 devices under shard_map, 4 under pmap and 1 device, same global batch: same parameters."""
    assert jax.device_count() == 4
    lr = [ADAM_EQUIVALENCE_LR]
    runs = {
        "shard_map": _params_after(config_name, 2, lr, None, "shard_map"),
        "pmap": _params_after(config_name, 2, [*lr, "train.parallel=pmap"], None, "pmap"),
        "one_device": _params_after(config_name, 2, lr, jax.devices()[:1], "shard_map"),
    }
    ref_state, ref_hist = runs["shard_map"]
    for name, (state, hist) in runs.items():
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=name), state, ref_state)
        for h, r in zip(hist, ref_hist):
            for k in r:
                np.testing.assert_allclose(h[k], r[k], rtol=2e-4, atol=1e-5, err_msg=f"{name} {k}")


def test_global_norm_matches_float64_under_jit_and_vmap():
    from synthjax.trainers.base import LARGE_LEAF, global_norm

    rng = np.random.default_rng(3)
    tree = {"s": np.float32(1.5), "v": rng.standard_normal(5), "k": rng.standard_normal((3, 4, 2, 6)),
            "w": rng.standard_normal((100, 300)), "big": rng.standard_normal((64, 128, 130))}
    tree = {k: np.asarray(v, np.float32) for k, v in tree.items()}
    assert tree["big"].size >= LARGE_LEAF > tree["w"].size  # both ways of summing a leaf
    want = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in tree.values()))
    np.testing.assert_allclose(jax.jit(global_norm)(tree), want, rtol=1e-6)
    stacked = jax.tree.map(lambda x: jnp.stack([x, 2 * x]), tree)
    np.testing.assert_allclose(jax.vmap(global_norm)(stacked), [want, 2 * want], rtol=1e-6)


def test_register_refuses_a_capability_without_its_method():
    from synthjax.trainers.base import TRAINERS, Trainer, register

    with pytest.raises(TypeError, match="needs log_likelihood"):
        register("claims_a_likelihood")(type("Claims", (Trainer,), {"log_likelihood_kind": "bound"}))
    with pytest.raises(TypeError, match="needs train_step_with"):
        register("claims_vmap")(type("Claims", (Trainer,), {"vmappable_keys": ("seed",)}))
    assert "claims_a_likelihood" not in TRAINERS and "claims_vmap" not in TRAINERS


def test_capabilities_default_to_not_offered():
    trainer, dp, batches, state = setup("convlstm.py:smoke")  # a family that offers none of them
    assert (trainer.log_likelihood_kind, trainer.vmappable_keys, trainer.requires_labels) == ("none", (), False)
    from synthjax.errors import UserError

    with pytest.raises(UserError, match="defines no tractable likelihood"):
        trainer.log_likelihood(state, None, None, 1)


def test_pixelrnn_exact_log_likelihood_is_minus_its_training_nll():
    trainer, dp, batches, state = setup("pixelrnn.py:smoke", devices=jax.devices()[:1])
    assert trainer.log_likelihood_kind == "exact"
    batch = next(batches)
    log_p = jax.jit(trainer.log_likelihood, static_argnums=3)(dp.host_state(state), batch["image"], jax.random.key(0), 1)
    assert log_p.shape == (len(batch["image"]),)
    _, metrics = dp.compile_step(trainer.train_step)(state, dp.put_batch(batch), jax.random.key(0))
    np.testing.assert_allclose(-float(jnp.mean(log_p)), float(dp.metrics(metrics)["nll"]), rtol=1e-5)
