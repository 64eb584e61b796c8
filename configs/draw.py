"""DRAW (Gregor et al., 2015) with Gaussian read/write attention on dynamically binarised MNIST.

Run:   python train.py --config configs/draw.py --workdir runs/draw
Smoke: python train.py --config configs/draw.py:smoke --workdir /tmp/draw
No attention: --config.model.attention=false (read the whole image and error
image, write the whole canvas).

T=64 steps, encoder and decoder LSTMs of 256 units, 100 latents per step,
2x2 read and 5x5 write attention grids (the paper's MNIST settings),
Adam(1e-3) with gradient clipping. The loss is the variational bound per
image in nats: reconstruction BCE of sigmoid(c_T) (`rec`) plus the summed
per-step KL (`kl`).

Paper (binarised MNIST, test bound): <= 80.97 nats with attention, <= 87.40
without.

Reaches, at 200 of its 20,000 steps (3.7 min on one CPU core): a bound of
199.5 nats on the first 500 test digits and 203.0 on 500 train digits (the
ELBO averaged over 10 draws, `python -m synthjax.evaluate --metrics nll
--iwae-k 10`): blurry blobs, early in training (benchmarks/RESULTS.md, "Results: held-out figures of every config"). The
no-attention variant: not measured.
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "draw"
    c.model.arch = "draw"
    c.model.steps = 64
    c.model.hidden = 256
    c.model.latent = 100
    c.model.attention = True
    c.model.read_n = 2
    c.model.write_n = 5
    c.data.binarize = True
    c.opt.update(lr=1e-3, grad_clip=10.0)
    c.train.update(batch_size=64, num_steps=20000, log_every=100, sample_every=2000, ckpt_every=2000)
    return finalize(c, arg, {"model.steps": 4, "model.hidden": 16, "model.latent": 4, "model.write_n": 3})
