"""Exactness of every kept DCGAN up/down-sampling formulation against Flax (float32 and float64) and PyTorch."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers.onednn import ONEDNN, needs_onednn
from synthjax.models import formulations, layers
from synthjax.models.formulations import ConvChoice
from tests.fixtures import make_conv_layouts

# (batch, H, W, Cin, Cout, use_bias), formulations: odd sizes, non-square, one output channel, no
# bias. `onednn` only where its library is built (tests/test_onednn.py says when it must be).
UP_ALL = [f for f in formulations.UP_FORMULATIONS if f != "onednn" or ONEDNN]
UP_CASES = [((3, 7, 7, 5, 4, True), UP_ALL), ((2, 14, 14, 3, 1, True), UP_ALL), ((3, 5, 6, 4, 2, False), UP_ALL)]
DOWN_ALL = [f for f in formulations.DOWN_FORMULATIONS if f != "onednn" or ONEDNN]
DOWN_CASES = [((3, 14, 14, 3, 4, True), DOWN_ALL), ((2, 28, 28, 1, 5, True), DOWN_ALL), ((3, 7, 9, 4, 1, False), DOWN_ALL)]




def reference_up(features: int, use_bias: bool = True) -> nn.Module:
    """The Flax layer `UpConv2x` must equal (PyTorch's p=1 is Flax's padding 2)."""
    return nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), use_bias=use_bias)


def reference_down(features: int, use_bias: bool = True) -> nn.Module:
    return nn.Conv(features, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)), use_bias=use_bias)


def normal(shape: tuple, seed: int, scale: float = 1.0) -> jax.Array:
    """Test data from numpy: jax.random would compile a sampler per shape (seconds)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32) * scale)


def random_params(ref: nn.Module, x: jax.Array, seed: int) -> dict:
    """Reference params with a nonzero bias, so the bias path is checked too."""
    params = jax.eval_shape(ref.init, jax.random.key(0), x)  # shapes only: no eager compiles
    return jax.tree.map(lambda p: normal(p.shape, seed + p.ndim, 0.3), params)


def forward_and_grads(module: nn.Module, params: dict, x: jax.Array, cot: jax.Array) -> tuple:
    """Output and the VJP of a random cotangent wrt params and input."""
    y, vjp = jax.vjp(lambda p, x: module.apply(p, x), params, x)
    return (y, *vjp(cot))


def assert_trees_close(a, b, what: str, rtol: float = 1e-5) -> None:
    """Max-abs-relative closeness (errors scaled by the reference's largest entry)."""
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert u.shape == v.shape and u.dtype == v.dtype, what
        scale = float(jnp.max(jnp.abs(v))) + 1e-12
        np.testing.assert_allclose(np.asarray(u) / scale, np.asarray(v) / scale, atol=rtol, rtol=0, err_msg=what)


def check_all_impls(module_cls, impls: list, ref: nn.Module, x: jax.Array, out_shape: tuple, seed: int) -> None:
    """Every impl against the reference, forward and both gradients, in one
    jitted program: one compile per shape keeps the suite fast."""
    features, use_bias = ref.features, ref.use_bias
    params = random_params(ref, x, seed)
    for impl in impls:
        got = jax.eval_shape(module_cls(features, use_bias, conv=ConvChoice(impl)).init, jax.random.key(0), x)
        assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, params), impl
    cot = normal(out_shape, seed + 100)

    @jax.jit
    def run(params, x, cot):
        mods = [ref] + [module_cls(features, use_bias, conv=ConvChoice(impl)) for impl in impls]
        return [forward_and_grads(m, params, x, cot) for m in mods]

    want, *got = run(params, x, cot)
    assert want[0].shape == out_shape
    for impl, g in zip(impls, got):
        assert_trees_close(g, want, f"impl={impl}")


