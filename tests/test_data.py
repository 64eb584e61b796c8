"""Data sources (bundled, mock tfds, folder, npz) and the grain pipeline."""
import os

import grain
import numpy as np
import pytest
from ml_collections import ConfigDict

import hashlib

from synthjax.data import build_pipeline, bundled_split_indices, get_source, holdout_indices, load_bundled_mnist
from synthjax.data.pipeline import Preprocess
from synthjax.errors import UserError


def data_cfg(**kw):
    base = dict(name="mnist_bundled", path="", split="train", image_size=0, skip_bad=False, download=False, tfds_data_dir="")
    base.update(kw)
    return ConfigDict(base)


def test_bundled_mnist_is_the_real_test_split():
    images, labels = load_bundled_mnist()
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    # Per-class counts of the official MNIST test split.
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert images.max() == 255 and images.min() == 0


def test_bundled_split_is_fixed_stratified_and_disjoint():
    test, train = bundled_split_indices("test"), bundled_split_indices("train")
    _, labels = load_bundled_mnist()
    assert len(test) == 2000 and len(train) == 8000
    assert not set(test.tolist()) & set(train.tolist())
    assert np.bincount(labels[test]).tolist() == [196, 227, 206, 202, 196, 178, 192, 206, 195, 202]
    # Pinned: the split must be the same on every machine and in every version.
    digest = hashlib.sha256(test.astype("<i8").tobytes()).hexdigest()
    assert digest == "31111f30f92c2796a7831fb79487930208b92118db0481b19f21accbb3cf453d"
    assert test[:5].tolist() == [6, 12, 14, 19, 20]


def test_get_source_reads_the_requested_split():
    images, labels = load_bundled_mnist()
    train, test = get_source(data_cfg()), get_source(data_cfg(), "test")
    assert len(train) == 8000 and len(test) == 2000 and train.num_classes == test.num_classes == 10
    first = bundled_split_indices("test")[0]
    np.testing.assert_array_equal(test.records[0]["image"], images[first])
    assert len(get_source(data_cfg(split="test"))) == 2000
    with pytest.raises(UserError, match="split 'validation' is not available.*train, test"):
        get_source(data_cfg(split="validation"))


def test_holdout_rounds_to_the_exact_total_and_ignores_order_of_calls():
    labels = np.array([0] * 7 + [1] * 6 + [2] * 2)
    split = holdout_indices(labels, 15)
    assert len(split["test"]) == 3 and len(split["train"]) == 12
    assert np.array_equal(np.sort(np.concatenate(list(split.values()))), np.arange(15))
    np.testing.assert_array_equal(holdout_indices(labels, 15)["test"], split["test"])
    assert len(holdout_indices(None, 10)["test"]) == 2


def test_pipeline_ranges_binarisation_and_determinism():
    source = get_source(data_cfg())
    tanh = next(build_pipeline(source, 32, 0, Preprocess((-1.0, 1.0))))
    assert tanh["image"].shape == (32, 28, 28, 1) and tanh["image"].dtype == np.float32
    assert tanh["image"].min() >= -1.0 and tanh["image"].max() <= 1.0
    binary = next(build_pipeline(source, 32, 0, Preprocess((0.0, 1.0), binarize=True)))
    assert set(np.unique(binary["image"])) <= {0.0, 1.0}
    again = next(build_pipeline(source, 32, 0, Preprocess((0.0, 1.0), binarize=True)))
    np.testing.assert_array_equal(binary["image"], again["image"])
    other_seed = next(build_pipeline(source, 32, 1, Preprocess((0.0, 1.0), binarize=True)))
    assert not np.array_equal(binary["label"], other_seed["label"])


def test_pipeline_state_resumes_exactly_and_epochs_reshuffle():
    source = get_source(data_cfg())
    p = build_pipeline(source, 2000, 3, Preprocess())
    first_epoch = [next(p)["label"] for _ in range(5)]
    state = p.get_state()
    expected = [next(p)["label"] for _ in range(3)]
    q = build_pipeline(source, 2000, 3, Preprocess())
    q.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(q)["label"], want)
    # The second epoch is a new permutation of the same 8,000 train images.
    assert not np.array_equal(np.concatenate(first_epoch), np.concatenate(expected + [next(p)["label"], next(p)["label"]]))


