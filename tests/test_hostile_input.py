"""Hostile input: every mistake ends with an actionable UserError before any training (exit 2 and one
`error: ...` line through the CLI, no traceback), or is skipped and counted where the user asked for that."""
import json
import os
import re
import shutil
import subprocess

import jax
import numpy as np
import pytest
from helpers import runs
from ml_collections import ConfigDict
from PIL import Image

from synthjax import workdir as workdir_lib
from synthjax.checkpoint import Checkpointer
from synthjax.config import load_config
from synthjax.data import get_source
from synthjax.errors import UserError
from synthjax.train import train_and_evaluate
from synthjax.trainers import TRAINERS, build_trainer
from synthjax.trainers.vae import VAETrainer
from synthjax.workdir import prepare_workdir

VAE = "vae_mlp.py:smoke"
GAN = "dcgan.py:smoke"


def config(name: str = VAE, *overrides: str) -> ConfigDict:
    return load_config(runs.config_path(name), list(overrides))


def refuse(cfg: ConfigDict, workdir: str, match: str) -> None:
    """train_and_evaluate must raise a UserError matching `match` and leave no checkpoint behind."""
    with pytest.raises(UserError, match=match):
        train_and_evaluate(cfg, workdir)
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))


# --- through the command line --------------------------------------------------------------------

CLI_CASES = {
    "mistyped key": (["--config.opt.lrr=1"], "unknown config key 'opt.lrr'; did you mean 'opt.lr'"),
    "mistyped key, spaced": (["--config.opt.lrr", "1"], "unknown config key 'opt.lrr'; did you mean 'opt.lr'"),
    "no value": (["--config.opt.lr"], "--config.opt.lr needs a value"),
    "wrong type": (["--config.train.batch_size=abc"], "config key 'train.batch_size' is a int; got 'abc'"),
    "negative lr": (["--config.opt.lr=-0.1"], "opt.lr must be a positive number, got -0.1"),
    "zero batch": (["--config.train.batch_size=0"], "train.batch_size must be a positive integer, got 0"),
    "bad variant": (["--config", runs.config_path("vae_mlp.py:huge")], "unknown config variant 'huge'"),
    "unknown flag": (["--learning_rate=1"], "Unknown command line flag 'learning_rate'"),
    # Trains until the huge learning rate blows up, so it also proves the halt path ends cleanly.
    "diverges": (["--config.opt.lr=1e30"], r"training diverged at step \d+ \(detected at step \d+\): non-finite"),
}


@pytest.mark.slow
def test_cli_mistakes_exit_2_with_one_error_line(tmp_path):
    procs = {}
    for name, (extra, _) in CLI_CASES.items():
        args = runs.train_args(VAE, str(tmp_path / name.replace(" ", "_")), *extra)
        procs[name] = subprocess.Popen(args, cwd=runs.REPO, env=runs.jax_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (name, err[-2000:])
        assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), (name, err[-2000:])
        assert re.search(CLI_CASES[name][1], lines[0]), (name, lines[0])


# --- config values -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["opt.lr=-0.001"], "opt.lr must be a positive number, got -0.001"),
        (["opt.b1=1.5"], r"opt.b1 must lie in \[0, 1\) and opt.b2 in \(0, 1\)"),
        (["train.batch_size=0"], "train.batch_size must be a positive integer, got 0"),
        (["train.batch_size=6"], "train.batch_size=6 is not divisible by the 4 devices"),
        (["train.keep=-1"], "train.keep must be a positive integer"),
        (["train.on_nonfinite=ignore"], "train.on_nonfinite='ignore' is not one of halt, skip"),
        (["data.image_size=30"], "data.image_size=30, but dataset 'mnist_bundled' holds 28x28 images"),
    ],
)
def test_bad_config_values_are_refused_before_training(overrides, match, tmp_path):
    assert len(jax.devices()) == 4  # conftest.py; the divisibility case depends on it
    refuse(config(VAE, *overrides), str(tmp_path), match)


