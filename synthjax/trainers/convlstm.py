"""ConvLSTM encoder-forecaster trainer (Shi et al., 2015): read `context_frames`, predict `future_frames`.

Data layout: a sequence arrives as one record image (H, W, T) with time in
the channel axis (see synthjax.data.moving_mnist), so the shared pipeline
is untouched; `frames` moves time to axis 1 and adds a 1-channel axis.
Frames are grey in [0, 1] and not binarised; the loss is the Bernoulli
cross-entropy of the future frames (nats per sequence, averaged over the
batch). Evaluation reports per-frame BCE and squared error next to the
copy-last-frame baseline. `sample` returns images for the loop's grids:
display sequences (the source's last records) tiled into the batch axis,
each as its context frames followed by the predicted frames.
"""
from __future__ import annotations

import math
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from synthjax import images, parallel
from synthjax.data import get_source
from synthjax.data.pipeline import Preprocess
from synthjax.models.rnn import EncoderForecaster
from synthjax.objectives.likelihood import frame_bce, frame_probs_bce, frame_squared_error
from synthjax.trainers.base import Metrics, Trainer, adam, global_norm, register, require

# Copying the last frame predicts hard 0/1 pixels; its cross-entropy needs the probabilities
# kept off 0 and 1. The baseline's BCE depends on this choice, its squared error does not.
COPY_LAST_EPS = 0.01


class ConvLSTMState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt: Any


def frames(images_bhwt: jax.Array) -> jax.Array:
    """Sequences stored as (B, H, W, T) images -> frames (B, T, H, W, 1)."""
    return jnp.moveaxis(images_bhwt, -1, 1)[..., None]


