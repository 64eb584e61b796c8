"""SNGAN (Miyato et al., 2018): the CIFAR-10 ResNet generator and spectrally normalised ResNet critic, hinge loss.

Run:   python train.py --config configs/sngan.py --workdir runs/sngan
Smoke: python train.py --config configs/sngan.py:smoke --workdir /tmp/sngan   (bundled MNIST, tiny widths)

Data: cifar10 through tensorflow-datasets (32x32x3; prepare it once with
`tfds build cifar10 --file_format=array_record`, see synthjax/data/sources.py;
offline use --config.data.tfds_data_dir=DIR). Generator 4x4x256 -> three
residual up-blocks -> 32x32x3, critic with an optimized block, one
down-block and two plain blocks of 128 channels, global sum pooling,
spectral norm on every layer (models/resnet.py). Hinge loss, n_critic 5,
Adam(2e-4, b1=0, b2=0.9) with the learning rate decayed linearly to 0
over 50k generator updates, batch 5 x 64 (64 real images per critic
update): the ResNet setting of Miyato et al. 2018, Appendix B.

Paper figures: Inception score and FID on CIFAR-10 for SN-GANs with the
ResNet, see Miyato et al. 2018, Table 3 (the standard CNN: Table 2).

Variants:
- class-conditional (cGAN with projection discriminator, Miyato & Koyama
  2018): --config.model.conditional=True (conditional BatchNorm in G);
- DiffAugment (Zhao et al., 2020): --config.objective.diffaugment=color,translation,cutout;
- 28x28 MNIST: --config.data.name=mnist_bundled (7x7 start, two up-blocks).

Reaches: not measured here (the dataset is not available offline).
"""
from synthjax.config import base_config, finalize


def get_config(arg=None):
    c = base_config()
    c.model.family = "gan"
    c.model.arch = "resnet"
    c.model.z_dim = 128
    c.model.g_width = 256
    c.model.d_width = 128
    c.model.ema_decay = 0.9999
    c.model.d_norm = "spectral"
    c.model.conditional = False
    c.model.d_joint_pass = "auto"  # real and fake discriminator passes batched on GPU (configs/dcgan.py)
    c.objective.loss = "hinge"
    c.objective.penalty = ""
    c.objective.penalty_weight = 10.0
    c.objective.n_critic = 5
    c.objective.clip = 0.0
    c.objective.diffaugment = ""
    c.opt.update(lr=2e-4, b1=0.0, b2=0.9, d_lr=0.0)
    c.opt.update(schedule="linear", decay_steps=0, end_factor=0.0)  # to 0 over train.num_steps
    c.data.name = "cifar10"
    c.train.update(batch_size=320, num_steps=50000, log_every=100, sample_every=2500, ckpt_every=2500)
    smoke = {"data.name": "mnist_bundled", "model.g_width": 8, "model.d_width": 8, "model.z_dim": 16, "objective.n_critic": 2}
    return finalize(c, arg, smoke)


def get_sweep():
    """Loss ablation over seeds (loss changes the step, so it runs as separate programs; seeds can be vmapped)."""
    return {"objective.loss": ["hinge", "ns"], "seed": [0, 1]}
