"""WGAN-GP (Gulrajani et al., 2017) on MNIST: DCGAN-shaped critic without BatchNorm, gradient penalty 10, 5 critic updates.

Run:   python train.py --config configs/wgan_gp.py --workdir runs/wgan_gp
Smoke: python train.py --config configs/wgan_gp.py:smoke --workdir /tmp/wgan_gp
Sweep: python -m synthjax.sweep --config configs/wgan_gp.py --vmap --workdir runs/wgan_gp_sweep  (get_sweep below)

The dcgan28 generator; the critic drops BatchNorm (model.d_norm='none': the
penalty is per image) and outputs an unbounded score. Loss 'wasserstein',
penalty 'wgan_gp' with weight 10, n_critic = 5 critic updates per generator
update, Adam(1e-3, 0.5, 0.9): the betas of the authors' MNIST script, ten
times its rate (1e-4), which a 2,000-step run needs. A batch of
320 = 5 x 64 gives every critic update 64 fresh real images (see
synthjax/trainers/gan.py for the split).

The original WGAN (Arjovsky et al., 2017) is the same config with weight
clipping instead of the penalty and a BatchNorm critic:
    --config.objective.penalty= --config.objective.clip=0.01 --config.model.d_norm=batch --config.opt.lr=5e-5
(Adam in place of the paper's RMSProp). DRAGAN and R1 are
--config.objective.penalty=dragan / r1 (use loss 'ns' with them).

Reaches (2,000 steps, 10,000 samples against the 2,000 test digits in the
MNIST classifier's features): FID 40.3, 51.8% of samples >= 90% confident,
classes 4.7-22.6%; 7.5 min on a 2-core CPU at its fastest. Still early in
training (the authors' rate: FID 60.6 after these steps; 5e-4: 53.6): the
critic's penalty and 5 updates per generator step make WGAN-GP the slowest
GAN here to converge (benchmarks/RESULTS.md, "held-out figures of every
config").
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "gan"
    c.model.arch = "dcgan"
    c.model.z_dim = 100
    c.model.g_width = 128
    c.model.d_width = 64
    c.model.use_bias = True
    c.model.project_bn = "feature"
    c.model.ema_decay = 0.999
    c.model.d_norm = "none"
    c.model.conditional = False
    c.model.d_joint_pass = "auto"  # real and fake discriminator passes batched on GPU (configs/dcgan.py)
    c.objective.loss = "wasserstein"
    c.objective.penalty = "wgan_gp"
    c.objective.penalty_weight = 10.0
    c.objective.n_critic = 5
    c.objective.clip = 0.0
    c.objective.diffaugment = ""
    c.opt.update(lr=1e-3, b1=0.5, b2=0.9, d_lr=0.0)
    c.train.update(batch_size=320, num_steps=2000, log_every=50, sample_every=250, ckpt_every=500)
    return finalize(c, arg, {"model.g_width": 16, "model.d_width": 8, "objective.n_critic": 2})


def get_sweep():
    """Penalty weight x seed: every axis is numeric, so `--vmap` trains all six runs as one program."""
    return {"objective.penalty_weight": [1.0, 10.0], "seed": [0, 1, 2]}
