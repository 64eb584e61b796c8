"""python -m synthjax.sample --mode samples|interpolate|reconstruct and --truncation."""
import os

import jax
import numpy as np
import pytest

from synthjax import sample
from synthjax.config import load_config
from synthjax.data import bundled_split_indices, load_bundled_mnist
from synthjax.errors import UserError
from synthjax.trainers import build_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One xdist worker runs this module, so its trained runs (a module fixture) are trained once, not once per worker.
pytestmark = pytest.mark.xdist_group("sample_tools")


def trainer_of(name: str, *overrides: str):
    config = load_config(os.path.join(REPO, "configs", name), list(overrides))
    return build_trainer(config, (28, 28, 1), 10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """gan_mlp and vae_mlp smoke runs (6 steps each)."""
    from synthjax.train import train_and_evaluate

    out = {}
    for name in ("gan_mlp.py:smoke", "vae_mlp.py:smoke"):
        workdir = str(tmp_path_factory.mktemp(name.split(".")[0]))
        train_and_evaluate(load_config(os.path.join(REPO, "configs", name)), workdir)
        out[name.split(".")[0]] = workdir
    return out


def test_truncated_latents_stay_in_bounds_and_zero_means_plain_normals():
    trainer = trainer_of("gan_mlp.py:smoke")
    z = np.asarray(trainer.sample_latents(jax.random.key(0), 2000, 0.5))
    assert z.shape == (2000, trainer.config.model.z_dim) and np.abs(z).max() <= 0.5
    plain = np.asarray(trainer.sample_latents(jax.random.key(0), 10, 0.0))
    np.testing.assert_array_equal(plain, np.asarray(jax.random.normal(jax.random.key(0), plain.shape)))
    with pytest.raises(UserError, match="--truncation must be >= 0"):
        trainer.sample_latents(jax.random.key(0), 2, -1.0)


def test_slerp_ends_at_both_latents_and_keeps_the_norm_between_equal_norms():
    rng = np.random.default_rng(0)
    z0, z1 = rng.normal(size=(3, 16)), rng.normal(size=(3, 16))
    z1 *= np.linalg.norm(z0, axis=1, keepdims=True) / np.linalg.norm(z1, axis=1, keepdims=True)
    path = sample.slerp(z0, z1, 7)
    np.testing.assert_allclose(path[:, 0], z0, atol=1e-12)
    np.testing.assert_allclose(path[:, -1], z1, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(path, axis=-1), np.linalg.norm(z0, axis=-1)[:, None].repeat(7, 1), rtol=1e-9)
    np.testing.assert_allclose(sample.slerp(z0, z0, 3)[:, 1], z0)  # parallel ends: no division by sin(0)


def test_families_without_a_latent_space_say_so():
    trainer = trainer_of("pixelrnn.py:smoke")
    with pytest.raises(UserError, match=r"model.family='pixelrnn' does not support latent sampling .*use --mode samples"):
        trainer.sample_latents(jax.random.key(0), 2)
    with pytest.raises(UserError, match=r"model.family='pixelrnn' does not support reconstruction \(--mode reconstruct\)"):
        trainer.reconstruct(None, None)


def run_cli(capsys, *args):
    sample.main(list(args))
    return capsys.readouterr().out


def test_truncation_and_interpolation_from_a_gan_run(runs, tmp_path, capsys):
    out = str(tmp_path / "trunc.npz")
    said = run_cli(capsys, "--workdir", runs["gan_mlp"], "--num", "20", "--truncation", "0.5", "--out", out)
    assert "samples: 20 images (28, 28, 1)" in said and os.path.isfile(out.replace(".npz", ".png"))
    truncated = np.load(out)["images"]
    run_cli(capsys, "--workdir", runs["gan_mlp"], "--num", "20", "--out", str(tmp_path / "plain.npz"))
    plain = np.load(tmp_path / "plain.npz")["images"]
    assert truncated.shape == plain.shape == (20, 28, 28, 1) and not np.array_equal(truncated, plain)

    run_cli(capsys, "--workdir", runs["gan_mlp"], "--mode", "interpolate", "--num", "3", "--steps", "5", "--out", str(tmp_path / "i.npz"))
    walk = np.load(tmp_path / "i.npz")["images"].reshape(3, 5, 28, 28, 1).astype(np.float32)
    # Neighbouring steps differ less than the two ends of a row: the images move gradually.
    step_change = np.abs(np.diff(walk, axis=1)).mean(axis=(2, 3, 4)).max(axis=1)
    end_change = np.abs(walk[:, -1] - walk[:, 0]).mean(axis=(1, 2, 3))
    assert np.all(step_change < end_change)


def test_a_class_conditional_gan_interpolates_within_one_class_per_row():
    trainer = trainer_of("dcgan.py:smoke", "model.conditional=true")
    state = trainer.create_state(jax.random.key(0))
    # The per-class BatchNorm gains and biases start equal for every class: make the classes differ.
    leaves, tree = jax.tree_util.tree_flatten(state.ema_params)
    noise = [0.3 * jax.random.normal(jax.random.key(i), x.shape, x.dtype) for i, x in enumerate(leaves)]
    state = state.replace(ema_params=jax.tree_util.tree_unflatten(tree, [x + n for x, n in zip(leaves, noise)]))
    walk = sample.interpolations(trainer, state, rows=3, steps=4, seed=1)
    k0, k1 = jax.random.split(jax.random.key(1))
    path = sample.slerp(np.asarray(trainer.sample_latents(k0, 3)), np.asarray(trainer.sample_latents(k1, 3)), 4)
    z = path.reshape(12, -1).astype(np.float32)
    rows_of_one_class = sample.decode_in_batches(trainer, state, z, np.repeat(np.arange(3), 4).astype(np.int32))
    np.testing.assert_array_equal(walk, rows_of_one_class)
    assert not np.array_equal(walk, sample.decode_in_batches(trainer, state, z))  # not the classes in turn


def test_vae_reconstructs_test_digits(runs, tmp_path, capsys):
    out = str(tmp_path / "r.npz")
    said = run_cli(capsys, "--workdir", runs["vae_mlp"], "--mode", "reconstruct", "--num", "12", "--out", out)
    assert "reconstruct: 12 images" in said
    saved = np.load(out)
    images, _ = load_bundled_mnist()
    np.testing.assert_array_equal(saved["originals"], images[bundled_split_indices("test")[:12]])
    assert saved["images"].shape == (12, 28, 28, 1) and saved["images"].dtype == np.uint8


def test_bad_mode_and_unsupported_modes_exit_2_with_one_line(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        sample.main(["--workdir", runs["gan_mlp"], "--mode", "morph", "--out", str(tmp_path / "x.npz")])
    assert e.value.code == 2 and "--mode 'morph' is not one of samples, interpolate, reconstruct" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        sample.main(["--workdir", runs["gan_mlp"], "--mode", "reconstruct", "--num", "4", "--out", str(tmp_path / "x.npz")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error: model.family='gan' does not support reconstruction") and err.count("\n") == 1
