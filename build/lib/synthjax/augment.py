"""DiffAugment (Zhao et al. 2020): differentiable augmentations applied to every discriminator input.

`diff_augment(x, key, policy)` is a pure function of NHWC images in [-1, 1];
the GAN trainer applies it to real and generated batches alike, in the
discriminator and the generator updates, so the generator is trained through
the augmentation (gradients flow through every op). `policy` is a tuple of
names parsed from the config string `objective.diffaugment`
('color,translation,cutout', or '' for none). The ops follow the authors'
PyTorch code (DiffAugment_pytorch.py): colour = brightness, saturation and
contrast; translation by up to 1/8 of the image with zero fill; cutout of a
square half the image size. Randomness is per image; `uniform(key, shape)`
draws it, so the trainer can pass a device-count-invariant sampler.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from synthjax.errors import UserError

Sampler = Callable[[jax.Array, tuple[int, ...]], jax.Array]


def brightness(x, key, uniform: Sampler = jax.random.uniform):
    """Add one offset in [-0.5, 0.5) per image."""
    return x + (uniform(key, (x.shape[0], 1, 1, 1)) - 0.5)


def saturation(x, key, uniform: Sampler = jax.random.uniform):
    """Scale each pixel's deviation from its channel mean by a factor in [0, 2) (a no-op on grey images)."""
    mean = jnp.mean(x, axis=3, keepdims=True)
    return (x - mean) * (uniform(key, (x.shape[0], 1, 1, 1)) * 2.0) + mean


def contrast(x, key, uniform: Sampler = jax.random.uniform):
    """Scale the deviation from the image mean by a factor in [0.5, 1.5)."""
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * (uniform(key, (x.shape[0], 1, 1, 1)) + 0.5) + mean


def _random_ints(key, n: int, low: int, high: int, uniform: Sampler) -> jax.Array:
    """n integers uniform in [low, high), drawn through `uniform` (device-count invariant when it is)."""
    u = uniform(key, (n,))
    return jnp.minimum(low + jnp.floor(u * (high - low)).astype(jnp.int32), high - 1)


def translation(x, key, uniform: Sampler = jax.random.uniform, ratio: float = 0.125):
    """Shift each image by up to ratio * size pixels in each direction, filling with zeros.

    Written as two one-hot matrix products (rows, then columns) rather than a
    gather: exact (each output pixel is one input pixel times 1, or 0 where
    the shift leaves the image), and both it and its gradient are small GEMMs,
    which compile and run faster on CPU than a batched gather and its scatter.
    """
    b, h, w, _ = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    kh, kw = jax.random.split(key)
    dy, dx = _random_ints(kh, b, -sh, sh + 1, uniform), _random_ints(kw, b, -sw, sw + 1, uniform)
    # one_hot of an index outside [0, size) is all zeros: the zero fill comes for free.
    rows = jax.nn.one_hot(jnp.arange(h)[None, :] + dy[:, None], h, dtype=x.dtype)  # (B, H_out, H_in)
    cols = jax.nn.one_hot(jnp.arange(w)[None, :] + dx[:, None], w, dtype=x.dtype)  # (B, W_out, W_in)
    return jnp.einsum("bip,bpqc,bjq->bijc", rows, x, cols)


def cutout(x, key, uniform: Sampler = jax.random.uniform, ratio: float = 0.5):
    """Zero one square of ratio * size per image, centred anywhere (it may stick out of the image)."""
    b, h, w, _ = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    kh, kw = jax.random.split(key)
    top = _random_ints(kh, b, 0, h + (1 - ch % 2), uniform) - ch // 2
    left = _random_ints(kw, b, 0, w + (1 - cw % 2), uniform) - cw // 2
    rows, cols = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + ch)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + cw)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[..., None].astype(x.dtype)


AUGMENTATIONS: dict[str, tuple[Callable, ...]] = {
    "color": (brightness, saturation, contrast),
    "translation": (translation,),
    "cutout": (cutout,),
}


def parse_policy(policy: str, key: str = "objective.diffaugment") -> tuple[str, ...]:
    """'color,translation' -> ('color', 'translation'); '' -> (); unknown names list the valid ones."""
    names = tuple(p.strip() for p in (policy or "").split(",") if p.strip())
    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad:
        raise UserError(
            f"unknown DiffAugment op {bad[0]!r} in {key}={policy!r}; valid: {', '.join(sorted(AUGMENTATIONS))} "
            "(comma-separated, e.g. 'color,translation,cutout', or '' for none)"
        )
    return names


def diff_augment(x_bhwc: jax.Array, key: jax.Array, policy: tuple[str, ...], uniform: Sampler = jax.random.uniform) -> jax.Array:
    """Apply the ops of `policy` in order, each with its own key; the identity for an empty policy."""
    ops = [op for name in policy for op in AUGMENTATIONS[name]]
    for i, op in enumerate(ops):
        x_bhwc = op(x_bhwc, jax.random.fold_in(key, i), uniform)
    return x_bhwc
