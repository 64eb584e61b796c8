"""DRAW: attention filterbanks, the bound, golden step, canvas sequence and samples, the no-attention variant, bad configs."""
from __future__ import annotations

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
GOLDEN_LOSSES = {"attention": [543.278137, 543.443115], "no_attention": [566.581787, 560.742859]}


def smoke_config(*overrides: str):
    return load_config(f"{CONFIG}:smoke", overrides)


def binarised_digits(n: int) -> np.ndarray:
    return (load_bundled_mnist()[0][:n] > 127).astype(np.float32)


def test_filterbank_rows_sum_to_one():
    params = jax.random.normal(jax.random.key(0), (4, 5)) * 2.0  # some filters fall far outside the image
    fy, fx, gamma = attention_filterbanks(params, 5, 28, 20)
    chex.assert_shape([fy, fx, gamma], [(4, 5, 28), (4, 5, 20), (4,)])
    np.testing.assert_allclose(fy.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(fx.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(fy) >= 0) and np.all(np.asarray(gamma) > 0)


def test_filterbank_centre_and_stride():
    """g~ = 0 centres the grid on the image; log delta~ = 0 spreads N filters over the whole width."""
    params = jnp.array([[0.0, 0.0, np.log(0.01), 0.0, 0.0]])
    _, fx, _ = attention_filterbanks(params, 3, 28, 28)
    peaks = np.argmax(np.asarray(fx[0]), axis=-1)
    np.testing.assert_array_equal(peaks, [1, 14, 27])  # centres 1, 14.5 (tie: 14), 28 (beyond the last pixel, 27)


@pytest.fixture(scope="module", params=["attention", "no_attention"])
def trained(request):
    """The smoke DRAW (or its no-attention variant) after two steps on 16 fixed binarised digits."""
    overrides = () if request.param == "attention" else ("model.attention=false",)
    trainer = build_trainer(smoke_config(*overrides), MNIST)
    dp = DataParallel("shard_map")
    state = dp.put_state(trainer.create_state(jax.random.key(0)))
    step = dp.compile_step(trainer.train_step)
    batch = dp.put_batch({"image": binarised_digits(16), "label": np.zeros(16, np.int32)})
    losses, metrics = [], []
    for _ in range(2):
        state, m = step(state, batch, jax.random.key(1))
        losses.append(float(m["loss"]))
        metrics.append(m)
    return request.param, trainer, dp.host_state(state), losses, metrics


def test_golden_two_steps(trained):
    variant, _, _, losses, _ = trained
    np.testing.assert_allclose(losses, GOLDEN_LOSSES[variant], rtol=1e-5)


def test_bound_is_reconstruction_plus_kl(trained):
    metrics = trained[4][-1]
    np.testing.assert_allclose(metrics["loss"], metrics["rec"] + metrics["kl"], rtol=1e-5)
    assert metrics["kl"] >= 0 and metrics["rec"] > 0


def test_variant_parameters(trained):
    variant, _, state = trained[:3]
    params = state.params
    assert ("reader" in params) == (variant == "attention")  # the whole-image reader has no parameters
    assert ("attention" in params["writer"]) == (variant == "attention")
    assert ("canvas" in params["writer"]) == (variant == "no_attention")


def test_canvas_sequence_and_samples(trained):
    _, trainer, state = trained[:3]
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
