"""Reference (real-data) statistics for FID/KID/PR/IS, cached on disk per dataset and extractor weights.

Extracting features of a whole dataset is the expensive half of every FID, and
it is the same for every run evaluated against that dataset. `load_or_compute`
keeps it in `cache_dir()/refstats/`, under a key that hashes the dataset
description (name, path, split, size, number of images), the extractor name and
its `weights_hash`: statistics made with other weights, or of other data, are
never reused. Files are written atomically, so an interrupted computation
leaves no half-written cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from synthjax.metrics.classifier import cache_dir
from synthjax.metrics.extractors import FeatureExtractor
from synthjax.metrics.frechet import gaussian_stats
from synthjax.metrics.inception_score import inception_score_from_logits

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ReferenceStats:
    """Real-data statistics: FID Gaussian (mu, sigma), the features themselves (KID, PR) and the data's own IS.

    `cached` says whether they were read from `path` (True) or just computed
    and written there (False).
    """

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    inception_score: tuple[float, float] | None
    key: str
    path: Path
    cached: bool

    @property
    def num(self) -> int:
        return int(self.features.shape[0])


def cache_key(dataset: dict, extractor: FeatureExtractor) -> str:
    """16 hex digits of sha256 over the dataset description, extractor name and weights hash."""
    record = {"format": FORMAT_VERSION, "dataset": dataset, "extractor": extractor.name, "weights": extractor.weights_hash}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(dataset: dict, extractor: FeatureExtractor, root: Path | None = None) -> Path:
    """`<root>/refstats/<dataset>-<extractor>-<key>.npz`, readable names with the hash doing the work."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset.get('name', 'data')}-{extractor.name}")[:80]
    return Path(root or cache_dir()) / "refstats" / f"{slug}-{cache_key(dataset, extractor)}.npz"


def compute(images: np.ndarray, extractor: FeatureExtractor) -> dict[str, np.ndarray]:
    """Features, FID Gaussian and IS of real images (uint8 NHWC, already in the extractor's input form)."""
    out = extractor(images)
    mu, sigma = gaussian_stats(out["features"], allow_singular=True)
    arrays = {"mu": mu, "sigma": sigma, "features": np.asarray(out["features"], np.float32)}
    logits = out.get("logits_unbiased", out.get("logits"))
    if logits is not None and len(images) >= 10:
        arrays["inception_score"] = np.array(inception_score_from_logits(logits))
    return arrays


def _save_atomic(path: Path, arrays: dict, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)


def load_or_compute(
    dataset: dict,
    load_images: Callable[[], np.ndarray],
    extractor: FeatureExtractor,
    root: Path | None = None,
    log: Callable[[str], None] = print,
) -> ReferenceStats:
    """Reference statistics for `dataset` under `extractor`: from the cache, else computed and cached.

    `dataset` describes the images (it is hashed into the key, so put every
    field that changes them in it); `load_images()` is only called on a cache
    miss and must return them as uint8 NHWC in the extractor's input form.
    """
    path = cache_path(dataset, extractor, root)
    cached = path.is_file()
    if cached:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files if k != "meta"}
    else:
        images = load_images()
        log(f"synthjax: computing reference statistics of {len(images)} {dataset.get('name')} images "
            f"with {extractor.name} -> {path}")
        arrays = compute(images, extractor)
        meta = {"dataset": dataset, "extractor": extractor.name, "weights_hash": extractor.weights_hash, "num": len(images)}
        _save_atomic(path, arrays, meta)
    score = arrays.get("inception_score")
    return ReferenceStats(
        arrays["mu"], arrays["sigma"], arrays["features"], None if score is None else tuple(map(float, score)),
        cache_key(dataset, extractor), path, cached,
    )
