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
from synthjax.kernels import onednn
from synthjax.models.layers import DOWN_IMPLS, UP_IMPLS, DownConv2x, UpConv2x, resolve_batch_chunk

Dtype = Any
from synthjax.parallel import AXIS  # BatchNorm averages its statistics over the data axis

D_NORMS = ("batch", "spectral", "none")
# `model.conv_impl`: formulations of the DCGAN up/down convolutions (models/layers.py) per layer
# role: 'up' (generator hidden layers), 'out' (the generator's image layer), 'down' (discriminator
# hidden layers) and 'in' (the discriminator's image layer). The image layers have 1-3 channels on
# one side, which GPU convolution libraries handle far worse than wide layers, so they get their own
# choice. A preset name or 'role=impl,...' (roles not named stay 'auto'), e.g.
# 'out=im2col3x3,in=s2d_conv'. 'auto' is the fastest measured for one run on each backend; 'matmul'
# uses only im2col + GEMMs, which stay GEMMs under jax.vmap, where XLA:CPU turns a convolution with
# per-member kernels into a slow grouped convolution (see benchmarks/vmap_seeds.py). All compute the
# same function.
CONV_ROLES = ("up", "out", "down", "in")
CONV_IMPLS = {
    "auto": {},
    "native": dict.fromkeys(CONV_ROLES, "native"),
    "matmul": {"up": "im2col3x3", "out": "im2col3x3", "down": "s2d_matmul", "in": "s2d_matmul"},
}


# Where 'auto' for a role differs from the layer's own 'auto' (models/layers.py), by backend. On an
# H100 the discriminator's image layer (1 or 3 input channels) ran forward + backward 1.6-2.2x
# faster as space-to-depth + one GEMM than as cuDNN's strided convolution (benchmarks/gpu_suite.py).
ROLE_AUTO = {"gpu": {"in": "s2d_matmul"}}


def parse_conv_impl(spec: str, backend: str | None = None) -> dict[str, str]:
    """`model.conv_impl` -> {role: impl} for every role in CONV_ROLES (see the comment above)."""
    spec = spec or "auto"
    if spec in CONV_IMPLS:
        chosen = CONV_IMPLS[spec]
    else:
        pairs = [item.split("=", 1) for item in spec.split(",")]
        if any(len(p) != 2 or p[0].strip() not in CONV_ROLES for p in pairs):
            raise UserError(f"model.conv_impl={spec!r}: expected a preset ({', '.join(CONV_IMPLS)}) or "
                            f"'role=impl,...' with roles {', '.join(CONV_ROLES)}, e.g. 'out=im2col3x3,in=s2d_conv'")
        chosen = {role.strip(): impl.strip() for role, impl in pairs}
    role_auto = ROLE_AUTO.get(backend or jax.default_backend(), {})
    impls = {role: chosen.get(role, "auto") for role in CONV_ROLES}
    impls = {role: role_auto.get(role, "auto") if impl == "auto" else impl for role, impl in impls.items()}
    for role, impl in impls.items():
        valid = UP_IMPLS if role in ("up", "out") else DOWN_IMPLS
        if impl not in valid:
            raise UserError(f"model.conv_impl: {role}={impl!r} is not one of {', '.join(valid)}")
        if impl == "onednn" and not onednn.available():
            raise UserError(f"model.conv_impl: {role}=onednn cannot run here: {onednn.unavailable_reason()}; "
                            f"use 'auto' (it falls back to XLA's convolutions)")
    return impls


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
    impl: str = "auto"  # UpConv2x formulation of the hidden layers
    out_impl: str = "auto"  # ... and of the image layer
    batch_chunk: int = 0  # images per convolution call (layers.resolve_batch_chunk; 0: backend default)

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
            h = UpConv2x(width0 // 2**i, use_bias=False, dtype=self.dtype, impl=self.impl, batch_chunk=self.batch_chunk)(h)
            h = nn.relu(norm(h))
        x = UpConv2x(channels, use_bias=self.use_bias, dtype=self.dtype, impl=self.out_impl, batch_chunk=self.batch_chunk)(h)
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
    impl: str = "auto"  # DownConv2x formulation of the hidden layers
    in_impl: str = "auto"  # ... and of the image layer
    batch_chunk: int = 0  # images per convolution call (layers.resolve_batch_chunk; 0: backend default)

    @nn.compact
    def __call__(self, x_bhwc, y_b=None, train: bool = True):
        _, stages = dcgan_layout(x_bhwc.shape[1])
        spectral = self.norm == "spectral"
        h = x_bhwc.astype(self.dtype)
        for i in range(stages):
            # Without BatchNorm a convolution needs its own bias; with it the bias is redundant.
            bias = self.use_bias and (i == 0 or self.norm != "batch")
            impl = self.in_impl if i == 0 else self.impl
            conv = DownConv2x(self.width * 2**i, use_bias=bias, dtype=self.dtype, impl=impl, batch_chunk=self.batch_chunk)
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
    impl = parse_conv_impl(cfg.get("conv_impl", "auto"))
    chunk = cfg.get("conv_batch_chunk", 0)
    try:
        resolve_batch_chunk(chunk)
    except ValueError as e:
        raise UserError(f"model.conv_batch_chunk: {e}") from None
    g = DCGANGenerator(image_shape, cfg.g_width, cfg.use_bias, cfg.project_bn, dtype, num_classes, impl["up"], impl["out"], chunk)
    norm = d_norm(cfg, "dcgan", D_NORMS, "batch")
    return g, DCGANDiscriminator(cfg.d_width, cfg.use_bias, dtype, norm, num_classes, impl["down"], impl["in"], chunk)


def _resnet(cfg, image_shape, dtype, num_classes):
    from synthjax.models.resnet import build_resnet  # resnet.py imports this module's helpers

    return build_resnet(cfg, image_shape, dtype, num_classes)


ARCHITECTURES = {"mlp": _mlp, "dcgan": _dcgan, "resnet": _resnet}
