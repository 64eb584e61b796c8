"""Train configs on the bundled train split and measure them on the test split, for the README's table.

    python benchmarks/heldout_results.py --out /tmp/heldout [--runs vae_mlp,vae_conv,...] [--iwae-k 1000] [--nll-num 500]

Each run is `train.py --config configs/NAME.py` with the overrides in RUNS
(shorter than the shipped recipes where the CPU would take hours), timed from
launch to exit. It is then evaluated with `python -m synthjax.evaluate`:

- likelihood models: `--metrics nll` on the first `--nll-num` test digits
  (IWAE with `--iwae-k` samples for VAEs, exact for PixelRNN, the ELBO
  averaged over 10 draws for DRAW) and the same on as many train digits, so overfitting shows;
- every run with samples: FID / IS (with the confident and class shares) in
  the MNIST classifier's features against the test split, on `--num` samples.

Prints one Markdown table last and writes OUT/heldout.json. Runs go one after
another; the wall clock is part of the result, so run it on a quiet machine.
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

# name -> (config file, overrides, measure the NLL?, measure samples?, samples per NLL estimate or 0 for --iwae-k).
# Steps below the shipped recipe's are in the overrides, which the table prints.
RUNS: dict[str, tuple[str, list[str], bool, bool, int]] = {
    "dcgan": ("dcgan", [], False, True, 0),
    "gan_mlp": ("gan_mlp", [], False, True, 0),
    "wgan_gp": ("wgan_gp", [], False, True, 0),
    "cgan": ("cgan", [], False, True, 0),
    "vae_mlp": ("vae_mlp", [], True, True, 0),
    "iwae": ("iwae", [], True, True, 0),
    "vae_conv": ("vae_conv", ["--config.train.num_steps=1500"], True, True, 0),
    "beta_vae": ("beta_vae", ["--config.train.num_steps=1500"], True, True, 0),
    "vae_logistic": ("vae_logistic", ["--config.train.num_steps=1500"], True, False, 0),
    "pixelrnn": ("pixelrnn", ["--config.train.num_steps=150"], True, False, 1),  # exact (k unused); sampling is pixel by pixel, slow
    "draw": ("draw", ["--config.train.num_steps=200"], True, False, 10),  # ELBO draws: more lower only its variance
    # 50-step DDIM samples; the bound (1,000 U-Net passes per digit) is left to `evaluate --metrics nll`.
    "ddpm": ("ddpm", [], False, True, 0),
}


def run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.perf_counter() - t0


def evaluate(workdir: Path, log: Path, args: list[str], out: str) -> dict:
    run(["-m", "synthjax.evaluate", "--workdir", str(workdir), "--out", str(workdir / out), *args], log)
    return json.loads((workdir / out).read_text())


def measure(name: str, a: argparse.Namespace, out: Path) -> dict:
    config, overrides, likelihood, samples, nll_k = RUNS[name]
    workdir, log = out / name, out / f"{name}.log"
    seconds = run(["train.py", "--config", f"configs/{config}.py", "--workdir", str(workdir),
                   "--config.train.progress=False", *overrides], log)
    row: dict = {"run": name, "overrides": " ".join(overrides), "train_minutes": round(seconds / 60, 2),
                 "nll_test": None, "nll_train": None}
    if likelihood:
        nll_args = ["--metrics", "nll", "--iwae-k", str(nll_k or a.iwae_k), "--nll-num", str(a.nll_num)]
        test = evaluate(workdir, log, nll_args, "eval_nll_test.json")
        train = evaluate(workdir, log, [*nll_args, "--split", "train"], "eval_nll_train.json")
        row.update(nll_test=round(test["metrics"]["nll_nats"], 2), nll_train=round(train["metrics"]["nll_nats"], 2),
                   nll_convention=test["nll"]["convention"])
    if samples:
        m = evaluate(workdir, log, ["--metrics", "fid,is", "--num", str(a.num)], "eval_samples.json")["metrics"]
        row.update(fid=round(m["fid"], 2), confident=m["is_confident"], class_min=m["is_class_min"], class_max=m["is_class_max"])
    return row


def cell(value, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="a new folder for the workdirs, logs and heldout.json")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {','.join(RUNS)}")
    p.add_argument("--iwae-k", type=int, default=1000)
    p.add_argument("--nll-num", type=int, default=500, help="test (and train) digits the NLL averages over")
    p.add_argument("--num", type=int, default=10_000, help="samples for FID / IS")
    a = p.parse_args(argv)
    names = a.runs.split(",")
    if unknown := [n for n in names if n not in RUNS]:
        p.error(f"unknown run(s) {unknown}; known: {', '.join(RUNS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=False)
    rows = []
    for name in names:
        rows.append(measure(name, a, out))
        print(json.dumps(rows[-1]), flush=True)
        settings = {"iwae_k": a.iwae_k, "nll_num": a.nll_num, "num_samples": a.num, "cpus": os.cpu_count()}
        (out / "heldout.json").write_text(json.dumps({**settings, "rows": rows}, indent=2))
    print("\n| run | overrides | train min | test NLL | train NLL | FID | confident | classes |\n|" + " --- |" * 8)
    for r in rows:
        classes = f"{r['class_min']:.1%}-{r['class_max']:.1%}" if "fid" in r else "-"
        print(f"| {r['run']} | {r['overrides'] or '(shipped)'} | {r['train_minutes']} | {cell(r['nll_test'])} | "
              f"{cell(r['nll_train'])} | {cell(r.get('fid'))} | {cell(r.get('confident'), '{:.1%}')} | {classes} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