def test_process_shards_are_blocks_of_the_global_batch():
    source = get_source(data_cfg())
    whole = build_pipeline(source, 8, 0, Preprocess(), shard=grain.sharding.ShardOptions(0, 1))
    parts = [build_pipeline(source, 8, 0, Preprocess(), shard=grain.sharding.ShardOptions(i, 2)) for i in range(2)]
    for _ in range(3):
        full = next(whole)["image"]
        np.testing.assert_array_equal(np.concatenate([next(p)["image"] for p in parts]), full)


def test_npz_source(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, images=images, labels=np.arange(10) % 2)
    source = get_source(data_cfg(name="npz", path=str(path)))
    assert source.image_shape == (8, 8, 3) and source.num_classes == 2 and len(source) == 8
    test = get_source(data_cfg(name="npz", path=str(path)), "test")
    held_out = holdout_indices(np.arange(10) % 2, 10)
    assert len(test) == 2
    np.testing.assert_array_equal(test.records[1]["image"], images[held_out["test"][1]])
    np.testing.assert_array_equal(source.records[3]["image"], images[held_out["train"][3]])
    np.savez(tmp_path / "s.npz", images=images[:6], labels=np.zeros(6), test_images=images[6:], test_labels=np.full(4, 2))
    train, test = (get_source(data_cfg(name="npz", path=str(tmp_path / "s.npz")), s) for s in ("train", "test"))
    assert len(train) == 6 and len(test) == 4 and train.num_classes == test.num_classes == 3
    np.testing.assert_array_equal(test.records[0]["image"], images[6])
    np.savez(tmp_path / "f.npz", images=images.astype(np.float32))
    with pytest.raises(UserError, match="must be uint8"):
        get_source(data_cfg(name="npz", path=str(tmp_path / "f.npz")))
    np.savez(tmp_path / "e.npz", images=np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(UserError, match="is empty"):
        get_source(data_cfg(name="npz", path=str(tmp_path / "e.npz")))


def _write_png(path, array):
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_source_with_class_subfolders_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        for i in range(3):
            _write_png(str(tmp_path / "ok" / cls / f"{i}.png"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    source = get_source(data_cfg(name="folder", path=str(tmp_path / "ok")))
    assert source.image_shape == (16, 16, 3) and source.num_classes == 2 and len(source) == 5
    assert len(get_source(data_cfg(name="folder", path=str(tmp_path / "ok")), "test")) == 1  # round(20% of 6)

    _write_png(str(tmp_path / "mixed" / "a.png"), rng.integers(0, 256, (16, 16), dtype=np.uint8))
    _write_png(str(tmp_path / "mixed" / "b.png"), rng.integers(0, 256, (20, 16), dtype=np.uint8))
    with pytest.raises(UserError, match="different sizes"):
        get_source(data_cfg(name="folder", path=str(tmp_path / "mixed")))

    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="holds no images"):
        get_source(data_cfg(name="folder", path=str(tmp_path / "empty")))
    with pytest.raises(UserError, match="does not exist"):
        get_source(data_cfg(name="folder", path=str(tmp_path / "nope")))
    with pytest.raises(UserError, match="needs data.path"):
        get_source(data_cfg(name="folder"))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UserError, match="unknown dataset 'mnsit'.*mnist_bundled"):
        get_source(data_cfg(name="mnsit"))


@pytest.mark.parametrize("name, shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_source_with_mock_data(name, shape):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        source = get_source(data_cfg(name=name))
        assert source.image_shape == shape and source.num_classes == 10 and len(source) == 12
        batch = next(build_pipeline(source, 4, 0, Preprocess()))
    assert batch["image"].shape == (4, *shape)


def test_tfds_unavailable_says_so_and_names_offline_alternatives(tmp_path):
    with pytest.raises(UserError, match="(?s)could not load tensorflow-datasets .fashion_mnist.*mnist_bundled"):
        get_source(data_cfg(name="fashion_mnist", download=False, tfds_data_dir=str(tmp_path)))
