"""synthjax against the PyTorch peer, side by side, alternating, in one invocation.

    python benchmarks/compare.py                                  # CPU defaults: dcgan28 and vae_mlp at b128
    python benchmarks/compare.py --cases dcgan28:1024,dcgan64:256:bfloat16 --rounds 3 --out results.json

Each round runs every case once for synthjax (`python -m synthjax.bench`) and
once for the peer (`shared/bench/peers/torch_peer.py`), each in a fresh
process, alternating so machine noise hits both. The table reports medians
over rounds and the median of the per-round ratios synthjax / peer. For the
peer the best of its variants in a round counts (eager, `--compile`,
`--amp bf16` when the case is bfloat16), as the spec asks. On CPU both sides
also run under each of the glibc allocator settings synthjax knows
(`train.cpu_allocator`; the peer through glibc's environment variables), and
the best of each side's runs in a round counts: the same number of draws on
each side, where one synthjax run against the best of three peer runs would
favour the peer by the noise alone. The ratio of synthjax's default config
alone against the peer's best is reported too ("default-only ratio").
torch is optional: without it only the synthjax column is filled.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from synthjax.tuning import ALLOCATOR_ENV

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PEER = os.path.join(os.path.dirname(REPO), "shared", "bench", "peers", "torch_peer.py")


def run_json(cmd: list[str], timeout: int, env: dict | None = None) -> dict | None:
    """Run a benchmark process (with `env` added to ours) and parse its last JSON line (None if it failed)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        print(f"timeout: {' '.join(cmd)}", file=sys.stderr)
        return None
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
        print(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1])


def parse_case(text: str) -> tuple[str, int, str]:
    parts = text.split(":")
    return parts[0], int(parts[1]) if len(parts) > 1 else 128, parts[2] if len(parts) > 2 else "float32"


# The glibc allocator settings synthjax applies to itself on CPU (synthjax/tuning.py: 'threshold' by
# default, 'heap' or glibc's own 'default' where a config asks), given to the peer through glibc's
# environment variables, so that neither side has one alone. PyTorch gains from 'heap' where
# synthjax does not (vae_mlp).
PEER_MALLOC_ENVS = [env for env in ALLOCATOR_ENV.values() if env]
DEFAULT_ALLOCATOR = "threshold"


def ours_variants(device: str) -> list[list[str]]:
    """Extra `synthjax.bench` arguments of every synthjax run in a round: the default config first,
    then on CPU the other allocator settings; the best of them counts."""
    others = [m for m in ALLOCATOR_ENV if m != DEFAULT_ALLOCATOR] if device == "cpu" else []
    return [[]] + [["--set", f"train.cpu_allocator={mode}"] for mode in others]


def peer_variants(dtype: str, device: str, compile_too: bool) -> list[tuple[list[str], dict]]:
    """(arguments, extra environment) of every peer variant timed; the best of them counts."""
    variants = [([], {})]
    if device == "cpu":
        variants += [([], env) for env in PEER_MALLOC_ENVS]
    if compile_too:
        variants.append((["--compile"], {}))
    if dtype == "bfloat16":
        variants.append((["--amp", "bf16"], {}))
    return [(v + ["--device", device], env) for v, env in variants]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="dcgan28:128,vae_mlp:128", help="workload:batch[:dtype],...")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--peer", default=os.environ.get("SYNTHJAX_PEER", DEFAULT_PEER))
    p.add_argument("--peer-device", default="cpu")
    p.add_argument("--peer-compile", action="store_true", help="also time torch.compile (slow to compile on CPU)")
    p.add_argument("--timeout", type=int, default=900)
    p.add_argument("--out", default="", help="write all records and the table as JSON here")
    a = p.parse_args()

    have_peer = os.path.exists(a.peer) and subprocess.run([sys.executable, "-c", "import torch"], capture_output=True).returncode == 0
    cases = [parse_case(c) for c in a.cases.split(",")]
    records = []
    for r in range(a.rounds):
        for workload, batch, dtype in cases:
            for extra in ours_variants(a.peer_device):
                ours = run_json([sys.executable, "-m", "synthjax.bench", "--workload", workload, "--batch-size",
                                 str(batch), "--steps", str(a.steps), "--dtype", dtype, "--json", *extra], a.timeout)
                records.append({"round": r, "who": "synthjax", "variant": " ".join(extra),
                                "case": [workload, batch, dtype], "result": ours})
            if have_peer and workload in ("dcgan28", "dcgan64", "vae_mlp"):
                for extra, env in peer_variants(dtype, a.peer_device, a.peer_compile):
                    res = run_json([sys.executable, a.peer, "--workload", workload, "--batch-size", str(batch),
                                    "--steps", str(a.steps), *extra], a.timeout, env)
                    variant = " ".join(extra + [f"{k}={v}" for k, v in env.items()])
                    records.append({"round": r, "who": "torch", "variant": variant, "case": [workload, batch, dtype], "result": res})
            print(f"round {r}: {workload} b{batch} {dtype} done", file=sys.stderr)
    table = summarise(records, cases, a.rounds)
    print_table(table)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "records": records, "table": table}, f, indent=1)


