"""Class-conditional DCGAN on MNIST: conditional BatchNorm in G, spectrally normalised projection discriminator.

Run:   python train.py --config configs/cgan.py --workdir runs/cgan
Smoke: python train.py --config configs/cgan.py:smoke --workdir /tmp/cgan

The dcgan28 networks with class conditioning (model.conditional=True): the
generator's BatchNorms take a per-class gain and bias (de Vries et al.
2017), the discriminator adds <embed(y), features> to its logit (Miyato &
Koyama 2018) and is spectrally normalised instead of batch normalised;
hinge loss, Adam(1e-3, 0.5, 0.999). Fakes are generated for the labels of the
real batch; sample grids cycle through the classes 0..9 (one class per
column of a 10-wide grid, hence num_grid 100). Needs labelled data: a dataset
without labels fails before training with a message naming data.name. For
the 32x32 ResNet version use configs/sngan.py with --config.model.conditional=True.
configs/dcgan.py (`make train`) is class-conditional too, with the
conditioning above but a batch-normalised discriminator, half the widths,
the non-saturating loss with R1: the recipe measured to train fastest on a
CPU; this one keeps the projection paper's hinge loss and spectral norm.

Reaches (1,500 steps, 10,000 samples against the 2,000 test digits in the
MNIST classifier's features): FID 30.9, 86.7% of samples >= 90%
confident, classes 9.4-10.6%; 3.6 min on a 2-core CPU at its fastest. The
learning rate is the SN-GAN paper's larger one (Miyato et al. 2018, settings
D-F): at 2e-4 (its setting C) the digits are still faint after these
steps (FID 388), and a discriminator at 4e-4 (TTUR) does not help (FID 327).
benchmarks/RESULTS.md, "held-out figures of every config".
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
    c.model.d_norm = "spectral"
    c.model.conditional = True
    c.model.d_joint_pass = "auto"  # real and fake discriminator passes batched on GPU (configs/dcgan.py)
    c.objective.loss = "hinge"
    c.objective.penalty = ""
    c.objective.penalty_weight = 10.0
    c.objective.n_critic = 1
    c.objective.clip = 0.0
    c.objective.diffaugment = ""
    c.opt.update(lr=1e-3, b1=0.5, b2=0.999, d_lr=0.0)
    c.train.update(batch_size=128, num_steps=1500, log_every=50, sample_every=250, ckpt_every=500, num_grid=100)
    return finalize(c, arg, {"model.g_width": 16, "model.d_width": 8})


def get_sweep():
    """Two discriminator learning rates (TTUR) over seeds: all numeric, so `--vmap` stacks the six runs."""
    return {"opt.d_lr": [1e-3, 2e-3], "seed": [0, 1, 2]}
