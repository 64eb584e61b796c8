"""Exact formulations of the DCGAN up- and down-sampling layers (kernel 4, stride 2, pad 1).

Each function here computes exactly what the Flax layer it stands in for
computes, with the same parameter names and shapes, and is tested exact in
float64 (values and first derivatives) in tests/models/test_layers.py.
Which one runs is decided per backend, dtype and layer role in
`synthjax.models.formulations`; the modules receive that choice. Why they
exist: XLA:CPU differentiates a stride-2 transposed convolution very slowly
(seconds for the kernel gradient of a DCGAN layer), and XLA:GPU runs Flax's
transposed convolution on a zero-dilated copy of its input and tiles the 1-3
channel image layers badly. Measurements: docs/performance.md.

Up (transposed) convolutions: `native`; `gemm_vjp` (native forward, backward
as one im2col gather and two GEMMs); `subpixel` (forward as one stride-1
conv to the four output phases, derivatives as the stride-2 conv the layer
transposes); `dgrad` (the form XLA:GPU hands to cuDNN's backward-data
kernel); `gemm_col2im` (one GEMM to each pixel's 16 taps, then a four-tap
sum); `im2col3x3` (GEMM only, for vmapped stacks); `onednn` (oneDNN's CPU
kernels through an XLA FFI call). Down convolutions: `native`, `gemm_vjp`
(GEMM input gradient, fast under gradient penalties), `s2d_matmul`
(space-to-depth + one GEMM), `onednn`. Every formulation can run on chunks
of the batch (`ConvChoice.batch_chunk`).

Index conventions (per spatial axis, Flax kernel `w` of length 4):
  * `UpConv2x` = `nn.ConvTranspose(f, (4, 4), (2, 2), padding=((2, 2),) * 2)`
    (default `transpose_kernel=False`): `y[o] = sum_k xd[o + k - 2] w[k]`,
    `xd` the 2-dilated input. This is PyTorch's `ConvTranspose2d(k=4, s=2,
    p=1)` with the *spatially flipped* kernel, `w_flax[k] = w_torch[3 - k]`
    (Flax's transposed-conv padding is `k - 1 - p_torch = 2`; for k=4, s=2
    `padding='SAME'` resolves to the same (2, 2); `transpose_kernel=True`
    would store a (4, 4, Cout, Cin) kernel). By output phase `o = 2m + a`:
    `y[2m + a] = sum_t xp[m + a + t] w[2t + a]`, `t` in {0, 1}, `xp` the input
    padded by 1: a 2x2 window per phase (the "sub-pixel" view).
  * `DownConv2x` = `nn.Conv(f, (4, 4), (2, 2), padding=((1, 1),) * 2)` =
    PyTorch `Conv2d(k=4, s=2, p=1)` with the same (unflipped) kernel:
    `y[o] = sum_k xp[2o + k] w[k] = sum_{t,p} s2d(xp)[o + t, p] w[2t + p]`,
    a 2x2 stride-1 conv after space-to-depth by 2.
  * The input gradient of `UpConv2x` is a `DownConv2x` of the output
    cotangent with the kernel flipped and its channel axes swapped; its kernel
    gradient is the same im2col of the cotangent contracted with the input.
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax.linen.dtypes import promote_dtype

from synthjax.kernels import onednn
from synthjax.models.formulations import ConvChoice

Array = jax.Array
Initializer = Callable[..., Array]

NATIVE = ConvChoice("native")
_NHWC = ("NHWC", "HWIO", "NHWC")
_K4S2P1 = ((1, 1), (1, 1))  # the padding of Conv2d(k=4, s=2, p=1)


# --------------------------------------------------------------------------
# Small pure helpers.
# --------------------------------------------------------------------------
def space_to_depth(x_bhwc: Array, block: int = 2) -> Array:
    """Moves each `block x block` spatial patch into channels, (p, q, c) order.

    `(B, H, W, C) -> (B, H/block, W/block, block*block*C)`; output channel
    `(p * block + q) * C + c` holds `x[b, block*i + p, block*j + q, c]`.
    """
    b, h, w, c = x_bhwc.shape
    if h % block or w % block:
        raise ValueError(f"space_to_depth: spatial shape {(h, w)} is not divisible by block={block}")
    x = x_bhwc.reshape(b, h // block, block, w // block, block, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h // block, w // block, block * block * c)


def depth_to_space(x_bhwc: Array, block: int = 2) -> Array:
    """Inverse of `space_to_depth`: `(B, H, W, block*block*C) -> (B, H*block, W*block, C)`."""
    b, h, w, c4 = x_bhwc.shape
    if c4 % (block * block):
        raise ValueError(f"depth_to_space: {c4} channels is not divisible by block**2={block * block}")
    c = c4 // (block * block)
    x = x_bhwc.reshape(b, h, w, block, block, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h * block, w * block, c)


def pad_spatial(x_bhwc: Array, pad_h: tuple[int, int], pad_w: tuple[int, int]) -> Array:
    """Zero-pads the two spatial axes of an NHWC array by (lo, hi), as PyTorch's `padding` does."""
    return jnp.pad(x_bhwc, ((0, 0), pad_h, pad_w, (0, 0)))


