"""PixelRNN (Row LSTM): causal masks, exact causality, the row-at-a-time sampler, NLL, golden step, bad configs.

Two trainers are built (each initialisation and compilation costs seconds on
CPU): the grey Bernoulli smoke model on 28x28 digits, and an 8-bit RGB
256-way model on tiny images; the causality and sampler tests reuse their
parameters (a PixelRNN's parameters do not depend on the image size).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax.config import load_config
from synthjax.data import load_bundled_mnist
from synthjax.errors import UserError
from synthjax.models.rnn import PixelRNN, causal_mask, channel_groups, zero_row_carries
from synthjax.parallel import DataParallel
from synthjax.trainers import build_trainer

pytestmark = pytest.mark.xdist_group("rnn_pixelrnn")
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "pixelrnn.py")
MNIST = (28, 28, 1)
RGB_OVERRIDES = ("objective.likelihood=categorical", "data.binarize=false", "model.hidden=3", "model.head_features=6")
# Computed once with this code on CPU (jax 0.10.2): the losses of two steps on the fixed batch.
GOLDEN_LOSSES = [542.874634, 540.343506]


def smoke_config(*overrides: str):
    return load_config(f"{CONFIG}:smoke", overrides)


def binarised_digits(n: int) -> np.ndarray:
    """The first n bundled digits, thresholded (a fixed batch: no sampling noise)."""
    return (load_bundled_mnist()[0][:n] > 127).astype(np.float32)


@pytest.fixture
def grey():
    return grey_setup()


@pytest.fixture
def rgb():
    return rgb_setup()


@functools.cache  # not a module fixture: xdist may tear those down between tests, this survives
def grey_setup() -> dict:
    """The smoke Bernoulli PixelRNN trained two steps on 16 fixed digits under shard_map, with eval before and after."""
    trainer = build_trainer(smoke_config(), MNIST)
    dp = DataParallel("shard_map")
    batch = dp.put_batch({"image": binarised_digits(16), "label": np.zeros(16, np.int32)})
    step, evaluate = dp.compile_step(trainer.train_step), dp.compile_eval(trainer.eval_step)
    state = dp.put_state(trainer.create_state(jax.random.key(0)))
    before = evaluate(state, batch, jax.random.key(0))
    losses = []
    for _ in range(2):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    after = evaluate(state, batch, jax.random.key(0))
    return dict(trainer=trainer, state=dp.host_state(state), losses=losses, before=before, after=after)


@functools.cache
def rgb_setup() -> dict:
    """An untrained 8-bit RGB PixelRNN (256-way softmax per colour) for 3x2 images."""
    trainer = build_trainer(smoke_config(*RGB_OVERRIDES), (3, 2, 3))
    return dict(trainer=trainer, state=trainer.create_state(jax.random.key(0)))


def model_and_params(setup: dict):
    return setup["trainer"].model, setup["state"].params


# ---------------------------------------------------------------- masks and causality


def test_masks_grey_and_rgb_centre():
    grey_ = channel_groups(1, 1)
    assert causal_mask((3, 3), grey_, grey_, "A")[1, 1].sum() == 0
    assert causal_mask((3, 3), grey_, grey_, "B")[1, 1].sum() == 1
    rgb_ = channel_groups(3, 3)
    np.testing.assert_array_equal(causal_mask((1, 1), rgb_, rgb_, "A")[0, 0], np.triu(np.ones((3, 3)), 1))
    np.testing.assert_array_equal(causal_mask((1, 1), rgb_, rgb_, "B")[0, 0], np.triu(np.ones((3, 3))))
    mask = causal_mask((5, 5), grey_, grey_, "B")[..., 0, 0]
    assert mask[3:].sum() == 0 and mask[2, 3:].sum() == 0 and mask[:2].all() and mask[2, :3].all()


def raster_jacobian(model, params, x_hwc):
    """|d logits(pixel p, colour c) / d x(pixel q, colour d)| summed over logits, as (HWC, HWC) in raster order."""
    size = x_hwc.size

    def logits_of(x):
        return jnp.sum(model.apply({"params": params}, x[None])[0], axis=-1).reshape(-1)

    return np.abs(np.asarray(jax.jit(jax.jacrev(logits_of))(x_hwc))).reshape(size, size)


@pytest.mark.parametrize("setup_name", ["grey", "rgb"])
def test_logits_depend_only_on_earlier_pixels(setup_name, request):
    """d logits_i / d x_j == 0 exactly for every j >= i in raster order (rows, columns, R->G->B), != 0 for some j < i."""
    model, params = model_and_params(request.getfixturevalue(setup_name))
    height, width, colors = 7, 5, model.colors
    x = jax.random.uniform(jax.random.key(0), (height, width, colors))
    jac = raster_jacobian(model, params, x)
    assert np.all(np.triu(jac) == 0.0), "an output depends on its own or a later input"
    assert np.count_nonzero(np.tril(jac, -1)) > jac.shape[0], "outputs should depend on earlier pixels"

    def index(row, col, color=0):
        return (row * width + col) * colors + color

    assert jac[index(0, 1), index(0, 0)] > 0  # the left neighbour, through the mask-A input convolution
    # Five rows up is beyond the 7x7 input mask: only the Row LSTM's row-to-row state can carry it.
    assert jac[index(5, 2), index(0, 2)] > 0
    if colors == 3:  # within a pixel, G reads R and B reads R and G (somewhere: a ReLU may block one pixel)
        pixels = [(r, c) for r in range(height) for c in range(width)]
        for reader, read in [(1, 0), (2, 0), (2, 1)]:
            assert sum(jac[index(r, c, reader), index(r, c, read)] for r, c in pixels) > 0


@pytest.mark.parametrize("setup_name", ["grey", "rgb"])
def test_row_logits_equal_full_pass(setup_name, request):
    """The sampler's row-at-a-time evaluation gives the teacher-forced logits."""
    model, params = model_and_params(request.getfixturevalue(setup_name))
    x = jax.random.uniform(jax.random.key(0), (2, 4, 5, model.colors))
    full = jax.jit(lambda x: model.apply({"params": params}, x))(x)
    row_logits = jax.jit(lambda x, row, carries: model.apply({"params": params}, x, row, carries, method=PixelRNN.row_logits))
    carries = zero_row_carries(model.layers, x.shape[0], x.shape[2], model.hidden)
    for row in range(x.shape[1]):
        logits, carries = row_logits(x, row, carries)
        np.testing.assert_allclose(logits, full[:, row], atol=1e-5)


