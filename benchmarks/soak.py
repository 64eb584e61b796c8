"""Soak test: train with frequent checkpoints under random SIGKILLs and check every restart.

    python benchmarks/soak.py --minutes 30                # the GAN smoke model, 30 minutes
    python benchmarks/soak.py --minutes 5 --out soak.json

The run is split into episodes. Each episode trains `--config` for
`--steps` steps in a fresh workdir through `train.py`, SIGKILLing it at a
random moment (uniform in `--kill_after` seconds after each launch, so
kills land in start-up, restore, training and checkpoint writes alike) and
relaunching the same command until it finishes. Checked after every kill:

- the relaunch resumes from the newest checkpoint committed before the kill
  (never an older one, never a half-written one);
- progress lost (last step logged before the kill minus the step resumed
  from) is at most one checkpoint interval, plus, when the kill interrupted
  an asynchronous save, the steps taken since that save began;

and at the end of each episode the final parameters are compared, bit for
bit, with an uninterrupted run of the same config and code (rerun whenever
the code or configs change; an episode during which they changed is not
compared). Every `--stack_every`-th episode trains a stack instead: a
vmapped seed sweep (`python -m synthjax.sweep --sweep seed=0:2 --vmap`, two
members in one program, checkpointed as one state in WORKDIR/stack), judged
the same way. `episodes_bit_exact_after_kill` counts only episodes that
were killed at least once. Exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from helpers import runs  # noqa: E402  (launching, killing and reading checkpoints)


@dataclasses.dataclass
class Kill:
    """What the workdir held when a launch was killed, and what the next launch did with it."""

    after_s: float
    last_logged: int  # last step in metrics.jsonl (0: none)
    committed: int  # newest finished checkpoint (0: none)
    save_in_flight: int | None  # step of a half-written checkpoint, if the kill hit a save
    resumed_from: int | None = None  # filled in from the next launch's output
    lost: int | None = None
    ok: bool | None = None


def last_logged_step(workdir: str) -> int:
    path = os.path.join(workdir, "metrics.jsonl")
    steps = [0]
    if os.path.exists(path):
        for line in open(path):
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError):
                pass  # a line torn by the kill
    return max(steps)


def resumed_step(log: str, workdir: str) -> int | None:
    """The step a launch resumed from (0 for a fresh start), or None if it died before saying."""
    match = re.search(rf"(?:resuming|starting) {re.escape(workdir)} (?:from|at) step (\d+)", runs.tail(log, 10**6))
    return int(match.group(1)) if match else None


def judge(kill: Kill, ckpt_every: int) -> None:
    kill.lost = kill.last_logged - kill.resumed_from
    allowance = ckpt_every + (max(0, kill.last_logged - kill.save_in_flight) if kill.save_in_flight else 0)
    kill.ok = kill.resumed_from == kill.committed and kill.lost <= allowance


def code_fingerprint() -> str:
    """A hash of the code and configs a launch runs: a reference is only valid for the code that made it."""
    digest = hashlib.sha256()
    for pattern in ("train.py", "configs/*.py", "synthjax/**/*.py"):
        for path in sorted(glob.glob(os.path.join(REPO, pattern), recursive=True)):
            digest.update(path.encode() + open(path, "rb").read())
    return digest.hexdigest()


STACK_SWEEP = ["--sweep", "seed=0:2", "--vmap"]


def launch_args(args, kind: str, workdir: str, overrides: list[str]) -> list[str]:
    """train.py for a single run; the sweep CLI for a stack of two seeds."""
    argv = runs.train_args(args.config, workdir, *overrides)
    if kind == "single":
        return argv
    return [argv[0], "-m", "synthjax.sweep", *argv[2:], *STACK_SWEEP]


def state_dir(kind: str, workdir: str) -> str:
    """Where the checkpoints and metrics.jsonl of an episode live (a stack's own workdir inside the sweep's)."""
    return workdir if kind == "single" else os.path.join(workdir, "stack")


class Reference:
    """The uninterrupted run's final state, recomputed whenever the code under test changes."""

    def __init__(self, args, overrides: list[str], kind: str = "single"):
        self.args, self.overrides, self.fingerprint, self.state = args, overrides, None, None
        self.kind = kind
        self.recomputed = 0

    def current(self) -> dict:
        fingerprint = code_fingerprint()
        if fingerprint != self.fingerprint:
            ref_dir = os.path.join(self.args.workdir, f"reference_{self.kind}")
            shutil.rmtree(ref_dir, ignore_errors=True)
            result = runs.run(launch_args(self.args, self.kind, ref_dir, self.overrides), timeout=3600)
            if result.returncode != 0:
                raise SystemExit(f"reference run failed:\n{result.stderr[-3000:]}")
            rate = re.search(r"\(([\d.]+) steps/s\)", result.stdout)
            print(f"reference: {self.args.steps} steps uninterrupted ({rate.group(1) if rate else '?'} steps/s incl. start-up), "
                  f"code {fingerprint[:12]}", flush=True)
            self.fingerprint, self.state = fingerprint, runs.read_state(state_dir(self.kind, ref_dir), self.args.steps)
            self.recomputed += 1
        return self.state