def test_wrong_type_from_a_hand_edited_config_json(tmp_path):
    """ConfigDicts refuse wrong types on assignment; a JSON config (e.g. a workdir's) can still carry them."""
    cfg = config(VAE)
    with cfg.ignore_type():
        cfg.train.batch_size = 16.0
    refuse(cfg, str(tmp_path), "train.batch_size must be a positive integer, got 16.0")


def test_image_size_the_architecture_cannot_build(tmp_path):
    path = str(tmp_path / "thirty.npz")
    np.savez(path, images=np.zeros((8, 30, 30, 1), np.uint8))
    cfg = config(GAN, "data.name=npz", f"data.path={path}", "model.conditional=false")  # unlabelled images
    refuse(cfg, str(tmp_path / "w"), "data.image_size=30 is not supported by the DCGAN")


# --- datasets ------------------------------------------------------------------------------------


def image_folder(root, n_good: int = 3) -> str:
    os.makedirs(root, exist_ok=True)
    for i in range(n_good):
        Image.fromarray(np.full((28, 28), 40 * i, np.uint8)).save(os.path.join(root, f"ok{i}.png"))
    return str(root)


def test_truncated_image_is_named_or_skipped_and_counted(tmp_path, capsys):
    root = image_folder(tmp_path / "imgs")
    bad = os.path.join(root, "broken.png")
    shutil.copy(os.path.join(root, "ok1.png"), bad)
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) // 2)
    refuse(config(VAE, "data.name=folder", f"data.path={root}"), str(tmp_path / "w"), f"cannot decode image {bad}.*data.skip_bad=True")
    source = get_source(config(VAE, "data.name=folder", f"data.path={root}", "data.skip_bad=true").data)
    # 3 readable images, of which round(20% of 3) = 1 is held out as the test split.
    assert len(source) == 2 and "skipped 1 unreadable image(s), first: " + bad in capsys.readouterr().out


