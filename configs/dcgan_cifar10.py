"""DCGAN (Radford et al., 2016) on CIFAR-10: the paper's networks, loss and optimiser.

Run:   python train.py --config configs/dcgan_cifar10.py --workdir runs/dcgan_cifar10
Smoke: python train.py --config configs/dcgan_cifar10.py:smoke --workdir /tmp/dcgan_cifar10   (bundled MNIST)

Data: cifar10 through tensorflow-datasets (32x32x3), as configs/sngan.py.
Networks: the dcgan arch with model.g_width=64, use_bias=False,
project_bn=channel (configs/dcgan.py): G z(100) -> project with BatchNorm,
ReLU -> strided transposed convolutions with BatchNorm and ReLU -> tanh; D
strided convolutions with BatchNorm (none on the input layer) and LeakyReLU
0.2. Non-saturating loss, no penalty, Adam(2e-4, b1=0.5, b2=0.999),
batch 128, weights N(0, 0.02) as in the paper.

Paper figures: DCGAN predates FID and IS; for CIFAR-10 it reports the
accuracy of a linear classifier on its discriminator's features (see
Radford et al. 2016, Table 1), not FID.
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
    c.data.name = "cifar10"
    return finalize(c, arg, {"data.name": "mnist_bundled", "model.g_width": 16, "model.d_width": 8})
