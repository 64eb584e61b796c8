"""Moving MNIST generated on the fly: reproducible from the seed, the standard recipe, and the shared pipeline."""
from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from synthjax.data import build_pipeline, get_source
from synthjax.data.moving_mnist import DIGIT_SIZE, STEP_LENGTH, bouncing_trajectory
from synthjax.data.pipeline import Preprocess
from synthjax.errors import UserError


def data_config(**values) -> ml_collections.ConfigDict:
    base = dict(name="moving_mnist", num_sequences=32, seq_len=20, frame_size=64, num_digits=2, dataset_seed=0)
    return ml_collections.ConfigDict({**base, **values})


def test_records_are_reproducible_from_the_seed():
    a, b = get_source(data_config()), get_source(data_config())
    c = get_source(data_config(dataset_seed=1))
    for i in (0, 5, 31):
        np.testing.assert_array_equal(a.records[i]["image"], b.records[i]["image"])
    assert not np.array_equal(a.records[0]["image"], c.records[0]["image"])
    assert not np.array_equal(a.records[0]["image"], a.records[1]["image"])


def test_record_layout_is_frames_in_channels():
    source = get_source(data_config())
    record = source.records[3]
    assert source.image_shape == (64, 64, 20) and len(source) == 32 and source.num_classes == 0
    assert record["image"].dtype == np.uint8 and record["image"].shape == (64, 64, 20) and record["label"] == -1
    frames = np.moveaxis(record["image"], -1, 0)
    assert all(f.max() > 100 for f in frames)  # every frame shows digits
    assert any(not np.array_equal(f, g) for f, g in zip(frames, frames[1:]))  # and they move


def test_trajectory_bounces_inside_the_box_at_constant_speed():
    path = bouncing_trajectory(np.random.default_rng(0), 200)
    assert path.min() >= 0.0 and path.max() <= 1.0
    steps = np.abs(np.diff(path, axis=0))
    # Away from walls each coordinate moves by a constant amount per frame; a bounce shortens one step.
    assert np.all(steps <= STEP_LENGTH + 1e-12)
    per_axis = [np.median(steps[:, k]) for k in range(2)]
    np.testing.assert_allclose(np.hypot(*per_axis), STEP_LENGTH, rtol=1e-6)
    assert np.any(path == 0.0) or np.any(path == 1.0)  # it does hit a wall in 200 frames


def test_single_digit_sequence_is_a_moving_digit():
    source = get_source(data_config(num_digits=1, seq_len=5))
    frames = np.moveaxis(source.records[0]["image"], -1, 0)
    ink = [np.argwhere(f > 0) for f in frames]
    for pixels in ink:  # the digit's ink fits in one 28x28 window
        assert np.all(pixels.max(0) - pixels.min(0) < DIGIT_SIZE)
    assert len({int(f.sum()) for f in frames}) == 1  # same digit, only moved (never clipped by the frame)


def test_shared_pipeline_yields_float_sequences():
    source = get_source(data_config())
    batch = next(build_pipeline(source, 4, 0, Preprocess(value_range=(0.0, 1.0)), num_threads=0, prefetch=1))
    assert batch["image"].shape == (4, 64, 64, 20) and batch["image"].dtype == np.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0


@pytest.mark.parametrize("values, key", [({"frame_size": 20}, "data.frame_size"), ({"seq_len": 0}, "data.seq_len")])
def test_bad_values_are_user_errors(values, key):
    with pytest.raises(UserError, match=key):
        get_source(data_config(**values))