@register("convlstm")
class ConvLSTMTrainer(Trainer):
    """Trains the ConvLSTM encoder-forecaster on sequences of `model.context_frames + model.future_frames` frames."""

    def __init__(self, config, image_shape, num_classes=0):
        super().__init__(config, image_shape, num_classes)
        self._check(config)
        m = config.model
        self.context_frames, self.future_frames = m.context_frames, m.future_frames
        self.model = EncoderForecaster(m.hidden, m.layers, m.future_frames, m.kernel, m.patch, self.dtype)
        self.tx = adam(config.opt, config.opt.lr, config.train.num_steps)
        self._display: dict[int, np.ndarray] = {}

    def _check(self, config) -> None:
        m = config.model
        height, width, steps = self.image_shape
        for key in ("hidden", "layers", "kernel", "patch", "context_frames", "future_frames"):
            require(isinstance(m[key], int) and m[key] > 0, f"model.{key} must be a positive integer, got {m[key]!r}")
        require(
            steps == m.context_frames + m.future_frames,
            f"data.name={config.data.name!r} gives sequences of {steps} frames (time in the channel axis, (H, W, T)) but "
            f"model.context_frames + model.future_frames = {m.context_frames} + {m.future_frames}; make them add up "
            "(for moving_mnist set data.seq_len)",
        )
        require(
            height % m.patch == 0 and width % m.patch == 0,
            f"model.patch={m.patch} must divide the {height}x{width} frames (the paper uses 4 for 64x64)",
        )
        require(not config.data.binarize, "the ConvLSTM predicts grey frames in [0, 1]: set data.binarize=False")

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(value_range=(0.0, 1.0), binarize=False)

    def create_state(self, key: jax.Array) -> ConvLSTMState:
        height, width, _ = self.image_shape
        params = jax.jit(self.model.init)(key, jnp.zeros((1, self.context_frames, height, width, 1)))["params"]
        return ConvLSTMState(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params))

    def split(self, images_bhwt: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(context (B, Tc, H, W, 1), future (B, Tf, H, W, 1)) of a batch of stacked sequences."""
        seq = frames(images_bhwt)
        return seq[:, : self.context_frames], seq[:, self.context_frames :]

    def train_step(self, state: ConvLSTMState, batch: dict, key: jax.Array) -> tuple[ConvLSTMState, Metrics]:
        del key  # deterministic forecaster: no noise
        context, future = self.split(batch["image"])

        def objective(params):
            logits = self.model.apply({"params": params}, context)
            bce = frame_bce(logits, future)
            return jnp.mean(jnp.sum(bce, axis=1)), (bce, logits)

        (loss, (bce, logits)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        grads = parallel.pmean(grads)
        updates, opt = self.tx.update(grads, state.opt, state.params)
        new_state = ConvLSTMState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt=opt)
        metrics = {
            "loss": loss,
            "bce_per_frame": jnp.mean(bce),
            "mse_per_frame": jnp.mean(frame_squared_error(jax.nn.sigmoid(logits), future)),
            "grad_norm": global_norm(grads),
        }
        return new_state, parallel.pmean(metrics)

    def eval_step(self, state: ConvLSTMState, batch: dict, key: jax.Array) -> Metrics:
        """Per-frame BCE (nats) and squared error of the forecast and of copying the last context frame."""
        context, future = self.split(batch["image"])
        logits = self.model.apply({"params": state.params}, context)
        copy_last = jnp.broadcast_to(context[:, -1:], future.shape)
        metrics = {
            "bce_per_frame": jnp.mean(frame_bce(logits, future)),
            "mse_per_frame": jnp.mean(frame_squared_error(jax.nn.sigmoid(logits), future)),
            "copy_last_bce_per_frame": jnp.mean(frame_probs_bce(copy_last, future, COPY_LAST_EPS)),
            "copy_last_mse_per_frame": jnp.mean(frame_squared_error(copy_last, future)),
        }
        return parallel.pmean(metrics)

    def predict(self, state: ConvLSTMState, context: jax.Array) -> jax.Array:
        """Predicted future frames (B, Tf, H, W, 1): Bernoulli means in [0, 1] given context (B, Tc, H, W, 1)."""
        return jax.nn.sigmoid(self.model.apply({"params": state.params}, context))

    def display_sequences(self, count: int) -> np.ndarray:
        """`count` whole sequences (count, T, H, W, 1) in [0, 1] from the end of the held-out split (data.eval_split; cached)."""
        if count not in self._display:
            source = get_source(self.config.data, self.config.data.get("eval_split", "test"))
            require(
                tuple(source.image_shape) == tuple(self.image_shape),
                f"data.name={self.config.data.name!r} yields {source.image_shape}, the trainer was built for {self.image_shape}",
            )
            stacked = np.stack([source.records[len(source) - 1 - i]["image"] for i in range(count)])
            # numpy, not jnp: this runs while `sample` is being traced and must stay a constant.
            self._display[count] = np.moveaxis(stacked.astype(np.float32) / 255.0, -1, 1)[..., None]
        return self._display[count]

    def sample(self, state: ConvLSTMState, key: jax.Array, num: int) -> jax.Array:
        """`num` frames (N, H, W, 1): display sequences' context frames then forecasts, in order (key unused)."""
        del key  # the forecaster is deterministic; its Bernoulli means are shown
        per_sequence = self.context_frames + self.future_frames
        seqs = jnp.asarray(self.display_sequences(math.ceil(num / per_sequence)))
        context = seqs[:, : self.context_frames]
        tiles = jnp.concatenate([context, self.predict(state, context)], axis=1)
        return tiles.reshape((-1, *tiles.shape[2:]))[:num]


def save_prediction(path_prefix: str, context: np.ndarray, truth: np.ndarray, prediction: np.ndarray, ms_per_frame: int = 200) -> tuple[str, str]:
    """Write `<prefix>.gif` (ground truth left, forecast right, context shown on both) and `<prefix>.png`.

    The PNG strip has two rows: context + true future, and context + predicted
    future. Frames are (T, H, W, 1) floats in [0, 1]. Returns the two paths.
    """
    context, truth, prediction = (np.asarray(a, np.float32) for a in (context, truth, prediction))
    true_seq = np.concatenate([context, truth])
    pred_seq = np.concatenate([context, prediction])
    os.makedirs(os.path.dirname(os.path.abspath(path_prefix)), exist_ok=True)
    png_path, gif_path = f"{path_prefix}.png", f"{path_prefix}.gif"
    images.save_grid(png_path, np.concatenate([true_seq, pred_seq]), ncol=len(true_seq))
    _save_gif(gif_path, [images.make_grid(images.to_uint8(np.stack(pair)), ncol=2) for pair in zip(true_seq, pred_seq)], ms_per_frame)
    return gif_path, png_path


def _save_gif(path: str, frames_hwc: list[np.ndarray], ms_per_frame: int) -> None:
    from PIL import Image

    pictures = [Image.fromarray(f[..., 0] if f.shape[-1] == 1 else f) for f in frames_hwc]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=ms_per_frame, loop=0)
