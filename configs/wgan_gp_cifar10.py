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
    c = base_config()
    c.model.family = "gan"
    c.model.arch = "dcgan"
    c.model.z_dim = 100
    c.model.g_width = 64
    c.model.d_width = 64
    c.model.use_bias = False
    c.model.project_bn = "channel"
    c.model.ema_decay = 0.999  # short runs: 0.999 would still weigh the random init by 0.14 after 2000 steps
    c.model.d_norm = "none"  # '': BatchNorm (the paper); 'spectral' or 'none'
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
    c.objective.loss = "wasserstein"
    c.objective.penalty = "wgan_gp"  # '', wgan_gp, r1 or dragan (synthjax/objectives/penalties.py)
    c.objective.penalty_weight = 10.0
    c.objective.n_critic = 5  # discriminator updates per generator update (each on a 1/n share of the batch)
    c.objective.clip = 0.0  # > 0: WGAN weight clipping of the discriminator to [-clip, clip]
    c.objective.diffaugment = ""  # e.g. 'color,translation,cutout' (synthjax/augment.py)
    c.opt.update(lr=1e-4, b1=0.0, b2=0.9, d_lr=0.0)
    c.train.update(batch_size=320, num_steps=100000, log_every=100, sample_every=2500, ckpt_every=2500)
    # On CPU the step's temporaries (104 MiB at batch 128) stay in the heap: dcgan28 step x0.84 (runtime.py).
    c.train.cpu_allocator = "heap"
    c.data.name = "cifar10"
    c.opt.update(schedule="linear", decay_steps=0, end_factor=0.0)  # to 0 over train.num_steps
    return finalize(c, arg, {"data.name": "mnist_bundled", "model.g_width": 16, "model.d_width": 8, "objective.n_critic": 2})
