"""Data sources (bundled, mock tfds, folder, npz) and the grain pipeline."""
import os

import grain
import numpy as np
import pytest
from ml_collections import ConfigDict

from synthjax.data import build_pipeline, get_source, load_bundled_mnist
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
    # The second epoch is a new permutation of the same 10,000 images.
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
    assert source.image_shape == (8, 8, 3) and source.num_classes == 2 and len(source) == 10
    np.testing.assert_array_equal(source.records[3]["image"], images[3])
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
    assert source.image_shape == (16, 16, 3) and source.num_classes == 2 and len(source) == 6

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
