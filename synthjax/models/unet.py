"""The DDPM U-Net (Ho et al. 2020, after PixelCNN++): residual blocks with GroupNorm, a sinusoidal time
embedding, self-attention at chosen resolutions, and optional class conditioning.

Per level: `num_res_blocks` residual blocks at width `ch * mult`, attention
after each where the resolution is in `attn_resolutions`, then a stride-2
3x3 convolution; the middle is res-attn-res; the up path mirrors it with one
extra block per level, each fed the matching down-path activation. With
ch 128, mult (1, 2, 2, 2), 2 blocks and attention at 16x16 this is the
paper's 35.7M-parameter CIFAR-10 network.

Convolutions are the plain Flax ones: every U-Net convolution is a 3x3 (or a
1x1 projection), none of the k4 s2 roles `models/formulations.py` decides.
Dropout draws its mask per example from `dropout_keys` (B,), so a run's
numbers do not depend on how many devices share the batch.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from synthjax.errors import UserError


def timestep_embedding(t: jax.Array, dim: int) -> jax.Array:
    """Sinusoidal embedding (B, dim) of integer timesteps t (B,), as in the Transformer and Ho et al."""
    half = dim // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=1)


def dropout_per_example(x: jax.Array, keys: jax.Array | None, rate: float, salt: int) -> jax.Array:
    """Inverted dropout with one key per example (folded with `salt`, the block's index); identity without keys."""
    if keys is None or rate == 0.0:
        return x
    keep = jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, salt), 1.0 - rate, x.shape[1:]))(keys)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _zeros_last_layer() -> Any:
    """Residual branches end in a zero-initialised layer (Ho et al. use scale 1e-10): each block starts as the identity."""
    return nn.initializers.zeros


class ResBlock(nn.Module):
    out_ch: int
    groups: int
    dropout: float
    salt: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc: jax.Array, temb: jax.Array, dropout_keys: jax.Array | None) -> jax.Array:
        h = nn.swish(nn.GroupNorm(self.groups, dtype=self.dtype)(x_bhwc))
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(h)
        h = h + nn.Dense(self.out_ch, dtype=self.dtype)(nn.swish(temb))[:, None, None, :]
        h = nn.swish(nn.GroupNorm(self.groups, dtype=self.dtype)(h))
        h = dropout_per_example(h, dropout_keys, self.dropout, self.salt)
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=_zeros_last_layer())(h)
        if x_bhwc.shape[-1] != self.out_ch:
            x_bhwc = nn.Dense(self.out_ch, dtype=self.dtype, name="shortcut")(x_bhwc)
        return x_bhwc + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with a residual connection."""

    groups: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc: jax.Array) -> jax.Array:
        b, hgt, wid, c = x_bhwc.shape
        h = nn.GroupNorm(self.groups, dtype=self.dtype)(x_bhwc).reshape(b, hgt * wid, c)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h) for n in ("q", "k", "v"))
        logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / math.sqrt(c)
        out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1).astype(self.dtype), v)
        out = nn.Dense(c, dtype=self.dtype, kernel_init=_zeros_last_layer(), name="proj_out")(out)
        return x_bhwc + out.reshape(b, hgt, wid, c)


class UNet(nn.Module):
    """Predicts the diffusion target (B, H, W, C) from x_t (B, H, W, C) in [-1, 1]-ish, t (B,) and labels y (B,)."""

    out_ch: int
    ch: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    groups: int = 32
    num_classes: int = 0  # > 0: class-conditional, with label `num_classes` meaning "no label" (guidance)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc, t, y=None, dropout_keys=None) -> jax.Array:
        temb = timestep_embedding(t, self.ch)
        temb = nn.Dense(4 * self.ch, dtype=self.dtype)(temb)
        temb = nn.Dense(4 * self.ch, dtype=self.dtype)(nn.swish(temb))
        if self.num_classes:
            temb = temb + nn.Embed(self.num_classes + 1, 4 * self.ch, dtype=self.dtype)(y)
        salts = iter(range(1000))
        block = lambda out: ResBlock(out, self.groups, self.dropout, next(salts), self.dtype)
        attn = lambda: AttnBlock(self.groups, self.dtype)

        h = nn.Conv(self.ch, (3, 3), dtype=self.dtype)(x_bhwc.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = block(self.ch * mult)(h, temb, dropout_keys)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
                skips.append(h)
            if level != len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype)(h)
                skips.append(h)

        h = block(h.shape[-1])(h, temb, dropout_keys)
        h = attn()(h)
        h = block(h.shape[-1])(h, temb, dropout_keys)

        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = block(self.ch * mult)(jnp.concatenate([h, skips.pop()], axis=-1), temb, dropout_keys)
                if h.shape[1] in self.attn_resolutions:
                    h = attn()(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest-neighbour 2x
                h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype)(h)

        h = nn.swish(nn.GroupNorm(self.groups, dtype=self.dtype)(h))
        out = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=_zeros_last_layer())(h)
        return out.astype(jnp.float32)


def check_unet_shape(model_cfg, image_shape: tuple[int, int, int]) -> None:
    """Refuse widths GroupNorm cannot split and image sizes the down/up path cannot halve and restore."""
    h, w, _ = image_shape
    halvings = len(model_cfg.ch_mult) - 1
    if h % (2**halvings) or w % (2**halvings):
        raise UserError(
            f"model.ch_mult={tuple(model_cfg.ch_mult)} halves the {h}x{w} images {halvings} times, which needs sides "
            f"divisible by {2**halvings}; use fewer levels (e.g. model.ch_mult=(1, 2, 2) for 28x28) or resize (data.image_size)"
        )
    for mult in model_cfg.ch_mult:
        if (model_cfg.ch * mult) % model_cfg.groups:
            raise UserError(
                f"model.groups={model_cfg.groups} does not divide the width {model_cfg.ch * mult} (model.ch={model_cfg.ch} "
                f"x mult {mult}); pick groups dividing every width, e.g. model.groups=8"
            )


def build_unet(model_cfg, image_shape: tuple[int, int, int], num_classes: int, dtype: Any) -> UNet:
    """The U-Net of `model` config for images of `image_shape`."""
    check_unet_shape(model_cfg, image_shape)
    return UNet(
        out_ch=image_shape[-1],
        ch=model_cfg.ch,
        ch_mult=tuple(model_cfg.ch_mult),
        num_res_blocks=model_cfg.num_res_blocks,
        attn_resolutions=tuple(model_cfg.attn_resolutions),
        dropout=model_cfg.dropout,
        groups=model_cfg.groups,
        num_classes=num_classes,
        dtype=dtype,
    )
