"""Test-split NLL of configs/vae_mlp.py against the PyTorch peer's VAE trained for the same wall-clock time.

    python benchmarks/vae_nll_vs_peer.py --peer ../shared/bench/peers/torch_peer.py --steps 20000 --iwae-k 5000

1. Trains `configs/vae_mlp.py` with `train.py` (a fresh workdir) on the
   bundled MNIST train split (8,000 digits) and times the whole process.
2. Trains the peer's `VAEMLP` (784-400-20, Bernoulli decoder, Adam 1e-3,
   batch 128, dynamic binarisation) on the same split for the same seconds.
3. Scores both with an IWAE bound (k importance samples) on the same fixed
   binarisation of the 2,000 test digits, and of 2,000 train digits, so
   overfitting shows. Prints a table and writes JSON (`--out`).

torch is an optional dependency: this script needs it, synthjax does not.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def split_images(split: str) -> np.ndarray:
    """The bundled digits of one split as float32 (N, 784) in [0, 1]."""
    from synthjax.data.sources import bundled_split_indices, load_bundled_mnist

    images, _ = load_bundled_mnist()
    return images[bundled_split_indices(split)].reshape(-1, 784).astype(np.float32) / 255.0


def binarise(x01: np.ndarray, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(x01.shape, dtype=np.float32) < x01).astype(np.float32)


def train_synthjax(workdir: str, steps: int, seed: int, extra: list[str]) -> float:
    """Seconds `train.py` takes from launch to exit (compile, data, checkpoints included)."""
    cmd = [sys.executable, os.path.join(REPO, "train.py"), "--config", os.path.join(REPO, "configs", "vae_mlp.py"),
           "--workdir", workdir, f"--config.train.num_steps={steps}", f"--config.seed={seed}", "--config.train.progress=False", *extra]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - t0


def synthjax_nll(workdir: str, x_bin: np.ndarray, k: int, seed: int) -> float:
    import jax

    from synthjax.evaluate import negative_log_likelihood
    from synthjax.sample import load_run

    _, trainer, state, _ = load_run(workdir)
    log_likelihood = jax.jit(trainer.log_likelihood, static_argnums=3)
    return negative_log_likelihood(log_likelihood, state, x_bin.reshape(-1, 28, 28, 1), jax.random.key(seed), k)


def load_peer(path: str):
    spec = importlib.util.spec_from_file_location("torch_peer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_peer(peer, train01: np.ndarray, seconds: float, seed: int):
    """The peer's VAE, Adam(1e-3), batch 128, a fresh binarisation per batch, for `seconds` of wall clock."""
    import torch

    torch.manual_seed(seed)
    model = peer.VAEMLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = torch.from_numpy(train01)
    gen = torch.Generator().manual_seed(seed)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for idx in torch.randperm(len(data), generator=gen).split(128):
            if len(idx) < 128 or time.perf_counter() - t0 >= seconds:
                continue
            x = torch.bernoulli(data[idx], generator=gen)
            opt.zero_grad(set_to_none=True)
            model(x).backward()
            opt.step()
            steps += 1
    return model, steps


def peer_nll(model, x_bin: np.ndarray, k: int, seed: int, chunk: int = 500) -> float:
    """IWAE bound with `k` samples per image, in nats, the same estimator synthjax uses."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    total = 0.0
    with torch.no_grad():
        for x in torch.from_numpy(x_bin).split(20):
            h = F.relu(model.enc(x))
            mu, logvar = model.mu(h), model.logvar(h)
            std = torch.exp(0.5 * logvar)
            log_w = []
            for start in range(0, k, chunk):
                n = min(chunk, k - start)
                eps = torch.randn(n, *mu.shape)
                z = mu + std * eps
                logits = model.dec2(F.relu(model.dec1(z)))
                log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
                log_pz = (-0.5 * (z**2 + math.log(2 * math.pi))).sum(-1)
                log_qz = (-0.5 * (eps**2 + math.log(2 * math.pi)) - torch.log(std)).sum(-1)
                log_w.append(log_px + log_pz - log_qz)
            log_w = torch.cat(log_w)
            total += float((-(torch.logsumexp(log_w, 0) - math.log(k))).sum())
    return total / len(x_bin)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peer", default=os.path.join(REPO, "..", "shared", "bench", "peers", "torch_peer.py"))
    p.add_argument("--steps", type=int, default=20000, help="synthjax train steps (train.num_steps)")
    p.add_argument("--set", action="append", default=[], metavar="--config.KEY=VALUE", help="extra train.py override")
    p.add_argument("--iwae-k", type=int, default=5000)
    p.add_argument("--num", type=int, default=2000, help="test (and train) images scored")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="")
    p.add_argument("--out", default="")
    a = p.parse_args()
    train01, test01 = split_images("train"), split_images("test")
    scored = {"test": binarise(test01[: a.num], 1), "train": binarise(train01[: a.num], 2)}
    workdir = a.workdir or tempfile.mkdtemp(prefix="vae_mlp_")
    seconds = train_synthjax(workdir, a.steps, a.seed, a.set)
    ours = {split: synthjax_nll(workdir, x, a.iwae_k, a.seed) for split, x in scored.items()}
    model, peer_steps = train_peer(load_peer(a.peer), train01, seconds, a.seed)
    theirs = {split: peer_nll(model, x, a.iwae_k, a.seed) for split, x in scored.items()}
    record = {"date": time.strftime("%Y-%m-%d"), "train_seconds": seconds, "iwae_k": a.iwae_k, "num": a.num,
              "synthjax": {"steps": a.steps, "overrides": a.set, "nll": ours},
              "pytorch_peer": {"steps": peer_steps, "nll": theirs}}
    print(f"same wall clock: {seconds:.0f} s; IWAE k={a.iwae_k}, nats per image (bundled MNIST split)")
    print("| who | steps | test NLL | train NLL |\n| --- | --- | --- | --- |")
    for who, r in (("synthjax vae_mlp", record["synthjax"]), ("PyTorch peer", record["pytorch_peer"])):
        print(f"| {who} | {r['steps']} | {r['nll']['test']:.2f} | {r['nll']['train']:.2f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
