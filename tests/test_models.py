"""Model shapes, finiteness and the architectures of the benchmark spec."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from synthjax.errors import UserError
from synthjax.models.gan import build_gan
from synthjax.models.vae import build_vae


def gan_cfg(**kw):
    base = dict(arch="dcgan", z_dim=100, hidden=256, g_width=128, d_width=64, use_bias=True, project_bn="feature")
    base.update(kw)
    return ConfigDict(base)


def init(module, *args, **kw):
    # Jitted: op-by-op initialisation of convolutions is slow on CPU.
    return jax.jit(lambda key, *a: module.init(key, *a, **kw))(*args)


def n_params(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_dcgan28_matches_the_spec_parameter_counts():
    g, d = build_gan(gan_cfg(), (28, 28, 1), jnp.float32)
    g_vars = init(g, jax.random.key(0), jnp.zeros((2, 100)), train=False)
    d_vars = init(d, jax.random.key(1), jnp.zeros((2, 28, 28, 1)), train=False)
    # PyTorch's Generator28 / Discriminator28 of shared/bench/peers/torch_peer.py, counted by hand:
    g_expected = 100 * 12544 + 2 * 12544 + 256 * 128 * 16 + 2 * 128 + 128 * 1 * 16 + 1
    d_expected = (1 * 64 * 16 + 64) + 64 * 128 * 16 + 2 * 128 + (6272 + 1)
    assert n_params(g_vars["params"]) == g_expected
    assert n_params(d_vars["params"]) == d_expected


def test_dcgan64_matches_the_paper_networks():
    g, d = build_gan(gan_cfg(g_width=64, use_bias=False, project_bn="channel"), (64, 64, 3), jnp.float32)
    z = jax.random.normal(jax.random.key(0), (2, 100))
    g_vars = init(g, jax.random.key(0), z, train=False)
    x = g.apply(g_vars, z, train=False)
    assert x.shape == (2, 64, 64, 3)
    d_vars = init(d, jax.random.key(1), x, train=False)
    g_expected = 100 * 512 * 16 + 2 * 512 + 512 * 256 * 16 + 2 * 256 + 256 * 128 * 16 + 2 * 128 + 128 * 64 * 16 + 2 * 64 + 64 * 3 * 16
    d_expected = 3 * 64 * 16 + 64 * 128 * 16 + 2 * 128 + 128 * 256 * 16 + 2 * 256 + 256 * 512 * 16 + 2 * 512 + 512 * 16
    assert n_params(g_vars["params"]) == g_expected
    assert n_params(d_vars["params"]) == d_expected


@pytest.mark.parametrize("arch, shape", [("mlp", (28, 28, 1)), ("dcgan", (28, 28, 1)), ("dcgan", (32, 32, 3))])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gan_shapes_range_and_finiteness(arch, shape, dtype):
    g, d = build_gan(gan_cfg(arch=arch, g_width=8, d_width=8, hidden=16), shape, dtype)
    z = jax.random.normal(jax.random.key(0), (3, 100))
    g_vars = init(g, jax.random.key(0), z, train=False)
    x = g.apply(g_vars, z, train=False)
    assert x.shape == (3, *shape) and x.dtype == jnp.float32
    assert jnp.all(jnp.abs(x) <= 1.0) and jnp.all(jnp.isfinite(x))
    logits = d.apply(init(d, jax.random.key(1), x, train=False), x, train=False)
    assert logits.shape == (3,) and jnp.all(jnp.isfinite(logits))


def test_unsupported_image_size_names_the_config_key():
    with pytest.raises(UserError, match="data.image_size=30 is not supported"):
        build_gan(gan_cfg(), (30, 30, 1), jnp.float32)
    with pytest.raises(UserError, match="unknown GAN architecture 'transformer'.*dcgan"):
        build_gan(gan_cfg(arch="transformer"), (28, 28, 1), jnp.float32)


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("num_params", [1, 2])
def test_vae_shapes_and_reparameterisation(arch, num_params):
    cfg = ConfigDict(dict(arch=arch, latent=4, hidden=16, width=4))
    vae = build_vae(cfg, (28, 28, 1), num_params, jnp.float32)
    x = jnp.full((2, 28, 28, 1), 0.5)
    eps = jax.random.normal(jax.random.key(1), (2, 4))
    params = init(vae, jax.random.key(0), x, eps)
    out, mu, logvar = vae.apply(params, x, eps)
    assert out.shape == (2, 28, 28, 1, num_params) and mu.shape == logvar.shape == (2, 4)
    # The noise must reach the decoder (z = mu + sigma * eps), or the bound is wrong.
    out_other, _, _ = vae.apply(params, x, -eps)
    assert not np.allclose(out, out_other)
    out_zero, _, _ = vae.apply(params, x, jnp.zeros_like(eps))
    z = mu + jnp.exp(0.5 * logvar) * eps
    np.testing.assert_allclose(vae.apply(params, z, method="decode"), out, rtol=1e-5, atol=1e-6)
    assert not np.allclose(out_zero, out)


def test_every_conv_impl_computes_the_same_dcgan():
    """The per-role formulations are exact rewrites: one set of variables, the same outputs."""
    z = jax.random.normal(jax.random.key(0), (2, 100))
    ref_g, ref_d = build_gan(gan_cfg(g_width=8, d_width=8, conv_impl="native"), (28, 28, 1), jnp.float32)
    g_vars = init(ref_g, jax.random.key(0), z, train=False)
    x = ref_g.apply(g_vars, z, train=False)
    d_vars = init(ref_d, jax.random.key(1), x, train=False)
    want = ref_d.apply(d_vars, x, train=False)
    for spec, chunk in (("matmul", 0), ("out=gemm_col2im,in=s2d_matmul", 0),
                        ("up=dgrad,out=gemm_vjp,down=gemm_vjp,in=s2d_matmul", 0), ("auto", 1)):
        g, d = build_gan(gan_cfg(g_width=8, d_width=8, conv_impl=spec, conv_batch_chunk=chunk), (28, 28, 1), jnp.float32)
        np.testing.assert_allclose(g.apply(g_vars, z, train=False), x, atol=2e-5, err_msg=spec)
        np.testing.assert_allclose(d.apply(d_vars, x, train=False), want, rtol=1e-4, atol=1e-5, err_msg=spec)
