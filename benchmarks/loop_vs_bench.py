"""Is the input pipeline the bottleneck? train.py's loop against the fixed-batch bench, alternating.

    python benchmarks/loop_vs_bench.py [--rounds 3] [--steps 500] [--out loop_vs_bench.json]

Each round runs `train.py --config configs/dcgan.py` (the real bundled-MNIST
grain pipeline, device prefetch, logging, sample grids and a checkpoint, as a
user gets them) for `--steps` steps at batch 128, then `python -m
synthjax.bench --workload dcgan28 --batch-size 128` (the same train step on one
fixed on-device batch), each in a fresh process. The loop's figure is the
median of its per-log-interval rates after the first interval (timing.jsonl's
`interval_steps_per_sec`; the first interval holds the pipeline's start); the
loop's whole-run mean, grids and checkpoint included, is reported beside it.
The target (issue 3) is loop >= 90% of bench.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 128


def run_loop(steps: int) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "train.py", "--config", "configs/dcgan.py", "--workdir", workdir,
               f"--config.train.num_steps={steps}", f"--config.train.batch_size={BATCH}", "--config.train.progress=false"]
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
        with open(os.path.join(workdir, "timing.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    intervals = [r["interval_steps_per_sec"] for r in rows[1:]]
    return {"img_s": BATCH * statistics.median(intervals), "whole_run_img_s": BATCH * rows[-1]["steps_per_sec"],
            "intervals_img_s": [BATCH * x for x in intervals]}


def run_bench(steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "synthjax.bench", "--workload", "dcgan28", "--batch-size", str(BATCH),
                          "--steps", str(steps), "--json"], cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=500, help="loop steps per round")
    p.add_argument("--bench-steps", type=int, default=150)
    p.add_argument("--out", default="")
    a = p.parse_args()
    rounds = []
    for r in range(a.rounds):
        loop = run_loop(a.steps)
        bench = run_bench(a.bench_steps)
        rounds.append({"loop": loop, "bench": bench, "ratio": loop["img_s"] / bench["images_per_sec"]})
        print(f"round {r}: loop {loop['img_s']:.0f} img/s (whole run {loop['whole_run_img_s']:.0f}), "
              f"bench {bench['images_per_sec']:.0f} img/s, ratio {rounds[-1]['ratio']:.2f}", file=sys.stderr)
    summary = {
        "date": time.strftime("%Y-%m-%d"), "device": rounds[0]["bench"]["device"], "batch": BATCH,
        "loop_img_s": statistics.median(x["loop"]["img_s"] for x in rounds),
        "loop_whole_run_img_s": statistics.median(x["loop"]["whole_run_img_s"] for x in rounds),
        "bench_img_s": statistics.median(x["bench"]["images_per_sec"] for x in rounds),
        "median_ratio": statistics.median(x["ratio"] for x in rounds), "rounds": rounds,
    }
    print("| loop img/s (median interval) | loop img/s (whole run) | bench img/s | median ratio loop/bench |")
    print("| --- | --- | --- | --- |")
    print(f"| {summary['loop_img_s']:.0f} | {summary['loop_whole_run_img_s']:.0f} | {summary['bench_img_s']:.0f} "
          f"| {summary['median_ratio']:.2f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
