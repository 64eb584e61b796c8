"""Config helpers: the shared defaults every experiment config starts from, loading, and validation.

Experiment configs live in `configs/*.py` as `get_config(arg) -> ConfigDict`.
They start from `base_config()`, fill in their model, and pass through
`finalize(config, arg)`, which applies the `smoke` variant and locks the dict
so a mistyped key is an error.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Sequence

import ml_collections
from ml_collections import config_dict

from synthjax.errors import UserError
from synthjax.tuning import ALLOCATOR_MODES

PARALLEL_MODES = ("shard_map", "pmap")
DTYPES = ("float32", "bfloat16")
NONFINITE_POLICIES = ("halt", "skip")


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every family: seed, optimiser, data, loop cadence, evaluation, stacks.

    The experiment config fills in `model` and `objective`, whose fields are its family's.
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.model = ml_collections.ConfigDict()
    c.model.family = ""
    c.model.arch = ""
    c.objective = ml_collections.ConfigDict()
    c.opt = _optimiser_defaults()
    c.data = _data_defaults()
    c.train = _train_defaults()
    c.eval = _eval_defaults()
    c.sweep = _sweep_defaults()
    return c


def _optimiser_defaults() -> ml_collections.ConfigDict:
    """Adam and its learning-rate schedule."""
    # lr is the peak rate; schedule: 'constant', 'linear' or 'cosine' decay to end_factor * lr over
    # decay_steps updates (0: train.num_steps), after warmup_steps of linear warm-up (trainers/base.py lr_factor).
    return ml_collections.ConfigDict(
        dict(lr=1e-3, b1=0.9, b2=0.999, grad_clip=0.0, schedule="constant", warmup_steps=0, decay_steps=0, end_factor=0.0)
    )


def _data_defaults() -> ml_collections.ConfigDict:
    """Which dataset, which splits, and how batches reach the step."""
    return ml_collections.ConfigDict(
        dict(
            name="mnist_bundled",
            path="",
            split="train",  # what training reads
            eval_split="test",  # what evaluation reads: eval_step, NLL, FID/KID/PR reference statistics
            image_size=0,  # 0: the dataset's own size
            binarize=False,
            skip_bad=False,
            download=True,
            tfds_data_dir="",
            num_threads=2,
            prefetch=8,
            # 'auto': hold the training split on the devices (batches drawn inside the compiled step) when it
            # fits a share of device memory and is at most CIFAR-10-sized; 'on'; 'off': the grain pipeline
            # (synthjax/data/on_device.py)
            on_device="auto",
        )
    )


def _train_defaults() -> ml_collections.ConfigDict:
    """The loop: batch, length, cadences, checkpoints, parallelism, dtype."""
    return ml_collections.ConfigDict(
        dict(
            batch_size=128,  # global, over all devices and processes
            num_steps=1000,
            log_every=50,
            sample_every=500,
            ckpt_every=500,
            keep=3,
            # Also keep the best checkpoint by a periodic evaluation metric (e.g. 'fid', 'neg_elbo': any
            # eval/<name> the run logs) in checkpoints.best/; '': off. Lower is better except for is, precision, recall.
            keep_best="",
            eval_every=0,  # 0: evaluate only at the end
            eval_batches=4,
            num_grid=64,  # images in each sample grid
            parallel="shard_map",
            dtype="float32",  # compute dtype; params and optimiser state stay float32
            on_nonfinite="halt",
            # Train steps per compiled call (a lax.scan); 0: the backend's default (synthjax/train.py STEPS_PER_CALL).
            # Cadences stay exact: a call stops short at every logging, evaluation, grid or checkpoint step.
            steps_per_call=0,
            progress=True,
            # glibc allocator setting on CPU: 'threshold', 'heap' (for steps with > 32 MiB of
            # temporaries; measured per config), 'default' (synthjax/tuning.py). Process-wide,
            # applied when the run starts.
            cpu_allocator="threshold",
        )
    )


def _eval_defaults() -> ml_collections.ConfigDict:
    """Sample-quality and likelihood evaluation during training (synthjax.evaluate).

    Off by default because its first use trains the MNIST feature classifier (~1 min on a CPU).
    """
    return ml_collections.ConfigDict(
        dict(
            every=0,  # steps between evaluations (and at the last step); 0: off
            metrics="",  # comma-separated of fid,kid,is,pr,nll; '': all the model supports
            num=1000,  # generated samples per evaluation (python -m synthjax.evaluate defaults to 10000)
            extractor="mnist_classifier",  # or 'inception' with eval.weights=PATH of the converted npz
            weights="",  # extractor weights; '': the default (classifier trained into $SYNTHJAX_CACHE on first use)
            iwae_k=100,  # importance samples per image for IWAE likelihoods
            nll_num=500,  # dataset images for the nll metric
            num_ref=0,  # reference images; 0: the whole dataset
            seed=0,  # sample seed, fixed so successive evaluations differ only by the model
            resize="pytorch_fid",  # Inception input resize: 'pytorch_fid' (bilinear) or 'clean' (clean-fid's bicubic)
        )
    )


def _sweep_defaults() -> ml_collections.ConfigDict:
    """Stacks: runs that differ only in seed or numeric hyperparameters trained as one vmapped program
    (python -m synthjax.sweep --vmap; synthjax/stack.py)."""
    return ml_collections.ConfigDict(
        dict(
            shared_data_order=False,  # True: every member reads the data order of the first member's seed
            member_shards=1,  # devices along the mesh's `members` axis (the rest form the `data` axis)
            # 'KEY=VALUE;...' applied to stacks of several members on that backend (formulations that stay
            # fast under vmap, e.g. model.conv_impl=stack; docs/performance.md, "Stacks of members")
            cpu_stack_overrides="",
            gpu_stack_overrides="",
        )
    )


def finalize(config: ml_collections.ConfigDict, arg: str | None, smoke_overrides: dict) -> ml_collections.ConfigDict:
    """Apply the `smoke` variant when asked and lock the config against unknown keys."""
    variants = {"", "smoke"}
    arg = arg or ""
    if arg not in variants:
        raise UserError(f"unknown config variant {arg!r}; valid: {sorted(variants - {''})} (e.g. configs/dcgan.py:smoke)")
    if arg == "smoke":
        config.update_from_flattened_dict(
            {
                "train.num_steps": 6,
                "train.log_every": 2,
                "train.sample_every": 3,
                "train.ckpt_every": 3,
                "train.num_grid": 16,
                "train.eval_batches": 1,
                "train.batch_size": 16,
                "train.progress": False,
                **smoke_overrides,
            }
        )
    config.lock()
    return config


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Load `configs/X.py[:arg]` and apply `key=value` overrides (as `--config.key=value` does)."""
    file, _, arg = path.partition(":")
    module = _load_config_module(file)
    return apply_overrides(module.get_config(arg or None), overrides)


