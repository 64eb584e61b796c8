"""opt.schedule: learning-rate schedules equal optax's, reach every trainer, and keep the rate vmappable."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from ml_collections import ConfigDict

from synthjax.config import load_config
from synthjax.errors import UserError
from synthjax.trainers import build_trainer
from synthjax.trainers.base import adam, lr_factor, scheduled

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LR = 3e-3
COUNTS = np.array([0, 1, 2, 5, 9, 10, 11, 50, 99, 100, 150])


def opt(**kw) -> ConfigDict:
    defaults = dict(lr=LR, b1=0.9, b2=0.999, grad_clip=0.0, schedule="constant", warmup_steps=0, decay_steps=0, end_factor=0.0)
    return ConfigDict({**defaults, **kw})


def rates(factor) -> np.ndarray:
    return np.array([float(scheduled(LR, factor, jnp.int32(c))) for c in COUNTS])


def optax_rates(schedule) -> np.ndarray:
    return np.array([float(schedule(jnp.int32(c))) for c in COUNTS])


@pytest.mark.parametrize(
    "settings, reference",
    [
        (dict(schedule="cosine"), optax.cosine_decay_schedule(LR, 100)),
        (dict(schedule="cosine", end_factor=0.1, decay_steps=50), optax.cosine_decay_schedule(LR, 50, alpha=0.1)),
        (dict(schedule="cosine", warmup_steps=10, end_factor=0.05),
         optax.warmup_cosine_decay_schedule(0.0, LR, 10, 100, end_value=0.05 * LR)),
        (dict(schedule="linear", end_factor=0.2), optax.linear_schedule(LR, 0.2 * LR, 100)),
        (dict(schedule="linear", warmup_steps=10),
         optax.join_schedules([optax.linear_schedule(0.0, LR, 10), optax.linear_schedule(LR, 0.0, 90)], [10])),
        (dict(schedule="constant", warmup_steps=10),
         optax.join_schedules([optax.linear_schedule(0.0, LR, 10), optax.constant_schedule(LR)], [10])),
    ],
)
def test_schedules_equal_optax(settings, reference):
    factor = lr_factor(opt(**settings), num_steps=100)
    np.testing.assert_allclose(rates(factor), optax_rates(reference), rtol=1e-6, atol=1e-12)


def test_constant_without_warmup_is_no_schedule_at_all():
    assert lr_factor(opt(), 100) is None  # the optimiser state and every step stay as before
    assert scheduled(LR, None, jnp.int32(7)) == LR


def test_adam_follows_the_schedule_exactly():
    cfg = opt(schedule="cosine", warmup_steps=3, end_factor=0.1)
    ours = adam(cfg, LR, num_steps=20)
    ref = optax.adam(optax.warmup_cosine_decay_schedule(0.0, LR, 3, 20, end_value=0.1 * LR), b1=0.9, b2=0.999)
    params = {"w": jnp.arange(4.0)}
    a_state, r_state, a_params, r_params = ours.init(params), ref.init(params), params, params
    for i in range(6):
        grads = {"w": jnp.sin(jnp.arange(4.0) + i)}
        a_up, a_state = ours.update(grads, a_state, a_params)
        r_up, r_state = ref.update(grads, r_state, r_params)
        a_params, r_params = optax.apply_updates(a_params, a_up), optax.apply_updates(r_params, r_up)
    np.testing.assert_allclose(a_params["w"], r_params["w"], rtol=1e-6)


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(schedule="exp"), r"unknown learning-rate schedule 'exp' \(config key opt.schedule\); valid: constant, cosine, linear"),
        (dict(schedule="cosine", warmup_steps=100), r"opt.decay_steps=100 \(0: train.num_steps\) must exceed opt.warmup_steps=100"),
        (dict(schedule="linear", end_factor=2.0), r"opt.end_factor must lie in \[0, 1\]"),
        (dict(schedule="cosine", warmup_steps=-1), "opt.warmup_steps must be an integer >= 0, got -1"),
    ],
)
def test_bad_schedule_settings_name_the_key_and_the_fix(settings, match):
    with pytest.raises(UserError, match=match):
        lr_factor(opt(**settings), 100)


@pytest.mark.parametrize("config_name", ["vae_mlp.py:smoke", "gan_mlp.py:smoke", "draw.py:smoke"])
def test_every_trainer_applies_the_schedule(config_name):
    """Warm-up from rate 0: the first update leaves the weights as they were; without warm-up it moves them."""
    warm = ["opt.schedule=cosine", "opt.warmup_steps=3"]
    assert not params_moved(config_name, *warm)
    assert params_moved(config_name, "opt.schedule=cosine")


PARAM_FIELDS = ("params", "g_params", "d_params")


def params_moved(config_name: str, *overrides: str) -> bool:
    from synthjax.parallel import DataParallel

    config = load_config(os.path.join(REPO, "configs", config_name), list(overrides))
    trainer = build_trainer(config, (28, 28, 1), 10)
    dp = DataParallel("shard_map")
    state = jax.jit(trainer.create_state)(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (config.train.batch_size, 28, 28, 1))
    batch = {"image": (x > 0.5).astype(jnp.float32) if config.data.binarize else x,
             "label": jnp.zeros((config.train.batch_size,), jnp.int32)}
    new, _ = dp.compile_step(trainer.train_step, donate_state=False)(dp.put_state(state), dp.put_batch(batch), jax.random.key(2))
    new = dp.host_state(new)
    leaves = lambda s: jax.tree.leaves([getattr(s, f) for f in PARAM_FIELDS if hasattr(s, f)])  # noqa: E731
    return any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(leaves(state), leaves(new)))


def test_the_peak_rate_stays_vmappable_under_a_schedule():
    """Two learning rates stacked as hparams and one vmapped program == each rate's own run."""
    from synthjax.parallel import DataParallel

    config = load_config(os.path.join(REPO, "configs", "vae_mlp.py:smoke"), ["opt.schedule=cosine", "opt.warmup_steps=1"])
    trainer = build_trainer(config, (28, 28, 1))
    dp = DataParallel("shard_map")
    state = jax.jit(trainer.create_state)(jax.random.key(0))
    batch = dp.put_batch({"image": (jax.random.uniform(jax.random.key(1), (16, 28, 28, 1)) > 0.5).astype(jnp.float32)})
    hps = [{**trainer.hparams(), "lr": jnp.float32(lr)} for lr in (1e-3, 3e-3)]

    def single(carry, batch, key):
        new, metrics = trainer.train_step_with(carry[1], carry[0], batch, key)
        return (new, carry[1]), metrics

    def stacked(carry, batch, key):
        new, metrics = jax.vmap(trainer.train_step_with, in_axes=(0, 0, None, None))(carry[1], carry[0], batch, key)
        return (new, carry[1]), metrics

    def run(step, carry):  # two steps: the first at rate 0 (warm-up), the second at the peak
        carry = dp.put_state(carry)
        for i in range(2):
            carry, _ = step(carry, batch, jax.random.key(i))
        return dp.host_state(carry)[0]

    singles = [run(dp.compile_step(single, donate_state=False), (state, hp)) for hp in hps]
    both = run(dp.compile_step(stacked, donate_state=False), (jax.tree.map(lambda v: jnp.stack([v, v]), state), jax.tree.map(lambda *v: jnp.stack(v), *hps)))
    for m, one in enumerate(singles):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a[m], b, rtol=2e-4, atol=2e-6), both, one)
    assert not np.allclose(jax.tree.leaves(singles[0].params)[0], jax.tree.leaves(singles[1].params)[0])
