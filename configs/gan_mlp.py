"""The original fully connected GAN (Goodfellow et al., 2014) on MNIST.

Run:   python train.py --config configs/gan_mlp.py --workdir runs/gan_mlp
Smoke: python train.py --config configs/gan_mlp.py:smoke --workdir /tmp/gan_mlp

Generator 100 -> 256 -> 256 -> 784 (tanh), discriminator 784 -> 256 -> 256 -> 1,
LeakyReLU 0.2. `objective.loss` is 'minimax' (the paper's log(1 - D(G(z)))),
switch to 'ns' for the non-saturating variant the paper recommends in practice.

Reaches, as shipped (5,000 steps, 1.5 min on one CPU core): FID 82.8 in the
MNIST classifier's features against the test split, 33.9% of samples
classified with >= 90% confidence, classes 3.8-16.8% (benchmarks/RESULTS.md,
"Results: held-out figures of every config").
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "gan"
    c.model.arch = "mlp"
    c.model.z_dim = 100
    c.model.hidden = 256
    c.model.ema_decay = 0.999
    c.model.d_norm = ""  # '': none (the paper); 'spectral'
    c.model.conditional = False
    c.model.d_joint_pass = "auto"  # real and fake discriminator passes batched on GPU (configs/dcgan.py)
    c.objective.loss = "minimax"
    c.objective.penalty = ""  # '', wgan_gp, r1 or dragan (synthjax/objectives/penalties.py)
    c.objective.penalty_weight = 10.0
    c.objective.n_critic = 1  # discriminator updates per generator update (each on a 1/n share of the batch)
    c.objective.clip = 0.0  # > 0: WGAN weight clipping of the discriminator to [-clip, clip]
    c.objective.diffaugment = ""  # e.g. 'color,translation,cutout' (synthjax/augment.py)
    c.opt.update(lr=2e-4, b1=0.5, b2=0.999, d_lr=0.0)
    c.train.update(batch_size=128, num_steps=5000, log_every=100, sample_every=1000, ckpt_every=1000)
    return finalize(c, arg, {"model.hidden": 32})
