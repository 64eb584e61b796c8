"""End to end: each recurrent model's smoke config through synthjax.train.train_and_evaluate."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from synthjax.config import load_config
from synthjax.train import train_and_evaluate

ROOT = Path(__file__).resolve().parents[1]
EVAL_KEYS = {
    "pixelrnn": {"eval/nll", "eval/bits_per_dim"},
    "draw": {"eval/neg_elbo", "eval/rec", "eval/kl"},
    "convlstm": {"eval/bce_per_frame", "eval/mse_per_frame", "eval/copy_last_mse_per_frame"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EVAL_KEYS))
def test_smoke_config_trains_logs_samples_and_checkpoints(name, tmp_path):
    config = load_config(f"{ROOT}/configs/{name}.py:smoke")
    summary = train_and_evaluate(config, str(tmp_path))

    assert summary["step"] == config.train.num_steps
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(2, config.train.num_steps + 1, 2))
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    assert EVAL_KEYS[name] <= set(rows[-1])
    samples = sorted(p.name for p in (tmp_path / "samples").glob("*.png"))
    assert samples == ["step_0000003.png", "step_0000006.png"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
