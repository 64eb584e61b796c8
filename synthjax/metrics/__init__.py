"""Evaluation metrics for generative image models.

Sample-quality metrics on features (FID via `gaussian_stats` +
`frechet_distance`, `kid`, `inception_score` with `class_confidence`, `precision_recall`,
`density_coverage`), likelihood bookkeeping (`nats_to_bits_per_dim`,
`importance_weighted_log_likelihood`), and the feature-extractor interface with
the FID Inception-v3 (`InceptionFeatureExtractor`). See docs/metrics.md.
"""

from synthjax.metrics._checks import MetricInputError
from synthjax.metrics.extractors import FeatureExtractor, InputSpec, validate_images
from synthjax.metrics.frechet import GaussianStatsAccumulator, frechet_distance, gaussian_stats, trace_sqrt_product
from synthjax.metrics.inception import (
    FIDInceptionV3,
    InceptionFeatureExtractor,
    WeightsNotFoundError,
    load_inception_variables,
)
from synthjax.metrics.inception_score import class_confidence, inception_score, inception_score_from_logits
from synthjax.metrics.kid import kid, mmd2_unbiased, polynomial_kernel
from synthjax.metrics.likelihood import (
    bits_per_dim_to_nats,
    importance_weighted_log_likelihood,
    log_mean_exp,
    nats_to_bits_per_dim,
    nll_in_original_units,
)
from synthjax.metrics.prdc import density_coverage, precision_recall

__all__ = [
    "FIDInceptionV3",
    "FeatureExtractor",
    "GaussianStatsAccumulator",
    "InceptionFeatureExtractor",
    "InputSpec",
    "MetricInputError",
    "WeightsNotFoundError",
    "bits_per_dim_to_nats",
    "class_confidence",
    "density_coverage",
    "frechet_distance",
    "gaussian_stats",
    "importance_weighted_log_likelihood",
    "inception_score",
    "inception_score_from_logits",
    "kid",
    "load_inception_variables",
    "log_mean_exp",
    "mmd2_unbiased",
    "nats_to_bits_per_dim",
    "nll_in_original_units",
    "polynomial_kernel",
    "precision_recall",
    "trace_sqrt_product",
    "validate_images",
]
