"""End to end: `train.py` on every config's smoke variant, then `synthjax.sample` on the result.

The config of each model family already runs end to end as the reference run of its resume test
(tests/test_resume.py, which checks the same outputs), so only the other configs run here.
"""
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import families
from tests.helpers.runs import assert_complete_run, jax_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = [c.partition(":")[0] for c in families.all_configs() if c not in families.family_configs()]


def run(args, **kw):
    # One CPU device and the compilation cache that the resume tests and the notebooks share (same programs)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=jax_env(), capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.parametrize("config", CONFIGS)
def test_train_smoke_leaves_metrics_samples_and_checkpoints(config, tmp_path):
    workdir = str(tmp_path / "run")
    result = run(["train.py", "--config", f"configs/{config}:smoke", "--workdir", workdir])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete_run(workdir, result.stdout, num_steps=6, log_every=2, sample_every=3, ckpt_every=3)


def test_resume_continues_and_sample_export_is_deterministic(tmp_path):
    workdir = str(tmp_path / "run")
    assert run(["train.py", "--config", "configs/vae_mlp.py:smoke", "--workdir", workdir]).returncode == 0
    more = run(["train.py", "--config", "configs/vae_mlp.py:smoke", "--workdir", workdir, "--config.train.num_steps=8"])
    assert more.returncode == 0, more.stderr[-2000:]
    assert "resuming" in more.stdout and "from step 6" in more.stdout and "step 8/8" in more.stdout
    outs = []
    for name in ("a", "b"):
        out = str(tmp_path / f"{name}.npz")
        result = run(["-m", "synthjax.sample", "--workdir", workdir, "--num", "50", "--seed", "3", "--out", out])
        assert result.returncode == 0, result.stderr[-2000:]
        outs.append(np.load(out)["images"])
        assert os.path.exists(str(tmp_path / f"{name}.png"))
    assert outs[0].shape == (50, 28, 28, 1) and outs[0].dtype == np.uint8
    np.testing.assert_array_equal(outs[0], outs[1])


def test_user_mistakes_get_one_line_errors(tmp_path):
    bad = run(["train.py", "--config", "configs/dcgan.py:smoke", "--workdir", str(tmp_path / "x"), "--config.data.name=mnsit"])
    assert bad.returncode == 2
    assert "error: unknown dataset 'mnsit'" in bad.stderr and "Traceback" not in bad.stderr
    nowork = run(["-m", "synthjax.sample", "--workdir", str(tmp_path / "none")])
    assert nowork.returncode == 2 and "not a synthjax workdir" in nowork.stderr


def test_keep_best_keeps_the_best_evaluated_checkpoint_across_a_resume(tmp_path):
    """train.keep_best=neg_elbo: checkpoints.best/ holds the step with the lowest eval/neg_elbo so far, also after a
    resume, and `synthjax.sample --checkpoint best` reads it; sample grids are TensorBoard images too."""
    from synthjax.config import load_config
    from synthjax.sample import load_run
    from synthjax.train import train_and_evaluate

    workdir = str(tmp_path / "run")
    overrides = ["train.eval_every=2", "train.keep_best=neg_elbo", "train.ckpt_every=2", "opt.lr=3e-3"]
    config_path = os.path.join(REPO, "configs", "vae_mlp.py:smoke")
    train_and_evaluate(load_config(config_path, [*overrides, "train.num_steps=4"]), workdir)
    train_and_evaluate(load_config(config_path, [*overrides, "train.num_steps=8"]), workdir)  # resumes at 4
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    evals = {r["step"]: r["eval/neg_elbo"] for r in rows if "eval/neg_elbo" in r}
    best_step = min(evals, key=evals.get)  # the final evaluation at 8 is logged twice (periodic and final): same value
    _, _, _, step = load_run(workdir, "best")
    assert step == best_step
    meta = json.load(open(os.path.join(workdir, "checkpoints.best", str(step), "meta", "metadata")))
    assert meta["best"] == {"metric": "eval/neg_elbo", "value": evals[best_step], "step": best_step}
    events = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    pngs = {step: image.encoded_image_string for e in events for step, image in tensorboard_images(e, "samples")}
    assert pngs[8] == open(os.path.join(workdir, "samples", "step_0000008.png"), "rb").read()  # the grid, as a PNG


def tensorboard_images(path: str, tag: str):
    """(step, Summary.Image) of each image summary `tag` in a TensorBoard event file (TFRecord framing:
    8-byte length, 4-byte CRC, the Event, 4-byte CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    data = open(path, "rb").read()
    at = 0
    while at < len(data):
        n = int.from_bytes(data[at:at + 8], "little")
        event = Event.FromString(data[at + 12:at + 12 + n])
        at += 12 + n + 4
        for value in event.summary.value:
            if value.tag == tag and value.HasField("image"):
                yield event.step, value.image
