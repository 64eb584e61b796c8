"""The FID Inception-v3 (TF graph of 2015-12-05, as used by TTUR and pytorch-fid) in Flax linen.

This is not torchvision's Inception-v3: the FID network has 1008 classes and,
like the TF graph it was ported from, differs in three places, reproduced here
exactly as pytorch-fid's `FIDInceptionA/C/E_1/E_2` do:

* the 3x3 average pools in the A, C and first E blocks (Mixed_5b-d, 6b-e, 7b)
  exclude the zero padding from the average (`count_include_pad=False`);
* the last E block (Mixed_7c) max-pools in its pool branch instead of averaging;
* BatchNorm uses eps = 1e-3.

Inputs are resized to 299x299 with bilinear interpolation, half-pixel centres
and no antialiasing (`F.interpolate(..., align_corners=False)`, as pytorch-fid)
and scaled from [0, 1] to [-1, 1]. Outputs: the 2048-d global average pool
(the FID/KID/PR features), and the 1008-way logits with and without the fc
bias (the Inception Score reference code of Salimans et al. used the graph's
MatMul without the bias). Module and parameter names follow pytorch-fid's
state dict (`Mixed_5b/branch1x1/conv/kernel`) so conversion is mechanical.

Weights come from a local npz written by `python -m synthjax.metrics.convert_inception`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from synthjax.errors import UserError
from synthjax.metrics._checks import MetricInputError
from synthjax.metrics.extractors import FeatureExtractor, InputSpec

NETWORK_SIZE = (299, 299)
NUM_CLASSES = 1008
FEATURE_DIM = 2048
TORCH_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
CONVERT_COMMAND = "python -m synthjax.metrics.convert_inception --torch {torch} --out {out}"
# Convolutions in full float32: TF32/bf16 passes on GPU/TPU would move features by ~1e-3.
PRECISION = jax.lax.Precision.HIGHEST


class WeightsNotFoundError(UserError, FileNotFoundError):
    """The Inception weight file is missing; the message says how to make it."""


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU, torchvision's BasicConv2d."""

    features: int
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        pad = [(self.padding[0], self.padding[0]), (self.padding[1], self.padding[1])]
        x = nn.Conv(self.features, self.kernel, self.strides, pad, use_bias=False, precision=PRECISION, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3/1 average pool whose border windows average only real pixels (TF's SAME avg pool)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x: jax.Array) -> jax.Array:
    """3x3/1 max pool with -inf padding, used only by the last E block."""
    return nn.max_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)))


def _max_pool_reduce(x: jax.Array) -> jax.Array:
    """3x3/2 valid max pool of the stem and the B/D reduction blocks."""
    return nn.max_pool(x, (3, 3), (2, 2), "VALID")


