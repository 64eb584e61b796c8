"""FeatureExtractor base: batching/padding and input validation messages."""

import dataclasses

import numpy as np
import pytest

from synthjax import metrics


@dataclasses.dataclass(frozen=True, eq=False)
class MeanColourExtractor(metrics.FeatureExtractor):
    """Toy extractor: per-image channel means as features; records batch shapes it saw."""

    seen: list = dataclasses.field(default_factory=list)

    def extract_batch(self, images):
        self.seen.append(images.shape)
        return {"features": images.mean(axis=(1, 2)), "logits": None}


def _extractor(batch_size=4, **spec):
    return MeanColourExtractor("mean-colour", "0" * 64, metrics.InputSpec(**spec), batch_size)


def test_batches_are_padded_to_one_shape_and_results_concatenated():
    images = np.random.default_rng(0).integers(0, 256, (10, 5, 6, 3), dtype=np.uint8)
    ext = _extractor(batch_size=4)
    out = ext(images)
    np.testing.assert_allclose(out["features"], images.mean(axis=(1, 2)))
    assert out["logits"] is None
    assert ext.seen == [(4, 5, 6, 3)] * 3  # 4 + 4 + (2 padded to 4)


def test_input_smaller_than_a_batch_is_not_padded():
    ext = _extractor(batch_size=50)
    ext(np.zeros((3, 5, 5, 3), np.uint8))
    assert ext.seen == [(3, 5, 5, 3)]


@pytest.mark.parametrize(
    "images, match",
    [
        (np.random.default_rng(0).random((2, 8, 8, 3)), r"float64 \(values in \[0.*np.clip\(np.round\(x \* 255"),
        (np.zeros((2, 8, 8, 3), np.float32) - 1, r"\(x \+ 1\) \* 127.5"),
        (np.zeros((2, 3, 8, 8), np.uint8), "looks NCHW"),
        (np.zeros((2, 8, 8, 1), np.uint8), r"1 channels.*np.repeat\(images, 3, axis=-1\)"),
        (np.zeros((8, 8, 3), np.uint8), r"single image.*images\[None\]"),
        (np.zeros((8, 8), np.uint8), "4-D NHWC"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty batch"),
        (np.zeros((2, 8, 8, 3), np.int32), r"dtype int32.*\(N, H, W, 3\) uint8 in \[0, 255\]"),
    ],
)
def test_bad_images_raise_with_what_was_given_and_needed(images, match):
    with pytest.raises(ValueError, match=match):
        _extractor()(images)


def test_fixed_size_and_minimum_size():
    with pytest.raises(ValueError, match="are 8x9; expected .* 299x299"):
        _extractor(size=(299, 299))(np.zeros((1, 8, 9, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 16 pixels"):
        _extractor(min_size=16)(np.zeros((1, 8, 32, 3), np.uint8))


def test_float_spec_checks_range_and_finiteness():
    spec = metrics.InputSpec(dtype="float32", value_range=(0.0, 1.0))
    ok = np.full((1, 4, 4, 3), 0.5, np.float32)
    assert metrics.validate_images(ok, spec) is not None
    with pytest.raises(ValueError, match=r"values in \[0.5, 2\]; expected .* float32 in \[0, 1\]"):
        metrics.validate_images(np.where(np.arange(3) == 0, 2.0, ok).astype(np.float32), spec)
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.validate_images(np.full((1, 4, 4, 3), np.nan, np.float32), spec)
