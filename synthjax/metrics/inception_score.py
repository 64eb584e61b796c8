"""Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))), averaged over splits.

Computed in float64 numpy from class probabilities or logits. No epsilon is
added inside logarithms: terms with p(y|x) = 0 contribute exactly 0 (the limit
of p log p), and every class with p(y|x) > 0 has p(y) >= p(y|x)/n > 0, so no
log(0) is ever taken. From logits, log-probabilities come from a log-softmax,
which stays exact even where softmax would underflow to 0.
"""

from __future__ import annotations

import numpy as np

from synthjax.metrics._checks import MetricInputError, as_feature_matrix, check_positive_int

# softmax outputs stored in float32 sum to 1 within ~1e-6; anything further off
# is not a probability vector (most likely logits passed by mistake).
_ROW_SUM_TOL = 1e-3


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    """Stable log(sum(exp(x))) along `axis`, keeping the reduced axis; all -inf gives -inf."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # a class nobody predicts: avoid -inf - -inf
    with np.errstate(divide="ignore"):
        return m + np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True))


def _split_bounds(n: int, num_splits: int) -> list[tuple[int, int]]:
    """Contiguous split boundaries i*n//s .. (i+1)*n//s, as in the reference implementation."""
    if n < num_splits:
        raise MetricInputError(f"inception score needs at least num_splits={num_splits} samples; got {n}")
    return [(i * n // num_splits, (i + 1) * n // num_splits) for i in range(num_splits)]


def _split_score(probs: np.ndarray, log_probs: np.ndarray) -> float:
    """exp of the mean KL(p(y|x) || p(y)) within one split, with p(y) the split's mean prediction."""
    log_marginal = _logsumexp(log_probs, axis=0) - np.log(len(log_probs))
    with np.errstate(invalid="ignore"):  # p = 0 entries give 0 * nan, replaced by 0 below
        kl_terms = np.where(probs > 0, probs * (log_probs - log_marginal), 0.0)
    return float(np.exp(np.mean(np.sum(kl_terms, axis=1))))


def _score_over_splits(probs: np.ndarray, log_probs: np.ndarray, num_splits: int) -> tuple[float, float]:
    """Mean and population std (ddof=0, as the reference) of the per-split scores."""
    num_splits = check_positive_int(num_splits, "num_splits")
    scores = np.array([_split_score(probs[s:e], log_probs[s:e]) for s, e in _split_bounds(len(probs), num_splits)])
    return float(scores.mean()), float(scores.std())


def _check_probabilities(probs: np.ndarray) -> np.ndarray:
    """Raise unless rows are non-negative and sum to 1 (within rounding); return them renormalised."""
    if (probs < 0).any():
        raise MetricInputError(
            f"probs has negative entries (min {probs.min():.3g}); pass softmax outputs, "
            "or use inception_score_from_logits for logits"
        )
    sums = probs.sum(axis=1)
    worst = int(np.argmax(np.abs(sums - 1.0)))
    if abs(sums[worst] - 1.0) > _ROW_SUM_TOL:
        raise MetricInputError(
            f"probs rows must sum to 1; row {worst} sums to {sums[worst]:.6g}. "
            "Pass softmax outputs, or use inception_score_from_logits for logits"
        )
    return probs / sums[:, None]


def inception_score(probs, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score (mean, std over `num_splits` contiguous splits) from (N, C) class probabilities.

    `probs` are softmax outputs of the classifier, one row per image; rows
    must be non-negative and sum to 1 within 1e-3 (they are renormalised).
    Computed in float64 with the exact 0 log 0 = 0 convention instead of an
    epsilon. Uniform predictions give 1; confident predictions spread evenly
    over k classes give k. Shuffle the images first: splits are contiguous.
    """
    p = _check_probabilities(as_feature_matrix(probs, "probs"))
    with np.errstate(divide="ignore"):  # log(0) = -inf is masked out in _split_score
        log_p = np.log(p)
    return _score_over_splits(p, log_p, num_splits)


def inception_score_from_logits(logits, num_splits: int = 10) -> tuple[float, float]:
    """Inception Score (mean, std) from (N, C) classifier logits, via a float64 log-softmax.

    Prefer this over `inception_score(softmax(logits))` when logits are at hand:
    log-probabilities of confident predictions keep their precision instead of
    underflowing to 0 in a float32 softmax.
    """
    z = as_feature_matrix(logits, "logits")
    log_p = z - _logsumexp(z, axis=1)
    return _score_over_splits(np.exp(log_p), log_p, num_splits)


def class_confidence(logits, threshold: float = 0.9) -> dict[str, float]:
    """The two halves of the Inception Score as readable shares, from (N, C) classifier logits.

    `confident`: the share of samples whose top class probability is at least
    `threshold` (recognisable images); `class_min` / `class_max`: the smallest
    and largest share of samples assigned (argmax) to one class (coverage; a
    class never predicted counts as 0). A balanced, well-trained generator
    over C classes has `confident` near the real data's and both shares near 1/C.
    """
    z = as_feature_matrix(logits, "logits")
    if not 0.0 < threshold < 1.0:
        raise MetricInputError(f"threshold must be in (0, 1), got {threshold}")
    top_prob = np.exp(np.max(z, axis=1, keepdims=True) - _logsumexp(z, axis=1))[:, 0]
    shares = np.bincount(np.argmax(z, axis=1), minlength=z.shape[1]) / len(z)
    return {"confident": float(np.mean(top_prob >= threshold)), "class_min": float(shares.min()), "class_max": float(shares.max())}
