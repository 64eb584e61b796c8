"""Reference (real-data) statistics for FID/KID/PR/IS, cached on disk per dataset and extractor weights.

Extracting features of a whole dataset is the expensive half of every FID, and
it is the same for every run evaluated against that dataset. `load_or_compute`
keeps it in `cache_dir()/refstats/`, under a key that hashes the content of
the reference images (`content_sha256`: their bytes and shape, not the path
they came from), the extractor name and its `weights_hash`: statistics made
with other weights, or of other data, are never reused, and a dataset moved
or copied elsewhere keeps its cache entry. The held-out protocol feeds the
test split (`data.eval_split`) here, never the training images. Files are written atomically, so an interrupted computation
leaves no half-written cache entry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Callable

import numpy as np

from synthjax.files import save_npz_atomic
from synthjax.metrics.classifier import cache_dir
from synthjax.metrics.extractors import FeatureExtractor
from synthjax.metrics.frechet import gaussian_stats
from synthjax.metrics.inception_score import inception_score_from_logits

FORMAT_VERSION = 2


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


def content_sha256(images: np.ndarray) -> str:
    """sha256 of the images' shape, dtype and bytes: the identity of a reference set, wherever it is stored."""
    images = np.ascontiguousarray(images)
    digest = hashlib.sha256(f"{images.shape}|{images.dtype}|".encode())
    digest.update(images.tobytes())
    return digest.hexdigest()


def cache_key(content_hash: str, extractor: FeatureExtractor) -> str:
    """16 hex digits of sha256 over the images' content hash, extractor name and weights hash."""
    record = {"format": FORMAT_VERSION, "content": content_hash, "extractor": extractor.name, "weights": extractor.weights_hash}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def cache_path(dataset: dict, content_hash: str, extractor: FeatureExtractor, root: Path | None = None) -> Path:
    """`<root>/refstats/<dataset>-<split>-<extractor>-<key>.npz`: readable names, the content hash doing the work."""
    name = f"{dataset.get('name', 'data')}-{dataset.get('split', '')}-{extractor.name}"
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
    return Path(root or cache_dir()) / "refstats" / f"{slug}-{cache_key(content_hash, extractor)}.npz"


def compute(images: np.ndarray, extractor: FeatureExtractor) -> dict[str, np.ndarray]:
    """Features, FID Gaussian and IS of real images (uint8 NHWC, already in the extractor's input form)."""
    out = extractor(images)
    mu, sigma = gaussian_stats(out["features"], allow_singular=True)
    arrays = {"mu": mu, "sigma": sigma, "features": np.asarray(out["features"], np.float32)}
    logits = out.get("logits_unbiased", out.get("logits"))
    if logits is not None and len(images) >= 10:
        arrays["inception_score"] = np.array(inception_score_from_logits(logits))
    return arrays


def load_or_compute(
    dataset: dict,
    load_images: Callable[[], np.ndarray],
    extractor: FeatureExtractor,
    root: Path | None = None,
    log: Callable[[str], None] = print,
) -> ReferenceStats:
    """Reference statistics of the images `load_images()` returns under `extractor`: cached, else computed and cached.

    `load_images()` must return uint8 NHWC images in the extractor's input
    form; their content hash is the cache key (reading them is cheap next to
    extracting features). `dataset` (name, split, ...) only names the file and
    is recorded in it.
    """
    images = load_images()
    content = content_sha256(images)
    path = cache_path(dataset, content, extractor, root)
    cached = path.is_file()
    if cached:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files if k != "meta"}
    else:
        log(f"synthjax: computing reference statistics of {len(images)} {dataset.get('name')} "
            f"{dataset.get('split', '')} images with {extractor.name} -> {path}")
        arrays = compute(images, extractor)
        meta = {"dataset": dataset, "content_sha256": content, "extractor": extractor.name,
                "weights_hash": extractor.weights_hash, "num": len(images)}
        save_npz_atomic(path, {**arrays, "meta": np.array(json.dumps(meta))})
    score = arrays.get("inception_score")
    return ReferenceStats(
        arrays["mu"], arrays["sigma"], arrays["features"], None if score is None else tuple(map(float, score)),
        cache_key(content, extractor), path, cached,
    )
