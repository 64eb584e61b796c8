"""Configs: every file loads, smoke variants shrink, locked keys, overrides and validation errors."""
import glob
import os

import pytest

from synthjax import config as config_lib
from synthjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))


def test_the_foundation_configs_exist():
    names = {os.path.basename(p) for p in CONFIGS}
    assert {"gan_mlp.py", "dcgan.py", "vae_mlp.py", "vae_conv.py"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_and_its_smoke_variant_load(path):
    full = config_lib.load_config(path)
    smoke = config_lib.load_config(path + ":smoke")
    assert full.model.family and full.data.name
    assert smoke.train.num_steps < full.train.num_steps
    with pytest.raises(AttributeError):
        full.opt.lrr = 1.0  # locked: a mistyped key is an error


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_documents_how_to_run_it(path):
    import ast

    doc = ast.get_docstring(ast.parse(open(path).read())) or ""
    assert "python train.py --config configs/" in doc and ":smoke" in doc


def test_overrides_keep_types_and_reject_unknown_keys():
    c = config_lib.load_config(os.path.join(REPO, "configs/dcgan.py"), ["opt.lr=1e-4", "train.num_steps=7", "train.progress=false"])
    assert c.opt.lr == 1e-4 and c.train.num_steps == 7 and c.train.progress is False
    with pytest.raises(UserError, match="unknown config key 'opt.lrr'"):
        config_lib.load_config(os.path.join(REPO, "configs/dcgan.py"), ["opt.lrr=1"])
    with pytest.raises(UserError, match="is a int"):
        config_lib.load_config(os.path.join(REPO, "configs/dcgan.py"), ["train.num_steps=many"])


def test_unknown_variant_is_named():
    with pytest.raises(UserError, match="unknown config variant 'tiny'"):
        config_lib.load_config(os.path.join(REPO, "configs/dcgan.py:tiny"))


@pytest.mark.parametrize(
    "override, message",
    [
        ("opt.lr=-1", "opt.lr must be a positive number, got -1"),
        ("train.batch_size=0", "train.batch_size must be a positive integer, got 0"),
        ("train.batch_size=6", "not divisible by the 4 devices"),
        ("train.parallel=mpi", "train.parallel='mpi' is not one of shard_map, pmap"),
        ("train.dtype=float16", "train.dtype='float16' is not one of"),
        ("train.cpu_allocator=jemalloc", "train.cpu_allocator='jemalloc' is not one of threshold, heap, default"),
    ],
)
def test_validation_names_the_bad_value(override, message):
    c = config_lib.load_config(os.path.join(REPO, "configs/dcgan.py"), [override])
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_lib.validate(c, num_devices=4)


def test_one_override_parser_takes_both_spellings():
    rest, overrides = config_lib.split_overrides(["--workdir", "w", "--config.opt.lr=1e-4", "--config.train.num_steps", "5", "--num", "3"])
    assert rest == ["--workdir", "w", "--num", "3"] and overrides == ["opt.lr=1e-4", "train.num_steps=5"]
    with pytest.raises(UserError, match="--config.opt.lr needs a value, e.g. --config.opt.lr=VALUE"):
        config_lib.split_overrides(["--config.opt.lr", "--workdir", "w"])
