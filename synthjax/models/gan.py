"""GAN generators and discriminators (Flax linen).

Generators map noise `z_bn` (and, when class-conditional, integer labels
`y_b`) to images `x_bhwc` in [-1, 1]; discriminators map images (and labels)
to one logit per image. `ARCHITECTURES` names the (generator, discriminator)
pairs a config can ask for (`model.arch`); the SNGAN ResNets live in
`synthjax.models.resnet`.

Options shared by the architectures, read from the model config with
defaults so older configs keep working:
- `model.d_norm`: the discriminator's normalisation, 'batch', 'spectral'
  (Miyato et al. 2018, flax's `nn.SpectralNorm`, whose power-iteration vector
  `u` and `sigma` live in the 'batch_stats' collection and so in the trainer's
  `d_stats`) or 'none'; '' is the architecture's own default.
- `model.conditional`: class-conditional generation with conditional
  BatchNorm in the generator (per-class gain and bias, de Vries et al. 2017;
  the MLP generator, which has no BatchNorm, concatenates the one-hot label
  to z as in Mirza & Osindero 2014) and a projection discriminator (Miyato &
  Koyama 2018).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from synthjax.errors import UserError
from synthjax.models import formulations
from synthjax.models.formulations import ConvChoice
from synthjax.models.layers import NATIVE, DownConv2x, UpConv2x
from synthjax.parallel import AXIS  # BatchNorm averages its statistics over the data axis

Dtype = Any

D_NORMS = ("batch", "spectral", "none")


BN_MOMENTUM = 0.9  # Flax's convention: running = 0.9 * running + 0.1 * batch (PyTorch's momentum 0.1)


def batch_norm(train: bool, dtype: Dtype, name: str | None = None, affine: bool = True) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1, eps 1e-5), statistics synced over devices."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=1e-5,
        dtype=dtype,
        use_scale=affine,
        use_bias=affine,
        axis_name=AXIS if train else None,
        name=name,
    )


def two_passes_mergeable(stats: Any) -> bool:
    """Whether every statistic is a BatchNorm running average (see merge_two_pass_stats); spectral norm's are not."""
    paths = [tuple(getattr(k, "key", k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(stats)[0]]
    return all(len(p) >= 2 and p[-1] in ("mean", "var") and str(p[-2]).startswith("BatchNorm") for p in paths)


def merge_two_pass_stats(before: Any, stacked: Any) -> Any:
    """Statistics after two training passes in a row, from the same two passes run side by side under vmap.

    `stacked` holds each pass's updates, both made from `before`. BatchNorm's
    running averages update as s' = m s + (1 - m) u, so the second of two passes
    in a row gives b + m (a - s) for side-by-side results a, b. Only for
    statistics that `two_passes_mergeable` accepts.
    """
    return jax.tree.map(lambda s, pair: pair[1] + BN_MOMENTUM * (pair[0] - s), before, stacked)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm whose gain and bias are looked up per class (gain starts at 1, bias at 0)."""

    num_classes: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, y_b, train: bool):
        h = batch_norm(train, self.dtype, affine=False)(x)
        c = x.shape[-1]
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (c,)
        gain = nn.Embed(self.num_classes, c, embedding_init=nn.initializers.ones, name="gain")(y_b).reshape(shape)
        bias = nn.Embed(self.num_classes, c, embedding_init=nn.initializers.zeros, name="bias")(y_b).reshape(shape)
        return h * gain.astype(h.dtype) + bias.astype(h.dtype)


def g_norm(h, y_b, num_classes: int, train: bool, dtype: Dtype):
    """The generator's BatchNorm: conditional on the labels when the model is class-conditional."""
    if num_classes:
        return ConditionalBatchNorm(num_classes, dtype)(h, y_b, train)
    return batch_norm(train, dtype)(h)


def maybe_sn(layer: nn.Module, spectral: bool, train: bool) -> Callable:
    """`layer` as a callable, spectrally normalised when asked (one power iteration per call in training)."""
    if not spectral:
        return layer
    wrapped = nn.SpectralNorm(layer)
    return lambda *args: wrapped(*args, update_stats=train)


def projection_logit(h_bf, y_b, num_classes: int, spectral: bool, train: bool, dtype: Dtype, use_bias: bool = True):
    """Linear logit of features, plus <embed(y), h> for a projection discriminator when conditional."""
    logit = maybe_sn(nn.Dense(1, use_bias=use_bias, dtype=dtype), spectral, train)(h_bf)[:, 0]
    if num_classes:
        embed = maybe_sn(nn.Embed(num_classes, h_bf.shape[-1], name="projection"), spectral, train)(y_b)
        logit = logit + jnp.sum(embed.astype(h_bf.dtype) * h_bf, axis=-1)
    return logit.astype(jnp.float32)


class MLPGenerator(nn.Module):
    """Goodfellow et al.'s fully connected generator: z -> 256 -> 256 -> pixels, tanh output.

    Class-conditional (`num_classes` > 0) as in Mirza & Osindero's cGAN: the
    one-hot label is concatenated to the noise (there is no BatchNorm to condition).
    """

    image_shape: tuple[int, int, int]
    hidden: int = 256
    dtype: Dtype = jnp.float32
    num_classes: int = 0

    @nn.compact
    def __call__(self, z_bn, y_b=None, train: bool = True):
        if self.num_classes:
            z_bn = jnp.concatenate([z_bn, jax.nn.one_hot(y_b, self.num_classes, dtype=z_bn.dtype)], axis=-1)
        h = nn.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype)(z_bn), 0.2)
        h = nn.leaky_relu(nn.Dense(self.hidden, dtype=self.dtype)(h), 0.2)
        x = nn.Dense(math.prod(self.image_shape), dtype=self.dtype)(h)
        return jnp.tanh(x.astype(jnp.float32)).reshape((-1, *self.image_shape))


