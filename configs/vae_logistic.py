"""Conv VAE with a discretised logistic likelihood on 8-bit MNIST (grey levels, not binarised).

Run:   python train.py --config configs/vae_logistic.py --workdir runs/vae_logistic
Smoke: python train.py --config configs/vae_logistic.py:smoke --workdir /tmp/vae_logistic

The vae_conv networks with two decoder outputs per pixel (mean and log
scale) of a discretised logistic over the 256 levels (PixelCNN++ style, one
component; objectives/vae.py), so -log P(x) is a code length of the 8-bit
images: eval/bits_per_dim is an upper bound (the negative ELBO) on the model's
bits per dimension, comparable with other 8-bit likelihood models.

Reaches, at 1,500 of its 3,000 steps (8.7 min on one CPU core): IWAE
(k=1000) NLL 872.9 nats (1.61 bits/dim) on the first 500 test digits, 836.6
(1.54) on 500 train digits (benchmarks/RESULTS.md, "Results: held-out figures of every config").
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "vae"
    c.model.arch = "conv"
    c.model.latent = 16
    c.model.hidden = 256
    c.model.width = 32
    c.objective.likelihood = "logistic"
    c.objective.beta = 1.0
    c.objective.iwae_k = 1
    c.data.binarize = False
    c.opt.lr = 1e-3
    c.train.update(batch_size=128, num_steps=3000, log_every=100, sample_every=1000, ckpt_every=1000)
    return finalize(c, arg, {"model.hidden": 16, "model.width": 4, "model.latent": 4})


def get_sweep():
    """Learning rate over seeds (one vmapped program)."""
    return {"opt.lr": [1e-3, 3e-4], "seed": [0, 1]}
