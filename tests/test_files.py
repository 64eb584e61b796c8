"""Writes that never leave a half-written file (synthjax/files.py)."""
import numpy as np
import pytest

from synthjax import files


def test_write_atomic_replaces_text_or_bytes_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("old")
    files.write_atomic(str(path), "new")
    assert path.read_text() == "new"
    files.write_atomic(path, b"\x89PNG")
    assert path.read_bytes() == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_save_npz_atomic_keeps_the_name_given_and_creates_the_folder(tmp_path):
    path = tmp_path / "cache" / "weights.bin"  # np.savez alone would write weights.bin.npz
    files.save_npz_atomic(path, {"w": np.arange(3.0)})
    assert [p.name for p in path.parent.iterdir()] == ["weights.bin"]
    np.testing.assert_array_equal(np.load(path)["w"], np.arange(3.0))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "eval.json"
    path.write_text("old")

    def full_disk(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        files.write_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["eval.json"]
