"""Paper configs: parameter counts of G and D on the real data shape, derived by hand layer by layer.

States are built with jax.eval_shape (shapes only, no compute). Kernels are
(kh, kw, in, out); the dcgan arch has no biases with model.use_bias=False,
BatchNorm has scale + bias. The SN-GAN figures follow the architecture table
of its paper; DCGAN and WGAN-GP publish no counts, so theirs follow the
networks as described (DCGAN at the widths of its authors' code; WGAN-GP on
the dcgan arch, whose kernels and widths may differ from its authors' code).
"""
import math
import os

import jax
import pytest

from synthjax.config import load_config
from synthjax.trainers import build_trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# DCGAN 32x32 (g_width 64 -> 256 at 4x4): G dense 100*4*4*256 = 409,600; BN 2*(256+128+64) = 896;
# up-convs 4*4*256*128 = 524,288, 4*4*128*64 = 131,072, 4*4*64*3 = 3,072 -> 1,068,928.
# D convs 4*4*3*64 = 3,072, 4*4*64*128 = 131,072, 4*4*128*256 = 524,288; BN 2*(128+256) = 768;
# dense 4*4*256 = 4,096 -> 663,296 (WGAN-GP critic: no BatchNorm -> 662,528).
# SN-GAN ResNet (Miyato et al. 2018, Table 4): G dense 128*4096+4096 = 528,384; each of 3 up-blocks:
# two 3x3 256->256 convs 2*590,080, 1x1 shortcut 65,792, two BN 1,024 -> 1,246,976 (x3 = 3,740,928);
# final BN 512, 3x3 256->3 conv 6,915 -> 4,276,739. D optimized block 3,584+147,584+512 = 151,680;
# down-block 2*147,584+16,512 = 311,680; two plain blocks 2*295,168 = 590,336; dense 129 -> 1,053,825.
# DCGAN 64x64 (g_width 64 -> 512 at 4x4): G dense 100*8192 = 819,200; BN 2*(512+256+128+64) = 1,920;
# up-convs 2,097,152 + 524,288 + 131,072 + 3,072 -> 3,576,704. D convs 3,072 + 131,072 + 524,288 +
# 2,097,152; BN 2*(128+256+512) = 1,792; dense 8,192 -> 2,765,568.
EXPECTED = {
    "dcgan_cifar10": ((32, 32, 3), 1_068_928, 663_296),
    "wgan_gp_cifar10": ((32, 32, 3), 1_068_928, 662_528),
    "sngan": ((32, 32, 3), 4_276_739, 1_053_825),
    "dcgan_celeba64": ((64, 64, 3), 3_576_704, 2_765_568),
}


def count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_counts(name):
    shape, g, d = EXPECTED[name]
    config = load_config(os.path.join(REPO, "configs", f"{name}.py"), [])
    state = jax.eval_shape(build_trainer(config, shape, 10).create_state, jax.random.key(0))
    assert (count(state.g_params), count(state.d_params)) == (g, d)
