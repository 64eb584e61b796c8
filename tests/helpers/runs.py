"""Launch `train.py` in subprocesses, kill it between checkpoints, and read what it left behind.

Subprocesses get their own number of simulated CPU devices through
JAX_NUM_CPU_DEVICES (the test process's devices are fixed by conftest.py) and
share a persistent XLA compilation cache, so only the first launch of a
config pays for compiling it. On CPU a compiled program is a deterministic
function of its HLO, so a cached executable computes exactly what a fresh
compile would; the tests therefore still prove bit-exact resume.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLOW_TRAIN = os.path.join(REPO, "tests", "helpers", "slow_train.py")
COMPILE_CACHE = os.path.join(tempfile.gettempdir(), f"synthjax-test-xla-cache-{os.getuid()}")

# Adam's first steps move each weight by about lr * sign(gradient) whatever the gradient's size, so where a
# gradient is near Adam's eps, summing in another order moves that weight differently (seen: 1 of 156,800
# weights off by 3e-5..1e-4 at dcgan's lr 2e-3). Tests that compare programs which sum in different orders
# train at the DCGAN paper's 2e-4: updates (~2e-4 per weight and step) still dwarf their tolerance, so a
# wrong gradient shows, and such an element stays inside it.
ADAM_EQUIVALENCE_LR = "opt.lr=2e-4"


def config_path(name: str) -> str:
    """'dcgan.py:smoke' or 'configs/dcgan.py:smoke' -> an absolute path with its variant."""
    file, sep, arg = name.partition(":")
    if not os.path.isabs(file):
        file = os.path.join(REPO, file if file.startswith("configs/") else os.path.join("configs", file))
    return f"{file}{sep}{arg}"


def jax_env(devices: int = 1, **extra: str) -> dict[str, str]:
    """Environment for a CPU-only JAX subprocess with `devices` simulated devices."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    env.update(
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices),
        JAX_COMPILATION_CACHE_DIR=COMPILE_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        **extra,
    )
    # The test process's compile optimisation level (tests/conftest.py), so subprocesses compile as fast.
    level = [f for f in os.environ.get("XLA_FLAGS", "").split() if f.startswith("--xla_backend_optimization_level")]
    if level and "XLA_FLAGS" not in extra:
        env["XLA_FLAGS"] = level[0]
    return env


def notebook_env(monkeypatch, **extra: str) -> None:
    """Environment for a notebook's kernel (which inherits this process's): the CPU backend and the persistent
    compilation cache of the `jax_env` subprocesses. The notebooks apply `synthjax.tuning` as train.py does and
    train the smoke configs that the resume tests run on one device, so their programs are already compiled."""
    for key, value in {"JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": COMPILE_CACHE,
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **extra}.items():
        monkeypatch.setenv(key, value)


def train_args(config: str, workdir: str, *overrides: str, delay: float | None = None) -> list[str]:
    """argv for train.py (or the slowed launcher when `delay` seconds per step are wanted)."""
    entry = [SLOW_TRAIN, str(delay)] if delay else [os.path.join(REPO, "train.py")]
    return [sys.executable, *entry, "--config", config_path(config), "--workdir", workdir, *overrides]


def run(args: list[str], env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env or jax_env(), capture_output=True, text=True, timeout=timeout)


def start(args: list[str], env: dict | None = None, log: str | None = None) -> subprocess.Popen:
    """Start a subprocess whose stdout+stderr go to `log` (a file, so a full pipe never blocks it)."""
    if not log:
        return subprocess.Popen(args, cwd=REPO, env=env or jax_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    with open(log, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(args, cwd=REPO, env=env or jax_env(), stdout=out, stderr=subprocess.STDOUT)


def committed_steps(workdir: str) -> list[int]:
    """Steps whose checkpoint directory is finished (orbax renames it into place when complete)."""
    directory = os.path.join(workdir, "checkpoints")
    names = os.listdir(directory) if os.path.isdir(directory) else []
    return sorted(int(n) for n in names if n.isdigit())


def tmp_checkpoints(workdir: str) -> list[str]:
    return glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))


def wait_for(predicate, procs: list[subprocess.Popen], timeout: float, what: str, poll: float = 0.01) -> None:
    """Poll `predicate` until true; fail early when a process exits first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"process exited with {p.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def sigkill(procs: list[subprocess.Popen]) -> None:
    """SIGKILL each process (by its own pid) and reap it."""
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait(timeout=30)


def read_state(workdir: str, step: int) -> dict:
    """The saved TrainState of checkpoint `step` as numpy arrays, whatever devices wrote it (no model code needed)."""
    import jax
    import orbax.checkpoint as ocp
    from etils import epath

    path = os.path.join(workdir, "checkpoints", str(step), "state")
    tree = ocp.StandardCheckpointHandler().metadata(epath.Path(path)).tree
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    with ocp.PyTreeCheckpointer() as ckptr:
        return ckptr.restore(path, args=ocp.args.PyTreeRestore(item=None, restore_args=as_numpy))


def read_meta(workdir: str, step: int) -> dict:
    with open(os.path.join(workdir, "checkpoints", str(step), "meta", "metadata")) as f:
        return json.load(f)


def flat(tree) -> dict[str, np.ndarray]:
    """{'/params/Dense_0/kernel': array, ...} for any nesting of dicts, lists and tuples."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf) for path, leaf in leaves}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    """Same leaves, shapes, dtypes and bit patterns (NaN-safe, -0.0 != 0.0)."""
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    differ = [k for k in fa if fa[k].dtype != fb[k].dtype or fa[k].shape != fb[k].shape or fa[k].tobytes() != fb[k].tobytes()]
    assert not differ, f"{len(differ)} of {len(fa)} arrays differ, e.g. {differ[:5]}"


def assert_close(a: dict, b: dict, rtol: float, atol: float) -> None:
    fa, fb = flat(a), flat(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], rtol=rtol, atol=atol, err_msg=k)


def tail(path: str, n: int = 3000) -> str:
    try:
        with open(path) as f:
            return f.read()[-n:]
    except OSError:
        return ""


def assert_complete_run(workdir: str, stdout: str, num_steps: int, log_every: int, sample_every: int, ckpt_every: int,
                        keep: int = 3, eval_keys: frozenset[str] = frozenset()) -> None:
    """What a finished `train.py` run leaves: finite metrics at the log cadence with a held-out evaluation last
    (holding `eval_keys`), sample grids and the newest `keep` checkpoints at their cadences, TensorBoard events
    and the config it ran."""
    assert "synthjax:" in stdout and f"step {num_steps}/{num_steps}" in stdout
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [r["step"] for r in lines if "eval/" not in "".join(r)] == list(range(log_every, num_steps + 1, log_every))
    assert all(np.isfinite(v) for r in lines for v in r.values() if not isinstance(v, str))  # eval/split names the split
    assert any(k.startswith("eval/") for k in lines[-1]) and lines[-1]["eval/split"] == "test"  # held out
    assert eval_keys <= set(lines[-1]), f"the final evaluation lacks {sorted(eval_keys - set(lines[-1]))}"
    grids = [f"step_{s:07d}.png" for s in range(sample_every, num_steps + 1, sample_every)]
    assert sorted(os.listdir(os.path.join(workdir, "samples"))) == grids
    kept = [str(s) for s in range(ckpt_every, num_steps + 1, ckpt_every)][-keep:]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == sorted(kept)  # and nothing half-written
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["train"]["num_steps"] == num_steps
