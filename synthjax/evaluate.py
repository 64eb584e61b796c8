"""Evaluate a trained run: FID, KID, Inception Score, precision/recall and likelihood.

    python -m synthjax.evaluate --workdir runs/dcgan [--metrics fid,kid,is,pr,nll] [--num 10000]
        [--extractor mnist_classifier|inception] [--inception-weights PATH] [--iwae-k 1000] [--config.KEY VALUE ...]
    python -m synthjax.evaluate --workdir runs/dcgan --preset fid10k|fid50k

Held-out protocol: references and likelihoods come from the test split
(`data.eval_split`, default 'test'; `--split` overrides it), never from the
images the model trained on (`data.split`). The bundled MNIST test split is a
fixed, class-stratified 2,000 of its 10,000 digits (synthjax.data.sources).

Samples `--num` images from the latest checkpoint (`synthjax.sample`), extracts
features with the chosen extractor and compares them with reference
statistics of the test split, cached on disk per image content and extractor
weights hash (`synthjax.metrics.reference`). `nll` asks the trainer for
`log_likelihood` (an IWAE bound for VAEs, exact for PixelRNN, bounds for DRAW and DDPM) of
the first `--nll-num` test images. Writes `eval.json` in the workdir: metrics,
the split they were measured on, sample count, extractor name and weights
hash, checkpoint step and dataset. The default extractor is a small
MNIST classifier trained into `$SYNTHJAX_CACHE` (or `~/.cache/synthjax`) on
first use; see docs/metrics.md for what each number means and compares to.

A preset (`PRESETS`) fixes the sample count (10,000 / 50,000), the metrics
(fid, kid), the reference split (all of 'test') and, unless `--extractor`
names one, picks Inception where its weights are, else the MNIST classifier;
a flag that sets one of the fixed settings to another value is refused. The
command draws samples and extracts their features on every device of every
process (`synthjax.sample_features`); the numbers do not depend on how many.

The same `Evaluator` runs inside training at `eval.every` steps
(`periodic_evaluator`), logging `eval/fid` and friends, and `eval/split`, to metrics.jsonl.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from synthjax import config as config_lib
from synthjax import tuning
from synthjax.errors import UserError
from synthjax.files import write_atomic
from synthjax.images import to_uint8
from synthjax.metrics import (
    FeatureExtractor,
    InceptionFeatureExtractor,
    class_confidence,
    frechet_distance,
    gaussian_stats,
    inception_score_from_logits,
    kid,
    nats_to_bits_per_dim,
    precision_recall,
)
from synthjax.metrics import classifier as classifier_lib
from synthjax.metrics import reference
from synthjax.parallel import make_mesh
from synthjax.sample_features import SampleFeatures

SAMPLE_METRICS = ("fid", "kid", "is", "pr")
VALID_METRICS = (*SAMPLE_METRICS, "nll")
EXTRACTORS = ("mnist_classifier", "inception")
INCEPTION_FILE = "inception_fid.npz"
IS_SPLITS = 10
PR_K = 3
KID_SUBSET = 1000
SAMPLE_BATCH = 1000


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What to evaluate and how: metric names, sample counts, extractor and its weights, NLL estimator size."""

    metrics: tuple[str, ...] | None = None  # None: every sample metric, plus nll where the trainer has it
    num: int = 10000
    extractor: str = "mnist_classifier"
    weights: str = ""  # '' = the extractor's default location
    iwae_k: int = 1000
    nll_num: int = 1000
    num_ref: int = 0  # 0: every image of the dataset
    seed: int = 0
    resize: str = "pytorch_fid"  # Inception input resize: 'pytorch_fid' (bilinear) or 'clean' (clean-fid's bicubic)