class InceptionA(nn.Module):
    """Mixed_5b-d: 1x1, 5x5, double 3x3 and (padding-excluding) avg-pool branches."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: stride-2 reduction from 35x35 to 17x17."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_reduce(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-e: factorised 7x7 branches (1x7 / 7x1) and a padding-excluding avg-pool branch."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_exclude_pad(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: stride-2 reduction from 17x17 to 8x8."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_reduce(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b/7c: expanded 1x3 + 3x1 branches; `max_pool=True` is the FID graph's Mixed_7c quirk."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        pooled = _max_pool_same(x) if self.max_pool else _avg_pool_exclude_pad(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear_like_torch(x_nhwc: jax.Array, size: tuple[int, int] = NETWORK_SIZE) -> jax.Array:
    """Bilinear resize matching `F.interpolate(mode="bilinear", align_corners=False)` (no antialiasing).

    `jax.image.resize` antialiases when downsampling by default, which
    pytorch-fid does not, so it is switched off; both use half-pixel centres
    and clamp at the borders.
    """
    n, _, _, c = x_nhwc.shape
    return jax.image.resize(x_nhwc, (n, *size, c), method="bilinear", antialias=False)


def resize_clean(x_nhwc: jax.Array, size: tuple[int, int] = NETWORK_SIZE) -> jax.Array:
    """clean-fid's resize (Parmar et al. 2022): PIL's antialiased bicubic on float images, clipped to [0, 1].

    `jax.image.resize(..., "bicubic", antialias=True)` uses PIL's cubic kernel
    (a = -0.5) and widens it when downsampling as PIL does; tests/metrics
    compares it with PIL on up- and downsampling.
    """
    n, _, _, c = x_nhwc.shape
    return jnp.clip(jax.image.resize(x_nhwc, (n, *size, c), method="bicubic", antialias=True), 0.0, 1.0)


RESIZERS = {"pytorch_fid": resize_bilinear_like_torch, "clean": resize_clean}


class FIDInceptionV3(nn.Module):
    """FID Inception-v3: NHWC float images in [0, 1] -> dict(pool (N, 2048), logits, logits_unbiased (N, 1008)).

    With `resize_input` (the default, as pytorch-fid) any input size is
    resized to 299x299 first, by `resize` ('pytorch_fid': bilinear without
    antialiasing; 'clean': clean-fid's antialiased bicubic); without it the
    input must be at least 75x75.
    """

    resize_input: bool = True
    resize: str = "pytorch_fid"

    @nn.compact
    def __call__(self, images: jax.Array) -> dict:
        x = RESIZERS[self.resize](images) if self.resize_input else images
        x = 2.0 * x - 1.0
        x = BasicConv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_reduce(x)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_reduce(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        fc = nn.Dense(NUM_CLASSES, precision=PRECISION, name="fc")
        logits = fc(pool)
        return {"pool": pool, "logits": logits, "logits_unbiased": logits - fc.variables["params"]["bias"]}


@functools.lru_cache(maxsize=1)
def _variable_shapes() -> tuple[tuple[str, tuple[int, ...]], ...]:
    model = FIDInceptionV3(resize_input=False)
    dummy = jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), dummy)
    return tuple((k, tuple(v.shape)) for k, v in traverse_util.flatten_dict(shapes, sep="/").items())


def expected_variable_shapes() -> dict[str, tuple[int, ...]]:
    """Flat 'collection/module/.../leaf' -> shape of every FID Inception variable (no compute: eval_shape)."""
    return dict(_variable_shapes())


def check_variable_shapes(flat: dict, source: str) -> None:
    """Raise `ValueError` listing missing, unexpected and mis-shaped variables of a flat weight dict."""
    expected = expected_variable_shapes()
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong = sorted(k for k in set(expected) & set(flat) if tuple(np.shape(flat[k])) != expected[k])
    if missing or unexpected or wrong:
        details = [
            f"{label} ({len(keys)}): {keys[:5]}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        ]
        raise MetricInputError(f"{source} does not hold FID Inception weights: " + "; ".join(details))


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_inception_variables(path: str | Path) -> tuple[dict, str]:
    """Load converted FID Inception weights from an npz: returns (flax variables, sha256 of the file).

    A missing file raises `WeightsNotFoundError` (a `FileNotFoundError`) with
    the conversion command; a file with missing or mis-shaped arrays raises
    `ValueError`.
    """
    path = Path(path)
    if not path.is_file():
        command = CONVERT_COMMAND.format(torch=TORCH_WEIGHTS_NAME, out=path)
        raise WeightsNotFoundError(
            f"FID Inception weights not found at {path}. Download {TORCH_WEIGHTS_NAME} from "
            f"https://github.com/mseitzer/pytorch-fid/releases and convert it with:\n  {command}"
        )
    with np.load(path) as npz:
        flat = {key: npz[key] for key in npz.files}
    check_variable_shapes(flat, str(path))
    variables = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    return variables, file_sha256(path)


@functools.partial(jax.jit, static_argnames=("resize_input", "resize"))
def _forward(variables: dict, images_uint8: jax.Array, resize_input: bool = True, resize: str = "pytorch_fid") -> dict:
    """uint8 NHWC -> network outputs; /255 before the resize, in the order pytorch-fid uses."""
    return FIDInceptionV3(resize_input=resize_input, resize=resize).apply(variables, images_uint8.astype(jnp.float32) / 255.0)


@dataclasses.dataclass(frozen=True, eq=False)
class InceptionFeatureExtractor(FeatureExtractor):
    """FID Inception features: uint8 NHWC images of any size -> features (N, 2048), logits (N, 1008).

    Build it with `InceptionFeatureExtractor.from_npz(path)`. `logits`
    include the fc bias; `logits_unbiased` (the Salimans et al. IS code's
    choice) do not.
    """

    variables: dict | None = None
    resize: str = "pytorch_fid"

    @classmethod
    def from_npz(cls, path: str | Path, batch_size: int = 50, resize: str = "pytorch_fid") -> "InceptionFeatureExtractor":
        """Load converted weights (see `load_inception_variables`) into an extractor.

        `resize`: 'pytorch_fid' (bilinear, no antialiasing: pytorch-fid's and most
        papers' FIDs) or 'clean' (clean-fid's antialiased bicubic). The name
        records it, so reference statistics of the two never mix.
        """
        if resize not in RESIZERS:
            raise UserError(f"unknown resize {resize!r}; valid: {', '.join(RESIZERS)} (pytorch-fid's bilinear or clean-fid's bicubic)")
        variables, digest = load_inception_variables(path)
        spec = InputSpec(channels=3, dtype="uint8", value_range=(0, 255), network_size=NETWORK_SIZE)
        name = "inception-v3-fid-2015-12-05" + ("" if resize == "pytorch_fid" else f"-resize-{resize}")
        return cls(name, digest, spec, batch_size, variables, resize)

    def extract_batch(self, images: np.ndarray) -> dict:
        """Run one batch through the jitted network."""
        return self.device_form()[0](self.variables, jnp.asarray(images))

    def device_form(self) -> tuple:
        """The network as `fn(variables, images_uint8) -> dict`, for compiled multi-device evaluation."""
        resize = self.resize

        def fn(variables: dict, images_uint8: jax.Array) -> dict:
            out = _forward(variables, images_uint8, resize=resize)
            return {"features": out["pool"], "logits": out["logits"], "logits_unbiased": out["logits_unbiased"]}

        return fn, self.variables


def main(argv: list[str] | None = None) -> int:
    """`python -m synthjax.metrics.inception fetch [--out PATH] [--url URL] [--sha256 HEX]`."""
    import argparse
    import sys

    from synthjax.metrics import convert_inception
    from synthjax.metrics.classifier import cache_dir

    parser = argparse.ArgumentParser(description="Fetch, check and convert pytorch-fid's FID Inception weights")
    parser.add_argument("command", choices=["fetch"])
    parser.add_argument("--out", default=str(cache_dir() / "inception_fid.npz"), help="converted npz (default: the evaluate default)")
    parser.add_argument("--url", default=convert_inception.PYTORCH_FID_URL)
    parser.add_argument("--sha256", default=convert_inception.PYTORCH_FID_SHA256_PREFIX, help="expected sha256 (or its start) of the .pth")
    args = parser.parse_args(argv)
    try:
        convert_inception.fetch(args.out, args.url, args.sha256)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