class MLPDiscriminator(nn.Module):
    """Fully connected discriminator: pixels -> 256 -> 256 -> one logit (optionally spectrally normalised, or a projection head)."""

    hidden: int = 256
    dtype: Dtype = jnp.float32
    spectral: bool = False
    num_classes: int = 0

    @nn.compact
    def __call__(self, x_bhwc, y_b=None, train: bool = True):
        h = x_bhwc.reshape((x_bhwc.shape[0], -1))
        h = nn.leaky_relu(maybe_sn(nn.Dense(self.hidden, dtype=self.dtype), self.spectral, train)(h), 0.2)
        h = nn.leaky_relu(maybe_sn(nn.Dense(self.hidden, dtype=self.dtype), self.spectral, train)(h), 0.2)
        return projection_logit(h, y_b, self.num_classes, self.spectral, train, self.dtype)


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
    num_classes: int = 0  # > 0: conditional BatchNorm on labels y_b
    up: ConvChoice = NATIVE  # formulation of the hidden up-convolutions (synthjax.models.formulations)
    out: ConvChoice = NATIVE  # ... and of the image layer

    @nn.compact
    def __call__(self, z_bn, y_b=None, train: bool = True):
        size, channels = self.image_shape[0], self.image_shape[2]
        start, stages = dcgan_layout(size)
        width0 = self.width * 2 ** (stages - 1)
        norm = lambda h: g_norm(h, y_b, self.num_classes, train, self.dtype)  # noqa: E731
        h = nn.Dense(start * start * width0, use_bias=False, dtype=self.dtype)(z_bn)
        if self.project_bn == "feature":
            h = nn.relu(norm(h)).reshape((-1, start, start, width0))
        else:
            h = nn.relu(norm(h.reshape((-1, start, start, width0))))
        for i in range(1, stages):
            h = UpConv2x(width0 // 2**i, use_bias=False, dtype=self.dtype, conv=self.up)(h)
            h = nn.relu(norm(h))
        x = UpConv2x(channels, use_bias=self.use_bias, dtype=self.dtype, conv=self.out)(h)
        return jnp.tanh(x.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: 2x down-convolutions (LeakyReLU 0.2) and a linear logit.

    `norm='batch'` puts BatchNorm after every convolution but the first (the
    paper); 'spectral' spectrally normalises every layer instead (SNGAN's
    "standard CNN" recipe); 'none' (a WGAN-GP critic) uses neither, with
    biases on every convolution.
    """

    width: int = 64
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    norm: str = "batch"
    num_classes: int = 0  # > 0: projection discriminator on labels y_b
    down: ConvChoice = NATIVE  # formulation of the hidden down-convolutions (synthjax.models.formulations)
    into: ConvChoice = NATIVE  # ... and of the image layer ('in' role)

    @nn.compact
    def __call__(self, x_bhwc, y_b=None, train: bool = True):
        _, stages = dcgan_layout(x_bhwc.shape[1])
        spectral = self.norm == "spectral"
        h = x_bhwc.astype(self.dtype)
        for i in range(stages):
            # Without BatchNorm a convolution needs its own bias; with it the bias is redundant.
            bias = self.use_bias and (i == 0 or self.norm != "batch")
            conv = DownConv2x(self.width * 2**i, use_bias=bias, dtype=self.dtype, conv=self.into if i == 0 else self.down)
            h = maybe_sn(conv, spectral, train)(h)
            if i > 0 and self.norm == "batch":
                h = batch_norm(train, self.dtype)(h)
            h = nn.leaky_relu(h, 0.2)
        h = h.reshape((h.shape[0], -1))
        return projection_logit(h, y_b, self.num_classes, spectral, train, self.dtype, self.use_bias)


def build_gan(model_cfg, image_shape: tuple[int, int, int], dtype: Dtype, num_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """The (generator, discriminator) pair named by `model.arch`; class-conditional when `num_classes` > 0."""
    arch = model_cfg.arch
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown GAN architecture {arch!r} (config key model.arch); valid: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[arch](model_cfg, tuple(image_shape), dtype, num_classes)


def d_norm(cfg, arch: str, valid: tuple[str, ...], default: str) -> str:
    """`model.d_norm` checked against what `arch` supports; '' (or a missing key) is the architecture's default."""
    norm = cfg.get("d_norm", "") or default
    if norm not in valid:
        raise UserError(f"model.d_norm={norm!r} is not available for model.arch={arch!r}; valid: {', '.join(valid)}")
    return norm


def _mlp(cfg, image_shape, dtype, num_classes):
    spectral = d_norm(cfg, "mlp", ("none", "spectral"), "none") == "spectral"
    return MLPGenerator(image_shape, cfg.hidden, dtype, num_classes), MLPDiscriminator(cfg.hidden, dtype, spectral, num_classes)


def _dcgan(cfg, image_shape, dtype, num_classes):
    dcgan_layout(image_shape[0])  # fail early with a clear message
    if image_shape[0] != image_shape[1]:
        raise UserError(f"DCGAN needs square images, got {image_shape[:2]}; set data.image_size")
    convs = formulations.plan_for(cfg, dtype)
    g = DCGANGenerator(image_shape, cfg.g_width, cfg.use_bias, cfg.project_bn, dtype, num_classes, convs["up"], convs["out"])
    norm = d_norm(cfg, "dcgan", D_NORMS, "batch")
    return g, DCGANDiscriminator(cfg.d_width, cfg.use_bias, dtype, norm, num_classes, convs["down"], convs["in"])


def _resnet(cfg, image_shape, dtype, num_classes):
    from synthjax.models.resnet import build_resnet  # resnet.py imports this module's helpers

    return build_resnet(cfg, image_shape, dtype, num_classes)


ARCHITECTURES = {"mlp": _mlp, "dcgan": _dcgan, "resnet": _resnet}