def test_empty_datasets(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    refuse(config(VAE, "data.name=folder", f"data.path={empty}"), str(tmp_path / "w1"), "holds no images")
    path = str(tmp_path / "none.npz")
    np.savez(path, images=np.zeros((0, 28, 28), np.uint8))
    refuse(config(VAE, "data.name=npz", f"data.path={path}"), str(tmp_path / "w2"), "is empty: it holds no images")


def test_config_path_that_is_not_a_python_config(tmp_path):
    text = tmp_path / "dcgan.yaml"
    text.write_text("lr: 0.1\n")
    with pytest.raises(UserError, match=r"config '.*dcgan.yaml' is not a .py file; pass a Python config such as configs/dcgan.py"):
        load_config(str(text))
    with pytest.raises(UserError, match="is not a .py file"):
        load_config(str(tmp_path))  # a directory
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(UserError, match=r"config file '.*empty.py' defines no get_config\(arg\) function; add one"):
        load_config(str(empty))


def test_npy_file_passed_as_npz(tmp_path):
    path = str(tmp_path / "images.npz")
    with open(path, "wb") as f:
        np.save(f, np.zeros((10, 28, 28), np.uint8))  # np.save to a file object keeps the misleading name
    refuse(config(VAE, "data.name=npz", f"data.path={path}"), str(tmp_path / "w"),
           r"holds a single array \(an .npy file\), not an .npz archive; save with np.savez\(path, images=..., labels=...\)")


@pytest.mark.parametrize(
    "labels, match",
    [
        (np.array([0, 1, -1, 2, 0, 1, 2, 0, 1, 2]), r"'labels' must be class indices 0..K-1; label 2 is -1 \(negative\); renumber"),
        (np.array([0, 1, 0.5, 2, 0, 1, 2, 0, 1, 2]), r"'labels' must be integer class indices 0..K-1; label 2 is 0.5; save labels as integers"),
        (np.array(["cat"] * 10), r"'labels' must be integer class indices 0..K-1, got dtype <U3"),
    ],
)
def test_labels_that_are_negative_or_not_integers(labels, match, tmp_path):
    path = str(tmp_path / "d.npz")
    np.savez(path, images=np.zeros((10, 28, 28), np.uint8), labels=labels)
    refuse(config(VAE, "data.name=npz", f"data.path={path}"), str(tmp_path / "w"), match)


def test_sample_out_without_npz_suffix_is_refused(tmp_path, capsys):
    from synthjax import sample

    with pytest.raises(SystemExit) as exit_info:
        sample.main(["--workdir", str(tmp_path), "--out", str(tmp_path / "samples")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert re.fullmatch(r"error: --out '.*samples' must end in .npz \(numpy would write .*samples.npz\); e.g. --out .*samples.npz\n", err)
    assert not os.listdir(tmp_path)


def test_conditional_trainer_without_labels(monkeypatch, tmp_path):
    """A trainer declaring `requires_labels = True` is refused unlabelled data (no such family exists yet)."""

    class ConditionalVAE(VAETrainer):
        family = "conditional_test"
        requires_labels = True

    monkeypatch.setitem(TRAINERS, "conditional_test", ConditionalVAE)
    path = str(tmp_path / "unlabelled.npz")
    np.savez(path, images=np.zeros((8, 28, 28), np.uint8))
    cfg = config(VAE, "model.family=conditional_test", "data.name=npz", f"data.path={path}")
    refuse(cfg, str(tmp_path / "w"), "is conditional and needs class labels, but dataset 'npz:.*' has none")


# --- workdirs ------------------------------------------------------------------------------------


def test_workdir_of_a_different_model_is_refused_saying_what_differs(tmp_path):
    workdir = str(tmp_path)
    prepare_workdir(workdir, config(VAE))  # what the first run of a workdir leaves behind
    refuse(config(VAE, "model.hidden=64"), workdir, r"different model or data \(model.hidden: 32 -> 64\)")
    # Sequence shapes too (Moving MNIST): a checkpoint of 64x64 frames does not fit 32x32 ones.
    prepare_workdir(str(tmp_path / "seq"), config("convlstm.py:smoke"))
    refuse(config("convlstm.py:smoke", "data.frame_size=32"), str(tmp_path / "seq"), r"different model or data \(data.frame_size: 64 -> 32\)")
    # Harmless changes (longer run, other cadence) are allowed and reported.
    prepare_workdir(workdir, config(VAE, "train.num_steps=9"))
    assert json.load(open(os.path.join(workdir, "config.json")))["train"]["num_steps"] == 9


def test_checkpoint_of_a_different_model_is_refused_without_config_json(tmp_path):
    workdir = str(tmp_path)
    old = config(VAE)
    trainer = build_trainer(old, (28, 28, 1))
    ckpt = Checkpointer(workdir)
    ckpt.save(3, jax.jit(trainer.create_state)(jax.random.key(0)), {"step": 3, "family": "vae"})
    ckpt.close()
    with pytest.raises(UserError, match=r"checkpoint step 3 .* holds a different model: .*\(784, 32\) float32 in the checkpoint, \(784, 64\) float32 now"):
        train_and_evaluate(config(VAE, "model.hidden=64"), workdir)
    assert runs.committed_steps(workdir) == [3]  # refused, left alone


def test_unwritable_workdir_under_a_regular_file(tmp_path):
    """Works as root too (root may write anywhere chmod forbids, but not under a file)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    refuse(config(VAE), str(blocker / "run"), "workdir .* is not writable")


def test_read_only_workdir_via_the_immutable_attribute(tmp_path):
    """chattr +i stops even root; skipped where the filesystem or container does not allow it."""
    workdir = tmp_path / "ro"
    workdir.mkdir()
    if subprocess.run(["chattr", "+i", str(workdir)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i not permitted here")
    try:
        refuse(config(VAE), str(workdir), "workdir .* is not writable")
        assert os.listdir(workdir) == []
    finally:
        subprocess.run(["chattr", "-i", str(workdir)], check=True)


def test_full_disk_is_refused_before_training(monkeypatch, tmp_path):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(workdir_lib.shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    refuse(config(VAE), str(tmp_path), "has only 10 MiB free; at least 200 MiB are needed")
    assert not os.path.exists(os.path.join(tmp_path, "config.json"))
