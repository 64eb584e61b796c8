"""WGAN-GP (Gulrajani et al., 2017) on CIFAR-10: DCGAN-like CNN, gradient penalty 10, 5 critic updates.

Run:   python train.py --config configs/wgan_gp_cifar10.py --workdir runs/wgan_gp_cifar10
Smoke: python train.py --config configs/wgan_gp_cifar10.py:smoke --workdir /tmp/wgan_gp_cifar10   (bundled MNIST)

Data: cifar10 through tensorflow-datasets (32x32x3), as configs/sngan.py.
Networks: the dcgan arch (DCGAN-like generator with BatchNorm; critic
without BatchNorm, model.d_norm='none', as the penalty is per image).
Loss 'wasserstein', penalty 'wgan_gp' with lambda = 10, n_critic = 5,
Adam(1e-4, b1=0, b2=0.9), 64 real images per critic update (batch 5 x 64),
learning rate decayed linearly to 0 over 100k generator updates.

Paper figures: Inception scores on CIFAR-10, see Gulrajani et al. 2017,
Table 3 (and Figure 3 for the DCGAN-like CNN); the paper reports no FID.
Reaches: not measured here (the dataset is not available offline).
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    # Keys as in configs/dcgan.py, which says what each does.
    c = base_config()
    c.model.family = "gan"
    c.model.arch = "dcgan"
    c.model.z_dim = 100
    c.model.g_width = 64
    c.model.d_width = 64
    c.model.use_bias = False
    c.model.project_bn = "channel"
    c.model.ema_decay = 0.0  # the paper samples the generator itself, no EMA
    c.model.d_norm = "none"
    c.model.conditional = False
    c.model.conv_impl = "auto"
    c.sweep.cpu_stack_overrides = c.sweep.gpu_stack_overrides = "model.conv_impl=stack"  # synthjax/models/formulations.py
    c.model.conv_batch_chunk = 0
    c.model.d_joint_pass = "auto"
    c.objective.loss = "wasserstein"
    c.objective.penalty = "wgan_gp"
    c.objective.penalty_weight = 10.0
    c.objective.n_critic = 5
    c.objective.clip = 0.0
    c.objective.diffaugment = ""
    c.opt.update(lr=1e-4, b1=0.0, b2=0.9, d_lr=0.0)
    c.train.update(batch_size=320, num_steps=100000, log_every=100, sample_every=2500, ckpt_every=2500)
    c.train.cpu_allocator = "heap"
    c.data.name = "cifar10"
    c.opt.update(schedule="linear", decay_steps=0, end_factor=0.0)  # to 0 over train.num_steps
    return finalize(c, arg, {"data.name": "mnist_bundled", "model.g_width": 16, "model.d_width": 8, "objective.n_critic": 2})
