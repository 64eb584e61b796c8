"""Convolutional VAE on dynamically binarised MNIST.

Run:   python train.py --config configs/vae_conv.py --workdir runs/vae_conv
Smoke: python train.py --config configs/vae_conv.py:smoke --workdir /tmp/vae_conv

Encoder 28 -> 14 -> 7 (4x4 stride-2 convolutions, 32 and 64 channels) -> 256 ->
(mu, log sigma^2) of 16; decoder the mirror image with 2x up-convolutions;
Bernoulli likelihood, Adam(1e-3).

Reaches, at 1,500 of its 3,000 steps (8.4 min on one CPU core): IWAE
(k=1000) NLL 95.6 nats on the first 500 test digits, 91.6 on 500 train
digits; samples FID 33.6, 49% confident (benchmarks/RESULTS.md, "Results: held-out figures of every config").
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "vae"
    c.model.arch = "conv"
    c.model.latent = 16
    c.model.hidden = 256
    c.model.width = 32
    c.objective.likelihood = "bernoulli"
    c.objective.beta = 1.0
    c.objective.iwae_k = 1  # > 1: train on the IWAE bound with this many samples (beta must be 1)
    c.data.binarize = True
    c.opt.lr = 1e-3
    c.train.update(batch_size=128, num_steps=3000, log_every=100, sample_every=1000, ckpt_every=1000)
    return finalize(c, arg, {"model.hidden": 16, "model.width": 4, "model.latent": 4})