def parse_metrics(text: str) -> tuple[str, ...]:
    """'fid, kid' -> ('fid', 'kid'); unknown or missing names raise, listing the valid ones."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in VALID_METRICS]
    if unknown or not names:
        raise UserError(f"unknown metric(s) {unknown or text!r}; valid: {', '.join(VALID_METRICS)} (comma-separated)")
    return names


def _positive(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


def validate_settings(s: EvalSettings, where: str = "--") -> EvalSettings:
    """Check names and counts; `where` prefixes the option names in messages ('--' or 'eval.')."""
    if s.extractor not in EXTRACTORS:
        raise UserError(f"unknown extractor {s.extractor!r} ({where}extractor); valid: {', '.join(EXTRACTORS)}")
    for name, minimum in (("num", 1), ("iwae_k", 1), ("nll_num", 1), ("num_ref", 0)):
        option = name.replace("_", "-") if where == "--" else name
        _positive(f"{where}{option}", getattr(s, name), minimum)
    return s


# ----------------------------------------------------------------------------- extractors


def load_extractor(name: str, weights: str = "", log: Callable[[str], None] = print, resize: str = "pytorch_fid") -> FeatureExtractor:
    """The named feature extractor; the MNIST classifier is trained into the cache on first use.

    An explicit `weights` path must exist (a missing file raises with the
    command that makes it); only the default classifier location is filled in
    automatically.
    """
    if name == "mnist_classifier":
        path = weights or classifier_lib.ensure_default_weights(log=log)
        return classifier_lib.ClassifierFeatureExtractor.from_npz(path)
    if name == "inception":
        return InceptionFeatureExtractor.from_npz(weights or classifier_lib.cache_dir() / INCEPTION_FILE, resize=resize)
    raise UserError(f"unknown extractor {name!r}; valid: {', '.join(EXTRACTORS)}")


def feature_dim(extractor: FeatureExtractor) -> int | None:
    """Feature width if known without running the network (for the sample-count check), else None."""
    if isinstance(extractor, InceptionFeatureExtractor):
        return 2048
    return getattr(extractor, "feature_dim", None)


def check_compatible(extractor: FeatureExtractor, image_shape: tuple[int, int, int], dataset: str) -> None:
    """Raise unless the dataset's images can be fed to `extractor` (grey goes to RGB extractors by repetition)."""
    spec, (h, w, c) = extractor.input_spec, image_shape
    channels_ok = c == spec.channels or (c == 1 and spec.channels == 3)
    size_ok = spec.size is None or tuple(spec.size) == (h, w)
    if not (channels_ok and size_ok):
        raise UserError(
            f"extractor {extractor.name} takes {spec.describe()} images, but dataset {dataset!r} has {h}x{w}x{c} "
            f"images; use --extractor inception --inception-weights PATH (any size, RGB), or a classifier trained "
            f"on this data (python -m synthjax.metrics.classifier --data ...)"
        )


def to_extractor_input(images: np.ndarray, extractor: FeatureExtractor) -> np.ndarray:
    """Repeat a grey channel three times for RGB extractors (the usual MNIST-with-Inception convention)."""
    if images.shape[-1] == 1 and extractor.input_spec.channels == 3:
        return np.repeat(images, 3, axis=-1)
    return images


def min_samples(metrics: tuple[str, ...], dim: int | None) -> dict[str, int]:
    """Fewest samples (generated and reference) each metric needs."""
    need = {"fid": (dim or 1) + 1, "kid": 2, "is": IS_SPLITS, "pr": PR_K + 1}
    return {m: need[m] for m in metrics if m in need}


def check_sample_counts(metrics: tuple[str, ...], num: int, num_ref: int | None, extractor: FeatureExtractor) -> None:
    """Raise if `num` generated (or `num_ref` real) samples are too few for a requested metric."""
    dim = feature_dim(extractor)
    for metric, need in min_samples(metrics, dim).items():
        why = f"a non-singular {dim}-d covariance" if metric == "fid" else "its estimator"
        if num < need:
            raise UserError(
                f"--num={num} is too few samples for {metric} with {extractor.name} features: {why} needs at least "
                f"{need}; use --num >= {need} (10000 is the convention here, 50000 for Inception FIDs)"
            )
        if num_ref is not None and num_ref < need:
            raise UserError(f"the reference set has {num_ref} images; {metric} needs at least {need} (--num-ref)")


# ----------------------------------------------------------------------------- data


