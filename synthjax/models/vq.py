"""VQ-VAE (van den Oord et al. 2017): convolutional encoder, vector quantiser, convolutional decoder.

The encoder maps an image to a grid of vectors z_e (a quarter of the image
side, e.g. 7x7 for 28x28), each replaced by its nearest codebook entry z_q;
the decoder sees z_e + stop_gradient(z_q - z_e) (the straight-through
estimator: z_q forward, the identity backward) and outputs `num_params`
distribution parameters per pixel and channel, as the VAE decoders do.

Two codebook updates:
- `ema=False`: the codebook is a parameter, trained by the codebook loss
  ||sg[z_e] - z_q||^2 (objectives/vae.py).
- `ema=True`: the codebook is an exponential moving average of the encodings
  assigned to each code (appendix A.1 of the paper), kept in the 'vq'
  collection and updated by `ema_codebook_update`, a pure function. Cluster
  sizes start at 1 and the running sums at the initial codebook, so an unused
  code stays where it was initialised instead of being divided by ~0.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from synthjax.errors import UserError
from synthjax.models import formulations
from synthjax.models.formulations import ConvChoice
from synthjax.models.layers import NATIVE, DownConv2x, UpConv2x

Dtype = Any
CODEBOOK_INIT = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
STAGES = 2  # 2x down-sampling stages: the latent grid is a quarter of the image side


def nearest_codes(z_flat, codebook):
    """Index of the nearest codebook row (squared Euclidean distance) for each row of z_flat."""
    distances = (
        jnp.sum(z_flat**2, axis=1, keepdims=True) - 2.0 * z_flat @ codebook.T + jnp.sum(codebook**2, axis=1)[None, :]
    )
    return jnp.argmin(distances, axis=1)


class VectorQuantizer(nn.Module):
    """Nearest-neighbour quantisation of the last axis against `num_codes` codes of size `code_dim`."""

    num_codes: int
    code_dim: int
    ema: bool = False

    def setup(self):
        shape = (self.num_codes, self.code_dim)
        if self.ema:
            init = CODEBOOK_INIT(self.make_rng("params"), shape) if self.is_initializing() else None
            self.codebook = self.variable("vq", "codebook", lambda: init).value
            self.variable("vq", "cluster_size", lambda: jnp.ones((self.num_codes,)))
            self.variable("vq", "embed_sum", lambda: init)
        else:
            self.codebook = self.param("codebook", CODEBOOK_INIT, shape)

    def __call__(self, z_e):
        """(z_q, codes): the quantised vectors (same shape as z_e) and their integer codes (z_e.shape[:-1])."""
        codes = nearest_codes(z_e.reshape(-1, self.code_dim), self.codebook).reshape(z_e.shape[:-1])
        return self.lookup(codes), codes

    def lookup(self, codes):
        return jnp.take(self.codebook, codes, axis=0)


def ema_codebook_update(vq: dict, z_flat, codes_flat, decay, rate, total: Callable = lambda v: v, eps: float = 1e-5) -> dict:
    """New 'vq' collection (of a `VQVAE`) after one EMA step on the encodings z_flat (N, D) assigned to codes_flat (N,).

    cluster_size <- decay * cluster_size + rate * counts, embed_sum likewise
    with the per-code sums of encodings; codebook = embed_sum / cluster_size
    with Laplace smoothing (eps) so no code divides by zero. `rate` is
    1 - decay (passed separately so it can be computed in float64); `total`
    sums over devices (a psum), which keeps the update device-count invariant.
    """
    old = vq["quantizer"]  # the VQVAE's submodule scope
    num_codes = old["cluster_size"].shape[0]
    one_hot = jax.nn.one_hot(codes_flat, num_codes, dtype=z_flat.dtype)
    counts = total(jnp.sum(one_hot, axis=0))
    sums = total(one_hot.T @ jax.lax.stop_gradient(z_flat))
    cluster_size = decay * old["cluster_size"] + rate * counts
    embed_sum = decay * old["embed_sum"] + rate * sums
    n = jnp.sum(cluster_size)
    smoothed = (cluster_size + eps) / (n + num_codes * eps) * n
    return {"quantizer": {"codebook": embed_sum / smoothed[:, None], "cluster_size": cluster_size, "embed_sum": embed_sum}}


class VQEncoder(nn.Module):
    width: int
    code_dim: int
    dtype: Dtype = jnp.float32
    convs: tuple[ConvChoice, ConvChoice] = (NATIVE, NATIVE)  # formulations of the image layer and the others

    @nn.compact
    def __call__(self, x_bhwc):
        h = x_bhwc.astype(self.dtype)
        for i in range(STAGES):
            conv = self.convs[0] if i == 0 else self.convs[1]
            h = nn.relu(DownConv2x(self.width * 2**i, dtype=self.dtype, conv=conv)(h))
        h = nn.relu(nn.Conv(self.width * 2 ** (STAGES - 1), (3, 3), padding=1, dtype=self.dtype)(h))
        return nn.Conv(self.code_dim, (1, 1), dtype=self.dtype)(h).astype(jnp.float32)


class VQDecoder(nn.Module):
    image_shape: tuple[int, int, int]
    num_params: int
    width: int
    dtype: Dtype = jnp.float32
    convs: tuple[ConvChoice, ConvChoice] = (NATIVE, NATIVE)  # formulations of the hidden layers and the image layer

    @nn.compact
    def __call__(self, z_bhwd):
        channels = self.image_shape[2]
        h = nn.relu(nn.Conv(self.width * 2 ** (STAGES - 1), (3, 3), padding=1, dtype=self.dtype)(z_bhwd.astype(self.dtype)))
        for i in range(STAGES - 1, 0, -1):
            h = nn.relu(UpConv2x(self.width * 2 ** (i - 1), dtype=self.dtype, conv=self.convs[0])(h))
        out = UpConv2x(channels * self.num_params, dtype=self.dtype, conv=self.convs[1])(h).astype(jnp.float32)
        return out.reshape((*out.shape[:3], channels, self.num_params))


class VQVAE(nn.Module):
    """Encoder, quantiser (straight-through) and decoder; `__call__` returns (decoder output, z_e, z_q, codes)."""

    image_shape: tuple[int, int, int]
    num_params: int
    width: int = 32
    num_codes: int = 64
    code_dim: int = 16
    ema: bool = False
    dtype: Dtype = jnp.float32
    encoder_convs: tuple[ConvChoice, ConvChoice] = (NATIVE, NATIVE)  # synthjax.models.formulations.encoder_convs
    decoder_convs: tuple[ConvChoice, ConvChoice] = (NATIVE, NATIVE)  # ... decoder_convs

    def setup(self):
        self.encoder = VQEncoder(self.width, self.code_dim, self.dtype, self.encoder_convs)
        self.quantizer = VectorQuantizer(self.num_codes, self.code_dim, self.ema)
        self.decoder = VQDecoder(self.image_shape, self.num_params, self.width, self.dtype, self.decoder_convs)

    def __call__(self, x_bhwc):
        z_e = self.encoder(x_bhwc)
        z_q, codes = self.quantizer(z_e)
        z_st = z_e + jax.lax.stop_gradient(z_q - z_e)  # straight-through: decoder gradients reach the encoder
        return self.decoder(z_st), z_e, z_q, codes

    def decode_codes(self, codes):
        return self.decoder(self.quantizer.lookup(codes))


def latent_grid(image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """The code grid of an image: a quarter of each side."""
    return image_shape[0] // 2**STAGES, image_shape[1] // 2**STAGES


def build_vqvae(model_cfg, image_shape: tuple[int, int, int], num_params: int, dtype: Dtype) -> VQVAE:
    """The VQ-VAE of `model.arch='conv'` with `model.num_codes` codes of size `model.code_dim`."""
    if model_cfg.arch != "conv":
        raise UserError(f"unknown VQ-VAE architecture {model_cfg.arch!r} (config key model.arch); valid: conv")
    if image_shape[0] % 2**STAGES or image_shape[1] % 2**STAGES:
        raise UserError(f"the VQ-VAE halves the image twice: data.image_size must be divisible by 4, got {image_shape[:2]}")
    for key in ("num_codes", "code_dim", "width"):
        if model_cfg[key] <= 0:
            raise UserError(f"model.{key} must be positive, got {model_cfg[key]}")
    convs = formulations.plan_for(model_cfg, dtype)
    return VQVAE(tuple(image_shape), num_params, model_cfg.width, model_cfg.num_codes, model_cfg.code_dim, model_cfg.ema, dtype,
                 formulations.encoder_convs(convs), formulations.decoder_convs(convs))
