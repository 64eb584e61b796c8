"""Train `make train` recipe candidates and score their digits against the project's bar.

    python benchmarks/dcgan_recipe.py --out /tmp/recipe [--candidates shipped,NAME,...] [--num 10000]

Each candidate is `configs/dcgan.py` plus overrides (CANDIDATES below). It is
trained with `train.py` on the bundled train split (8,000 digits) into
OUT/NAME, timed from launch to exit, then scored with
`python -m synthjax.evaluate --metrics fid,is` on `--num` samples against the
2,000 test digits with the project's MNIST classifier:

- FID in the classifier's features,
- `confident`: the share of samples the classifier gives >= 90% confidence,
- the smallest and largest share of samples in one class.

The bar for the `make train` default: at most 10 minutes of training on the
2-core CPU, confident >= 80%, every class 6-14%, FID <= 15. Prints one table
(Markdown) last and writes OUT/recipe.json. Candidates run one after another;
run it on a quiet machine, the wall clock is part of the result.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name -> overrides of configs/dcgan.py (class-conditional, widths 64 and 32, Adam 2e-3, R1 gamma 1, EMA 0.99,
# 4,000 steps at batch 64). Each candidate restates the recipe it was measured against in RESULTS.md:
UNCOND = ["--config.model.conditional=False", "--config.train.num_grid=64"]
G64_D64 = [*UNCOND, "--config.model.d_width=64"]  # the unconditional networks shipped before the labels
WIDE = [*G64_D64, "--config.model.g_width=128", "--config.train.num_steps=2000"]  # first two tables
CANDIDATES: dict[str, list[str]] = {
    "shipped": [],
    "uncond_g64_3300": [*G64_D64, "--config.train.num_steps=3300"],  # shipped before the labels
    "lr_2e-4": [*WIDE, "--config.opt.lr=2e-4"],
    "lr_2e-4_d_no_norm": [*WIDE, "--config.opt.lr=2e-4", "--config.model.d_norm=none"],
    "lr_2e-4_g64_4000": [*G64_D64, "--config.opt.lr=2e-4", "--config.train.num_steps=4000"],
    "lr_5e-4": [*WIDE, "--config.opt.lr=5e-4"],
    "lr_5e-4_b32_4000": [*WIDE, "--config.opt.lr=5e-4", "--config.train.batch_size=32", "--config.train.num_steps=4000"],
    "lr_1e-3": [*WIDE, "--config.opt.lr=1e-3"],
    "ema_0.995": [*WIDE, "--config.model.ema_decay=0.995"],
    "no_r1": [*WIDE, "--config.objective.penalty="],
    "r1_0.1": [*WIDE, "--config.objective.penalty_weight=0.1"],
    "r1_0.01": [*WIDE, "--config.objective.penalty_weight=0.01"],
    "g64_3500": [*G64_D64, "--config.train.num_steps=3500"],
    "g64_3300": [*G64_D64, "--config.train.num_steps=3300"],
    "g64_3600": [*G64_D64, "--config.train.num_steps=3600"],
    "adam_b1_0": [*WIDE, "--config.opt.b1=0.0", "--config.opt.b2=0.99"],
    "linear_2400": [*WIDE, "--config.opt.schedule=linear", "--config.train.num_steps=2400"],
    "b128_linear_1400": [*WIDE, "--config.opt.schedule=linear", "--config.train.batch_size=128", "--config.train.num_steps=1400"],
    "d32_4500": [*UNCOND, "--config.model.d_width=32", "--config.train.num_steps=4500"],
    "d32_7000": [*UNCOND, "--config.model.d_width=32", "--config.train.num_steps=7000"],
    "d32_7000_r1_0.1": [*UNCOND, "--config.model.d_width=32", "--config.train.num_steps=7000",
                        "--config.objective.penalty_weight=0.1"],
    # Class-conditional (conditional BatchNorm in G, projection in D): the labels, not more steps, move the bar.
    "cond_d32_6500": ["--config.train.num_steps=6500"],
    "cond_d32_5500": ["--config.train.num_steps=5500"],
    "cond_d32_5000": ["--config.train.num_steps=5000"],
}
BAR = {"minutes": 10.0, "confident": 0.80, "class_min": 0.06, "class_max": 0.14, "fid": 15.0}


def train(overrides: list[str], workdir: Path, eval_every: int) -> float:
    """Train one candidate from scratch; return the seconds from launch to exit."""
    cmd = [sys.executable, "train.py", "--config", "configs/dcgan.py", "--workdir", str(workdir), *overrides]
    if eval_every:  # FID along the way, on 2,000 samples, in metrics.jsonl (its seconds count in the wall clock)
        cmd += [f"--config.eval.every={eval_every}", "--config.eval.num=2000", "--config.eval.metrics=fid,is"]
    t0 = time.perf_counter()
    with open(workdir.with_suffix(".log"), "w") as log:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def score(workdir: Path, num: int) -> dict:
    cmd = [sys.executable, "-m", "synthjax.evaluate", "--workdir", str(workdir), "--metrics", "fid,is", "--num", str(num)]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return json.loads((workdir / "eval.json").read_text())


def meets_bar(row: dict) -> bool:
    return (row["minutes"] <= BAR["minutes"] and row["confident"] >= BAR["confident"] and row["fid"] <= BAR["fid"]
            and row["class_min"] >= BAR["class_min"] and row["class_max"] <= BAR["class_max"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the candidates' workdirs, logs and recipe.json")
    p.add_argument("--candidates", default="shipped", help=f"comma-separated, of {','.join(CANDIDATES)}")
    p.add_argument("--num", type=int, default=10_000, help="samples scored per candidate")
    p.add_argument("--eval-every", type=int, default=0, help="also log FID/IS on 2,000 samples every N steps (0: off)")
    a = p.parse_args(argv)
    names = a.candidates.split(",")
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidate(s) {unknown}; known: {', '.join(CANDIDATES)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        workdir = out / name
        if workdir.exists():
            p.error(f"{workdir} exists; pass another --out (candidates train from scratch)")
        seconds = train(CANDIDATES[name], workdir, a.eval_every)
        m = score(workdir, a.num)["metrics"]
        row = {"candidate": name, "overrides": " ".join(CANDIDATES[name]), "minutes": round(seconds / 60, 2),
               "fid": round(m["fid"], 2), "confident": m["is_confident"], "class_min": m["is_class_min"],
               "class_max": m["is_class_max"], "is": round(m["is"], 3)}
        row["meets_bar"] = meets_bar(row)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "recipe.json").write_text(json.dumps({"bar": BAR, "num_samples": a.num, "cpus": os.cpu_count(), "rows": rows}, indent=2))
    print("\n| candidate | overrides | minutes | FID | confident | classes | IS | bar |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['candidate']} | {r['overrides'] or '(shipped)'} | {r['minutes']} | {r['fid']} | {r['confident']:.1%} | "
              f"{r['class_min']:.1%}-{r['class_max']:.1%} | {r['is']} | {'met' if r['meets_bar'] else 'not met'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
