"""ConvLSTM encoder-forecaster: golden steps, learning on tiny Moving MNIST, predictions, grids, the GIF tool, bad configs."""
from __future__ import annotations

import functools
from pathlib import Path

import chex
import jax
import numpy as np
import pytest
from PIL import Image

from synthjax.config import load_config
from synthjax.data import get_source
from synthjax.errors import UserError
from synthjax.parallel import DataParallel
from synthjax.trainers import build_trainer
from synthjax.trainers.convlstm import save_prediction

pytestmark = pytest.mark.xdist_group("rnn_convlstm")
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "convlstm.py")
# Short sequences (3 context + 3 future frames) keep the tests fast; the frames are the standard 64x64.
# lr 1e-2: from p = 1/2 everywhere, the sparse frames need the output bias to move fast in few steps.
TINY = ("data.seq_len=6", "model.context_frames=3", "model.future_frames=3", "data.num_sequences=8", "opt.lr=0.01")
STEPS = 40
# Computed once with this code on CPU (jax 0.10.2): the first two losses on the fixed batch
# (sequences of digits from the bundled train split).
GOLDEN_LOSSES = [8517.613281, 8424.496094]


def tiny_config(*overrides: str):
    return load_config(f"{CONFIG}:smoke", [*TINY, *overrides])


@pytest.fixture
def trained():
    return trained_setup()


@functools.cache  # not a module fixture: xdist may tear those down between tests, this survives
def trained_setup():
    """The tiny forecaster trained for STEPS steps on one fixed batch of 8 sequences; eval before and after."""
    config = tiny_config()
    source = get_source(config.data)
    trainer = build_trainer(config, source.image_shape)
    images = np.stack([source.records[i]["image"] for i in range(8)]).astype(np.float32) / 255.0
    dp = DataParallel("shard_map")
    batch = dp.put_batch({"image": images, "label": np.zeros(8, np.int32)})
    state = dp.put_state(trainer.create_state(jax.random.key(0)))
    step, evaluate = dp.compile_step(trainer.train_step), dp.compile_eval(trainer.eval_step)
    before = evaluate(state, batch, jax.random.key(0))
    losses = []
    for _ in range(STEPS):
        state, metrics = step(state, batch, jax.random.key(1))
        losses.append(float(metrics["loss"]))
    after = evaluate(state, batch, jax.random.key(0))
    return trainer, dp.host_state(state), images, losses, before, after


def test_golden_two_steps(trained):
    np.testing.assert_allclose(trained[3][:2], GOLDEN_LOSSES, rtol=1e-5)


def test_learns_and_beats_copying_the_last_frame(trained):
    _, _, _, losses, before, after = trained
    assert losses[-1] < 0.5 * losses[0]
    assert after["bce_per_frame"] < before["bce_per_frame"]
    assert after["mse_per_frame"] < after["copy_last_mse_per_frame"]
    assert after["bce_per_frame"] < after["copy_last_bce_per_frame"]
    # The baseline does not depend on the model.
    np.testing.assert_allclose(before["copy_last_mse_per_frame"], after["copy_last_mse_per_frame"])


def test_predict_and_sample(trained):
    trainer, state, images = trained[:3]
    context, future = trainer.split(images)
    chex.assert_shape([context, future], [(8, 3, 64, 64, 1), (8, 3, 64, 64, 1)])
    predicted = np.asarray(jax.jit(trainer.predict)(state, context))
    chex.assert_shape(predicted, (8, 3, 64, 64, 1))
    assert predicted.min() >= 0.0 and predicted.max() <= 1.0

    grid = np.asarray(jax.jit(trainer.sample, static_argnums=2)(state, jax.random.key(0), 10))
    chex.assert_shape(grid, (10, 64, 64, 1))
    assert grid.min() >= 0.0 and grid.max() <= 1.0
    shown = trainer.display_sequences(2)  # 10 frames = 2 sequences of 3 context + 3 predicted frames
    np.testing.assert_allclose(grid[:3], shown[0, :3])
    np.testing.assert_allclose(grid[6:9], shown[1, :3])


def test_save_prediction_writes_gif_and_strip(trained, tmp_path):
    trainer, state, images = trained[:3]
    context, future = trainer.split(images[:1])
    predicted = np.asarray(trainer.predict(state, context))
    gif, png = save_prediction(str(tmp_path / "seq0"), context[0], future[0], predicted[0])
    with Image.open(gif) as animation:
        assert animation.n_frames == 6
    with Image.open(png) as strip:
        assert strip.size[0] > strip.size[1] > 2 * 64  # two rows of six frames


@pytest.mark.parametrize(
    "overrides, key",
    [
        (("model.future_frames=4",), "model.context_frames"),
        (("model.patch=5",), "model.patch"),
        (("data.binarize=true",), "data.binarize"),
    ],
)
def test_bad_config_is_a_user_error(overrides, key):
    config = tiny_config(*overrides)
    with pytest.raises(UserError, match=key):
        build_trainer(config, get_source(config.data).image_shape)
