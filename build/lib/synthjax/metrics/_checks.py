"""Input checks shared by the metrics: errors name the bad value and what was expected."""

from __future__ import annotations

import numpy as np

from synthjax.errors import UserError


class MetricInputError(UserError, ValueError):
    """Bad input to a metric. A `ValueError` for callers, a `UserError` for entry points."""


def as_feature_matrix(x, name: str, dtype=np.float64) -> np.ndarray:
    """Return `x` as a finite 2-D (N, D) array of `dtype`, or raise naming `name`.

    Non-finite features are always an error: one NaN in 50k Inception features
    turns every statistic into NaN, and a silent NaN FID is worse than a crash.
    """
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise MetricInputError(f"{name} must be a 2-D (num_samples, feature_dim) array; got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise MetricInputError(f"{name} is empty: shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise MetricInputError(f"{name} must be numeric; got dtype {arr.dtype}")
    arr = arr.astype(dtype, copy=False)
    check_finite(arr, name)
    return arr


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise if `arr` holds NaN or inf, saying how many entries and in which rows."""
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.unique(np.nonzero(bad.reshape(arr.shape[0], -1))[0]) if arr.ndim > 1 else np.nonzero(bad)[0]
        raise MetricInputError(
            f"{name} contains {int(bad.sum())} non-finite values (NaN/inf) in {rows.size} rows "
            f"(first rows: {rows[:5].tolist()}); check the generator/feature extractor output"
        )


def check_same_dim(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """Raise if two feature matrices have different feature dimensions."""
    if a.shape[1] != b.shape[1]:
        raise MetricInputError(
            f"{name_a} and {name_b} must have the same feature dim; got {a.shape[1]} and {b.shape[1]}"
        )


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    """Return `value` as an int, raising if it is not an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise MetricInputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)
