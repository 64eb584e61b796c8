"""DDPM (Ho et al., 2020) on MNIST: a small U-Net, eps-prediction, the linear schedule over 1000 steps.

Run:   python train.py --config configs/ddpm.py --workdir runs/ddpm
Smoke: python train.py --config configs/ddpm.py:smoke --workdir /tmp/ddpm
Eval:  python -m synthjax.evaluate --workdir runs/ddpm --metrics fid,nll

U-Net width 32 with multipliers (1, 2, 2) over 28 -> 14 -> 7, one residual
block per level, self-attention at 7x7, GroupNorm(8), no dropout, Adam(1e-3)
with gradient clipping at 1, EMA 0.999 with a warm-up (the decay is
min(0.999, (1 + n) / (10 + n)) at step n), batch 64, 3000 steps. Samples:
50 DDIM steps from the EMA weights (`sample.sampler='ddpm'` with
`sample.steps=1000` for ancestral sampling).
`model.class_cond=True` trains with classifier-free guidance
(`objective.label_dropout`, `sample.guidance`).

Expected result (bundled MNIST, trained on the 8,000 train digits, scored
against the 2,000 test digits in the MNIST classifier's features, 2,000
samples of 50-step DDIM): FID 10.3 (seed 1: 8.6), 65.4% of samples >= 90%
confident, classes 7.8-12.1%. The same run with a plain EMA
(model.ema_warmup=False) scores 22.5: 5% of its average is still the initialisation after 3,000
steps, seen as speckle noise in the samples.
Training: 22 min on two CPU cores at the VM's fastest (0.43 s per step),
about 65 at its slowest (1.3 s). benchmarks/RESULTS.md, "DDPM with an EMA
warm-up against the plain EMA".
"""
import ml_collections

from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "ddpm"
    c.model.arch = "unet"
    c.model.ch = 32
    c.model.ch_mult = (1, 2, 2)  # 28 -> 14 -> 7
    c.model.num_res_blocks = 1
    c.model.attn_resolutions = (7,)
    c.model.dropout = 0.0  # a short run underfits; Ho et al. use 0.1 on CIFAR-10
    c.model.groups = 8
    c.model.class_cond = False
    c.model.ema_decay = 0.999
    c.model.ema_warmup = True  # decay min(0.999, (1 + n) / (10 + n)) at step n: no trace of the init after 3,000 steps
    c.objective.schedule = "linear"  # or 'cosine'
    c.objective.num_steps = 1000
    c.objective.beta_start = 1e-4  # linear schedule endpoints, for T = 1000 (rescaled by 1000/T)
    c.objective.beta_end = 0.02
    c.objective.prediction = "eps"  # or 'x0', 'v'
    c.objective.label_dropout = 0.1  # class_cond only: probability of the no-label token
    c.sample = ml_collections.ConfigDict(dict(sampler="ddim", steps=50, guidance=1.0))  # sampler 'ddim' or 'ddpm'
    c.opt.lr = 1e-3
    c.opt.grad_clip = 1.0
    c.train.update(batch_size=64, num_steps=3000, log_every=100, sample_every=1000, ckpt_every=1000)
    # smoke: two resolutions (28, 14) instead of three, attention at 14; every kind of U-Net block still runs
    return finalize(c, arg, {"model.ch": 8, "model.groups": 4, "model.ch_mult": (1, 2), "model.attn_resolutions": (14,),
                             "sample.steps": 4})
