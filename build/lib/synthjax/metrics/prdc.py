"""k-NN manifold metrics: improved precision/recall and density/coverage.

Improved precision and recall (Kynkäänniemi et al. 2019) estimate each
distribution's support as the union of balls around its samples, each ball's
radius being the distance to the sample's k-th nearest neighbour within its own
set. Precision is the fraction of fake samples inside the real manifold;
recall the fraction of real samples inside the fake manifold. Density and
coverage (Naeem et al. 2020) use only the real balls: density counts how many
real balls contain each fake sample (divided by k, so ~1 when the distributions
match), coverage is the fraction of real balls containing at least one fake.

Distances are computed in JAX, one block of query rows against all reference
rows at a time (a jitted function per block), so a 50,000 x 50,000 distance
matrix never exists: peak memory is block_size x N floats. Boundary conventions
follow the reference code: `<=` for precision/recall (NVlabs), `<` for
density/coverage (clovaai/prdc); k-th neighbours exclude the point itself.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from synthjax.metrics._checks import MetricInputError, as_feature_matrix, check_positive_int, check_same_dim

# 512 query rows x 50,000 reference rows x 4 bytes = 100 MB per block.
DEFAULT_BLOCK_SIZE = 512


def _sq_distances(x: jax.Array, y: jax.Array) -> jax.Array:
    """Squared Euclidean distances between rows of x and rows of y, clipped at 0 against rounding."""
    xy = jnp.matmul(x, y.T, precision=jax.lax.Precision.HIGHEST)
    d = jnp.sum(x * x, axis=1)[:, None] + jnp.sum(y * y, axis=1)[None, :] - 2.0 * xy
    return jnp.maximum(d, 0.0)


@partial(jax.jit, static_argnames="k")
def _kth_neighbour_sq_block(queries: jax.Array, points: jax.Array, k: int) -> jax.Array:
    """k-th smallest squared distance to `points`, skipping the query itself (its distance-0 entry)."""
    neg_smallest, _ = jax.lax.top_k(-_sq_distances(queries, points), k + 1)
    return -neg_smallest[:, k]


@partial(jax.jit, static_argnames="strict")
def _balls_containing_block(queries: jax.Array, centres: jax.Array, radii_sq: jax.Array, strict: bool) -> jax.Array:
    """For each query row, the number of balls (centre, radius) that contain it."""
    d = _sq_distances(queries, centres)
    inside = d < radii_sq[None, :] if strict else d <= radii_sq[None, :]
    return jnp.sum(inside, axis=1, dtype=jnp.int32)


@jax.jit
def _min_sq_distance_block(queries: jax.Array, points: jax.Array) -> jax.Array:
    """Squared distance from each query row to its nearest row of `points`."""
    return jnp.min(_sq_distances(queries, points), axis=1)


def _map_row_blocks(fn: Callable[..., jax.Array], queries: jax.Array, block_size: int, *args) -> np.ndarray:
    """Apply `fn(block, *args)` to fixed-size row blocks of `queries` and concatenate the results.

    The last block is padded to `block_size` so the jitted function compiles
    once; the padded rows' outputs are dropped.
    """
    n = queries.shape[0]
    out = []
    for start in range(0, n, block_size):
        block = queries[start : start + block_size]
        valid = block.shape[0]
        if valid < block_size and n > block_size:
            block = jnp.pad(block, ((0, block_size - valid), (0, 0)))
        out.append(np.asarray(fn(block, *args))[:valid])
    return np.concatenate(out)


def _prepare(real, fake, k: int, block_size: int) -> tuple[jax.Array, jax.Array, int, int]:
    """Validate inputs and return float32 device arrays centred on the real mean.

    Centring (distances are translation invariant) shrinks |x|^2 + |y|^2 -
    2 x.y's operands, so float32 cancellation for nearby points is smaller.
    """
    real = as_feature_matrix(real, "real_features")
    fake = as_feature_matrix(fake, "fake_features")
    check_same_dim(real, fake, "real_features", "fake_features")
    k = check_positive_int(k, "k")
    block_size = check_positive_int(block_size, "block_size")
    smallest = min(len(real), len(fake))
    if k >= smallest:
        raise MetricInputError(
            f"k={k} needs more than k samples in each set; got {len(real)} real and {len(fake)} fake"
        )
    centre = real.mean(axis=0)
    return jnp.asarray(real - centre, jnp.float32), jnp.asarray(fake - centre, jnp.float32), k, block_size


def _radii_sq(points: jax.Array, k: int, block_size: int) -> jax.Array:
    """Squared k-NN radius of every point within its own set."""
    return jnp.asarray(_map_row_blocks(partial(_kth_neighbour_sq_block, k=k), points, block_size, points))


def _fraction_inside(queries: jax.Array, centres: jax.Array, radii_sq: jax.Array, block_size: int) -> float:
    """Fraction of query rows inside at least one ball (closed balls, as in Kynkäänniemi et al.)."""
    counts = _map_row_blocks(partial(_balls_containing_block, strict=False), queries, block_size, centres, radii_sq)
    return float(np.mean(counts > 0))


def precision_recall(real_features, fake_features, k: int = 3, block_size: int = DEFAULT_BLOCK_SIZE) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of (N, D) real and (M, D) fake features.

    Returns `dict(precision=..., recall=...)`, both in [0, 1]. k=3 is the
    paper's default. Identical sets give 1 and 1; sets far apart give 0 and 0.
    Inputs need more than k rows each; NaN/inf raise `ValueError`.
    """
    real, fake, k, block_size = _prepare(real_features, fake_features, k, block_size)
    precision = _fraction_inside(fake, real, _radii_sq(real, k, block_size), block_size)
    recall = _fraction_inside(real, fake, _radii_sq(fake, k, block_size), block_size)
    return {"precision": precision, "recall": recall}


def density_coverage(real_features, fake_features, k: int = 5, block_size: int = DEFAULT_BLOCK_SIZE) -> dict:
    """Density and coverage (Naeem et al. 2020) of (N, D) real and (M, D) fake features.

    Returns `dict(density=..., coverage=...)`. Density is the mean number of
    real k-NN balls containing a fake sample, divided by k (unbounded; ~1 for
    matching distributions); coverage is the fraction of real balls holding at
    least one fake sample, in [0, 1]. k=5 is the paper's default.
    """
    real, fake, k, block_size = _prepare(real_features, fake_features, k, block_size)
    radii_sq = _radii_sq(real, k, block_size)
    counts = _map_row_blocks(partial(_balls_containing_block, strict=True), fake, block_size, real, radii_sq)
    nearest_fake_sq = _map_row_blocks(_min_sq_distance_block, real, block_size, fake)
    density = float(np.sum(counts, dtype=np.float64) / (k * fake.shape[0]))
    coverage = float(np.mean(nearest_fake_sq < np.asarray(radii_sq)))
    return {"density": density, "coverage": coverage}
