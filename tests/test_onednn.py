"""The oneDNN convolution custom calls against XLA's own convolution, to every order used."""

import os
import platform
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from synthjax.kernels import build, onednn

from helpers.onednn import REQUIRED, needs_onednn
NHWC = ("NHWC", "HWIO", "NHWC")


def test_library_is_built_where_it_can_be() -> None:
    """`make test` builds it; on Linux x86-64 with g++ and the pip packages, not loading is a bug."""
    if REQUIRED:  # .ci/run on linux x86_64 with g++: the library must load, whatever else this machine lacks
        assert onednn.available(), f"SYNTHJAX_REQUIRE_ONEDNN=1 but {onednn.unavailable_reason()}"
        return
    if os.environ.get("SYNTHJAX_ONEDNN") == "0":
        pytest.skip("disabled by SYNTHJAX_ONEDNN=0")
    if sys.platform != "linux" or platform.machine() != "x86_64" or build.missing():
        pytest.skip(f"cannot build here: {build.missing() or sys.platform + '/' + platform.machine()}")
    assert onednn.available(), onednn.unavailable_reason()


def xla_conv(x, w, stride, padding):
    return jax.lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=NHWC,
                                        precision=jax.lax.Precision.HIGHEST)


def normal(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def assert_close(got, want, what, tol=2e-5):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype, what
        scale = float(jnp.max(jnp.abs(w))) + 1e-12
        np.testing.assert_allclose(np.asarray(g) / scale, np.asarray(w) / scale, atol=tol, rtol=0, err_msg=what)


# (x shape, kernel shape, stride, padding): the DCGAN k4 s2 p1 layer, odd and non-square
# sizes, stride 1 with asymmetric padding, a 3x3 kernel with stride 2 and one output channel.
CASES = [
    ((3, 14, 14, 5, ), (4, 4, 5, 6), (2, 2), ((1, 1), (1, 1))),
    ((2, 7, 9, 3), (4, 4, 3, 4), (2, 2), ((1, 1), (1, 1))),
    ((2, 6, 5, 4), (3, 2, 4, 3), (1, 1), ((2, 0), (1, 1))),
    ((2, 9, 8, 2), (3, 3, 2, 1), (2, 1), ((1, 1), (0, 2))),
]


@needs_onednn
@pytest.mark.parametrize("x_shape,w_shape,stride,padding", CASES)
def test_conv_and_gradients_match_xla(x_shape, w_shape, stride, padding) -> None:
    x, w = normal(x_shape, 1), normal(w_shape, 2)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.tanh(conv(x, w, stride, padding)))

    def second(conv):  # a gradient penalty: the input and kernel gradients differentiated again
        inner = jax.grad(loss(conv), argnums=(0, 1))
        return jax.grad(lambda x, w: sum(jnp.sum(d ** 2) for d in inner(x, w)), argnums=(0, 1))

    @jax.jit
    def run(x, w):
        return [(conv(x, w, stride, padding), jax.grad(loss(conv), (0, 1))(x, w), second(conv)(x, w))
                for conv in (onednn.conv, xla_conv)]

    got, want = run(x, w)
    assert_close(got[0], want[0], "forward")
    assert_close(got[1], want[1], "first-order gradients")
    assert_close(got[2], want[2], "second-order gradients", tol=1e-4)


@needs_onednn
def test_input_and_kernel_grad_are_the_adjoints() -> None:
    """<dy, conv(x, w)> = <conv_input_grad(dy, w), x> = <conv_kernel_grad(x, dy), w>, in float64 sums."""
    stride, padding = (2, 2), ((1, 1), (1, 1))
    x, w, dy = normal((2, 6, 6, 3), 3), normal((4, 4, 3, 5), 4), normal((2, 3, 3, 5), 5)
    y = onednn.conv(x, w, stride, padding)
    dx = onednn.conv_input_grad(dy, w, x.shape, stride, padding)
    dw = onednn.conv_kernel_grad(x, dy, w.shape, stride, padding)
    dot = lambda a, b: float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))
    np.testing.assert_allclose([dot(dx, x), dot(dw, w)], [dot(dy, y)] * 2, rtol=1e-5)


@needs_onednn
def test_vmap_runs_member_by_member() -> None:
    """Members become leading dimensions of the call's buffers: each member's convolution and input
    gradient equal that member's own calls exactly, its kernel gradient up to the order of the sums (a
    member runs on one thread, a lone call on all), through nested vmaps and a kernel shared by all."""
    stride, padding = (2, 2), ((1, 1), (1, 1))
    xs, ws = normal((3, 2, 6, 6, 2), 6), normal((3, 4, 4, 2, 3), 7)
    got = jax.jit(jax.vmap(lambda x, w: onednn.conv(x, w, stride, padding)))(xs, ws)
    want = jnp.stack([xla_conv(x, w, stride, padding) for x, w in zip(xs, ws)])
    assert_close(got, want, "vmap")

    def loss(x, w):
        return jnp.sum(jnp.sin(onednn.conv(x, w, stride, padding)))

    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(xs, ws)
    for i in range(3):
        one = jax.jit(jax.grad(loss, argnums=(0, 1)))(xs[i], ws[i])
        np.testing.assert_array_equal(np.asarray(grads[0][i]), np.asarray(one[0]))
        np.testing.assert_allclose(np.asarray(grads[1][i]), np.asarray(one[1]), rtol=1e-5, atol=1e-6)
    # Members side by side stay deterministic: each depends only on its own one-thread computation.
    again = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(xs, ws)
    for g, a in zip(grads, again):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(a))
    nested = jax.jit(jax.vmap(jax.vmap(lambda x, w: onednn.conv(x, w, stride, padding))))
    np.testing.assert_array_equal(np.asarray(nested(xs.reshape(3, 1, *xs.shape[1:]), ws.reshape(3, 1, *ws.shape[1:]))),
                                  np.asarray(got).reshape(3, 1, *got.shape[1:]))
    shared = jax.jit(jax.vmap(lambda x: onednn.conv(x, ws[0], stride, padding)))(xs)
    np.testing.assert_array_equal(np.asarray(shared[1]), np.asarray(jax.jit(onednn.conv, static_argnums=(2, 3))(xs[1], ws[0], stride, padding)))


@needs_onednn
def test_non_float32_is_refused_with_the_way_out() -> None:
    x, w = jnp.ones((1, 4, 4, 2), jnp.bfloat16), jnp.ones((4, 4, 2, 2), jnp.bfloat16)
    with pytest.raises(TypeError, match="take float32, got bfloat16.*use an XLA impl"):
        onednn.conv(x, w, (2, 2), ((1, 1), (1, 1)))


def test_disabled_library_says_why(monkeypatch) -> None:
    monkeypatch.setenv("SYNTHJAX_ONEDNN", "0")
    assert not onednn.available()
    assert "SYNTHJAX_ONEDNN=0" in onednn.unavailable_reason()
    with pytest.raises(RuntimeError, match="disabled by SYNTHJAX_ONEDNN=0"):
        onednn.conv(jnp.ones((1, 4, 4, 1)), jnp.ones((4, 4, 1, 1)), (2, 2), ((1, 1), (1, 1)))
    from synthjax.models import formulations
    assert formulations.plan("auto", backend="cpu")["up"].formulation == "subpixel"  # the XLA formulations take over