def eval_split(data_cfg: ml_collections.ConfigDict) -> str:
    """The split evaluation reads: `data.eval_split` ('test' unless set)."""
    return data_cfg.get("eval_split", "test") or "test"


def dataset_description(data_cfg: ml_collections.ConfigDict, num_ref: int) -> dict:
    """Which reference images were used, for eval.json and the reference cache file's name."""
    return {
        "name": data_cfg.name,
        "path": os.path.abspath(data_cfg.path) if data_cfg.get("path") else "",
        "split": eval_split(data_cfg),
        "image_size": data_cfg.get("image_size", 0),
        "num_ref": num_ref,
    }


def dataset_images(source, limit: int = 0) -> np.ndarray:
    """The first `limit` (0: all) uint8 images of a data source, in dataset order."""
    n = len(source) if not limit else min(limit, len(source))
    records = source.records
    if hasattr(records, "images"):
        return np.asarray(records.images[:n])
    return np.stack([records[i]["image"] for i in range(n)])


# ----------------------------------------------------------------------------- metrics


def sample_quality(metrics: tuple[str, ...], ref: reference.ReferenceStats, fake: dict, seed: int) -> dict[str, float]:
    """FID / KID / IS / precision-recall of generated features `fake` against reference statistics."""
    feats, out = fake["features"], {}
    if "fid" in metrics:
        out["fid"] = frechet_distance(ref.mu, ref.sigma, *(fake["stats"] if "stats" in fake else gaussian_stats(feats)))
    if "kid" in metrics:
        out["kid"], out["kid_std"] = kid(ref.features, feats, subset_size=min(KID_SUBSET, len(feats), ref.num), seed=seed)
    if "is" in metrics:
        logits = fake.get("logits_unbiased", fake.get("logits"))
        if logits is None:
            raise UserError("metric 'is' needs class logits, which this extractor does not produce; drop 'is' from --metrics")
        out["is"], out["is_std"] = inception_score_from_logits(logits, num_splits=IS_SPLITS)
        out.update({f"is_{k}": v for k, v in class_confidence(logits).items()})  # IS's two halves, readable
        if ref.inception_score is not None:
            out["is_real"] = ref.inception_score[0]
    if "pr" in metrics:
        # Equal set sizes, as Kynkaanniemi et al.: a fixed random subset of the references.
        n = min(len(feats), ref.num)
        real = ref.features[np.sort(np.random.default_rng(seed).choice(ref.num, n, replace=False))]
        out.update(precision_recall(real, feats[:n], k=PR_K))
    return {k: float(v) for k, v in out.items()}


def nll_convention(config: ml_collections.ConfigDict, trainer, iwae_k: int, seed: int) -> str:
    """One sentence on what the reported NLL is a likelihood of, and how it was estimated."""
    if config.data.get("binarize", False):
        data = (f"binarised data: -log p(x) in nats per image on {{0,1}}^D, the 8-bit images dynamically binarised "
                f"once with seed {seed}, no dequantisation")
    else:
        data = "8-bit data: -log P(x) of a discrete model in nats per image on {0..255}^D, no dequantisation"
    return f"{data}; {trainer.likelihood_estimator(iwae_k)}; bits/dim = nats / (D ln 2)"


def negative_log_likelihood(log_likelihood: Callable, state, x01: np.ndarray, key: jax.Array, iwae_k: int, batch: int = 100) -> float:
    """Mean of -log_likelihood(state, x, key, iwae_k) (a jitted trainer method) over images `x01`, in nats per image."""
    total = 0.0
    for i in range(0, len(x01), batch):
        chunk = x01[i : i + batch]
        # Pad the last batch so one compiled shape serves every batch.
        padded = np.concatenate([chunk, np.repeat(chunk[:1], batch - len(chunk), 0)]) if len(chunk) < batch else chunk
        log_p = np.asarray(log_likelihood(state, padded, jax.random.fold_in(key, i), iwae_k))[: len(chunk)]
        if not np.all(np.isfinite(log_p)):
            raise UserError(f"log_likelihood returned non-finite values for images {i}..{i + len(chunk) - 1}")
        total -= float(log_p.sum())
    return total / len(x01)


