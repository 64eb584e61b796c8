"""VQ-VAE (van den Oord et al., 2017) on 8-bit MNIST: 7x7 grid of codes from a 64-entry codebook, EMA updates.

Run:   python train.py --config configs/vqvae.py --workdir runs/vqvae
Smoke: python train.py --config configs/vqvae.py:smoke --workdir /tmp/vqvae
Sweep: python -m synthjax.sweep --config configs/vqvae.py --vmap --workdir runs/vq_sweep   (commitment x seed)

Encoder 28 -> 14 -> 7 (4x4 stride-2 convolutions of 32 and 64 channels, a
3x3 and a 1x1 convolution) to 16-dimensional vectors, each replaced by its
nearest of 64 codes (straight-through gradients); the decoder mirrors it and
outputs a discretised logistic per pixel. Loss = reconstruction NLL +
commitment 0.25 * ||z_e - sg[z_q]||^2; the codebook follows an exponential
moving average (model.ema=True, decay 0.99). model.ema=False trains the
codebook with the codebook loss instead. Samples decode random codes (no
prior is fitted); `perplexity` reports how many codes are in use.

Reaches: no likelihood to report (log p(x) needs a prior over the codes,
which is not fitted); sample quality not measured.
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "vqvae"
    c.model.arch = "conv"
    c.model.width = 32
    c.model.num_codes = 64
    c.model.code_dim = 16
    c.model.ema = True
    c.model.ema_decay = 0.99
    c.objective.likelihood = "logistic"
    c.objective.commitment = 0.25
    c.data.binarize = False
    c.opt.lr = 1e-3
    c.train.update(batch_size=128, num_steps=3000, log_every=100, sample_every=1000, ckpt_every=1000)
    return finalize(c, arg, {"model.width": 4, "model.num_codes": 8, "model.code_dim": 4})


def get_sweep():
    """Commitment weight over seeds (one vmapped program)."""
    return {"objective.commitment": [0.1, 0.25, 1.0], "seed": [0, 1]}
