"""The feature-extractor interface that FID/KID/IS/PR evaluations plug into.

An extractor is a frozen description of one network (name, weights hash,
expected input) plus a batched call mapping uint8 NHWC images to features. The
weights hash goes into evaluation logs so that numbers computed with different
weights are never compared by accident. Input validation lives here, once, so
every extractor rejects NCHW arrays, [0, 1] floats and grayscale images with
the same actionable message instead of producing plausible wrong features.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from synthjax.metrics._checks import MetricInputError, check_positive_int


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """What an extractor accepts: NHWC images with `channels` channels of `dtype` in `value_range`.

    `size` is a required (H, W), or None when the extractor resizes any input
    of at least `min_size` pixels per side to `network_size` itself.
    """

    channels: int = 3
    dtype: str = "uint8"
    value_range: tuple[float, float] = (0, 255)
    size: tuple[int, int] | None = None
    min_size: int = 1
    network_size: tuple[int, int] | None = None

    def describe(self) -> str:
        """One-line human description used in error messages."""
        size = f"{self.size[0]}x{self.size[1]}" if self.size else f"any HxW >= {self.min_size}"
        lo, hi = self.value_range
        return f"(N, H, W, {self.channels}) {self.dtype} in [{lo:g}, {hi:g}], {size}"


def _dtype_hint(arr: np.ndarray) -> str:
    """Suggest the conversion to uint8 for the common wrong inputs."""
    if arr.size and np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if lo >= -1.0 - 1e-6 and hi <= 1.0 + 1e-6:
            convert = "np.clip(np.round(x * 255), 0, 255)" if lo >= 0 else "np.clip(np.round((x + 1) * 127.5), 0, 255)"
            return f" (values in [{lo:.3g}, {hi:.3g}]; convert with {convert}.astype(np.uint8))"
        return f" (values in [{lo:.3g}, {hi:.3g}])"
    return ""


def _check_layout(arr: np.ndarray, spec: InputSpec, name: str) -> None:
    """Raise unless `arr` is a non-empty NHWC batch with the right channel count."""
    expected = spec.describe()
    if arr.ndim == 3 and arr.shape[-1] == spec.channels:
        raise MetricInputError(f"{name} has shape {arr.shape}: a single image? Expected {expected}; use images[None]")
    if arr.ndim != 4:
        raise MetricInputError(f"{name} must be a 4-D NHWC batch {expected}; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise MetricInputError(f"{name} is an empty batch (shape {arr.shape})")
    if arr.shape[-1] != spec.channels:
        hint = ""
        if arr.shape[1] == spec.channels:
            hint = "; it looks NCHW, transpose with images.transpose(0, 2, 3, 1)"
        elif arr.shape[-1] == 1 and spec.channels == 3:
            hint = "; for grayscale repeat the channel: np.repeat(images, 3, axis=-1)"
        raise MetricInputError(f"{name} has {arr.shape[-1]} channels (shape {arr.shape}); expected {expected}{hint}")


def _check_size(arr: np.ndarray, spec: InputSpec, name: str) -> None:
    """Raise if the spatial size is not the required one, or below the minimum."""
    h, w = arr.shape[1:3]
    if spec.size is not None and (h, w) != tuple(spec.size):
        raise MetricInputError(f"{name} are {h}x{w}; expected {spec.describe()}")
    if min(h, w) < spec.min_size:
        raise MetricInputError(f"{name} are {h}x{w}; expected at least {spec.min_size} pixels per side")


def _check_values(arr: np.ndarray, spec: InputSpec, name: str) -> None:
    """Raise unless dtype matches `spec.dtype` and values lie in `spec.value_range`."""
    if arr.dtype != np.dtype(spec.dtype):
        raise MetricInputError(f"{name} have dtype {arr.dtype}{_dtype_hint(arr)}; expected {spec.describe()}")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise MetricInputError(f"{name} contain NaN or inf; expected {spec.describe()}")
    lo, hi = spec.value_range
    a_min, a_max = arr.min(), arr.max()
    if a_min < lo or a_max > hi:
        raise MetricInputError(f"{name} have values in [{a_min:g}, {a_max:g}]; expected {spec.describe()}")


def validate_images(images, spec: InputSpec, name: str = "images") -> np.ndarray:
    """Return `images` as a numpy array if it matches `spec`, else raise `ValueError` saying what is wrong.

    Checks, in order: NHWC layout and channel count (with hints for NCHW,
    single images and grayscale), spatial size, dtype (with a conversion hint
    for [0, 1] or [-1, 1] floats) and value range.
    """
    arr = np.asarray(images)
    _check_layout(arr, spec, name)
    _check_size(arr, spec, name)
    _check_values(arr, spec, name)
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureExtractor(abc.ABC):
    """Base of all feature extractors: `extractor(images_uint8_nhwc) -> dict(features=, logits=)`.

    Subclasses set `name`, `weights_hash` (sha256 of the weight file),
    `input_spec`, and implement `extract_batch` for one fixed-size batch;
    `__call__` validates the input, runs it in batches of `batch_size` (a
    short last one padded so jitted code compiles once) and concatenates the
    results as numpy arrays: `features` (N, D) and `logits` (N, C) or None.
    """

    name: str
    weights_hash: str
    input_spec: InputSpec
    batch_size: int = 50

    @abc.abstractmethod
    def extract_batch(self, images: np.ndarray) -> dict:
        """Map a validated (B, H, W, C) batch, B <= batch_size, to a dict of (B, ...) arrays (or None)."""

    def device_form(self) -> tuple | None:
        """(fn, variables) with `fn(variables, images_uint8) -> dict` traceable by JAX, to run the extractor
        inside a compiled multi-device program (`synthjax.sample_features`); None if it has none (then
        features are extracted on the host, through `__call__`)."""
        return None

    def __call__(self, images) -> dict:
        """Validate `images` against `input_spec` and extract features batch by batch."""
        arr = validate_images(images, self.input_spec)
        batch_size = check_positive_int(self.batch_size, "batch_size")
        # Pad short last batches only when the input spans several batches: one compiled shape.
        pad_to = batch_size if len(arr) > batch_size else len(arr)
        parts = [self._run_padded(arr[i : i + batch_size], pad_to) for i in range(0, len(arr), batch_size)]
        return {key: _concat([p[key] for p in parts]) for key in parts[0]}

    def _run_padded(self, batch: np.ndarray, pad_to: int) -> dict:
        """Run one batch padded with copies of its first image up to `pad_to` rows; drop the padding's outputs."""
        valid = len(batch)
        if valid < pad_to:
            batch = np.concatenate([batch, np.repeat(batch[:1], pad_to - valid, axis=0)])
        out = self.extract_batch(batch)
        return {key: None if value is None else np.asarray(value)[:valid] for key, value in out.items()}


def _concat(values: list):
    """Concatenate per-batch outputs, keeping None for outputs an extractor does not produce."""
    return None if values[0] is None else np.concatenate(values)