# ---------------------------------------------------------------- trainer


def test_golden_two_steps(grey):
    # A change means the model, its initialisation, the loss or the update changed.
    np.testing.assert_allclose(grey["losses"], GOLDEN_LOSSES, rtol=1e-5)


def test_untrained_nll_near_uniform(grey):
    """An untrained Bernoulli PixelRNN puts p ~ 1/2 on every pixel: about 784 ln 2 = 543.4 nats per image."""
    assert abs(float(grey["before"]["nll"]) - 784 * math.log(2)) < 0.1 * 784 * math.log(2)


def test_eval_reports_nats_and_bits(grey):
    after = grey["after"]
    np.testing.assert_allclose(after["bits_per_dim"], after["nll"] / (784 * math.log(2)), rtol=1e-6)
    assert after["nll"] < grey["before"]["nll"]  # two steps on this batch lower its NLL


def test_sample_shape_and_values(grey):
    images = np.asarray(jax.jit(grey["trainer"].sample, static_argnums=2)(grey["state"], jax.random.key(0), 4))
    chex.assert_shape(images, (4, *MNIST))
    assert set(np.unique(images)) <= {0.0, 1.0}


def test_sampler_matches_naive_ancestral_sampling(rgb):
    """The fori_loop sampler draws exactly what pixel-by-pixel sampling from full forward passes draws (8-bit RGB)."""
    trainer, state = rgb["trainer"], rgb["state"]
    key = jax.random.key(5)
    fast = np.asarray(jax.jit(trainer.sample, static_argnums=2)(state, key, 2))

    forward = jax.jit(lambda x: trainer.model.apply({"params": state.params}, x))
    draw = jax.jit(trainer.likelihood.sample)
    canvas = np.zeros((2, 3, 2, 3), np.float32)
    for index in range(canvas[0].size):  # raster order: rows, columns, colours
        row, col, color = np.unravel_index(index, canvas.shape[1:])
        logits = forward(jnp.asarray(canvas))[:, row, col, color]
        canvas[:, row, col, color] = draw(jax.random.fold_in(key, index), logits)
    np.testing.assert_array_equal(fast, canvas)
    assert fast.min() >= 0.0 and fast.max() <= 1.0 and len(np.unique(fast)) > 2  # 8-bit values, not binary


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "overrides, shape, key",
    [
        (("objective.likelihood=categorical",), MNIST, "objective.likelihood"),
        (("objective.likelihood=bernoulli", "data.binarize=false"), MNIST, "data.binarize"),
        ((), (28, 28, 2), "channels"),
        (("model.hidden=4",), (8, 8, 3), "model.hidden"),
        (("model.input_kernel=4",), MNIST, "model.input_kernel"),
        (("model.arch=diagonal_bilstm",), MNIST, "model.arch"),
    ],
)
def test_bad_config_is_a_user_error(overrides, shape, key):
    with pytest.raises(UserError, match=key):
        build_trainer(smoke_config(*overrides), shape)
