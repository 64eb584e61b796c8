"""VAE encoders and decoders (Flax linen).

The encoder maps images to the mean and log-variance of a diagonal Gaussian
q(z|x); the decoder maps latents to the parameters of p(x|z), `num_params`
numbers per pixel and channel (1 for Bernoulli logits or a Gaussian mean, 2 for
a discretised logistic). The noise `eps` is an argument, so the model is a pure
function and the trainer decides how it is drawn.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from synthjax.errors import UserError
from synthjax.models import formulations
from synthjax.models.formulations import ConvChoice
from synthjax.models.layers import NATIVE, DownConv2x, UpConv2x

Dtype = Any


class MLPEncoder(nn.Module):
    """Kingma & Welling's encoder: pixels -> hidden (ReLU) -> (mu, logvar)."""

    latent: int
    hidden: int = 400
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc):
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(x_bhwc.reshape((x_bhwc.shape[0], -1))))
        return _gaussian_head(h, self.latent, self.dtype)


class MLPDecoder(nn.Module):
    """Kingma & Welling's decoder: z -> hidden (ReLU) -> distribution parameters per pixel."""

    image_shape: tuple[int, int, int]
    num_params: int
    hidden: int = 400
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z_bn):
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(z_bn))
        out = nn.Dense(math.prod(self.image_shape) * self.num_params, dtype=self.dtype)(h)
        return out.astype(jnp.float32).reshape((-1, *self.image_shape, self.num_params))


def conv_stages(image_size: int) -> int:
    """Number of 2x stages from the image down to a 7x7 or 4x4 feature map."""
    for start in (7, 4):
        n = math.log2(image_size / start)
        if n >= 1 and n == int(n):
            return int(n)
    raise UserError(f"data.image_size={image_size} is not supported by the conv VAE: it needs 4*2^n or 7*2^n pixels (28, 32, 64)")


class ConvEncoder(nn.Module):
    """Convolutional encoder: 2x down-convolutions (ReLU), then a dense layer and the Gaussian head."""

    latent: int
    width: int = 32
    hidden: int = 256
    dtype: Dtype = jnp.float32
    convs: tuple[ConvChoice, ConvChoice] = (NATIVE, NATIVE)  # formulations of the image layer and the others

    @nn.compact
    def __call__(self, x_bhwc):
        h = x_bhwc.astype(self.dtype)
        for i in range(conv_stages(x_bhwc.shape[1])):
            conv = self.convs[0] if i == 0 else self.convs[1]
            h = nn.relu(DownConv2x(self.width * 2**i, dtype=self.dtype, conv=conv)(h))
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(h.reshape((h.shape[0], -1))))
        return _gaussian_head(h, self.latent, self.dtype)


class ConvDecoder(nn.Module):
    """Convolutional decoder: dense to a small feature map, then 2x up-convolutions (ReLU)."""

    image_shape: tuple[int, int, int]
    num_params: int
    width: int = 32
    hidden: int = 256
    dtype: Dtype = jnp.float32
    convs: tuple[ConvChoice, ConvChoice] = (NATIVE, NATIVE)  # formulations of the hidden layers and the image layer

    @nn.compact
    def __call__(self, z_bn):
        size, channels = self.image_shape[0], self.image_shape[2]
        stages = conv_stages(size)
        start, width0 = size // 2**stages, self.width * 2 ** (stages - 1)
        h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype)(z_bn))
        h = nn.relu(nn.Dense(start * start * width0, dtype=self.dtype)(h)).reshape((-1, start, start, width0))
        for i in range(1, stages):
            h = nn.relu(UpConv2x(width0 // 2**i, dtype=self.dtype, conv=self.convs[0])(h))
        out = UpConv2x(channels * self.num_params, dtype=self.dtype, conv=self.convs[1])(h).astype(jnp.float32)
        return out.reshape((*out.shape[:3], channels, self.num_params))


def _gaussian_head(h, latent: int, dtype: Dtype):
    mu = nn.Dense(latent, dtype=dtype, name="mu")(h).astype(jnp.float32)
    logvar = nn.Dense(latent, dtype=dtype, name="logvar")(h).astype(jnp.float32)
    return mu, logvar


class VAE(nn.Module):
    """Encoder + reparameterised sample z = mu + sigma * eps + decoder."""

    encoder: nn.Module
    decoder: nn.Module

    def __call__(self, x_bhwc, eps_bn):
        mu, logvar = self.encoder(x_bhwc)
        z = mu + jnp.exp(0.5 * logvar) * eps_bn
        return self.decoder(z), mu, logvar

    def encode(self, x_bhwc):
        return self.encoder(x_bhwc)

    def decode(self, z_bn):
        return self.decoder(z_bn)


def build_vae(model_cfg, image_shape: tuple[int, int, int], num_params: int, dtype: Dtype) -> VAE:
    """The VAE named by `model.arch`, one of `ARCHITECTURES`."""
    arch = model_cfg.arch
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown VAE architecture {arch!r} (config key model.arch); valid: {', '.join(sorted(ARCHITECTURES))}")
    return VAE(*ARCHITECTURES[arch](model_cfg, tuple(image_shape), num_params, dtype))


def _mlp(cfg, image_shape, num_params, dtype):
    return MLPEncoder(cfg.latent, cfg.hidden, dtype), MLPDecoder(image_shape, num_params, cfg.hidden, dtype)


def _conv(cfg, image_shape, num_params, dtype):
    conv_stages(image_shape[0])  # fail early with a clear message
    return (ConvEncoder(cfg.latent, cfg.width, cfg.hidden, dtype),
            ConvDecoder(image_shape, num_params, cfg.width, cfg.hidden, dtype))


# model.arch -> (encoder, decoder) builder; a new architecture is one function and one entry here.
ARCHITECTURES = {"mlp": _mlp, "conv": _conv}
