"""DRAW: attention filterbanks, the bound and log-likelihood, golden step, canvas sequence and samples, the no-attention variant, bad configs."""
from __future__ import annotations

import functools
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax.config import load_config
from synthjax.data import load_bundled_mnist
from synthjax.errors import UserError
from synthjax.models.rnn import attention_filterbanks
from synthjax.parallel import DataParallel
from synthjax.trainers import build_trainer

pytestmark = pytest.mark.xdist_group("rnn_draw")
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "draw.py")
MNIST = (28, 28, 1)
# Computed once with this code on CPU (jax 0.10.2): the losses of two steps on the fixed batch and key.
GOLDEN_LOSSES = [543.362549, 543.365173]


filterbanks = jax.jit(attention_filterbanks, static_argnums=(1, 2, 3))


def smoke_config(*overrides: str):
    return load_config(f"{CONFIG}:smoke", overrides)


def binarised_digits(n: int) -> np.ndarray:
    return (load_bundled_mnist()[0][:n] > 127).astype(np.float32)


def test_filterbank_rows_sum_to_one():
    params = jax.random.normal(jax.random.key(0), (4, 5)) * 2.0  # some filters fall far outside the image
    fy, fx, gamma = filterbanks(params, 5, 28, 20)
    chex.assert_shape([fy, fx, gamma], [(4, 5, 28), (4, 5, 20), (4,)])
    np.testing.assert_allclose(fy.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(fx.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(fy) >= 0) and np.all(np.asarray(gamma) > 0)


def test_filterbank_centre_and_stride():
    """g~ = 0 centres the grid on the image; log delta~ = 0 spreads N filters over the whole width."""
    params = jnp.array([[0.0, 0.0, np.log(0.01), 0.0, 0.0]])
    _, fx, _ = filterbanks(params, 3, 28, 28)
    peaks = np.argmax(np.asarray(fx[0]), axis=-1)
    np.testing.assert_array_equal(peaks, [1, 14, 27])  # centres 1, 14.5 (tie: 14), 28 (beyond the last pixel, 27)


@functools.cache  # not a pytest fixture: xdist may tear module fixtures down between tests, this survives
def trained() -> dict:
    """The smoke DRAW (attention) after two steps on 16 fixed binarised digits under shard_map."""
    trainer = build_trainer(smoke_config(), MNIST)
    dp = DataParallel("shard_map")
    state = dp.put_state(trainer.create_state(jax.random.key(0)))
    step = dp.compile_step(trainer.train_step)
    batch = dp.put_batch({"image": binarised_digits(16), "label": np.zeros(16, np.int32)})
    losses, metrics = [], None
    for _ in range(2):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    return dict(trainer=trainer, state=dp.host_state(state), losses=losses, metrics=metrics)


def test_golden_two_steps():
    np.testing.assert_allclose(trained()["losses"], GOLDEN_LOSSES, rtol=1e-5)


def test_bound_is_reconstruction_plus_kl():
    metrics = trained()["metrics"]
    np.testing.assert_allclose(metrics["loss"], metrics["rec"] + metrics["kl"], rtol=1e-5)
    assert metrics["kl"] >= 0 and metrics["rec"] > 0


def test_log_likelihood_is_the_elbo_averaged_over_posterior_draws():
    trainer, state = trained()["trainer"], trained()["state"]
    x, key = jnp.asarray(binarised_digits(4)), jax.random.key(5)
    log_p = jax.jit(trainer.log_likelihood, static_argnums=3)(state, x, key, 3)
    elbos = []
    for draw_key in jax.random.split(key, 3):  # the same draws, one bound at a time
        rec, kl = trainer.bound_terms(state.params, x, trainer._noise(draw_key, 4, jax.random.normal))
        elbos.append(-(rec + kl))
    assert trainer.log_likelihood_kind == "bound" and log_p.shape == (4,)
    np.testing.assert_allclose(log_p, np.mean(elbos, axis=0), rtol=1e-5)
    assert "ELBO averaged over 3" in trainer.likelihood_estimator(3)


def test_no_attention_variant():
    """model.attention=false reads the whole image and error image and writes the whole canvas."""
    trainer = build_trainer(smoke_config("model.attention=false"), MNIST)
    state = trainer.create_state(jax.random.key(0))
    assert "reader" not in state.params and set(state.params["writer"]) == {"canvas"}
    assert "attention" in trained()["state"].params["reader"] and "patch" in trained()["state"].params["writer"]
    dp = DataParallel("shard_map")
    batch = dp.put_batch({"image": binarised_digits(16), "label": np.zeros(16, np.int32)})
    metrics = dp.compile_eval(trainer.eval_step)(dp.put_state(state), batch, jax.random.key(0))
    np.testing.assert_allclose(metrics["neg_elbo"], metrics["rec"] + metrics["kl"], rtol=1e-5)
    assert 400 < metrics["neg_elbo"] < 800  # untrained: about 784 ln 2 = 543 nats


def test_canvas_sequence_and_samples():
    trainer, state = trained()["trainer"], trained()["state"]
    canvases = np.asarray(jax.jit(trainer.canvas_sequence, static_argnums=2)(state, jax.random.key(3), 3))
    chex.assert_shape(canvases, (4, 3, *MNIST))  # smoke: T = 4 steps
    assert canvases.min() >= 0.0 and canvases.max() <= 1.0
    samples = np.asarray(jax.jit(trainer.sample, static_argnums=2)(state, jax.random.key(3), 3))
    np.testing.assert_allclose(samples, canvases[-1], atol=1e-6)


@pytest.mark.parametrize(
    "overrides, shape, key",
    [
        (("model.read_n=29",), MNIST, "model.read_n"),
        (("model.write_n=9",), (8, 8, 1), "model.write_n"),
        (("data.binarize=false",), MNIST, "data.binarize"),
        (("model.steps=0",), MNIST, "model.steps"),
    ],
)
def test_bad_config_is_a_user_error(overrides, shape, key):
    with pytest.raises(UserError, match=key):
        build_trainer(smoke_config(*overrides), shape)


def test_no_attention_ignores_grid_sizes():
    build_trainer(smoke_config("model.attention=false", "model.read_n=99"), MNIST)
