"""Fréchet distance between Gaussians (the maths of FID), and streaming Gaussian statistics.

Everything here is float64 numpy: it runs once per evaluation on (D, D)
matrices, and float32 loses the digits FID needs (the trace terms are ~1e2-1e3
and a good model's FID is ~1).

Method. For N(mu1, S1) and N(mu2, S2) the squared Fréchet (2-Wasserstein)
distance is

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2}).

pytorch-fid and TTUR instead compute `scipy.linalg.sqrtm(S1 @ S2)`: a Schur
based square root of a product that is *not* symmetric. With near-singular
covariances (fewer samples than dimensions, dead features, float32 rounding)
that product has tiny negative or complex eigenvalues, sqrtm returns a complex
matrix or inf/NaN, and pytorch-fid then retries with `eps * I` (eps=1e-6) added
to both covariances and drops imaginary parts below 1e-3 - an offset that
shifts the result by an amount that depends on the spectrum. Here both
decompositions are of symmetric matrices (`eigh`), which are backward stable
and have real eigenvalues; eigenvalues that rounding pushed below zero are
clipped to zero, which is the nearest PSD matrix, and no offset is added. The
remaining error comes from the square root's infinite slope at zero: an
eigenvalue known only to +-eps*|S| contributes up to sqrt(eps*|S1||S2|) to the
trace term, i.e. below ~1e-4 in total for 2048-d Inception statistics. On
well-conditioned statistics the two methods agree to ~1e-14 relative.
"""

from __future__ import annotations

import numpy as np

from synthjax.metrics._checks import MetricInputError, as_feature_matrix, check_finite

# A covariance whose most negative eigenvalue is below -_PSD_TOL * (largest
# eigenvalue) is not a rounding artefact: float32-accumulated covariances of
# 2048-d features are off by ~1e-6 relative, so 1e-4 leaves a wide margin.
_PSD_TOL = 1e-4
# Relative asymmetry tolerated before we call the input "not a covariance".
_SYM_TOL = 1e-6