def run_episode(args, index: int, rng: random.Random, reference: Reference, overrides: list[str]) -> dict:
    kind = reference.kind
    top = os.path.join(args.workdir, f"episode{index:03d}")
    shutil.rmtree(top, ignore_errors=True)
    workdir = state_dir(kind, top)  # what is checked: checkpoints, metrics.jsonl, the resume line
    expected = reference.current()
    code_at_start = reference.fingerprint
    kills: list[Kill] = []
    launches = 0
    started = time.monotonic()
    while True:
        launches += 1
        log = f"{top}.launch{launches}.log"
        # Unbuffered, so the "resuming ... from step N" line is on disk before any kill.
        proc = runs.start(launch_args(args, kind, top, overrides), env=runs.jax_env(PYTHONUNBUFFERED="1"), log=log)
        deadline = time.monotonic() + rng.uniform(*args.kill_after)
        try:
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
        finally:
            runs.sigkill([proc])  # no-op when it has finished
        if kills and kills[-1].resumed_from is None:  # judge the previous kill by where this launch resumed
            kills[-1].resumed_from = resumed_step(log, workdir)
            if kills[-1].resumed_from is not None:
                judge(kills[-1], args.ckpt_every)
                if not kills[-1].ok:
                    print(f"episode {index}: FAILED after kill {len(kills)}: {dataclasses.asdict(kills[-1])}", flush=True)
        if proc.returncode != -signal.SIGKILL:
            if proc.returncode != 0:
                raise SystemExit(f"episode {index}: launch {launches} failed with {proc.returncode}:\n{runs.tail(log)}")
            break
        in_flight = [int(os.path.basename(p).split(".")[0]) for p in runs.tmp_checkpoints(workdir)]
        committed = runs.committed_steps(workdir)
        kills.append(Kill(round(time.monotonic() - started, 2), last_logged_step(workdir),
                          committed[-1] if committed else 0, max(in_flight) if in_flight else None))
        started = time.monotonic()
    final = runs.read_state(workdir, args.steps)
    exact = None  # not judged: someone changed the code while this episode ran
    if code_fingerprint() == code_at_start:
        try:
            runs.assert_bitwise_equal(final, expected)
            exact = True
        except AssertionError as e:
            exact = False
            print(f"episode {index}: final parameters differ from the uninterrupted run: {e}", flush=True)
    judged = [k for k in kills if k.ok is not None]
    return {
        "episode": index,
        "kind": kind,
        "launches": launches,
        "kills": len(kills),
        "kills_judged": len(judged),
        "kills_ok": sum(k.ok for k in judged),
        "kills_during_save": sum(k.save_in_flight is not None for k in kills),
        "kills_before_first_checkpoint": sum(k.committed == 0 for k in kills),
        "max_lost_steps": max((k.lost for k in judged), default=0),
        "bit_exact": exact,
        "details": [dataclasses.asdict(k) for k in kills],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--config", default="configs/dcgan.py:smoke")
    p.add_argument("--steps", type=int, default=600, help="steps per episode")
    p.add_argument("--ckpt_every", type=int, default=50, help="steps between checkpoints (about 2 s for the smoke GAN on 2 CPU cores)")
    p.add_argument("--kill_after", type=float, nargs=2, default=(2.0, 20.0), metavar=("MIN_S", "MAX_S"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "synthjax-soak"))
    p.add_argument("--out", default="", help="write the full result as JSON here")
    p.add_argument("--stack_every", type=int, default=2, help="every Nth episode trains a stack of two seeds (0: never)")
    args = p.parse_args(argv)

    overrides = [f"--config.train.num_steps={args.steps}", f"--config.train.ckpt_every={args.ckpt_every}",
                 "--config.train.log_every=1", "--config.train.sample_every=100000", "--config.train.keep=2"]
    os.makedirs(args.workdir, exist_ok=True)
    rng = random.Random(args.seed)
    begin = time.time()
    # SIGTERM ends the soak through the finally blocks, which SIGKILL the current launch.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    references = {kind: Reference(args, overrides, kind) for kind in ("single", "stack")}

    episodes = []
    while time.time() - begin < args.minutes * 60:
        n = len(episodes)
        kind = "stack" if args.stack_every and n % args.stack_every == args.stack_every - 1 else "single"
        episode = run_episode(args, n, rng, references[kind], overrides)
        episodes.append(episode)
        print({k: v for k, v in episode.items() if k != "details"}, flush=True)

    judged = sum(e["kills_judged"] for e in episodes)
    summary = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "config": args.config,
        "steps_per_episode": args.steps,
        "ckpt_every": args.ckpt_every,
        "minutes": round((time.time() - begin) / 60, 1),
        "episodes": len(episodes),
        "kills": sum(e["kills"] for e in episodes),
        "kills_judged": judged,
        "kills_ok": sum(e["kills_ok"] for e in episodes),
        "kills_during_save": sum(e["kills_during_save"] for e in episodes),
        "kills_before_first_checkpoint": sum(e["kills_before_first_checkpoint"] for e in episodes),
        "max_lost_steps": max((e["max_lost_steps"] for e in episodes), default=0),
        "episodes_bit_exact": sum(e["bit_exact"] is True for e in episodes),
        "episodes_killed": sum(e["kills"] > 0 for e in episodes),
        "episodes_bit_exact_after_kill": sum(e["bit_exact"] is True and e["kills"] > 0 for e in episodes),
        "stack_episodes": sum(e["kind"] == "stack" for e in episodes),
        "episodes_not_compared": sum(e["bit_exact"] is None for e in episodes),
        "reference_runs": sum(r.recomputed for r in references.values()),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"summary": summary, "episodes": episodes}, f, indent=2)
    failed = summary["kills_ok"] != judged or any(e["bit_exact"] is False for e in episodes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