@pytest.mark.parametrize("shape,impls", UP_CASES, ids=["7x7_all_impls", "14x14_to_1ch", "5x6_no_bias"])
def test_up_matches_flax_conv_transpose(shape: tuple, impls: list) -> None:
    b, h, w, cin, cout, use_bias = shape
    x = normal((b, h, w, cin), 1)
    check_all_impls(layers.UpConv2x, impls, reference_up(cout, use_bias), x, (b, 2 * h, 2 * w, cout), 10)


@pytest.mark.parametrize("shape,impls", DOWN_CASES, ids=["14x14", "28x28_from_1ch", "7x9_to_1ch_no_bias"])
def test_down_matches_flax_conv(shape: tuple, impls: list) -> None:
    b, h, w, cin, cout, use_bias = shape
    x = normal((b, h, w, cin), 2)
    check_all_impls(layers.DownConv2x, impls, reference_down(cout, use_bias), x, (b, h // 2, w // 2, cout), 20)


@pytest.mark.parametrize("fast,native,x_shape,k_shape", [
    (layers.up_gemm_vjp, layers.up_native, (2, 5, 4, 3), (4, 4, 3, 2)),
    (layers.up_subpixel, layers.up_native, (2, 5, 4, 3), (4, 4, 3, 2)),
    (layers.up_dgrad, layers.up_native, (2, 5, 4, 3), (4, 4, 3, 2)),
    (layers.up_gemm_col2im, layers.up_native, (2, 5, 4, 3), (4, 4, 3, 2)),
    (layers.down_gemm_vjp, layers.down_native, (2, 7, 6, 3), (4, 4, 3, 2)),
    pytest.param(layers.up_onednn, layers.up_native, (2, 5, 4, 3), (4, 4, 3, 2), marks=needs_onednn),
    pytest.param(layers.down_onednn, layers.down_native, (2, 7, 6, 3), (4, 4, 3, 2), marks=needs_onednn),
], ids=["up_gemm", "up_subpixel", "up_dgrad", "up_gemm_col2im", "down_odd", "up_onednn", "down_onednn_odd"])
def test_custom_vjp_second_order_matches_native(fast, native, x_shape: tuple, k_shape: tuple) -> None:
    """Reverse-over-reverse through the custom backward, as gradient penalties (R1, WGAN-GP) need."""
    x, k = normal(x_shape, 4), normal(k_shape, 5)

    def penalty_grad(fn):
        inner = jax.grad(lambda x, k: jnp.sum(jnp.tanh(fn(x, k))), argnums=(0, 1))
        return jax.grad(lambda x, k: sum(jnp.sum(d**2) for d in inner(x, k)), argnums=(0, 1))

    got, want = jax.jit(lambda x, k: (penalty_grad(fast)(x, k), penalty_grad(native)(x, k)))(x, k)
    assert_trees_close(got, want, "second order")


@pytest.mark.parametrize("module_cls,ref,in_hw,out_hw", [
    (layers.UpConv2x, reference_up(3), 5, 10),
    (layers.DownConv2x, reference_down(3), 6, 3),
], ids=["up", "down"])
def test_batch_chunks_compute_the_same_function(module_cls, ref, in_hw: int, out_hw: int) -> None:
    """Chunks of 2 on a batch of 5 (2 + 2 + 1): output, input and kernel gradients as one call."""
    x = normal((5, in_hw, in_hw, 4), 6)
    params = random_params(ref, x, 30)
    cot = normal((5, out_hw, out_hw, 3), 7)
    run = jax.jit(lambda p, x, c: [forward_and_grads(m, p, x, c) for m in (ref, module_cls(3, conv=ConvChoice("native", batch_chunk=2)))])
    want, got = run(params, x, cot)
    assert_trees_close(got, want, "batch_chunk=2")


def test_batch_chunks_split_and_concatenate() -> None:
    x = jnp.ones((3, 2))
    assert layers.in_batch_chunks(lambda part: part * part.shape[0], x, 2).tolist() == [[2, 2], [2, 2], [1, 1]]
    assert layers.in_batch_chunks(lambda part: part * part.shape[0], x, None).tolist() == [[3, 3]] * 3


def test_bad_input_rank_names_shape() -> None:
    with pytest.raises(ValueError, match=r"rank 4, got shape \(7, 7, 3\)"):
        layers.up_conv2x(jnp.zeros((7, 7, 3)), jnp.zeros((4, 4, 3, 2)))


def test_space_to_depth_round_trip() -> None:
    x = jnp.arange(2 * 4 * 6 * 3, dtype=jnp.float32).reshape(2, 4, 6, 3)
    s = layers.space_to_depth(x)
    assert s.shape == (2, 2, 3, 12)
    np.testing.assert_array_equal(s[0, 1, 2, 3:6], x[0, 2, 5])  # channel block (p=0, q=1)
    np.testing.assert_array_equal(layers.depth_to_space(s), x)


@pytest.mark.parametrize("module_cls,in_hw,out_hw", [(layers.UpConv2x, 7, 14), (layers.DownConv2x, 14, 7)])
def test_bfloat16_close_to_float32(module_cls, in_hw: int, out_hw: int) -> None:
    x = normal((2, in_hw, in_hw, 8), 6)
    params = random_params(module_cls(4), x, 7)

    @jax.jit
    def run(params, x):
        y16, vjp = jax.vjp(lambda p, x: module_cls(4, dtype=jnp.bfloat16).apply(p, x), params, x)
        return module_cls(4).apply(params, x), y16, *vjp(jnp.ones_like(y16))

    y32, y16, dparams, dx = run(params, x)
    assert y16.dtype == jnp.bfloat16 and y16.shape == (2, out_hw, out_hw, 4)
    assert dparams["params"]["kernel"].dtype == jnp.float32 and dx.dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(t))) for t in jax.tree.leaves((y16, dparams, dx)))
    np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(y32), atol=0.05 * float(jnp.max(jnp.abs(y32))))