# ----------------------------------------------------------------------------- the evaluator


class Evaluator:
    """Sample-quality and likelihood evaluation of one run's states; built once, called per checkpoint.

    Construction loads (or first trains) the extractor, checks it against the
    data, and loads or computes the reference statistics; `__call__(state)`
    samples, extracts and returns a flat dict of metrics. A fixed sample seed
    makes successive evaluations differ only by the model.
    """

    def __init__(self, config: ml_collections.ConfigDict, trainer, settings: EvalSettings, log: Callable[[str], None] = print,
                 mesh: Mesh | None = None):
        from synthjax.data import get_source

        # With a mesh, samples are drawn and their features extracted over all its devices (the command);
        # without, on this process's default device (the training loop evaluates a process-local copy).
        self.config, self.trainer, self.log, self.mesh, self._spread = config, trainer, log, mesh, None
        self.settings = validate_settings(settings)
        self.metrics = self._resolve_metrics(settings.metrics)
        self.split = eval_split(config.data)
        self.source = get_source(config.data, self.split)  # held out: never the training images
        self.sample_metrics = tuple(m for m in self.metrics if m in SAMPLE_METRICS)
        self.extractor = self.ref = None
        if self.sample_metrics:
            self._prepare_features()
        # Jitted once here: a fresh jax.jit of a bound method per evaluation re-traces it every time.
        self._sample = jax.jit(trainer.sample, static_argnums=2)
        self._log_likelihood = jax.jit(trainer.log_likelihood, static_argnums=3) if "nll" in self.metrics else None

    def _resolve_metrics(self, requested: tuple[str, ...] | None) -> tuple[str, ...]:
        has_ll = self.trainer.log_likelihood_kind != "none"
        if requested is None:
            return (*SAMPLE_METRICS, "nll") if has_ll else SAMPLE_METRICS
        if "nll" in requested and not has_ll:
            raise UserError(
                f"metric 'nll' needs a trainer with log_likelihood(state, x, key, num_samples); model.family="
                f"{self.trainer.family!r} has none (it defines no tractable likelihood). Drop 'nll' from the metrics"
            )
        return requested

    def _prepare_features(self) -> None:
        s = self.settings
        num_ref = min(s.num_ref or len(self.source), len(self.source))
        self.extractor = load_extractor(s.extractor, s.weights, self.log, s.resize)
        check_compatible(self.extractor, self.source.image_shape, self.source.name)
        check_sample_counts(self.sample_metrics, s.num, num_ref, self.extractor)
        load = lambda: to_extractor_input(dataset_images(self.source, num_ref), self.extractor)  # noqa: E731
        self.ref = reference.load_or_compute(dataset_description(self.config.data, num_ref), load, self.extractor, log=self.log)

    def generate(self, state: Any) -> np.ndarray:
        """`settings.num` uint8 samples, the images `python -m synthjax.sample --num N --seed S` exports."""
        s = self.settings
        batch, key = SAMPLE_BATCH, jax.random.key(s.seed)  # sample.generate's default batch: the same draws
        chunks = [to_uint8(np.asarray(self._sample(state, jax.random.fold_in(key, i), batch))) for i in range(-(-s.num // batch))]
        return np.concatenate(chunks)[: s.num]

    def sample_features(self, state: Any) -> dict:
        """Features (and logits) of the `settings.num` samples `generate` draws: over the mesh when there is
        one (plus their float64 `stats`), else extracted here from the generated images."""
        s = self.settings
        if self.mesh is None:
            return self.extractor(to_extractor_input(self.generate(state), self.extractor))
        if self._spread is None:
            self._spread = SampleFeatures(self.trainer, self.extractor, self.mesh, SAMPLE_BATCH)
        return self._spread(state, s.num, s.seed)

    def __call__(self, state: Any) -> dict[str, float]:
        """Metrics of `state` (host or replicated): fid, kid(_std), is(_std, _real), precision, recall, nll_nats, nll_bits_per_dim."""
        s, out = self.settings, {}
        if self.sample_metrics:
            out.update(sample_quality(self.sample_metrics, self.ref, self.sample_features(state), s.seed))
        if "nll" in self.metrics:
            out.update(self._nll(state))
        return out

    def _nll(self, state: Any) -> dict[str, float]:
        s = self.settings
        images = dataset_images(self.source, s.nll_num)
        # The trainer's own preprocessing (range, binarisation), drawn once from a fixed seed.
        x = self.trainer.preprocess({"image": images, "label": None}, np.random.default_rng(s.seed))["image"]
        nats = negative_log_likelihood(self._log_likelihood, state, x, jax.random.key(s.seed), s.iwae_k)
        return {"nll_nats": nats, "nll_bits_per_dim": float(nats_to_bits_per_dim(nats, math.prod(images.shape[1:])))}

    def describe(self) -> dict:
        """What the numbers were computed with, for eval.json."""
        s = self.settings
        info: dict[str, Any] = {"split": self.split, "metrics_requested": list(self.metrics), "num_samples": s.num, "seed": s.seed}
        if self.extractor is not None:
            info["extractor"] = {"kind": s.extractor, "name": self.extractor.name, "weights_sha256": self.extractor.weights_hash}
            if isinstance(self.extractor, classifier_lib.ClassifierFeatureExtractor):
                info["extractor"]["test_accuracy"] = self.extractor.meta.get("test_accuracy")
            info["reference"] = {"num": self.ref.num, "path": str(self.ref.path), "key": self.ref.key, "cached": self.ref.cached}
        if "nll" in self.metrics:
            n = min(s.nll_num, len(self.source))
            info["nll"] = {"num_images": n, "split": self.split, "iwae_k": s.iwae_k,
                           "convention": nll_convention(self.config, self.trainer, s.iwae_k, s.seed)}
        return info


# ----------------------------------------------------------------------------- training-loop plug-in


class PeriodicEvaluator:
    """`eval.every`-step evaluation inside `train_and_evaluate`, returning `eval/<metric>` scalars and `eval/split`."""

    def __init__(self, evaluator: Evaluator, every: int):
        self.evaluator, self.every = evaluator, every

    def due(self, step: int, last_step: int) -> bool:
        return step % self.every == 0 or step == last_step

    def __call__(self, state: Any) -> dict[str, float | str]:
        return {**{f"eval/{k}": v for k, v in self.evaluator(state).items()}, "eval/split": self.evaluator.split}


def settings_from_config(eval_cfg: ml_collections.ConfigDict) -> EvalSettings:
    """EvalSettings from a config's `eval` section, with errors naming the `eval.` keys."""
    s = EvalSettings(
        metrics=parse_metrics(eval_cfg.metrics) if eval_cfg.metrics else None,
        num=eval_cfg.num, extractor=eval_cfg.extractor, weights=eval_cfg.weights,
        iwae_k=eval_cfg.iwae_k, nll_num=eval_cfg.nll_num, num_ref=eval_cfg.num_ref, seed=eval_cfg.seed,
        resize=eval_cfg.get("resize", "pytorch_fid"),
    )
    return validate_settings(s, where="eval.")


def periodic_evaluator(config: ml_collections.ConfigDict, trainer, log: Callable[[str], None] = print) -> PeriodicEvaluator | None:
    """The training loop's evaluator, or None when `eval.every` is 0 (or the config has no `eval` section)."""
    eval_cfg = config.get("eval")
    if eval_cfg is None or not eval_cfg.get("every", 0):
        return None
    every = _positive("eval.every", eval_cfg.every, 0)
    return PeriodicEvaluator(Evaluator(config, trainer, settings_from_config(eval_cfg), log), every)


# ----------------------------------------------------------------------------- the command


def evaluate_workdir(
    workdir: str, settings: EvalSettings, split: str = "", out: str = "", log: Callable[[str], None] = print,
    overrides: Sequence[str] = (), preset: dict | None = None,
) -> dict:
    """Evaluate the latest checkpoint of `workdir` (its saved config with `overrides`) on `split` (default: the
    run's data.eval_split, 'test'), write `out` (default `workdir/eval.json`, from process 0) and return its
    contents. Samples are drawn and their features extracted on all devices of all processes; `preset`
    (from `resolve_preset`) is recorded."""
    from synthjax.sample import load_run

    t0 = time.perf_counter()
    config, trainer, state, step = load_run(workdir, overrides=overrides)
    if split:
        config.data.eval_split = split
    evaluator = Evaluator(config, trainer, settings, log, mesh=make_mesh())
    values = evaluator(state)
    result = {
        "workdir": os.path.abspath(workdir), "step": step, "model": f"{config.model.family}/{config.model.arch}",
        "dataset": dataset_description(config.data, evaluator.ref.num if evaluator.ref else 0),
        "metrics": values, **evaluator.describe(), **({"preset": preset} if preset else {}),
        "devices": jax.device_count(), "processes": jax.process_count(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "seconds": round(time.perf_counter() - t0, 1),
    }
    if jax.process_index() == 0:
        write_atomic(Path(out or Path(workdir) / "eval.json"), json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- presets


@dataclasses.dataclass(frozen=True)
class Preset:
    """A named protocol: how many samples, which metrics, which reference split (all of its images)."""

    name: str
    num: int
    metrics: tuple[str, ...] = ("fid", "kid")  # KID: 100 subsets of 1000, seconds next to the sampling
    split: str = "test"


PRESETS = {p.name: p for p in (Preset("fid10k", 10000), Preset("fid50k", 50000))}


def preset_extractor(a: argparse.Namespace) -> tuple[str, str]:
    """(extractor, why) for a preset without --extractor: Inception where its weights are, else the MNIST classifier."""
    if a.extractor:
        return a.extractor, "--extractor"
    if a.inception_weights:
        return "inception", "--inception-weights"
    if a.classifier_weights:
        return "mnist_classifier", "--classifier-weights"
    default = classifier_lib.cache_dir() / INCEPTION_FILE
    if default.is_file():
        return "inception", f"Inception weights at {default}"
    return "mnist_classifier", f"no Inception weights at {default} (python -m synthjax.metrics.inception fetch makes them)"


def resolve_preset(a: argparse.Namespace, log: Callable[[str], None] = print) -> dict | None:
    """Fill `a`'s sample count, metrics, split and reference count from `a.preset` (in place) and return the
    record for eval.json; a flag that sets one of them to another value raises. None without a preset."""
    if not a.preset:
        if a.preset_num_samples:
            raise UserError("--preset-num-samples only shrinks a --preset (fid10k, fid50k) for smoke tests; use --num")
        return None
    if a.preset not in PRESETS:
        raise UserError(f"unknown preset {a.preset!r} (--preset); valid: {', '.join(PRESETS)}")
    p = PRESETS[a.preset]
    fixed = {"num": p.num, "metrics": ",".join(p.metrics), "split": p.split, "num_ref": 0}
    for name, value in fixed.items():
        given = getattr(a, name)
        same = given == value or (name == "metrics" and given is not None and set(parse_metrics(given)) == set(p.metrics))
        if given is not None and not same:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} {given} conflicts with --preset {p.name}, which fixes {flag} {value}; "
                            f"drop {flag}, or drop --preset to choose every setting yourself")
        setattr(a, name, value)
    a.extractor, why = preset_extractor(a)
    record = {"name": p.name, "num_samples": p.num, "extractor": a.extractor}
    if a.preset_num_samples:
        a.num = record["reduced_num_samples"] = a.preset_num_samples
        log(f"synthjax: --preset {p.name} with --preset-num-samples {a.num}: a smoke test, not a {p.name} figure")
    log(f"synthjax: --preset {p.name}: {a.num} samples, metrics {','.join(p.metrics)}, all {p.split}-split "
        f"references, extractor {a.extractor} ({why})")
    return record


def _settings_from_args(a: argparse.Namespace) -> EvalSettings:
    if a.inception_weights and a.extractor != "inception":
        raise UserError(f"--inception-weights is only used with --extractor inception (got --extractor {a.extractor})")
    if a.classifier_weights and a.extractor != "mnist_classifier":
        raise UserError(f"--classifier-weights is only used with --extractor mnist_classifier (got --extractor {a.extractor})")
    return EvalSettings(
        metrics=parse_metrics(a.metrics) if a.metrics else None, num=a.num, extractor=a.extractor,
        weights=a.inception_weights or a.classifier_weights, iwae_k=a.iwae_k, nll_num=a.nll_num,
        num_ref=a.num_ref, seed=a.seed, resize=a.resize,
    )


def _join(address: str, num_processes: int | None, process_id: int | None) -> None:
    """Join a multi-process evaluation (one command per process, as train.py's --coordinator_address)."""
    try:
        jax.distributed.initialize(address, num_processes, process_id)
    except (ValueError, TypeError) as e:  # jax's checks of the settings, e.g. process_id >= num_processes
        raise UserError(f"cannot join the multi-process evaluation ({e}); set --coordinator-address, "
                        f"--num-processes and --process-id") from None


def _fill_defaults(a: argparse.Namespace) -> None:
    """The defaults of the flags a preset can fix (None there, to tell 'not given' from 'given')."""
    for name, default in (("num", 10000), ("metrics", ""), ("split", ""), ("num_ref", 0), ("extractor", "mnist_classifier")):
        if getattr(a, name) in (None, ""):
            setattr(a, name, default)


def parser() -> argparse.ArgumentParser:
    """The command's flags (config overrides are split off before parsing)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--preset", default="", help=f"one of {', '.join(PRESETS)}: fixes --num, --metrics fid,kid, --split test, "
                   "--num-ref 0; extractor inception where its weights are, else mnist_classifier")
    p.add_argument("--preset-num-samples", type=int, default=0, help=argparse.SUPPRESS)  # smoke tests of a preset
    p.add_argument("--metrics", default=None, help=f"comma-separated, of {','.join(VALID_METRICS)} (default: all the model supports)")
    p.add_argument("--num", type=int, default=None, help="generated samples (default 10000)")
    p.add_argument("--extractor", default="", help=f"one of {', '.join(EXTRACTORS)} (default mnist_classifier)")
    p.add_argument("--inception-weights", default="", help=f"converted FID Inception npz (default $SYNTHJAX_CACHE/{INCEPTION_FILE})")
    p.add_argument("--classifier-weights", default="", help="classifier npz (default: trained into the cache on first use)")
    p.add_argument("--iwae-k", type=int, default=1000, help="importance samples per image for IWAE likelihoods")
    p.add_argument("--nll-num", type=int, default=1000, help="dataset images for the nll metric")
    p.add_argument("--num-ref", type=int, default=None, help="reference images (default 0: the whole dataset)")
    p.add_argument("--split", default=None, help="dataset split for references and nll (default: the run's data.eval_split, 'test')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resize", default="pytorch_fid", help="Inception input resize: pytorch_fid (bilinear, as papers) or clean (clean-fid)")
    p.add_argument("--out", default="", help="result file (default WORKDIR/eval.json, replaced by each evaluation)")
    p.add_argument("--coordinator-address", default="", help="host:port of process 0, to evaluate from several processes")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: prints the metrics and the path of eval.json."""
    from absl import logging

    p = parser()
    try:
        rest, overrides = config_lib.split_overrides(sys.argv[1:] if argv is None else argv)
    except UserError as e:
        p.error(str(e))
    a = p.parse_args(rest)
    logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    tuning.apply()
    try:
        if a.coordinator_address:
            _join(a.coordinator_address, a.num_processes, a.process_id)
        preset = resolve_preset(a)
        _fill_defaults(a)
        result = evaluate_workdir(a.workdir, _settings_from_args(a), a.split, a.out, overrides=overrides, preset=preset)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if jax.process_index():
        return 0  # process 0 reports and writes
    summary = ", ".join(f"{k}={v:.4g}" for k, v in result["metrics"].items())
    out = a.out or Path(a.workdir) / "eval.json"
    print(f"synthjax.evaluate: step {result['step']}, {result['num_samples']} samples: {summary} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
