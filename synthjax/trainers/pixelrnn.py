"""PixelRNN trainer: exact maximum likelihood of a Row LSTM PixelRNN, and pixel-by-pixel sampling.

The loss is the exact negative log-likelihood, reported per image in nats
and in bits per dimension. Sampling runs inside one compiled program: a
`fori_loop` over rows around a `fori_loop` over the row's pixels and colour
channels; each pixel re-runs only the current row from the Row LSTM states
carried down from the row above (exact, since nothing in the network looks
at pixels after the one being predicted).
"""
from __future__ import annotations

import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from synthjax import parallel
from synthjax.data.pipeline import Preprocess
from synthjax.models.rnn import PixelRNN, zero_row_carries
from synthjax.objectives.likelihood import bits_per_dim, get_pixel_likelihood
from synthjax.trainers.base import Metrics, Trainer, adam, global_norm, register, require

ARCHS = ("row_lstm",)


class PixelRNNState(flax.struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt: Any


@register("pixelrnn")
class PixelRNNTrainer(Trainer):
    """Trains `model.arch='row_lstm'` with `objective.likelihood` 'bernoulli' (binarised) or 'categorical' (8-bit)."""

    log_likelihood_kind = "exact"

    def __init__(self, config, image_shape, num_classes=0):
        super().__init__(config, image_shape, num_classes)
        self.likelihood = get_pixel_likelihood(config.objective.likelihood)
        self._check(config)
        m = config.model
        self.model = PixelRNN(
            hidden=m.hidden,
            layers=m.layers,
            colors=image_shape[2],
            num_logits=self.likelihood.num_logits,
            head_features=m.head_features,
            kernel=m.kernel,
            input_kernel=m.input_kernel,
            dtype=self.dtype,
        )
        self.tx = adam(config.opt, config.opt.lr, config.train.num_steps)
        self.num_dims = math.prod(image_shape)

    def _check(self, config) -> None:
        m, (_, _, channels) = config.model, self.image_shape
        name = config.objective.likelihood
        require(m.arch in ARCHS, f"model.arch={m.arch!r} is not a PixelRNN architecture; valid: {', '.join(ARCHS)}")
        if self.likelihood.binary:
            require(config.data.binarize, f"objective.likelihood={name!r} models binary pixels: set data.binarize=True")
        else:
            require(
                not config.data.binarize,
                f"objective.likelihood={name!r} is a 256-way softmax over 8-bit values, but data.binarize=True leaves "
                "two values: use objective.likelihood='bernoulli' or set data.binarize=False",
            )
        require(channels in (1, 3), f"PixelRNN models grey (1) or RGB (3) images; data.name={config.data.name!r} has {channels} channels")
        for key in ("hidden", "head_features"):
            value = m[key]
            require(
                isinstance(value, int) and value > 0 and value % channels == 0,
                f"model.{key}={value!r} must be a positive multiple of the {channels} colour channels (masks split features by colour)",
            )
        require(m.layers >= 1, f"model.layers must be >= 1, got {m.layers}")
        require(m.kernel >= 1 and m.kernel % 2 == 1, f"model.kernel must be odd and positive, got {m.kernel}")
        require(m.input_kernel >= 3 and m.input_kernel % 2 == 1, f"model.input_kernel must be odd and >= 3, got {m.input_kernel}")

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess(value_range=(0.0, 1.0), binarize=self.config.data.binarize)

    def create_state(self, key: jax.Array) -> PixelRNNState:
        params = jax.jit(self.model.init)(key, jnp.zeros((1, *self.image_shape)))["params"]
        return PixelRNNState(step=jnp.zeros((), jnp.int32), params=params, opt=self.tx.init(params))

    def nll(self, params: Any, x: jax.Array) -> jax.Array:
        """Exact -log p(x) in nats per image, shape (B,)."""
        return self.likelihood.nll(self.model.apply({"params": params}, x), x)

    def log_likelihood(self, state: PixelRNNState, x: jax.Array, key: jax.Array, num_samples: int) -> jax.Array:
        """Exact log p(x) in nats per image, shape (B,); `key` and `num_samples` are unused."""
        del key, num_samples
        return -self.nll(state.params, x)

    def train_step(self, state: PixelRNNState, batch: dict, key: jax.Array) -> tuple[PixelRNNState, Metrics]:
        del key  # the likelihood is exact: no noise in the step
        x = batch["image"]
        loss, grads = jax.value_and_grad(lambda p: jnp.mean(self.nll(p, x)))(state.params)
        grads = parallel.pmean(grads)
        updates, opt = self.tx.update(grads, state.opt, state.params)
        new_state = PixelRNNState(step=state.step + 1, params=optax.apply_updates(state.params, updates), opt=opt)
        metrics = {"loss": loss, "nll": loss, "bits_per_dim": bits_per_dim(loss, self.num_dims), "grad_norm": global_norm(grads)}
        return new_state, parallel.pmean(metrics)

    def eval_step(self, state: PixelRNNState, batch: dict, key: jax.Array) -> Metrics:
        """Exact NLL of held-out images: nats per image and bits per dimension."""
        nll = jnp.mean(self.nll(state.params, batch["image"]))
        return parallel.pmean({"nll": nll, "bits_per_dim": bits_per_dim(nll, self.num_dims)})

    def sample(self, state: PixelRNNState, key: jax.Array, num: int) -> jax.Array:
        """Ancestral samples in raster order (pixel p drawn with `fold_in(key, p)`): 0/1 or k/255 values."""
        height, width, colors = self.image_shape
        m = self.config.model

        def apply_row(canvas, row, carries):
            return self.model.apply({"params": state.params}, canvas, row, carries, method=PixelRNN.row_logits)

        def sample_row(row, loop):
            canvas, carries = loop

            def sample_pixel(index, canvas):
                col, color = index // colors, index % colors
                logits, _ = apply_row(canvas, row, carries)
                value = self.likelihood.sample(jax.random.fold_in(key, row * width * colors + index), logits[:, col, color])
                return canvas.at[:, row, col, color].set(value)

            canvas = jax.lax.fori_loop(0, width * colors, sample_pixel, canvas)
            _, carries = apply_row(canvas, row, carries)  # the finished row's states, for the row below
            return canvas, carries

        canvas = jnp.zeros((num, *self.image_shape), jnp.float32)
        carries = zero_row_carries(m.layers, num, width, m.hidden)
        canvas, _ = jax.lax.fori_loop(0, height, sample_row, (canvas, carries))
        return canvas