def _check_gaussian(mu, sigma, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate a (mean, covariance) pair and return it as float64 with `sigma` symmetrised."""
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1:
        raise MetricInputError(f"mu{name} must be a 1-D mean vector; got shape {mu.shape}")
    d = mu.shape[0]
    if sigma.shape != (d, d):
        raise MetricInputError(f"sigma{name} must have shape ({d}, {d}) to match mu{name}; got {sigma.shape}")
    check_finite(mu, f"mu{name}")
    check_finite(sigma, f"sigma{name}")
    scale = max(np.abs(sigma).max(), np.finfo(np.float64).tiny)
    asym = np.abs(sigma - sigma.T).max() / scale
    if asym > _SYM_TOL:
        raise MetricInputError(
            f"sigma{name} is not symmetric (max |S - S^T| / max |S| = {asym:.2e}); is it a covariance?"
        )
    return mu, 0.5 * (sigma + sigma.T)


def _check_psd_spectrum(w: np.ndarray, name: str) -> None:
    """Raise if ascending eigenvalues `w` are negative beyond rounding (see _PSD_TOL)."""
    top = max(w[-1], 0.0)
    if w[0] < -_PSD_TOL * top or (top == 0.0 and w[0] < 0.0):
        raise MetricInputError(
            f"sigma{name} is not positive semi-definite: smallest eigenvalue {w[0]:.3e}, largest {w[-1]:.3e}"
        )


def _psd_eigh(sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Eigendecompose a covariance, clipping rounding-level negative eigenvalues to zero."""
    w, v = np.linalg.eigh(sigma)
    _check_psd_spectrum(w, name)
    return np.clip(w, 0.0, None), v


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Return tr((S1 S2)^{1/2}) for symmetric PSD S1, S2 via two symmetric eigendecompositions.

    tr((S1 S2)^{1/2}) equals the sum of square roots of the eigenvalues of the
    symmetric PSD matrix S1^{1/2} S2 S1^{1/2} (same spectrum as S1 S2), so no
    non-symmetric square root is ever formed. Inputs are assumed validated.
    """
    w1, v1 = _psd_eigh(sigma1, "1")
    sqrt_s1 = (v1 * np.sqrt(w1)) @ v1.T
    middle = sqrt_s1 @ sigma2 @ sqrt_s1
    middle = 0.5 * (middle + middle.T)  # symmetric in exact arithmetic; remove rounding asymmetry
    eig = np.linalg.eigvalsh(middle)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    This is FID when the arguments are Inception pool-feature statistics (see
    `gaussian_stats`). The matrix square root goes through symmetric
    eigendecompositions with negative rounding eigenvalues clipped (module
    docstring), so near-singular covariances give a finite, offset-free value;
    inputs that are not symmetric PSD, mismatched in shape or non-finite raise
    `ValueError`. Tiny negative results from rounding are clipped to 0.
    """
    mu1, sigma1 = _check_gaussian(mu1, sigma1, "1")
    mu2, sigma2 = _check_gaussian(mu2, sigma2, "2")
    if mu1.shape != mu2.shape:
        raise MetricInputError(f"the two Gaussians differ in dimension: {mu1.shape[0]} vs {mu2.shape[0]}")
    # sigma1 is checked inside trace_sqrt_product; a non-PSD sigma2 would be silently clipped there
    _check_psd_spectrum(np.linalg.eigvalsh(sigma2), "2")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return float(max(value, 0.0))


class GaussianStatsAccumulator:
    """Streaming float64 mean and covariance of feature batches.

    Batches are merged with the pairwise update of Chan et al. (per-batch
    centred sums of squares plus a correction for the shift of the mean), which
    avoids the catastrophic cancellation of `sum(x x^T) - n mu mu^T` when
    features have a large mean. Memory is O(D^2) regardless of the number of
    samples; `merge` combines accumulators from different hosts or shards.
    """

    def __init__(self) -> None:
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None  # sum of outer products of deviations from the mean

    @property
    def feature_dim(self) -> int | None:
        """Feature dimension fixed by the first batch (None before any update)."""
        return None if self._mean is None else self._mean.shape[0]

    def update(self, features) -> "GaussianStatsAccumulator":
        """Add a (B, D) batch of features; NaN/inf or a changed D raise `ValueError`."""
        batch = as_feature_matrix(features, f"features batch (after {self.count} samples)")
        if self._mean is not None and batch.shape[1] != self._mean.shape[0]:
            raise MetricInputError(
                f"features batch has dim {batch.shape[1]}; earlier batches had {self._mean.shape[0]}"
            )
        mean_b = batch.mean(axis=0)
        centred = batch - mean_b
        self._combine(batch.shape[0], mean_b, centred.T @ centred)
        return self

    def merge(self, other: "GaussianStatsAccumulator") -> "GaussianStatsAccumulator":
        """Fold another accumulator's samples into this one (e.g. from another host)."""
        if other.count:
            self._combine(other.count, other._mean, other._m2)
        return self

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        if self.count == 0:
            self.count, self._mean, self._m2 = n_b, mean_b.copy(), m2_b.copy()
            return
        if mean_b.shape != self._mean.shape:
            raise MetricInputError(f"cannot merge statistics of dim {mean_b.shape[0]} into dim {self._mean.shape[0]}")
        n = self.count + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.count * n_b / n)
        self.count = n

    def finalize(self, allow_singular: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Return (mu, sigma) with the unbiased (N-1) covariance, as `np.cov` and pytorch-fid use.

        A sample covariance of N points has rank at most N-1, so with N < D+1
        it is singular and FID on it is dominated by the missing directions;
        that raises `ValueError` unless `allow_singular=True`.
        """
        if self.count == 0:
            raise MetricInputError("no features were added; call update(batch) first")
        d = self._mean.shape[0]
        if self.count < 2 or (self.count < d + 1 and not allow_singular):
            raise MetricInputError(
                f"got {self.count} samples of {d}-d features: the covariance is singular (rank <= {self.count - 1}); "
                f"need at least {d + 1} samples (FID convention: 50,000), or pass allow_singular=True"
                + (" (and at least 2 samples)" if self.count < 2 else "")
            )
        sigma = self._m2 / (self.count - 1)
        return self._mean.copy(), 0.5 * (sigma + sigma.T)


def gaussian_stats(features, allow_singular: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Float64 mean and (N-1)-normalised covariance of an (N, D) feature matrix.

    Equivalent to one `GaussianStatsAccumulator` update; use the accumulator
    directly to stream batches. Fewer than D+1 samples raise `ValueError`
    (singular covariance) unless `allow_singular=True`; NaN/inf always raise.
    """
    return GaussianStatsAccumulator().update(features).finalize(allow_singular=allow_singular)
