"""The MNIST domain classifier: training, the weights file and its hash, the extractor, the CLI, first-use training."""

import numpy as np
import pytest
from flax import traverse_util

from synthjax import metrics
from synthjax.data import bundled_split_indices, load_bundled_mnist
from synthjax.errors import UserError
from synthjax.metrics import classifier as clf

QUIET = dict(log=lambda _: None)
# One xdist worker runs this module, so the classifier its tests share (a module fixture) is trained once.
pytestmark = pytest.mark.xdist_group("classifier")


@pytest.fixture(scope="module")
def data():
    images, labels = load_bundled_mnist()
    train, test = bundled_split_indices("train")[:1000], bundled_split_indices("test")[:200]
    return (images[train], labels[train]), (images[test], labels[test])


@pytest.fixture(scope="module")
def trained(data):
    """60 steps on 1000 train images, scored on 200 test images: enough to learn something, fast enough for a unit test."""
    return clf.train_classifier(*data, steps=60, **QUIET)


def test_training_learns_and_is_deterministic(data, trained):
    params, meta = trained
    assert meta["test_accuracy"] > 0.5  # chance is 0.1
    assert (meta["num_train"], meta["num_test"], meta["num_classes"]) == (1000, 200, 10)
    again, _ = clf.train_classifier(*data, steps=60, **QUIET)
    flat = lambda p: {k: np.asarray(v) for k, v in traverse_util.flatten_dict(p, sep="/").items()}  # noqa: E731
    assert clf.weights_sha256(flat(params)) == clf.weights_sha256(flat(again))


def test_cli_data_split_is_the_bundled_train_and_test_split():
    images, labels, name = clf.load_labelled("mnist_bundled", "", "train")
    test_images, _, _ = clf.load_labelled("mnist_bundled", "", "test")
    assert (len(images), len(test_images), name) == (8000, 2000, "mnist_bundled")
    assert clf.WEIGHTS_FILE == "mnist_classifier_trainsplit.npz"  # never an old cache trained on the test digits


def test_weights_round_trip_with_a_hash_of_the_arrays_only(trained, tmp_path):
    params, meta = trained
    digest = clf.save_weights(tmp_path / "a.npz", params, meta)
    assert clf.save_weights(tmp_path / "b.npz", params, {**meta, "note": "other metadata"}) == digest
    loaded, loaded_meta, loaded_digest = clf.load_weights(tmp_path / "a.npz")
    assert loaded_digest == digest == loaded_meta["weights_sha256"]
    np.testing.assert_array_equal(loaded["logits"]["kernel"], np.asarray(params["logits"]["kernel"]))


def test_altered_or_foreign_files_are_refused(trained, tmp_path):
    params, meta = trained
    path = tmp_path / "w.npz"
    clf.save_weights(path, params, meta)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["logits/bias"] = arrays["logits/bias"] + 1.0
    np.savez(tmp_path / "altered.npz", **arrays)
    with pytest.raises(UserError, match=r"weights sha256 .* differs from the .* recorded .* delete it and retrain"):
        clf.load_weights(tmp_path / "altered.npz")
    np.savez(tmp_path / "foreign.npz", x=np.zeros(3))
    with pytest.raises(UserError, match="does not hold synthjax classifier weights"):
        clf.load_weights(tmp_path / "foreign.npz")
    with pytest.raises(FileNotFoundError, match=r"(?s)not found at .*missing.npz.*python -m synthjax.metrics.classifier"):
        clf.load_weights(tmp_path / "missing.npz")


def test_extractor_features_logits_and_input_checks(trained, data, tmp_path):
    clf.save_weights(tmp_path / "w.npz", *trained)
    ext = clf.ClassifierFeatureExtractor.from_npz(tmp_path / "w.npz", batch_size=64)
    assert isinstance(ext, metrics.FeatureExtractor) and len(ext.weights_hash) == 64
    test_images, test_labels = data[1]
    out = ext(test_images[:100])
    assert out["features"].shape == (100, 128) and out["logits"].shape == (100, 10)
    assert np.all(out["features"] >= 0)  # post-ReLU penultimate layer
    accuracy = np.mean(out["logits"].argmax(-1) == test_labels[:100])
    assert accuracy > 0.5
    with pytest.raises(ValueError, match="are 32x32; expected .*28x28"):
        ext(np.zeros((2, 32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="3 channels"):
        ext(np.zeros((2, 28, 28, 3), np.uint8))


def test_cli_trains_and_reports(tmp_path, capsys):
    assert clf.main(["--out", str(tmp_path), "--steps", "3"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "weights_sha256" in out and '"num_test": 2000' in out
    assert (tmp_path / clf.WEIGHTS_FILE).is_file()
    assert clf.main(["--out", str(tmp_path), "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert clf.main(["--out", str(tmp_path), "--data", "mnsit"]) == 2
    assert "unknown dataset 'mnsit'" in capsys.readouterr().err


def test_default_weights_are_trained_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SYNTHJAX_CACHE", str(tmp_path))
    said = []
    path = clf.ensure_default_weights(steps=2, log=said.append)
    assert path == tmp_path / clf.WEIGHTS_FILE and path.is_file()
    assert any("training it once now" in line for line in said)
    said.clear()
    assert clf.ensure_default_weights(steps=2, log=said.append) == path and not said
