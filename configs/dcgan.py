"""Class-conditional DCGAN (Radford et al., 2016) on MNIST: the dcgan28 networks at half width, labels in.

Run:   python train.py --config configs/dcgan.py --workdir runs/dcgan   (or `make train`)
Smoke: python train.py --config configs/dcgan.py:smoke --workdir /tmp/dcgan

Generator z(100) -> 7x7x128 -> 14x14x64 -> 28x28x1 (BatchNorm, ReLU, tanh),
discriminator 28 -> 14 -> 7 -> logit (32 and 64 channels, LeakyReLU 0.2,
BatchNorm), the non-saturating loss with an R1 penalty on real images
(gamma 1), Adam(2e-3, 0.5, 0.999) for both networks, EMA generator, 4,000
steps at batch 64. Class-conditional (de Vries et al. 2017; Miyato & Koyama
2018): the generator's BatchNorms take a per-class gain and bias, the
discriminator adds <embed(y), features> to its logit, and fakes are drawn
for the labels of the real batch. Sample grids show one class per column.
Trains on the bundled train split (8,000 digits); evaluate against the test
split with `python -m synthjax.evaluate --workdir runs/dcgan --metrics fid,is`.

Reaches (10,000 samples of the EMA generator, ten classes in turn, the
project's MNIST classifier, against the 2,000 test digits): FID 3.95, 94.5%
of samples classified with >= 90% confidence (real test digits: 94.6%),
every class 9.8-10.2% (balanced by the labels asked for; the confident
share says each sample reads as a clear digit). 2.0 minutes on a 2-core
CPU with the oneDNN build, 2.5 without; about 7 and 9 at the slowest speed
measured on that VM, inside the project's 10-minute bar either way.

--config.model.conditional=False trains the unconditional DCGAN (no labels
needed), which reaches FID 10.7 but only 66% confident in 7,000 steps: its
confident share climbs about a point per 1,000 steps. What moved the recipe
among the candidates measured: R1, a learning rate ten times the DCGAN
paper's, networks half as wide as the benchmark's dcgan28 (cheaper steps,
more of them in the same minutes) and the labels. A BatchNorm-free
discriminator, batch 32 or 128, a slower EMA, a linear decay, a weaker R1,
Adam b1=0, hinge + spectral norm and DiffAugment did not:
benchmarks/RESULTS.md, "The `make train` DCGAN recipe".
For 64x64 RGB data without labels (e.g. --config.data.name=celeb_a) set
model.conditional=False, model.d_width=64, model.use_bias=False,
model.project_bn=channel: the DCGAN paper's networks.
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "gan"
    c.model.arch = "dcgan"
    c.model.z_dim = 100
    # the benchmark's dcgan28 has 128 and 64: slower per step, fewer steps in 10 minutes
    c.model.g_width = 64
    c.model.d_width = 32
    c.model.use_bias = True
    c.model.project_bn = "feature"
    c.model.ema_decay = 0.99  # short runs: 0.999 would still weigh the random init by 0.14 after 2000 steps
    c.model.d_norm = ""  # '': BatchNorm (the paper); 'spectral' or 'none'
    c.model.conditional = True  # conditional BatchNorm in G, projection D (needs labelled data); False: no labels
    # 'auto': the measured fastest per backend and layer role; 'native'; 'matmul' (GEMM-only); 'stack' (for
    # stacks, below); or per role, e.g. 'out=im2col3x3,in=s2d_matmul' (synthjax/models/formulations.py)
    c.model.conv_impl = "auto"
    # A stack of members (synthjax.sweep --vmap) takes the 'stack' formulations: vmapped convolutions with
    # per-member kernels become slow grouped ones; GEMMs (and oneDNN's member-by-member calls) do not
    # (synthjax/models/formulations.py; figures in docs/performance.md, "Stacks of members").
    c.sweep.cpu_stack_overrides = c.sweep.gpu_stack_overrides = "model.conv_impl=stack"
    # Images per convolution call; 0: the backend's default (32 on CPU, where XLA's convolutions are
    # faster on small batches; the whole batch on GPU/TPU). Any value computes the same function.
    c.model.conv_batch_chunk = 0
    # 'on': the discriminator's real and fake passes run as one batched (vmapped) pass, BatchNorm still per
    # batch; the same function in fewer, larger kernels. 'auto': on where measured faster (GPU), else
    # 'off' (synthjax/trainers/gan.py: JOINT_PASS).
    c.model.d_joint_pass = "auto"
    c.objective.loss = "ns"
    c.objective.penalty = "r1"  # '', wgan_gp, r1 or dragan (synthjax/objectives/penalties.py)
    c.objective.penalty_weight = 1.0  # R1's gamma
    c.objective.n_critic = 1  # discriminator updates per generator update (each on a 1/n share of the batch)
    c.objective.clip = 0.0  # > 0: WGAN weight clipping of the discriminator to [-clip, clip]
    c.objective.diffaugment = ""  # e.g. 'color,translation,cutout' (synthjax/augment.py)
    c.opt.update(lr=2e-3, b1=0.5, b2=0.999, d_lr=0.0)
    c.train.update(batch_size=64, num_steps=4000, log_every=50, sample_every=500, ckpt_every=1000,
                   num_grid=100)  # a 10-wide grid: one class per column
    # On CPU the step's temporaries (104 MiB at batch 128) stay in the heap: dcgan28 step x0.84 (runtime.py).
    c.train.cpu_allocator = "heap"
    return finalize(c, arg, {"model.g_width": 16, "model.d_width": 8})
