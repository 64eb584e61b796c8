"""DCGAN (Radford et al., 2016) on CelebA at 64x64: the paper's networks, loss and optimiser.

Run:   python train.py --config configs/dcgan_celeba64.py --workdir runs/dcgan_celeba64
Smoke: python train.py --config configs/dcgan_celeba64.py:smoke --workdir /tmp/dcgan_celeba64   (bundled MNIST)

Data: celeb_a through tensorflow-datasets at 64x64x3 (as configs/sngan.py
reads cifar10). Networks: the dcgan arch with model.g_width=64,
use_bias=False, project_bn=channel: G z(100) -> 4x4x512 -> 8x8x256 ->
16x16x128 -> 32x32x64 -> 64x64x3 (4x4 kernels, BatchNorm, ReLU, tanh) and D
64 -> 32 -> 16 -> 8 -> 4 -> logit (BatchNorm except on the input layer,
LeakyReLU 0.2); the widths of the authors' reference code (ngf = ndf = 64).
The paper's Figure 1 draws a wider G (4x4x1024 at the start). Non-saturating loss, no penalty, Adam(2e-4, b1=0.5,
b2=0.999), batch 128.

Paper figures: DCGAN reports no FID or IS for faces (it predates both);
see Radford et al. 2016, Section 4 and Figures for CelebA-like faces.
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
    c.model.d_norm = ""
    c.model.conditional = False
    c.model.conv_impl = "auto"
    c.sweep.cpu_stack_overrides = c.sweep.gpu_stack_overrides = "model.conv_impl=stack"  # synthjax/models/formulations.py
    c.model.conv_batch_chunk = 0
    c.model.d_joint_pass = "auto"
    c.objective.loss = "ns"
    c.objective.penalty = ""
    c.objective.penalty_weight = 0.0
    c.objective.n_critic = 1
    c.objective.clip = 0.0
    c.objective.diffaugment = ""
    c.opt.update(lr=2e-4, b1=0.5, b2=0.999, d_lr=0.0)
    c.train.update(batch_size=128, num_steps=100000, log_every=100, sample_every=2500, ckpt_every=2500)
    c.train.cpu_allocator = "heap"
    c.data.name = "celeb_a"
    c.data.image_size = 64  # centre-crop and resize (synthjax/data/sources.py)
    return finalize(c, arg, {"data.name": "mnist_bundled", "data.image_size": 0, "model.g_width": 16, "model.d_width": 8})