def summarise(records: list[dict], cases, rounds: int) -> list[dict]:
    rows = []
    for case in cases:
        mine = [x for x in records if x["who"] == "synthjax" and tuple(x["case"]) == case and x["result"]]
        theirs = [x for x in records if x["who"] == "torch" and tuple(x["case"]) == case and x["result"]]
        ours, peer, ratios, default_ratios = [], [], [], []
        for r in range(rounds):
            ips = {x.get("variant", ""): x["result"]["images_per_sec"] for x in mine if x["round"] == r}
            peer_ips = [x["result"]["images_per_sec"] for x in theirs if x["round"] == r]
            if ips:
                ours.append(max(ips.values()))
            if peer_ips:
                peer.append(max(peer_ips))
            if ips and peer_ips:
                ratios.append(max(ips.values()) / max(peer_ips))
                if "" in ips:
                    default_ratios.append(ips[""] / max(peer_ips))
        rows.append({
            "workload": case[0], "batch": case[1], "dtype": case[2],
            "synthjax_img_s": statistics.median(ours) if ours else None,
            "torch_img_s": statistics.median(peer) if peer else None,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "median_ratio_default_only": statistics.median(default_ratios) if default_ratios else None,
            "compile_s": statistics.median([x["result"]["compile_s"] for x in mine]) if mine else None,
            "rounds": len(ratios) or len(ours),
            "synthjax_img_s_by_variant": by_variant(mine, "default config"),
            "torch_img_s_by_variant": by_variant(theirs, "eager"),
        })
    return rows


def by_variant(records: list[dict], plain: str) -> dict[str, float]:
    """Median img/s of each variant's runs ('' is `plain`)."""
    runs: dict[str, list[float]] = {}
    for x in records:
        runs.setdefault(x.get("variant") or plain, []).append(x["result"]["images_per_sec"])
    return {v: statistics.median(ips) for v, ips in runs.items()}


def print_table(rows: list[dict]) -> None:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    print("| workload | batch | dtype | synthjax img/s | PyTorch img/s | median ratio | synthjax compile s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['workload']} | {r['batch']} | {r['dtype']} | {fmt(r['synthjax_img_s'], ',.0f')} | {fmt(r['torch_img_s'], ',.0f')} "
              f"| {fmt(r['median_ratio'], '.2f')}x | {fmt(r['compile_s'], '.1f')} |")
    for r in rows:
        if r.get("median_ratio_default_only") is not None:
            print(f"  {r['workload']} b{r['batch']}: synthjax's default config alone against the peer's best: "
                  f"default-only ratio {r['median_ratio_default_only']:.2f}x")
        for who in ("synthjax", "torch"):
            for variant, ips in r.get(f"{who}_img_s_by_variant", {}).items():
                print(f"  {who} {r['workload']} b{r['batch']} [{variant}]: median {ips:,.0f} img/s")


if __name__ == "__main__":
    main()
