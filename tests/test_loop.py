"""The training loop's data and dispatch (synthjax/data/on_device.py, synthjax/steps.py, synthjax/train.py).

- Batches drawn on the device are a seeded permutation per epoch, the same on
  any device count, binarisation included.
- K steps per compiled call compute what K calls of one step compute, and the
  loop cuts calls short at every logging, evaluation, grid and checkpoint step.
- Windows saved in the older per-step format restore to the same sums.
"""
import json
import os
import types

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import runs
from jax.sharding import PartitionSpec as P

from synthjax import steps as steps_lib
from synthjax.config import load_config
from synthjax.data import on_device
from synthjax.data.pipeline import Preprocess
from synthjax.data.sources import DataSource, _array_source
from synthjax.errors import UserError
from synthjax.parallel import AXIS, DataParallel, make_mesh
from synthjax.stack import NONFINITE
from synthjax.train import STEPS_PER_CALL, call_sizes, resolve_steps_per_call, train_and_evaluate


def indices(size: int, batch: int, steps: int, seed: int = 0) -> np.ndarray:
    key = jax.random.key(seed)
    return np.stack([np.asarray(on_device.batch_indices(key, jnp.asarray(s), size, batch)) for s in range(steps)])


@pytest.mark.parametrize("size,batch", [(10, 4), (12, 4), (3, 7), (1, 5)])
def test_batch_indices_walk_one_permutation_per_epoch(size, batch):
    steps = 3 * size  # several epochs, batches spanning epoch boundaries
    flat = indices(size, batch, steps).reshape(-1)
    epochs = flat[: (len(flat) // size) * size].reshape(-1, size)
    for e, order in enumerate(epochs):
        assert sorted(order) == list(range(size)), f"epoch {e} is not a permutation: {order}"
    assert len({tuple(o) for o in epochs}) > 1 or size == 1  # each epoch draws its own permutation


def test_batch_indices_do_not_overflow_on_long_runs():
    size, batch, step = 8000, 1024, 2**30  # step * batch is far beyond int32
    got = np.asarray(on_device.batch_indices(jax.random.key(0), jnp.asarray(step, jnp.int32), size, batch))
    position = step * batch  # Python ints: exact
    expect_epoch, offset = divmod(position, size)
    first = on_device.permuted(jax.random.key(0), jnp.asarray(expect_epoch, jnp.int32), jnp.asarray(offset), size)
    assert got[0] == int(first) and got.min() >= 0 and got.max() < size


def small_source(n: int = 37, shape=(6, 6, 1)) -> DataSource:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return _array_source("tiny", images, rng.integers(0, 10, n).astype(np.int32), num_classes=10)


def drawn(source: DataSource, devices: int, preprocess: Preprocess, step: int, batch: int = 8) -> dict:
    """The global batch of `step`, drawn inside a shard_map over `devices` CPU devices."""
    dp = DataParallel(mesh=make_mesh(jax.devices()[:devices]))
    dataset = on_device.place(source, dp, batch, preprocess)
    key = on_device.data_key(3)
    draw = jax.shard_map(lambda d, s: d.draw(s, key), mesh=dp.mesh, in_specs=(P(AXIS), P()), out_specs=P(AXIS), check_vma=False)
    return jax.device_get(jax.jit(draw)(dataset, jnp.asarray(step)))


@pytest.mark.parametrize("binarize", [False, True], ids=["grey", "binarised"])
def test_draw_is_the_same_on_one_and_four_devices(binarize):
    source = small_source()  # 37 rows: padded to 40 on four devices, the padding never drawn
    preprocess = Preprocess(value_range=(0.0, 1.0), binarize=binarize)
    for step in (0, 4, 9):
        one, four = drawn(source, 1, preprocess, step), drawn(source, 4, preprocess, step)
        np.testing.assert_array_equal(one["image"], four["image"])
        np.testing.assert_array_equal(one["label"], four["label"])
        order_key = jax.random.split(on_device.data_key(3))[0]  # the order key is split from the data key
        index = np.asarray(on_device.batch_indices(order_key, jnp.asarray(step), 37, 8))
        images, labels = on_device.materialise(source)
        np.testing.assert_array_equal(one["label"], labels[index])
        if not binarize:
            # XLA divides by multiplying with 1/255: within an ulp of the host pipeline's division
            np.testing.assert_allclose(one["image"], images[index].astype(np.float32) / 255.0, rtol=1e-6)
        else:
            assert set(np.unique(one["image"])) <= {0.0, 1.0}


def test_on_device_refuses_a_split_over_the_budget(monkeypatch):
    monkeypatch.setattr(on_device, "device_budget_bytes", lambda: 100)
    source = small_source()
    assert not on_device.wanted("auto", source, 1)
    with pytest.raises(UserError, match="data.on_device='on'.*exceeds.*'auto' or 'off'"):
        on_device.wanted("on", source, 1)
    with pytest.raises(UserError, match="data.on_device='yes' is not one of auto, on, off"):
        on_device.wanted("yes", source, 1)
    monkeypatch.setattr(on_device, "device_budget_bytes", lambda: 2**40)  # fits the device, over the 'auto' size cap
    monkeypatch.setattr(on_device, "AUTO_MAX_BYTES", on_device.split_bytes(source) - 1)
    assert not on_device.wanted("auto", source, 1) and on_device.wanted("on", source, 1)


def test_steps_per_call_default_is_the_backends_and_one_under_pmap():
    shard_map, pmap = types.SimpleNamespace(mode="shard_map"), types.SimpleNamespace(mode="pmap")
    assert resolve_steps_per_call(0, shard_map) == STEPS_PER_CALL[jax.default_backend()]
    assert resolve_steps_per_call(3, shard_map) == 3 and resolve_steps_per_call(0, pmap) == 1
    with pytest.raises(UserError, match="train.steps_per_call=4 runs under train.parallel='shard_map' only"):
        resolve_steps_per_call(4, pmap)
    with pytest.raises(UserError, match="non-negative integer"):
        resolve_steps_per_call(-1, shard_map)


def test_call_sizes_stop_at_every_cadence():
    assert call_sizes(0, 12, 5, [3, 4]) == [3, 1, 2, 2, 1, 3]  # boundaries 3 4 6 8 9 12
    assert call_sizes(0, 10, 4, []) == [4, 4, 2]
    assert call_sizes(7, 10, 1, [5]) == [1, 1, 1]
    assert call_sizes(10, 10, 8, [2]) == []
    assert sum(call_sizes(3, 1000, 8, [50, 250, 500])) == 997


def test_a_scanned_call_equals_single_steps():
    """lax.scan over K steps computes what K one-step calls compute (here a toy step with noise and metrics)."""

    @flax.struct.dataclass
    class Toy:
        w: jax.Array
        step: jax.Array

    def step(state, batch, key):
        noise = jax.random.normal(jax.random.fold_in(key, state.step), state.w.shape)
        w = state.w * 0.9 + batch["x"].mean() + 0.01 * noise
        return Toy(w, state.step + 1), {"loss": (w**2).sum(), NONFINITE: jnp.asarray(0, jnp.int32)}

    shapes = {"loss": jax.ShapeDtypeStruct((), jnp.float32), NONFINITE: jax.ShapeDtypeStruct((), jnp.int32)}
    data = {"x": jnp.arange(12.0).reshape(3, 4)}
    start = Toy(jnp.ones(5), jnp.asarray(0))
    scanned = jax.jit(steps_lib.scan_call(step, None, 3))(start, steps_lib.empty_window(shapes), data, jax.random.key(1))
    one = jax.jit(steps_lib.scan_call(step, None, 1))
    state, window = start, steps_lib.empty_window(shapes)
    for i in range(3):
        state, window = one(state, window, jax.tree.map(lambda x: x[i : i + 1], data), jax.random.key(1))
    np.testing.assert_allclose(scanned[0].w, state.w, rtol=1e-6)
    np.testing.assert_allclose(scanned[1].sums["loss"], window.sums["loss"], rtol=1e-6)
    assert int(scanned[1].steps) == int(window.steps) == 3


def test_older_per_step_windows_restore_to_the_same_sums():
    shapes = {"loss": jax.ShapeDtypeStruct((), jnp.float32), NONFINITE: jax.ShapeDtypeStruct((), jnp.int32)}
    like = steps_lib.empty_window(shapes)
    saved = [[5, {"loss": 1.5, NONFINITE: 0.0}], [6, {"loss": float("nan"), NONFINITE: 1.0}], [7, {"loss": 2.0, NONFINITE: 0.0}]]
    window = steps_lib.to_host(steps_lib.restore_window(saved, like, members=1))
    assert steps_lib.summary(window, None) == {"loss": 1.75, "skipped": 1}
    assert steps_lib.first_nonfinite(window)[0] == 6
    again = steps_lib.to_host(steps_lib.restore_window(json.loads(json.dumps(window)), like, members=1))
    assert again == window  # the current format round-trips through the checkpoint's JSON


LOOP = ["train.num_steps=7", "train.log_every=3", "train.ckpt_every=5", "train.sample_every=100"]


def final_params(workdir: str, step: int) -> dict:
    return runs.flat(runs.read_state(workdir, step)["params"])


@pytest.mark.slow
def test_steps_per_call_trains_the_same_model_and_logs_the_same_lines(tmp_path):
    """K = 3 (calls cut at the log and checkpoint steps) against K = 1, on the devices and through grain."""
    for data in ("on", "off"):
        dirs = {k: str(tmp_path / f"{data}-k{k}") for k in (1, 3)}
        for k, workdir in dirs.items():
            train_and_evaluate(load_config(runs.config_path("vae_mlp.py:smoke"), [*LOOP, f"train.steps_per_call={k}", f"data.on_device={data}"]), workdir)
        a, b = final_params(dirs[1], 7), final_params(dirs[3], 7)
        for name in a:
            np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6, err_msg=f"{data}: {name}")
        rows = [[json.loads(line) for line in open(os.path.join(d, "metrics.jsonl"))] for d in dirs.values()]
        assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [3, 6, 7, 7]  # logs, then the final evaluation
        for r1, r3 in zip(*rows):
            assert r1.keys() == r3.keys()
            np.testing.assert_allclose([r1[k] for k in r1 if isinstance(r1[k], float)], [r3[k] for k in r3 if isinstance(r3[k], float)], rtol=1e-4)
        timing = [json.loads(line) for line in open(os.path.join(dirs[3], "timing.jsonl"))]
        assert all(t["images_per_sec"] > 0 and t["interval_images_per_sec"] > 0 for t in timing)


def test_a_workdir_keeps_the_data_path_it_started_with(tmp_path):
    workdir = str(tmp_path)
    config = lambda *extra: load_config(runs.config_path("vae_mlp.py:smoke"), [*LOOP, "train.num_steps=5", *extra])  # noqa: E731
    train_and_evaluate(config("data.on_device=off"), workdir)
    with pytest.raises(UserError, match=r"read its data by the grain pipeline \(data.on_device='off'\).*data.on_device='auto'"):
        train_and_evaluate(config("data.on_device=on", "train.num_steps=7"), workdir)
    summary = train_and_evaluate(config("train.num_steps=7"), workdir)  # 'auto' follows the checkpoint
    assert summary["step"] == 7
