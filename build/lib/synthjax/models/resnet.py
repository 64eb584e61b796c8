"""The SNGAN ResNet generator and discriminator (Miyato et al. 2018, appendix B; CIFAR-10 layout).

Generator: z -> linear to a 4x4 (7x7 for 28-pixel data) map of `g_width`
channels -> residual up-blocks (BN, ReLU, nearest 2x upsample, 3x3 conv, BN,
ReLU, 3x3 conv; 1x1-conv shortcut) to full size -> BN, ReLU, 3x3 conv, tanh.
On 32x32x3 with g_width=256 that is the paper's 4 -> 8 -> 16 -> 32 network.

Discriminator: an "optimized" first block (conv, ReLU, conv, 2x2 average pool;
pooled 1x1-conv shortcut), one down-block, two plain blocks, ReLU, global sum
pooling and a linear logit, all spectrally normalised (`model.d_norm`
'spectral', the default; 'none' turns it off). With d_width=128 on 32x32 this
is the paper's 32 -> 16 -> 8 -> 8 -> 8 critic.

Class-conditional (`num_classes` > 0): conditional BatchNorm in every
generator block and a projection head in the discriminator (Miyato & Koyama
2018), as in the paper's ImageNet/CIFAR cGAN experiments.

Initialisation as in the authors' Chainer code: Glorot-uniform with gain
sqrt(2) in the residual branches, gain 1 elsewhere.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from synthjax.errors import UserError
from synthjax.models.gan import batch_norm, d_norm, dcgan_layout, g_norm, maybe_sn, projection_logit

Dtype = Any
RESIDUAL_INIT = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")  # Glorot uniform, gain sqrt(2)
SHORTCUT_INIT = nn.initializers.xavier_uniform()


def conv(features: int, size: int, dtype: Dtype, init=RESIDUAL_INIT) -> nn.Conv:
    """A stride-1 'same' convolution of kernel `size` (3 in the branches, 1 in shortcuts)."""
    return nn.Conv(features, (size, size), padding=size // 2, kernel_init=init, dtype=dtype)


def upsample2x(x_bhwc):
    """Nearest-neighbour 2x upsampling."""
    return jnp.repeat(jnp.repeat(x_bhwc, 2, axis=1), 2, axis=2)


def avg_pool2x(x_bhwc):
    return nn.avg_pool(x_bhwc, (2, 2), (2, 2))


class GeneratorBlock(nn.Module):
    """Residual up-block: (c)BN, ReLU, upsample, conv3x3, (c)BN, ReLU, conv3x3; shortcut upsample + conv1x1."""

    features: int
    num_classes: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, y_b, train: bool):
        h = nn.relu(g_norm(x, y_b, self.num_classes, train, self.dtype))
        h = conv(self.features, 3, self.dtype)(upsample2x(h))
        h = nn.relu(g_norm(h, y_b, self.num_classes, train, self.dtype))
        h = conv(self.features, 3, self.dtype)(h)
        return h + conv(self.features, 1, self.dtype, SHORTCUT_INIT)(upsample2x(x))


class ResNetGenerator(nn.Module):
    image_shape: tuple[int, int, int]
    width: int = 256
    num_classes: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z_bn, y_b=None, train: bool = True):
        start, stages = dcgan_layout(self.image_shape[0])
        h = nn.Dense(start * start * self.width, kernel_init=SHORTCUT_INIT, dtype=self.dtype)(z_bn)
        h = h.reshape((-1, start, start, self.width))
        for _ in range(stages):
            h = GeneratorBlock(self.width, self.num_classes, self.dtype)(h, y_b, train)
        h = nn.relu(batch_norm(train, self.dtype)(h))
        x = conv(self.image_shape[2], 3, self.dtype, SHORTCUT_INIT)(h)
        return jnp.tanh(x.astype(jnp.float32))


class DiscriminatorBlock(nn.Module):
    """Residual block: [ReLU,] conv3x3, ReLU, conv3x3[, avg-pool]; learnt 1x1 shortcut when shape changes.

    `first=True` is SNGAN's "optimized" input block: no ReLU on the raw image,
    and the shortcut pools before its 1x1 convolution.
    """

    features: int
    down: bool
    first: bool = False
    spectral: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool):
        sn = lambda layer: maybe_sn(layer, self.spectral, train)  # noqa: E731
        h = x if self.first else nn.relu(x)
        h = sn(conv(self.features, 3, self.dtype))(h)
        h = sn(conv(self.features, 3, self.dtype))(nn.relu(h))
        if self.down:
            h = avg_pool2x(h)
        shortcut = x
        if self.first:
            shortcut = sn(conv(self.features, 1, self.dtype, SHORTCUT_INIT))(avg_pool2x(x))
        elif self.down or x.shape[-1] != self.features:
            shortcut = sn(conv(self.features, 1, self.dtype, SHORTCUT_INIT))(x)
            shortcut = avg_pool2x(shortcut) if self.down else shortcut
        return h + shortcut


class ResNetDiscriminator(nn.Module):
    width: int = 128
    spectral: bool = True
    num_classes: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_bhwc, y_b=None, train: bool = True):
        h = x_bhwc.astype(self.dtype)
        for i, down in enumerate((True, True, False, False)):
            h = DiscriminatorBlock(self.width, down, first=i == 0, spectral=self.spectral, dtype=self.dtype)(h, train)
        h = jnp.sum(nn.relu(h), axis=(1, 2))  # global sum pooling
        return projection_logit(h, y_b, self.num_classes, self.spectral, train, self.dtype)


def build_resnet(cfg, image_shape: tuple[int, int, int], dtype: Dtype, num_classes: int = 0):
    """(generator, discriminator) for `model.arch='resnet'`, widths `model.g_width` / `model.d_width`."""
    dcgan_layout(image_shape[0])  # 4*2^n or 7*2^n pixels, with a clear message otherwise
    if image_shape[0] != image_shape[1] or image_shape[0] % 4:
        raise UserError(f"the SNGAN ResNet needs square images with a side divisible by 4, got {image_shape[:2]}; set data.image_size")
    spectral = d_norm(cfg, "resnet", ("spectral", "none"), "spectral") == "spectral"
    g = ResNetGenerator(image_shape, cfg.g_width, num_classes, dtype)
    return g, ResNetDiscriminator(cfg.d_width, spectral, num_classes, dtype)
