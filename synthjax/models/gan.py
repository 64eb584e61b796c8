"""GAN generators and discriminators (Flax linen).

Generators map noise `z_bn` (and optionally labels) to images `x_bhwc` in
[-1, 1]; discriminators map images to one logit per image. `ARCHITECTURES`
names the (generator, discriminator) pairs a config can ask for.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from synthjax.errors import UserError
from synthjax.models.layers import DownConv2x, UpConv2x

Dtype = Any
from synthjax.parallel import AXIS  # BatchNorm averages its statistics over the data axis


def batch_norm(train: bool, dtype: Dtype, name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1, eps 1e-5), statistics synced over devices."""
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, axis_name=AXIS if train else None, name=name
    )


class MLPGenerator(nn.Module):
    """Goodfellow et al.'s fully connected generator: z -> 256 -> 256 -> pixels, tanh output."""

    image_shape: tuple[int, int, int]
    hidden: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z_bn, train: bool = True):
        h = nn.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype)(z_bn), 0.2)
        h = nn.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype)(h), 0.2)
        x = nn.Dense(math.prod(self.image_shape), dtype=self.dtype)(h)
        return jnp.tanh(x.astype(jnp.float32)).reshape((-1, *self.image_shape))


class MLPDiscriminator(nn.Module):
    """Fully connected discriminator: pixels -> 256 -> 256 -> one logit."""

    hidden: int = 256
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc, train: bool = True):
        h = x_bhwc.reshape((x_bhwc.shape[0], -1))
        h = nn.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype)(h), 0.2)
        h = nn.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype)(h), 0.2)
        return nn.Dense(1, dtype=self.dtype)(h)[:, 0].astype(jnp.float32)


def dcgan_layout(image_size: int) -> tuple[int, int]:
    """(start resolution, number of 2x stages) for a DCGAN of this size: 28 -> (7, 2), 64 -> (4, 4)."""
    for start in (4, 7):
        n = math.log2(image_size / start)
        if n >= 1 and n == int(n):
            return start, int(n)
    raise UserError(
        f"data.image_size={image_size} is not supported by the DCGAN architecture: "
        "it needs 4*2^n or 7*2^n pixels (e.g. 28, 32, 64); set --config.data.image_size accordingly"
    )


class DCGANGenerator(nn.Module):
    """DCGAN generator: project z to a small feature map, then 2x up-convolutions with BatchNorm+ReLU.

    With `width=128` on 28x28x1 this is the dcgan28 generator of the benchmark
    spec (7x7x256 -> 14x14x128 -> 28x28x1); with `width=64` on 64x64x3 the DCGAN
    paper's (4x4x512 -> ... -> 64x64x3). `project_bn='feature'` normalises the
    projection per feature before the reshape (dcgan28), 'channel' per channel
    after it (the paper's 1x1 -> 4x4 transposed convolution).
    """

    image_shape: tuple[int, int, int]
    width: int = 128
    use_bias: bool = True
    project_bn: str = "feature"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z_bn, train: bool = True):
        size, channels = self.image_shape[0], self.image_shape[2]
        start, stages = dcgan_layout(size)
        width0 = self.width * 2 ** (stages - 1)
        h = nn.Dense(start * start * width0, use_bias=False, dtype=self.dtype)(z_bn)
        if self.project_bn == "feature":
            h = nn.relu(batch_norm(train, self.dtype)(h)).reshape((-1, start, start, width0))
        else:
            h = nn.relu(batch_norm(train, self.dtype)(h.reshape((-1, start, start, width0))))
        for i in range(1, stages):
            h = UpConv2x(width0 // 2**i, use_bias=False, dtype=self.dtype)(h)
            h = nn.relu(batch_norm(train, self.dtype)(h))
        x = UpConv2x(channels, use_bias=self.use_bias, dtype=self.dtype)(h)
        return jnp.tanh(x.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: 2x down-convolutions (LeakyReLU 0.2, BatchNorm after the first) and a linear logit."""

    width: int = 64
    use_bias: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc, train: bool = True):
        _, stages = dcgan_layout(x_bhwc.shape[1])
        h = x_bhwc.astype(self.dtype)
        for i in range(stages):
            h = DownConv2x(self.width * 2**i, use_bias=self.use_bias and i == 0, dtype=self.dtype)(h)
            if i > 0:
                h = batch_norm(train, self.dtype)(h)
            h = nn.leaky_relu(h, 0.2)
        h = h.reshape((h.shape[0], -1))
        return nn.Dense(1, use_bias=self.use_bias, dtype=self.dtype)(h)[:, 0].astype(jnp.float32)


def build_gan(model_cfg, image_shape: tuple[int, int, int], dtype: Dtype) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair named by `model.arch`."""
    arch = model_cfg.arch
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown GAN architecture {arch!r} (config key model.arch); valid: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch](model_cfg, tuple(image_shape), dtype)


def _mlp(cfg, image_shape, dtype):
    return MLPGenerator(image_shape, cfg.hidden, dtype), MLPDiscriminator(cfg.hidden, dtype)


def _dcgan(cfg, image_shape, dtype):
    dcgan_layout(image_shape[0])  # fail early with a clear message
    if image_shape[0] != image_shape[1]:
        raise UserError(f"DCGAN needs square images, got {image_shape[:2]}; set data.image_size")
    g = DCGANGenerator(image_shape, cfg.g_width, cfg.use_bias, cfg.project_bn, dtype)
    return g, DCGANDiscriminator(cfg.d_width, cfg.use_bias, dtype)


ARCHITECTURES = {"mlp": _mlp, "dcgan": _dcgan}
