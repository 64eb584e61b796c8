"""Writes that never leave a half-written file.

Every file a run or a command writes for later reading (config.json, sample
grids, eval.json, cached statistics and weights) goes to a temporary file
in the same folder and is renamed into place, so a kill or a full disk
mid-write leaves the old file or none, never a truncated one. The temporary
name carries the process id, so processes writing the same file do not
share one.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Callable

import numpy as np


def _replace_with(path: str | Path, mode: str, write: Callable[[IO], None]) -> None:
    """Call `write` on a temporary file, then rename it to `path`; on failure remove the temporary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write text or bytes to `path` through a temporary file and a rename."""
    _replace_with(path, "wb" if isinstance(data, bytes) else "w", lambda f: f.write(data))


def save_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """`np.savez` of `arrays` to `path` (its name kept as given), creating the folder, through a rename."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # A file object: np.savez given a name would append '.npz' to it.
    _replace_with(path, "wb", lambda f: np.savez(f, **arrays))
