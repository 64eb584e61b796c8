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
    c = base_config()
    c.model.family = "gan"
    c.model.arch = "dcgan"
    c.model.z_dim = 100
    c.model.g_width = 64
    c.model.d_width = 64
    c.model.use_bias = False
    c.model.project_bn = "channel"
    c.model.ema_decay = 0.999  # short runs: 0.999 would still weigh the random init by 0.14 after 2000 steps
    c.model.d_norm = ""  # '': BatchNorm (the paper); 'spectral' or 'none'
    c.model.conditional = False  # True: conditional BatchNorm in G, projection D (needs labelled data)
    # 'auto': the measured fastest per backend and layer role; 'native'; 'matmul' (GEMM-only, faster under
    # `synthjax.sweep --vmap` on CPU); or per role, e.g. 'out=im2col3x3,in=s2d_matmul' (synthjax/models/formulations.py)
    c.model.conv_impl = "auto"
    # XLA:CPU turns vmapped convolutions (per-member kernels) into slow grouped ones; GEMM-only
    # formulations stay GEMMs (8 dcgan28 members: `python -m synthjax.bench --members 8`).
    c.sweep.cpu_stack_overrides = "model.conv_impl=matmul"
    # Images per convolution call; 0: the backend's default (32 on CPU, where XLA's convolutions are
    # faster on small batches; the whole batch on GPU/TPU). Any value computes the same function.
    c.model.conv_batch_chunk = 0
    # 'on': the discriminator's real and fake passes run as one batched (vmapped) pass, BatchNorm still per
    # batch; the same function in fewer, larger kernels. 'auto': on where measured faster (GPU), else
    # 'off' (synthjax/trainers/gan.py: JOINT_PASS).
    c.model.d_joint_pass = "auto"
    c.objective.loss = "ns"
    c.objective.penalty = ""  # '', wgan_gp, r1 or dragan (synthjax/objectives/penalties.py)
    c.objective.penalty_weight = 0.0
    c.objective.n_critic = 1  # discriminator updates per generator update (each on a 1/n share of the batch)
    c.objective.clip = 0.0  # > 0: WGAN weight clipping of the discriminator to [-clip, clip]
    c.objective.diffaugment = ""  # e.g. 'color,translation,cutout' (synthjax/augment.py)
    c.opt.update(lr=2e-4, b1=0.5, b2=0.999, d_lr=0.0)
    c.train.update(batch_size=128, num_steps=100000, log_every=100, sample_every=2500, ckpt_every=2500)
    # On CPU the step's temporaries (104 MiB at batch 128) stay in the heap: dcgan28 step x0.84 (runtime.py).
    c.train.cpu_allocator = "heap"
    c.data.name = "celeb_a"
    c.data.image_size = 64  # centre-crop and resize (synthjax/data/sources.py)
    return finalize(c, arg, {"data.name": "mnist_bundled", "data.image_size": 0, "model.g_width": 16, "model.d_width": 8})