def torch_reference(fn_name: str, x: np.ndarray, w: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """torch.nn.functional.<fn_name>(stride 2, padding 1) on NHWC numpy input, NHWC out."""
    torch = pytest.importorskip("torch")
    fn = getattr(torch.nn.functional, fn_name)
    y = fn(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(w), torch.from_numpy(bias), stride=2, padding=1)
    return y.permute(0, 2, 3, 1).numpy()


def test_up_matches_torch_conv_transpose2d() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 7, 5, 6), dtype=np.float32)
    w_torch = rng.standard_normal((6, 2, 4, 4), dtype=np.float32)  # (Cin, Cout, kh, kw)
    bias = rng.standard_normal((2,), dtype=np.float32)
    want = torch_reference("conv_transpose2d", x, w_torch, bias)
    params = {"params": {"kernel": layers.kernel_from_torch_conv_transpose(w_torch), "bias": jnp.asarray(bias)}}
    impls = ["native", formulations.plan()["up"].formulation]  # the others are checked against native above
    outs = jax.jit(lambda p, x: [layers.UpConv2x(2, conv=ConvChoice(i)).apply(p, x) for i in impls])(params, jnp.asarray(x))
    for impl, got in zip(impls, outs):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-5, err_msg=f"impl={impl}")


def test_down_matches_torch_conv2d() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 9, 14, 3), dtype=np.float32)
    w_torch = rng.standard_normal((5, 3, 4, 4), dtype=np.float32)  # (Cout, Cin, kh, kw)
    bias = rng.standard_normal((5,), dtype=np.float32)
    want = torch_reference("conv2d", x, w_torch, bias)
    params = {"params": {"kernel": layers.kernel_from_torch_conv(w_torch), "bias": jnp.asarray(bias)}}
    impls = ["native", formulations.plan()["down"].formulation]
    outs = jax.jit(lambda p, x: [layers.DownConv2x(5, conv=ConvChoice(i)).apply(p, x) for i in impls])(params, jnp.asarray(x))
    for impl, got in zip(impls, outs):
        np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=1e-5, err_msg=f"impl={impl}")