OVERRIDE_PREFIX = "--config."


def split_overrides(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Take `--config.KEY=VALUE` and `--config.KEY VALUE` out of argv as 'KEY=VALUE'; return (the rest, overrides).

    Every entry point (train.py, synthjax.sweep, evaluate, sample, bench) reads overrides through this, so
    both spellings work everywhere; `load_config` and `apply_overrides` then parse each value like its field.
    """
    rest, overrides, args = [], [], list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith(OVERRIDE_PREFIX):
            rest.append(arg)
            continue
        key, eq, value = arg[len(OVERRIDE_PREFIX) :].partition("=")
        if not eq:
            if not args or args[0].startswith("--"):
                raise UserError(f"{arg} needs a value, e.g. {arg}=VALUE or {arg} VALUE")
            value = args.pop(0)
        overrides.append(f"{key}={value}")
    return rest, overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Set each 'KEY=VALUE' of `overrides` on `config` (as `--config.KEY=VALUE`), keeping each field's type."""
    for item in overrides:
        key, _, value = item.partition("=")
        set_value(config, key, value)
    return config


def _load_config_module(file: str):
    """The Python module of a config file, refusing anything that is not a `.py` file defining `get_config`."""
    if not os.path.exists(file):
        raise UserError(f"config file {file!r} not found")
    if not file.endswith(".py") or not os.path.isfile(file):
        raise UserError(f"config {file!r} is not a .py file; pass a Python config such as configs/dcgan.py (optionally configs/dcgan.py:smoke)")
    spec = importlib.util.spec_from_file_location(f"_synthjax_config_{os.path.basename(file)[:-3]}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"config file {file!r} defines no get_config(arg) function; add one returning the ConfigDict (see configs/dcgan.py)")
    return module


def set_value(config: ml_collections.ConfigDict, key: str, value: str) -> None:
    """Set a dotted key from its string form, keeping the field's type."""
    parent, _, leaf = key.rpartition(".")
    node = config
    try:
        for part in filter(None, parent.split(".")):
            node = node[part]
        old = node[leaf]
    except (KeyError, AttributeError, TypeError):
        raise UserError(f"unknown config key {key!r}{_did_you_mean(config, key)}") from None
    node[leaf] = _parse_like(old, value, key)


def _did_you_mean(config: ml_collections.ConfigDict, key: str) -> str:
    """'; did you mean ...?' with the closest existing keys, or '' when none is close."""
    import difflib

    def keys(node, prefix=""):
        for k, v in node.items():
            yield from keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [f"{prefix}{k}"]

    close = difflib.get_close_matches(key, list(keys(config)), n=3)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def _parse_like(old, value: str, key: str):
    if isinstance(old, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"config key {key!r} is a bool; got {value!r} (use true/false)")
    for kind in (int, float):
        if isinstance(old, kind):
            try:
                return kind(value)
            except ValueError:
                raise UserError(f"config key {key!r} is a {kind.__name__}; got {value!r}") from None
    return value


def validate(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Check values shared by every family; family-specific checks live in each trainer."""
    t = config.train
    _check_choice("train.parallel", t.parallel, PARALLEL_MODES)
    _check_choice("train.dtype", t.dtype, DTYPES)
    _check_choice("train.on_nonfinite", t.on_nonfinite, NONFINITE_POLICIES)
    _check_choice("train.cpu_allocator", t.cpu_allocator, ALLOCATOR_MODES)
    for key in ("batch_size", "num_steps", "log_every", "sample_every", "ckpt_every", "keep", "num_grid", "eval_batches"):
        _check_positive_int(f"train.{key}", t[key])
    for key in ("lr", "b1", "b2"):
        value = config.opt[key]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (key == "lr" and value == 0):
            raise UserError(f"opt.{key} must be a positive number, got {value!r}")
    # b1 = 0 (no momentum) is standard for SNGAN and WGAN-GP; b2 = 0 would divide by a zero second moment estimate.
    if not 0 <= config.opt.b1 < 1 or not 0 < config.opt.b2 < 1:
        raise UserError(f"opt.b1 must lie in [0, 1) and opt.b2 in (0, 1), got {config.opt.b1}, {config.opt.b2}")
    if t.batch_size % num_devices:
        raise UserError(
            f"train.batch_size={t.batch_size} is not divisible by the {num_devices} devices; "
            f"use a multiple of {num_devices}, e.g. --config.train.batch_size={num_devices * max(1, t.batch_size // num_devices)}"
        )


def _check_choice(key: str, value, valid) -> None:
    if value not in valid:
        raise UserError(f"{key}={value!r} is not one of {', '.join(valid)}")


def _check_positive_int(key: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UserError(f"{key} must be a positive integer, got {value!r}")


def to_dict(config: ml_collections.ConfigDict) -> dict:
    """A plain-dict copy, for JSON files and comparisons."""
    return config_dict.ConfigDict(config).to_dict()


def load_config_dict(values: dict) -> ml_collections.ConfigDict:
    """A locked ConfigDict from a plain dict (e.g. a workdir's config.json)."""
    config = ml_collections.ConfigDict(values)
    config.lock()
    return config


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def flat_dict(config: ml_collections.ConfigDict) -> dict:
    """The config as one level of dotted keys: {'opt.lr': 2e-4, ...}."""
    return flatten(to_dict(config))
