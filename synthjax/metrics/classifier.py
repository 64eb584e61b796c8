"""A small domain classifier for grey digit-sized images: the offline feature extractor for FID/KID/PR/IS.

The FID Inception needs weights that are not available offline and was never
trained on digits. This module trains a two-convolution CNN on the train
split of a labelled dataset (for MNIST offline: the 8,000 bundled train
digits) and measures its accuracy on the test split (the 2,000 bundled test
digits, the same images FID references come from), and wraps it as a
`FeatureExtractor`: the 128-d penultimate (post-ReLU) activations are the
features for an MNIST-domain FID / KID / precision-recall, and the softmax over
the 10 classes gives an MNIST Inception Score. Numbers computed with it are
comparable only with numbers computed with the same weights, which is why the
extractor's `weights_hash` (a sha256 of the weight arrays) goes into every
report and every reference-statistics cache key.

    python -m synthjax.metrics.classifier --out ~/.cache/synthjax [--data mnist_bundled] [--steps 2000]

writes `mnist_classifier_trainsplit.npz` (flat Flax variables plus a JSON `__meta__`
record: dataset, steps, train/test sizes, `test_accuracy`, weights sha256). The
file name differs from that of earlier classifiers, which trained on the test
digits, so such a cached file is never reused.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from synthjax.errors import UserError
from synthjax.files import save_npz_atomic
from synthjax.metrics.extractors import FeatureExtractor, InputSpec

ARCH = "cnn16s2-32s2-128-v1"
WEIGHTS_FILE = "mnist_classifier_trainsplit.npz"
META_KEY = "__meta__"
DEFAULT_STEPS = 2000
DEFAULT_BATCH = 128
FEATURE_DIM = 128
TRAIN_COMMAND = "python -m synthjax.metrics.classifier --out {out}"


class WeightsNotFoundError(UserError, FileNotFoundError):
    """The classifier weight file is missing; the message gives the command that makes it."""


def cache_dir() -> Path:
    """Where synthjax keeps derived files: `$SYNTHJAX_CACHE`, else `~/.cache/synthjax`."""
    return Path(os.environ.get("SYNTHJAX_CACHE") or Path.home() / ".cache" / "synthjax").expanduser()


def default_weights_path() -> Path:
    """The shipped default location of the MNIST classifier: `cache_dir()/mnist_classifier_trainsplit.npz`."""
    return cache_dir() / WEIGHTS_FILE


class DomainClassifier(nn.Module):
    """conv3x3/2(16)-conv3x3/2(32)-dense(128)-dense(classes), ReLUs; returns (features, logits).

    Small on purpose: it trains to ~98% MNIST accuracy in about a minute on two
    CPU cores, and its 128-d features need only 129 samples for a
    non-singular FID covariance (Inception's 2048-d need 2049).
    """

    num_classes: int = 10
    feature_dim: int = FEATURE_DIM

    @nn.compact
    def __call__(self, images01_bhwc: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = images01_bhwc - 0.5
        # Strided convolutions rather than max pools: XLA's CPU gradient of max_pool
        # (select-and-scatter) made training ten times slower.
        for name, width in (("conv1", 16), ("conv2", 32)):
            h = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2), name=name)(h))
        features = nn.relu(nn.Dense(self.feature_dim, name="features")(h.reshape((h.shape[0], -1))))
        return features, nn.Dense(self.num_classes, name="logits")(features)


def weights_sha256(flat: dict[str, np.ndarray]) -> str:
    """sha256 over the weight arrays (name, dtype, shape, bytes, in sorted key order).

    Hashing the arrays rather than the .npz file makes the hash independent of
    zip timestamps and of the metadata stored next to the weights, so equal
    weights always give equal hashes (and equal reference-statistics cache keys).
    """
    digest = hashlib.sha256()
    for key in sorted(flat):
        arr = np.ascontiguousarray(flat[key])
        digest.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _logits_fn(num_classes: int, feature_dim: int):
    model = DomainClassifier(num_classes, feature_dim)
    return lambda params, x01: model.apply({"params": params}, x01)


@functools.partial(jax.jit, static_argnames=("num_classes", "feature_dim"))
def _forward(params: dict, images_uint8: jax.Array, num_classes: int, feature_dim: int) -> tuple[jax.Array, jax.Array]:
    """uint8 NHWC -> (features, logits)."""
    return _logits_fn(num_classes, feature_dim)(params, images_uint8.astype(jnp.float32) / 255.0)


def _random_shift(key: jax.Array, images01: jax.Array, max_shift: int = 2) -> jax.Array:
    """Translate each image by up to `max_shift` pixels (zero fill): cheap augmentation for an 8k training set."""
    b, h, w, _ = images01.shape
    padded = jnp.pad(images01, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    offsets = jax.random.randint(key, (b, 2), 0, 2 * max_shift + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, img.shape[-1]))  # noqa: E731
    return jax.vmap(crop)(padded, offsets)


# Adam whose learning rate is an input, so every training run (any step count) reuses one compiled step.
OPTIMIZER = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)


@functools.partial(jax.jit, static_argnames="num_classes")
def _train_step(params, opt_state, images_uint8, labels, key, lr, num_classes: int):
    """One Adam step on a randomly shifted batch; returns (params, opt_state, loss)."""
    x = _random_shift(key, images_uint8.astype(jnp.float32) / 255.0)
    apply = _logits_fn(num_classes, FEATURE_DIM)

    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(apply(p, x)[1], labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    opt_state.hyperparams["learning_rate"] = lr
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def load_labelled(data_name: str = "mnist_bundled", data_path: str = "", split: str = "train") -> tuple[np.ndarray, np.ndarray, str]:
    """(images uint8 NHWC, int labels, dataset name) of one split of a labelled synthjax data source."""
    from synthjax.config import base_config
    from synthjax.data import get_source

    data_cfg = base_config().data
    data_cfg.update(dict(name=data_name, path=data_path))
    source = get_source(data_cfg, split)
    if not source.has_labels:
        raise UserError(f"dataset {source.name!r} has no labels; the classifier needs a labelled dataset (e.g. --data mnist_bundled)")
    records = source.records
    if hasattr(records, "images") and records.labels is not None:
        return np.asarray(records.images), np.asarray(records.labels, np.int32), source.name
    items = [records[i] for i in range(len(records))]
    return np.stack([r["image"] for r in items]), np.array([r["label"] for r in items], np.int32), source.name


def accuracy(params: dict, images: np.ndarray, labels: np.ndarray, num_classes: int, batch: int = 1000) -> float:
    """Top-1 accuracy of the classifier on uint8 images."""
    correct = 0
    for i in range(0, len(images), batch):
        _, logits = _forward(params, jnp.asarray(images[i : i + batch]), num_classes, FEATURE_DIM)
        correct += int(np.sum(np.argmax(np.asarray(logits), -1) == labels[i : i + batch]))
    return correct / len(images)


def train_classifier(
    train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], steps: int = DEFAULT_STEPS,
    seed: int = 0, batch_size: int = DEFAULT_BATCH, log=print,
) -> tuple[dict, dict]:
    """Train on the `train` (images, labels); return (params, meta with the accuracy on `test`).

    Adam with a cosine-decayed 1e-3 learning rate and +-2 pixel random shifts;
    batches are drawn from a seeded epoch-wise permutation, so the same inputs
    and seed give the same weights on the same platform. The test images are
    only scored, never trained on.
    """
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    images, labels = train
    num_classes = int(max(labels.max(), test[1].max())) + 1
    schedule = optax.cosine_decay_schedule(1e-3, steps)
    key = jax.random.key(seed)
    params = DomainClassifier(num_classes).init(key, jnp.zeros((1, *images.shape[1:])))["params"]
    opt_state = OPTIMIZER.init(params)
    rng, order, t0 = np.random.default_rng(seed + 1), np.array([], np.int64), time.perf_counter()
    for i in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(images))])
        idx, order = order[:batch_size], order[batch_size:]
        lr = jnp.float32(schedule(i))
        params, opt_state, loss = _train_step(params, opt_state, images[idx], labels[idx], jax.random.fold_in(key, i), lr, num_classes)
        if (i + 1) % max(1, steps // 4) == 0:
            log(f"  classifier step {i + 1}/{steps}: loss {float(loss):.4f}")
    acc = accuracy(params, *test, num_classes)
    meta = {
        "arch": ARCH, "num_classes": num_classes, "image_shape": list(images.shape[1:]), "steps": steps,
        "batch_size": batch_size, "seed": seed, "num_train": len(images), "num_test": len(test[0]),
        "trained_on": "train", "test_accuracy": acc, "train_seconds": round(time.perf_counter() - t0, 1),
        "date": datetime.date.today().isoformat(),
    }
    return jax.device_get(params), meta


def save_weights(path: str | Path, params: dict, meta: dict) -> str:
    """Write params + meta to an npz atomically (temp file, then rename); return the weights sha256."""
    path = Path(path)
    flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
    digest = weights_sha256(flat)
    save_npz_atomic(path, {**flat, META_KEY: np.array(json.dumps({**meta, "weights_sha256": digest}))})
    return digest


def load_weights(path: str | Path) -> tuple[dict, dict, str]:
    """(params, meta, weights sha256) from a classifier npz; raises if missing, not a classifier, or altered."""
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"classifier weights not found at {path}; train them (about a minute on a CPU) with:\n  "
            + TRAIN_COMMAND.format(out=path.parent)
            + (f" --name {path.name}" if path.name != WEIGHTS_FILE else "")
        )
    try:
        with np.load(path) as npz:
            flat = {k: npz[k] for k in npz.files if k != META_KEY}
            meta = json.loads(str(npz[META_KEY])) if META_KEY in npz.files else None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read classifier weights {path}: {e}; delete it and retrain") from None
    if meta is None or meta.get("arch") != ARCH:
        raise UserError(f"{path} does not hold synthjax classifier weights ({ARCH}); retrain with " + TRAIN_COMMAND.format(out=path.parent))
    digest = weights_sha256(flat)
    if digest != meta.get("weights_sha256"):
        raise UserError(
            f"{path}: weights sha256 {digest[:16]}... differs from the {str(meta.get('weights_sha256'))[:16]}... "
            "recorded when it was written (modified or damaged file); delete it and retrain"
        )
    return traverse_util.unflatten_dict(flat, sep="/"), meta, digest


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive lock next to `path`, so concurrent first uses train the classifier once."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def train_and_save(out: str | Path, data: str = "mnist_bundled", data_path: str = "", steps: int = DEFAULT_STEPS,
                   seed: int = 0, log=print) -> tuple[Path, dict]:
    """Train a classifier on the train split of a labelled dataset, score it on the test split, save it to `out`."""
    images, labels, name = load_labelled(data, data_path, "train")
    test_images, test_labels, _ = load_labelled(data, data_path, "test")
    log(f"synthjax: training the {name} feature classifier ({steps} steps on {len(images)} train images, "
        f"scored on {len(test_images)} test images) -> {out}")
    params, meta = train_classifier((images, labels), (test_images, test_labels), steps, seed, log=log)
    meta["dataset"] = name
    meta["weights_sha256"] = save_weights(out, params, meta)
    log(f"synthjax: test accuracy {meta['test_accuracy']:.4f} on {len(test_images)} images; "
        f"weights sha256 {meta['weights_sha256']} ({meta['train_seconds']} s)")
    return Path(out), meta


def ensure_default_weights(path: str | Path | None = None, steps: int = DEFAULT_STEPS, log=print) -> Path:
    """Return the default classifier path, training it there first (printing so) when it does not exist yet."""
    path = Path(path) if path else default_weights_path()
    with _file_lock(path):
        if not path.is_file():
            log(f"synthjax: no MNIST feature classifier at {path}; training it once now (first use, about a minute)")
            train_and_save(path, steps=steps, log=log)
    return path


@dataclasses.dataclass(frozen=True, eq=False)
class ClassifierFeatureExtractor(FeatureExtractor):
    """Domain-classifier features: uint8 (N, 28, 28, 1) -> features (N, 128), logits (N, classes).

    Build with `ClassifierFeatureExtractor.from_npz(path)`; `weights_hash` is
    `weights_sha256` of the arrays and `meta` the training record (dataset,
    test accuracy, ...).
    """

    params: dict | None = None
    meta: dict | None = None

    @classmethod
    def from_npz(cls, path: str | Path, batch_size: int = 500) -> "ClassifierFeatureExtractor":
        """Load weights written by `save_weights` (see `load_weights` for the errors)."""
        params, meta, digest = load_weights(path)
        h, w, c = meta["image_shape"]
        spec = InputSpec(channels=c, dtype="uint8", value_range=(0, 255), size=(h, w))
        return cls(f"classifier-{ARCH}-{meta.get('dataset', 'mnist')}", digest, spec, batch_size, params, meta)

    @property
    def feature_dim(self) -> int:
        return int(self.params["features"]["bias"].shape[0])

    def extract_batch(self, images: np.ndarray) -> dict:
        """Run one batch through the jitted classifier."""
        features, logits = _forward(self.params, jnp.asarray(images), self.meta["num_classes"], self.feature_dim)
        return {"features": features, "logits": logits}

    def device_form(self) -> tuple:
        """The classifier as `fn(params, images_uint8) -> dict`, for compiled multi-device evaluation."""
        num_classes, feature_dim = self.meta["num_classes"], self.feature_dim

        def fn(params: dict, images_uint8: jax.Array) -> dict:
            features, logits = _forward(params, images_uint8, num_classes, feature_dim)
            return {"features": features, "logits": logits}

        return fn, self.params


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: train on the train split, save, print the test accuracy and the weights sha256."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output directory (the evaluate default is $SYNTHJAX_CACHE or ~/.cache/synthjax)")
    p.add_argument("--name", default=WEIGHTS_FILE, help="file name inside --out")
    p.add_argument("--data", default="mnist_bundled", help="a labelled synthjax dataset (data.name)")
    p.add_argument("--data-path", default="", help="data.path for --data npz or folder")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        path, meta = train_and_save(Path(a.out).expanduser() / a.name, a.data, a.data_path, a.steps, a.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"path": str(path), **meta}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