def test_dgrad_keeps_the_reversed_kernel_the_gpu_compiler_matches() -> None:
    """XLA:GPU runs a transposed conv on cuDNN's backward-data kernels only when its kernel is a
    `reverse` (layers.up_dgrad_forward). Without the barrier the two flips cancel in XLA's
    simplifier; this checks, on any backend, that a reverse survives optimisation."""
    x, k = normal((2, 4, 4, 8), 8), normal((4, 4, 8, 3), 9)
    compiled = jax.jit(layers.up_dgrad_forward).lower(x, k).compile().as_text()
    assert " reverse(" in compiled
    cancelled = jax.jit(lambda x, k: jax.lax.conv_general_dilated(
        x, jnp.flip(jnp.flip(k, (0, 1)), (0, 1)), (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))).lower(x, k).compile().as_text()
    assert " reverse(" not in cancelled  # what the barrier prevents


@pytest.mark.parametrize("impl", [f for f in formulations.UP_FORMULATIONS if f not in ("native", "onednn")])
def test_up_formulations_equal_the_transposed_conv_in_float64(impl: str) -> None:
    """Exact rewrites agree with `lax.conv_transpose` to float64 rounding: values, input and kernel gradients."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(10).standard_normal((2, 5, 6, 4)))
        k = jnp.asarray(np.random.default_rng(11).standard_normal((4, 4, 4, 3)))
        cot = jnp.asarray(np.random.default_rng(12).standard_normal((2, 10, 12, 3)))
        fn = layers.UP_FNS[impl]

        def value_and_grads(f):
            y, vjp = jax.vjp(f, x, k)
            return (y, *vjp(cot))

        got, want = value_and_grads(fn), value_and_grads(layers.up_native)
        assert got[0].dtype == jnp.float64
        for g, w, what in zip(got, want, ("value", "input gradient", "kernel gradient")):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=f"{impl}: {what}")


@pytest.mark.parametrize("impl", [f for f in formulations.DOWN_FORMULATIONS if f not in ("native", "onednn")])
@pytest.mark.parametrize("hw", [(6, 8), (7, 5)], ids=["even", "odd"])
def test_down_formulations_equal_the_strided_conv_in_float64(impl: str, hw: tuple) -> None:
    """As above for `DownConv2x`'s rewrites against `lax.conv_general_dilated`, even and odd sizes."""
    with jax.enable_x64(True):
        x = jnp.asarray(np.random.default_rng(13).standard_normal((2, *hw, 3)))
        k = jnp.asarray(np.random.default_rng(14).standard_normal((4, 4, 3, 5)))
        cot = jnp.asarray(np.random.default_rng(15).standard_normal((2, hw[0] // 2, hw[1] // 2, 5)))

        def value_and_grads(f):
            y, vjp = jax.vjp(f, x, k)
            return (y, *vjp(cot))

        got, want = value_and_grads(layers.DOWN_FNS[impl]), value_and_grads(layers.down_native)
        assert got[0].dtype == jnp.float64
        for g, w, what in zip(got, want, ("value", "input gradient", "kernel gradient")):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, err_msg=f"{impl}: {what}")


@pytest.mark.parametrize("fn_name", sorted(make_conv_layouts.CASES))
def test_layout_helpers_match_the_committed_torch_reference(fn_name) -> None:
    """The two torch checks above from tests/fixtures/conv_layouts.npz (made by make_conv_layouts.py), without torch."""
    fixture = np.load(make_conv_layouts.PATH)
    x, w, bias = make_conv_layouts.case_arrays(fn_name)
    np.testing.assert_array_equal(fixture[f"{fn_name}/x"], x)  # numpy drew the same inputs as when the file was made
    from_torch, module = {
        "conv_transpose2d": (layers.kernel_from_torch_conv_transpose, layers.UpConv2x),
        "conv2d": (layers.kernel_from_torch_conv, layers.DownConv2x),
    }[fn_name]
    params = {"params": {"kernel": from_torch(w), "bias": jnp.asarray(bias)}}
    got = module(len(bias), conv=ConvChoice("native")).apply(params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), fixture[f"{fn_name}/y"], atol=1e-4, rtol=1e-5)
