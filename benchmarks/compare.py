"""synthjax against the PyTorch peer, side by side, alternating, in one invocation.

    python benchmarks/compare.py                                  # CPU defaults: dcgan28 and vae_mlp at b128
    python benchmarks/compare.py --cases dcgan28:1024,dcgan64:256:bfloat16 --rounds 3 --out results.json

Each round runs every case once for synthjax (`python -m synthjax.bench`) and
once for the peer (`shared/bench/peers/torch_peer.py`), each in a fresh
process, alternating so machine noise hits both. The table reports medians
over rounds and the median of the per-round ratios synthjax / peer. For the
peer the best of its variants in a round counts (eager, `--compile`,
`--amp bf16` when the case is bfloat16, and on CPU eager under each glibc
allocator setting synthjax uses on some config, whichever this case's config
picks), as the spec asks. torch is optional:
without it only the synthjax column is filled.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from synthjax.runtime import ALLOCATOR_ENV

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


# The glibc allocator settings synthjax applies to itself on CPU (synthjax/runtime.py: 'threshold' by
# default, 'heap' where a config asks), given to the peer through glibc's environment variables, so
# that neither side has one alone. PyTorch gains from 'heap' where synthjax does not (vae_mlp).
PEER_MALLOC_ENVS = [env for env in ALLOCATOR_ENV.values() if env]


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
            ours = run_json([sys.executable, "-m", "synthjax.bench", "--workload", workload, "--batch-size", str(batch),
                             "--steps", str(a.steps), "--dtype", dtype, "--json"], a.timeout)
            records.append({"round": r, "who": "synthjax", "case": [workload, batch, dtype], "result": ours})
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
        ours, peer, ratios = [], [], []
        for r in range(rounds):
            mine = [x["result"]["images_per_sec"] for x in records if x["round"] == r and x["who"] == "synthjax" and tuple(x["case"]) == case and x["result"]]
            theirs = [x["result"]["images_per_sec"] for x in records if x["round"] == r and x["who"] == "torch" and tuple(x["case"]) == case and x["result"]]
            if mine:
                ours.append(mine[0])
            if theirs:
                peer.append(max(theirs))
            if mine and theirs:
                ratios.append(mine[0] / max(theirs))
        compile_s = [x["result"]["compile_s"] for x in records if x["who"] == "synthjax" and tuple(x["case"]) == case and x["result"]]
        by_variant: dict[str, list[float]] = {}
        for x in records:
            if x["who"] == "torch" and tuple(x["case"]) == case and x["result"]:
                by_variant.setdefault(x["variant"] or "eager", []).append(x["result"]["images_per_sec"])
        rows.append({
            "workload": case[0], "batch": case[1], "dtype": case[2],
            "synthjax_img_s": statistics.median(ours) if ours else None,
            "torch_img_s": statistics.median(peer) if peer else None,
            "median_ratio": statistics.median(ratios) if ratios else None,
            "compile_s": statistics.median(compile_s) if compile_s else None,
            "rounds": len(ratios) or len(ours),
            "torch_img_s_by_variant": {v: statistics.median(ips) for v, ips in by_variant.items()},
        })
    return rows


def print_table(rows: list[dict]) -> None:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    print("| workload | batch | dtype | synthjax img/s | PyTorch img/s | median ratio | synthjax compile s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['workload']} | {r['batch']} | {r['dtype']} | {fmt(r['synthjax_img_s'], ',.0f')} | {fmt(r['torch_img_s'], ',.0f')} "
              f"| {fmt(r['median_ratio'], '.2f')}x | {fmt(r['compile_s'], '.1f')} |")
    for r in rows:
        for variant, ips in r.get("torch_img_s_by_variant", {}).items():
            print(f"  peer {r['workload']} b{r['batch']} [{variant}]: median {ips:,.0f} img/s")


if __name__ == "__main__":
    main()
