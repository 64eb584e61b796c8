"""What a run writes for people to read (synthjax/writers.py): metrics rows and sample grids."""
import json

import jax.numpy as jnp
import pytest

from synthjax.writers import MetricWriter


def test_sample_grids_are_written_in_the_background_and_a_failed_write_is_raised(tmp_path):
    """The loop hands sample grids to a writer thread; `wait` returns once the PNG is on disk and re-raises
    a write that failed, so a full disk or a bad path does not pass silently."""
    writer = MetricWriter(str(tmp_path), enabled=True, start_step=0)
    samples = jnp.linspace(0, 1, 4 * 8 * 8).reshape(4, 8, 8, 1)
    writer.write_grid(str(tmp_path / "grid.png"), 1, samples)
    writer.wait()
    assert (tmp_path / "grid.png").stat().st_size > 0 and not list(tmp_path.glob("*.tmp"))
    writer.write_grid(str(tmp_path / "missing" / "grid.png"), 2, samples)
    with pytest.raises(FileNotFoundError):
        writer.wait()
    writer.close()


def test_a_stack_names_the_member_in_each_row_and_writes_one_tensorboard_run_per_member(tmp_path):
    writer = MetricWriter(str(tmp_path), enabled=True, start_step=0, members=["seed=0", "seed=1"])
    writer.write(5, {"loss": 1.5}, member=1)
    writer.write_timing(5, {"images_per_sec": 100.0})
    writer.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 5, "member": 1, "loss": 1.5}
    assert sorted(p.name for p in (tmp_path / "tensorboard").iterdir()) == ["seed=0", "seed=1"]
    assert json.loads((tmp_path / "timing.jsonl").read_text())["images_per_sec"] == 100.0


def test_a_disabled_writer_writes_nothing(tmp_path):
    """Processes other than 0 of a multi-host run keep a disabled writer."""
    writer = MetricWriter(str(tmp_path), enabled=False, start_step=0)
    writer.write(1, {"loss": 1.0})
    writer.close()
    assert list(tmp_path.iterdir()) == []