def kernel_from_torch_conv_transpose(w_io_hw: Any) -> Array:
    """PyTorch `ConvTranspose2d` weight (Cin, Cout, kh, kw) -> `UpConv2x` /
    `nn.ConvTranspose` kernel (kh, kw, Cin, Cout). The spatial flip is there
    because Flax (with `transpose_kernel=False`) correlates the dilated input
    where PyTorch scatters each input pixel through the kernel."""
    return jnp.flip(jnp.asarray(w_io_hw).transpose(2, 3, 0, 1), axis=(0, 1))


def kernel_from_torch_conv(w_oi_hw: Any) -> Array:
    """PyTorch `Conv2d` weight (Cout, Cin, kh, kw) -> `DownConv2x` / `nn.Conv`
    kernel (kh, kw, Cin, Cout); both correlate, so there is no flip."""
    return jnp.asarray(w_oi_hw).transpose(2, 3, 1, 0)


def in_batch_chunks(conv: Callable[[Array], Array], x: Array, chunk: int | None) -> Array:
    """`conv(x)` computed on consecutive chunks of at most `chunk` images, concatenated.

    Exact for any per-image map (a convolution is one); gradients flow
    through the split and concatenation, so a kernel gradient is summed over
    chunks. `chunk=None` or a batch no larger than it: one call.
    """
    if not chunk or x.shape[0] <= chunk:
        return conv(x)
    return jnp.concatenate([conv(part) for part in jnp.split(x, list(range(chunk, x.shape[0], chunk)))], axis=0)


def _check_args(x: Array, kernel: Array, where: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{where}: expected an NHWC input of rank 4, got shape {x.shape}")
    if kernel.shape[:3] != (4, 4, x.shape[-1]):
        raise ValueError(f"{where}: kernel shape {kernel.shape} does not match (4, 4, {x.shape[-1]}, Cout)")


def _matmul(x: Array, w: Array, precision: Any) -> Array:
    """Contracts the last axis of `x` with the first of `w` (one GEMM)."""
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())), precision=precision)


# --------------------------------------------------------------------------
# Down-sampling: Conv2d(k=4, s=2, p=1), H -> H//2.
# --------------------------------------------------------------------------
def _pad_for_s2d(x: Array) -> Array:
    """PyTorch's pad 1, minus the last row/column for odd sizes: that one is
    never read by a k=4 s=2 window, and dropping it makes the size even."""
    _, h, w, _ = x.shape
    return pad_spatial(x, (1, 1 - h % 2), (1, 1 - w % 2))


def im2col_k4s2p1(x: Array) -> Array:
    """The 4x4 stride-2 pad-1 patches of NHWC `x`: `(B, H//2, W//2, 16*C)`.

    Column order is (t, u, p, q, c) for kernel tap (2t+p, 2u+q), matching
    `_s2d_kernel`. Written as one reshape, four window slices and one
    transpose, which XLA:CPU fuses into a single copy (a concat of 16 strided
    slices is about twice as slow there).
    """
    b, h, w, c = x.shape
    ho, wo = h // 2, w // 2
    xp = _pad_for_s2d(x).reshape(b, ho + 1, 2, wo + 1, 2, c)  # [b, i, p, j, q, c]
    windows = jnp.stack([xp[:, t:t + ho, :, u:u + wo] for t in (0, 1) for u in (0, 1)])
    return windows.transpose(1, 2, 4, 0, 3, 5, 6).reshape(b, ho, wo, 16 * c)


def _s2d_kernel(kernel: Array) -> Array:
    """(4, 4, Cin, Cout) -> (2, 2, 4*Cin, Cout) with [t, u, (p, q, c)] = w[2t+p, 2u+q, c]."""
    cin, cout = kernel.shape[2:]
    k = kernel.reshape(2, 2, 2, 2, cin, cout)  # [t, p, u, q, c, o]
    return k.transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * cin, cout)


