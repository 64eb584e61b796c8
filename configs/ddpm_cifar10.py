"""DDPM on CIFAR-10 with the network of Ho et al. (2020): 35.7M parameters.

Run:   python train.py --config configs/ddpm_cifar10.py --workdir runs/ddpm_cifar10
Smoke: python train.py --config configs/ddpm_cifar10.py:smoke --workdir /tmp/ddpm_cifar10

U-Net ch 128, multipliers (1, 2, 2, 2) over 32 -> 16 -> 8 -> 4, two residual
blocks per level, self-attention at 16x16, dropout 0.1, GroupNorm(32);
T = 1000 with linear betas 1e-4 .. 0.02, eps-prediction, Adam(2e-4), batch
128, gradient clipping at 1, EMA 0.9999. Ho et al. train 800k steps to FID
3.17 and NLL <= 3.75 bits/dim; GPU/TPU work, not measured here. The smoke
variant shrinks the network and uses the bundled MNIST so it runs offline.
"""
import ml_collections

from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "ddpm"
    c.model.arch = "unet"
    c.model.ch = 128
    c.model.ch_mult = (1, 2, 2, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (16,)
    c.model.dropout = 0.1
    c.model.groups = 32
    c.model.class_cond = False
    c.model.ema_decay = 0.9999
    c.model.ema_warmup = False  # the paper's plain EMA: 800k steps leave nothing of the init
    c.objective.schedule = "linear"  # or 'cosine'
    c.objective.num_steps = 1000
    c.objective.beta_start = 1e-4  # linear schedule endpoints, for T = 1000 (rescaled by 1000/T)
    c.objective.beta_end = 0.02
    c.objective.prediction = "eps"  # or 'x0', 'v'
    c.objective.label_dropout = 0.1  # class_cond only: probability of the no-label token
    c.sample = ml_collections.ConfigDict(dict(sampler="ddim", steps=50, guidance=1.0))
    c.opt.lr = 2e-4
    c.opt.grad_clip = 1.0
    c.data.name = "cifar10"
    c.train.update(batch_size=128, num_steps=800_000, log_every=1000, sample_every=10_000, ckpt_every=10_000)
    return finalize(c, arg, {"data.name": "mnist_bundled", "model.ch": 8, "model.groups": 4, "model.ch_mult": (1, 2),
                             "model.num_res_blocks": 1, "model.attn_resolutions": (14,), "sample.steps": 4})