def down_native(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Exactly what `nn.Conv(f, (4, 4), (2, 2), padding=((1, 1), (1, 1)))` computes."""
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                        dimension_numbers=_NHWC, precision=precision)


def down_onednn(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`down_native` on oneDNN's CPU kernels, derivatives of every order included
    (`synthjax.kernels.onednn`); float32 only, full precision whatever `precision` says."""
    return onednn.conv(x, kernel, (2, 2), _K4S2P1)


def down_s2d_matmul(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`im2col_k4s2p1` then one GEMM against the (16*Cin, Cout) kernel."""
    return _matmul(im2col_k4s2p1(x), _s2d_kernel(kernel).reshape(-1, kernel.shape[-1]), precision)


# --------------------------------------------------------------------------
# Up-sampling: ConvTranspose2d(k=4, s=2, p=1), H -> 2H.
# --------------------------------------------------------------------------
def up_native(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Exactly what `nn.ConvTranspose(f, (4, 4), (2, 2), padding=((2, 2), (2, 2)))` computes."""
    return jax.lax.conv_transpose(x, kernel, (2, 2), ((2, 2), (2, 2)), precision=precision)


def _transposed_kernel(kernel: Array) -> Array:
    """The kernel of the transpose of a k=4 s=2 p=1 (transposed) conv: flip, swap in/out.
    Maps an `UpConv2x` kernel to the `DownConv2x` one of its transpose and back."""
    return jnp.flip(kernel, axis=(0, 1)).swapaxes(2, 3)


def up_onednn(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`up_native` on oneDNN's CPU kernels: the input gradient of the stride-2 conv
    it is the transpose of; derivatives as `down_onednn`'s."""
    n, h, w, _ = x.shape
    out_shape = (n, 2 * h, 2 * w, kernel.shape[-1])
    return onednn.conv_input_grad(x, _transposed_kernel(kernel), out_shape, (2, 2), _K4S2P1)


def _up_grad_kernel(kernel: Array) -> Array:
    """The (16*Cout, Cin) GEMM kernel of the stride-2 conv that maps an
    `UpConv2x` output cotangent to its input gradient."""
    return _s2d_kernel(_transposed_kernel(kernel)).reshape(-1, kernel.shape[2])


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def up_gemm_vjp(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Native transposed conv forward; backward as one gather and two GEMMs.

    XLA:CPU's own kernel gradient of `conv_transpose` is the pathological op
    (seconds), while its forward is as fast as any rewrite. The backward reads
    the output cotangent once through `im2col_k4s2p1`; a GEMM with the flipped
    kernel gives the input gradient and a GEMM with the input gives the
    kernel gradient. Reverse-over-reverse works; forward mode (`jax.jvp`)
    does not (custom_vjp): use `native` or `im2col3x3` there.
    """
    return up_native(x, kernel, precision)


def _up_gemm_vjp_fwd(x: Array, kernel: Array, precision: Any) -> tuple[Array, tuple[Array, Array]]:
    return up_native(x, kernel, precision), (x, kernel)


def _up_gemm_vjp_bwd(precision: Any, res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    cols = im2col_k4s2p1(g).reshape(x.shape[0] * x.shape[1] * x.shape[2], -1)  # (N, 16*Cout)
    kmat, kmat_vjp = jax.vjp(_up_grad_kernel, kernel)
    dx = _matmul(cols, kmat, precision).reshape(x.shape)
    dkmat = jax.lax.dot_general(cols, x.reshape(cols.shape[0], -1), (((0,), (0,)), ((), ())),
                                precision=precision)
    (dkernel,) = kmat_vjp(dkmat.astype(kmat.dtype))
    return dx.astype(x.dtype), dkernel


up_gemm_vjp.defvjp(_up_gemm_vjp_fwd, _up_gemm_vjp_bwd)


def _up_strided_conv_bwd(precision: Any, res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    """Both derivatives of the transposed conv as computations on the stride-2 *forward* conv it transposes:
    the input gradient is that conv of the cotangent, the kernel gradient its kernel gradient against the
    input, which XLA lowers to a fast window-dilated convolution instead of the input-dilated one that
    differentiating `up_native` gives (seconds on XLA:CPU)."""
    x, kernel = res
    down_kernel, down_kernel_vjp = jax.vjp(_transposed_kernel, kernel)
    dx, down_vjp = jax.vjp(lambda k: down_native(g, k, precision), down_kernel)
    (ddown_kernel,) = down_vjp(x.astype(dx.dtype))
    (dkernel,) = down_kernel_vjp(ddown_kernel)
    return dx.astype(x.dtype), dkernel


def up_subpixel_forward(x: Array, kernel: Array, precision: Any = None) -> Array:
    """The transposed conv as ONE stride-1 2x2 convolution to all four output
    phases, then an interleave (the "sub-pixel" view of the module docstring).

    Phase (a, b) at output (2m + a, 2n + b) is `z[m + a, n + b, (a, b)]`,
    `z` the 2x2 VALID conv of the 1-padded input with the (2, 2, Cin,
    4*Cout) kernel `[t, u, c, (a, b, o)] = w[2t + a, 2u + b, c, o]`; `z` has
    one more row and column than the input, so it does (H+1)(W+1)/(HW) of
    the exact FLOPs, in one wide GEMM-shaped convolution.
    """
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    phase_kernel = kernel.reshape(2, 2, 2, 2, cin, cout).transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, cin, 4 * cout)
    z = jax.lax.conv_general_dilated(pad_spatial(x, (1, 1), (1, 1)), phase_kernel, (1, 1), "VALID",
                                     dimension_numbers=_NHWC, precision=precision)
    z = z.reshape(b, h + 1, w + 1, 2, 2, cout)
    rows = [jnp.stack([z[:, a:a + h, c:c + w, a, c] for c in (0, 1)], axis=3) for a in (0, 1)]  # (B, H, W, 2, C)
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, cout)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def up_subpixel(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`up_subpixel_forward` with the strided-conv backward (`_up_strided_conv_bwd`).

    On XLA:CPU the sub-pixel forward beats the native transposed conv on wide
    layers and loses on image layers; its own autodiff is slower than the
    strided-conv backward. Forward mode: as `gemm_vjp`.
    """
    return up_subpixel_forward(x, kernel, precision)


def _up_subpixel_fwd(x: Array, kernel: Array, precision: Any) -> tuple[Array, tuple[Array, Array]]:
    return up_subpixel_forward(x, kernel, precision), (x, kernel)


up_subpixel.defvjp(_up_subpixel_fwd, _up_strided_conv_bwd)


def up_dgrad_forward(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`up_native`, written so that XLA:GPU hands it to cuDNN's backward-data (dgrad) convolution.

    XLA's GPU compiler runs a transposed convolution as a backward-data
    convolution only when its kernel is a `reverse`; Flax's (and `up_native`'s)
    kernel is not one, so XLA zero-dilates the input in memory and runs a
    stride-1 convolution over it: four times the multiply-adds, three quarters
    of them on zeros, plus the dilated copy. Reversing the kernel twice, with
    an optimisation barrier between so the two cannot cancel, computes the
    same function in the form the compiler matches. On the CPU it is the
    native transposed convolution.
    """
    flipped = jax.lax.optimization_barrier(jnp.flip(kernel, (0, 1)))
    return jax.lax.conv_general_dilated(x, jnp.flip(flipped, (0, 1)), (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2),
                                        dimension_numbers=_NHWC, precision=precision)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def up_dgrad(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`up_dgrad_forward` with the strided-conv backward (`_up_strided_conv_bwd`): every pass is one
    cuDNN convolution on exact FLOPs."""
    return up_dgrad_forward(x, kernel, precision)


def _up_dgrad_fwd(x: Array, kernel: Array, precision: Any) -> tuple[Array, tuple[Array, Array]]:
    return up_dgrad_forward(x, kernel, precision), (x, kernel)


up_dgrad.defvjp(_up_dgrad_fwd, _up_strided_conv_bwd)


def up_gemm_col2im_forward(x: Array, kernel: Array, precision: Any = None) -> Array:
    """One GEMM from each input pixel to its 16 taps' contributions, then each output pixel sums its four.

    `p = x @ w` as (B, H, W, 4, 4, Cout); output phase (a, b) at (m, n) is
    `sum_{t,u} p[m + a + t - 1, n + b + u - 1, 2t + a, 2u + b]` (the module
    docstring's sub-pixel view with the GEMM first). Exact FLOPs in one GEMM
    of width 16*Cout, which suits narrow image layers (64 -> 3: width 48),
    where convolution kernels tile the 3 output channels badly.
    In bfloat16 the taps are rounded to bfloat16 before the four-tap sum (a
    convolution kernel accumulates all 16 in float32): for 64->3 on random
    data, relative RMS error 0.0039 against float32 where the convolution has
    0.0029, both at bfloat16's own resolution.
    """
    b, h, w, cin = x.shape
    cout = kernel.shape[-1]
    taps = _matmul(x.reshape(-1, cin), kernel.transpose(2, 0, 1, 3).reshape(cin, 16 * cout), precision)
    taps = jnp.pad(taps.reshape(b, h, w, 4, 4, cout), ((0, 0), (1, 1), (1, 1), (0, 0), (0, 0), (0, 0)))
    phases = [sum(taps[:, a + t:a + t + h, c + u:c + u + w, 2 * t + a, 2 * u + c] for t in (0, 1) for u in (0, 1))
              for a in (0, 1) for c in (0, 1)]
    return _interleave_phases(phases)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def up_gemm_col2im(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`up_gemm_col2im_forward`, differentiated as `up_gemm_vjp` is: im2col of the cotangent and two GEMMs.

    Autodiff of the forward's sixteen tap slices gives a pad-and-select fusion
    that builds the (B, H, W, 16*Cout) tap gradient element by element, the
    longest kernel of a GPU stack step; the cotangent's im2col is the same
    array as one strided copy (docs/performance.md, "Stacks of members").
    Reverse over reverse works, forward mode does not (custom_vjp).
    """
    return up_gemm_col2im_forward(x, kernel, precision)


def _up_gemm_col2im_fwd(x: Array, kernel: Array, precision: Any) -> tuple[Array, tuple[Array, Array]]:
    return up_gemm_col2im_forward(x, kernel, precision), (x, kernel)


up_gemm_col2im.defvjp(_up_gemm_col2im_fwd, _up_gemm_vjp_bwd)


def _phase_kernel(kernel: Array, a: int, b: int) -> Array:
    """Taps used by output phase (a, b): `(2, 2, Cin, Cout)`, [t, u] = w[2t+a, 2u+b]."""
    return kernel[a::2, b::2]


def _window(xp: Array, dy: int, dx: int, h: int, w: int) -> Array:
    """The `h x w` window of a padded NHWC array starting at offset (dy, dx)."""
    return xp[:, dy:dy + h, dx:dx + w, :]


def _interleave_phases(phases: list[Array]) -> Array:
    """Phase outputs in order (0,0), (0,1), (1,0), (1,1), each (B, H, W, C) -> (B, 2H, 2W, C)."""
    return depth_to_space(jnp.concatenate(phases, axis=-1), 2)


def _im2col3x3_kernel(kernel: Array) -> Array:
    """(4, 4, Cin, Cout) -> (9*Cin, 4*Cout): each input pixel's 3x3 neighbourhood
    mapped to all four phases, zeros where a phase does not use a tap."""
    cin, cout = kernel.shape[2:]
    k = jnp.zeros((3, 3, cin, 2, 2, cout), kernel.dtype)
    for pa in (0, 1):
        for pb in (0, 1):
            k = k.at[pa:pa + 2, pb:pb + 2, :, pa, pb, :].set(_phase_kernel(kernel, pa, pb))
    return k.reshape(9 * cin, 4 * cout)


def up_im2col3x3(x: Array, kernel: Array, precision: Any = None) -> Array:
    """One GEMM of the 3x3 im2col against a zero-padded (9*Cin, 4*Cout) kernel (9/4 of the FLOPs)."""
    _, h, w, _ = x.shape
    xp = pad_spatial(x, (1, 1), (1, 1))
    cols = jnp.concatenate([_window(xp, dy, dx, h, w) for dy in range(3) for dx in range(3)], axis=-1)
    return depth_to_space(_matmul(cols, _im2col3x3_kernel(kernel), precision), 2)


UP_FNS = {
    "native": up_native,
    "gemm_vjp": up_gemm_vjp,
    "subpixel": up_subpixel,
    "dgrad": up_dgrad,
    "gemm_col2im": up_gemm_col2im,
    "im2col3x3": up_im2col3x3,
    "onednn": up_onednn,
}


def up_conv2x(x: Array, kernel: Array, conv: ConvChoice = NATIVE, precision: Any = None) -> Array:
    """Functional `ConvTranspose2d(k=4, s=2, p=1)` on NHWC `x` with a Flax (4, 4, Cin, Cout) kernel,
    in the formulation and batch chunks `conv` names (`synthjax.models.formulations`)."""
    _check_args(x, kernel, "up_conv2x")
    fn = UP_FNS[conv.formulation]
    return in_batch_chunks(lambda part: fn(part, kernel, precision), x, conv.batch_chunk)


# --------------------------------------------------------------------------
# Down-sampling with a GEMM backward, and the down dispatch.
# --------------------------------------------------------------------------
@partial(jax.custom_vjp, nondiff_argnums=(2,))
def down_gemm_vjp(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Native strided conv and kernel gradient; input gradient via `up_gemm_vjp`.

    First order this is the same computation as `native` (the input gradient
    of a strided conv is a transposed conv, whose forward XLA:CPU runs fast).
    The difference is in differentiating that input gradient again, as
    gradient penalties (WGAN-GP, R1) do: here it goes through GEMMs instead
    of XLA:CPU's pathological transposed-conv kernel gradient (about 10x
    faster). Differentiating the *kernel* gradient again (rarer) still takes
    XLA's path; `s2d_matmul` is all-GEMM throughout.
    """
    return down_native(x, kernel, precision)


def _down_gemm_vjp_fwd(x: Array, kernel: Array, precision: Any) -> tuple[Array, tuple[Array, Array]]:
    return down_native(x, kernel, precision), (x, kernel)


def _down_gemm_vjp_bwd(precision: Any, res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    _, h, w, _ = x.shape
    # The input gradient is the transposed conv of g with the flipped, in/out-
    # swapped kernel. For an odd size it needs one more output row/column
    # (2*(H//2) + 1 = H): a zero row/column appended to g provides it.
    g_even = pad_spatial(g, (0, h % 2), (0, w % 2))
    dx = up_gemm_vjp(g_even, _transposed_kernel(kernel), precision)[:, :h, :w]
    (dkernel,) = jax.vjp(lambda k: down_native(x, k, precision), kernel)[1](g)
    return dx.astype(x.dtype), dkernel


down_gemm_vjp.defvjp(_down_gemm_vjp_fwd, _down_gemm_vjp_bwd)


DOWN_FNS = {
    "native": down_native,
    "gemm_vjp": down_gemm_vjp,
    "s2d_matmul": down_s2d_matmul,
    "onednn": down_onednn,
}


def down_conv2x(x: Array, kernel: Array, conv: ConvChoice = NATIVE, precision: Any = None) -> Array:
    """Functional `Conv2d(k=4, s=2, p=1)` on NHWC `x` with a Flax (4, 4, Cin, Cout) kernel,
    in the formulation and batch chunks `conv` names (`synthjax.models.formulations`)."""
    _check_args(x, kernel, "down_conv2x")
    fn = DOWN_FNS[conv.formulation]
    return in_batch_chunks(lambda part: fn(part, kernel, precision), x, conv.batch_chunk)


# --------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------
class _Conv4x4Stride2(nn.Module):
    """The parameters and call shared by UpConv2x and DownConv2x; `apply_conv` is their convolution."""

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    precision: Any = None
    conv: ConvChoice = NATIVE  # the formulation, resolved by synthjax.models.formulations

    apply_conv = None  # up_conv2x or down_conv2x, set by the subclass

    @nn.compact
    def __call__(self, x_bhwc: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (4, 4, x_bhwc.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x_bhwc, kernel, bias, dtype=self.dtype)
        y = type(self).apply_conv(x, kernel, self.conv, self.precision)
        return y if bias is None else y + bias


class UpConv2x(_Conv4x4Stride2):
    """PyTorch `ConvTranspose2d(Cin, features, 4, stride=2, padding=1)` on NHWC.

    Parameters `kernel` (4, 4, Cin, features) and `bias` (features,) are named,
    shaped and interpreted as in `nn.ConvTranspose(features, (4, 4), (2, 2),
    padding=((2, 2), (2, 2)))`, so one param tree gives the same output in
    both; a PyTorch weight maps in with `kernel_from_torch_conv_transpose`.
    `conv` is the formulation (`synthjax.models.formulations`); all are exact
    up to float rounding. Computes in `dtype`, stores params in `param_dtype`.
    """

    apply_conv = staticmethod(up_conv2x)


class DownConv2x(_Conv4x4Stride2):
    """PyTorch `Conv2d(Cin, features, 4, stride=2, padding=1)` on NHWC.

    Parameters match `nn.Conv(features, (4, 4), (2, 2), padding=((1, 1),
    (1, 1)))` in name, shape and meaning. `conv` is the formulation
    (`synthjax.models.formulations`); all are exact up to float rounding.
    """

    apply_conv = staticmethod(down_conv2x)
