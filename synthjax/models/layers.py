"""Fast, exact DCGAN up- and down-sampling layers (kernel 4, stride 2, pad 1).

XLA:CPU differentiates a stride-2 `lax.conv_transpose` very slowly: the
*kernel* gradient of the 256->128 DCGAN layer at batch 128 takes seconds,
where PyTorch needs ~0.1 s for the whole forward and backward. The modules
here compute exactly the function of the Flax layers they stand in for, with
the same parameter names and shapes. The fast up-convolution impls all
replace XLA's derivatives of the transposed conv: `gemm_vjp` (native
forward) by one im2col gather and two GEMMs, `conv_vjp` (native forward)
and `subpixel` (forward as one stride-1 conv to the four output phases) by
the forward and the kernel gradient of the stride-2 conv the layer is the
transpose of. `impl="auto"` picks, from measurements: on CPU `subpixel` (or
oneDNN's kernels) for wide layers and `gemm_vjp` for narrow (image) ones; on
GPU `dgrad` (the transposed conv in the form XLA hands to cuDNN's
backward-data kernels) for wide layers and `gemm_col2im` (one GEMM, then
each output pixel sums its four taps) for image layers; on TPU, where
nothing was measured, the native convolutions. The other impls are
exact alternatives kept for comparison and forward-mode autodiff.
Every impl can run on chunks of the batch (`batch_chunk`): on CPU, by
default, 32 images per call, where XLA's convolutions are faster.

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

Array = jax.Array
Initializer = Callable[..., Array]

UP_IMPLS = ("auto", "native", "gemm_vjp", "conv_vjp", "subpixel", "dgrad", "gemm_col2im", "subpixel3x3", "onednn",
            "phase_matmul", "phase_conv", "im2col3x3")
DOWN_IMPLS = ("auto", "native", "gemm_vjp", "onednn", "s2d_conv", "s2d_matmul", "s2d3x3")
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


# Images per convolution call when `batch_chunk=0`, by backend. XLA:CPU's convolutions lose
# much of their speed on large batches: in the dcgan28 train step at batch 128 on the 2-core
# dev VM, running every up/down convolution on chunks of 32 images took the step from 305 to
# 257 ms (paired alternating medians; chunks of 16 and 64 gained less), vae_conv's x0.81.
# GPUs want the whole batch; TPUs were not measured.
BATCH_CHUNK_AUTO = {"cpu": 32}


def resolve_batch_chunk(batch_chunk: int, backend: str | None = None) -> int | None:
    """`batch_chunk` > 0 as is; 0 -> the backend's default (`BATCH_CHUNK_AUTO`; None: whole batch)."""
    if not isinstance(batch_chunk, int) or batch_chunk < 0:
        raise ValueError(f"batch_chunk={batch_chunk!r}: expected an integer >= 0 (0: the backend's default, "
                         f"32 images per call on CPU and the whole batch elsewhere; n > 0: n images per call)")
    return batch_chunk or BATCH_CHUNK_AUTO.get(backend or jax.default_backend())


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


def down_s2d_conv(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Pad, space-to-depth by 2, then a 2x2 stride-1 VALID convolution."""
    xs = space_to_depth(_pad_for_s2d(x), 2)
    return jax.lax.conv_general_dilated(xs, _s2d_kernel(kernel), (1, 1), "VALID",
                                        dimension_numbers=_NHWC, precision=precision)


def down_s2d_matmul(x: Array, kernel: Array, precision: Any = None) -> Array:
    """`im2col_k4s2p1` then one GEMM against the (16*Cin, Cout) kernel."""
    return _matmul(im2col_k4s2p1(x), _s2d_kernel(kernel).reshape(-1, kernel.shape[-1]), precision)


def _s2d3x3_kernel(kernel: Array) -> Array:
    """(4, 4, Cin, Cout) -> (3, 3, 4*Cin, Cout) over unshifted 2x2 blocks: output row i reads input
    rows 2i - 1 .. 2i + 2, so block T = 0, 1, 2 (offset T - 1) at in-block row p holds tap 2T + p - 1;
    the two indices outside 0..3 (T = 0, p = 0 and T = 2, p = 1) get zeros."""
    cin, cout = kernel.shape[2:]
    k = jnp.pad(kernel, ((1, 1), (1, 1), (0, 0), (0, 0))).reshape(3, 2, 3, 2, cin, cout)  # [t, p, u, q, c, o]
    return k.transpose(0, 2, 1, 3, 4, 5).reshape(3, 3, 4 * cin, cout)


def down_s2d3x3(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Space-to-depth by 2 on *unshifted* blocks, then a 3x3 stride-1 SAME convolution (9/4 of the FLOPs).

    `s2d_conv` pads first, so its blocks start one pixel before the image's;
    here the blocks are the image's own, the layout `subpixel3x3` writes. A
    generator whose image layer is `subpixel3x3` feeding a discriminator whose
    image layer is this one leaves XLA a depth-to-space followed by its
    inverse, which it removes: no interleave or im2col transpose between the
    two networks, in either direction. For image layers (1-3 channels), where
    the extra FLOPs are small. Odd sizes get a zero row/column (PyTorch's
    padding reads it as zero too) and the output is cut to `H // 2`.
    Measured, as the discriminator's image layer against `auto` (whole steps,
    H100, eighth session): dcgan64 b256 bf16 x1.016 step time, f32 x1.016,
    dcgan28 b1024 x1.043; the saved transposes cost less than the extra
    FLOPs. On the 2-core CPU: x1.00. Kept as an exact alternative.
    """
    _, h, w, _ = x.shape
    xs = space_to_depth(pad_spatial(x, (0, h % 2), (0, w % 2)), 2)
    y = jax.lax.conv_general_dilated(xs, _s2d3x3_kernel(kernel), (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=_NHWC, precision=precision)
    return y[:, :h // 2, :w // 2]


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
    does not (custom_vjp), so use `impl="native"` or a `phase_*` impl there.
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


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def up_conv_vjp(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Native transposed conv forward; backward as the forward and the kernel
    gradient of the stride-2 conv it is the transpose of.

    Both derivatives of a stride-2 transposed conv are computations on a
    stride-2 *forward* conv: the input gradient is that conv of the output
    cotangent (flipped, in/out-swapped kernel), the kernel gradient is its
    kernel gradient against the input, which XLA lowers to a window-dilated
    convolution (fast) instead of the input-dilated one that `native`
    differentiates into (seconds on CPU). With convolutions on XLA:CPU's own
    kernels (`runtime.CPU_COMPILER_OPTIONS`) this backward beats `gemm_vjp`'s
    on wide layers (256->128 at 7x7, batch 128, backward only: 67 vs ~110
    ms on the 2-core VM) and not on image layers (128->1: 6.0 vs 3.5 ms
    forward + backward). Forward mode: as `gemm_vjp`.
    """
    return up_native(x, kernel, precision)


def _up_conv_vjp_fwd(x: Array, kernel: Array, precision: Any) -> tuple[Array, tuple[Array, Array]]:
    return up_native(x, kernel, precision), (x, kernel)


def _up_conv_vjp_bwd(precision: Any, res: tuple[Array, Array], g: Array) -> tuple[Array, Array]:
    x, kernel = res
    down_kernel, down_kernel_vjp = jax.vjp(_transposed_kernel, kernel)
    dx, down_vjp = jax.vjp(lambda k: down_native(g, k, precision), down_kernel)
    (ddown_kernel,) = down_vjp(x.astype(dx.dtype))
    (dkernel,) = down_kernel_vjp(ddown_kernel)
    return dx.astype(x.dtype), dkernel


up_conv_vjp.defvjp(_up_conv_vjp_fwd, _up_conv_vjp_bwd)


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
    """`up_subpixel_forward`, differentiated as `up_conv_vjp` is.

    On XLA:CPU the sub-pixel forward beats the native transposed conv for
    wide layers (batch 128, forward ms: 256->128 at 7x7 37 vs 43-61,
    128->64 at 14x14 36 vs 56-102) and loses on image layers (128->1: 6.1
    vs 4.0); its own autodiff is slower than `up_conv_vjp`'s backward, so
    the backward is that one. Forward mode: as `gemm_vjp`.
    """
    return up_subpixel_forward(x, kernel, precision)


def _up_subpixel_fwd(x: Array, kernel: Array, precision: Any) -> tuple[Array, tuple[Array, Array]]:
    return up_subpixel_forward(x, kernel, precision), (x, kernel)


up_subpixel.defvjp(_up_subpixel_fwd, _up_conv_vjp_bwd)


def up_subpixel3x3(x: Array, kernel: Array, precision: Any = None) -> Array:
    """A 3x3 stride-1 SAME convolution to all four output phases, then depth-to-space (9/4 of the FLOPs).

    Each input pixel's 3x3 neighbourhood holds the taps of all four phases of
    its 2x2 output block (`_im2col3x3_kernel`, zeros where a phase does not
    use a tap), so the convolution's output is the image in space-to-depth
    layout over unshifted blocks, the layout `DownConv2x`'s `s2d3x3` reads
    (see there). For image layers; plain autodiff (forward mode works).
    With `s2d3x3` in the discriminator, whole steps against `auto` (H100,
    eighth session): dcgan64 b256 bf16 x1.022 step time, f32 x1.044, dcgan28
    b1024 x1.135; CPU dcgan28 x1.07. Kept as an exact alternative.
    """
    cin, cout = kernel.shape[2:]
    k = _im2col3x3_kernel(kernel).reshape(3, 3, cin, 4 * cout)
    z = jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC, precision=precision)
    return depth_to_space(z, 2)


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
    """`up_dgrad_forward`, differentiated as `up_conv_vjp` is (a strided forward convolution for the input
    gradient, its kernel gradient for the kernel's): every pass is one cuDNN convolution on exact FLOPs."""
    return up_dgrad_forward(x, kernel, precision)


def _up_dgrad_fwd(x: Array, kernel: Array, precision: Any) -> tuple[Array, tuple[Array, Array]]:
    return up_dgrad_forward(x, kernel, precision), (x, kernel)


up_dgrad.defvjp(_up_dgrad_fwd, _up_conv_vjp_bwd)


def up_gemm_col2im(x: Array, kernel: Array, precision: Any = None) -> Array:
    """One GEMM from each input pixel to its 16 taps' contributions, then each output pixel sums its four.

    `p = x @ w` as (B, H, W, 4, 4, Cout); output phase (a, b) at (m, n) is
    `sum_{t,u} p[m + a + t - 1, n + b + u - 1, 2t + a, 2u + b]` (the module
    docstring's sub-pixel view with the GEMM first). Exact FLOPs in one GEMM
    of width 16*Cout, which suits narrow image layers (64 -> 3: width 48),
    where convolution kernels tile the 3 output channels badly. Plain autodiff.
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


def _phase_kernel(kernel: Array, a: int, b: int) -> Array:
    """Taps used by output phase (a, b): `(2, 2, Cin, Cout)`, [t, u] = w[2t+a, 2u+b]."""
    return kernel[a::2, b::2]


def _window(xp: Array, dy: int, dx: int, h: int, w: int) -> Array:
    """The `h x w` window of a padded NHWC array starting at offset (dy, dx)."""
    return xp[:, dy:dy + h, dx:dx + w, :]


def _interleave_phases(phases: list[Array]) -> Array:
    """Phase outputs in order (0,0), (0,1), (1,0), (1,1), each (B, H, W, C) -> (B, 2H, 2W, C)."""
    return depth_to_space(jnp.concatenate(phases, axis=-1), 2)


def up_phase_matmul(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Per phase: gather its four exact 2x2 window taps (im2col), one GEMM.

    Exact FLOPs and plain autodiff (forward mode works), but the im2col
    buffer is 16*Cin per input pixel, which hurts when Cout is small.
    """
    _, h, w, cin = x.shape
    xp = pad_spatial(x, (1, 1), (1, 1))
    phases = []
    for pa in (0, 1):
        for pb in (0, 1):
            cols = [_window(xp, pa + t, pb + u, h, w) for t in (0, 1) for u in (0, 1)]
            k = _phase_kernel(kernel, pa, pb).reshape(4 * cin, -1)
            phases.append(_matmul(jnp.concatenate(cols, axis=-1), k, precision))
    return _interleave_phases(phases)


def up_phase_conv(x: Array, kernel: Array, precision: Any = None) -> Array:
    """Per phase: a 2x2 VALID convolution over its exact window of the padded input."""
    _, h, w, _ = x.shape
    xp = pad_spatial(x, (1, 1), (1, 1))
    phases = [jax.lax.conv_general_dilated(_window(xp, pa, pb, h + 1, w + 1), _phase_kernel(kernel, pa, pb),
                                           (1, 1), "VALID", dimension_numbers=_NHWC, precision=precision)
              for pa in (0, 1) for pb in (0, 1)]
    return _interleave_phases(phases)


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


_UP_FNS = {
    "native": up_native,
    "gemm_vjp": up_gemm_vjp,
    "conv_vjp": up_conv_vjp,
    "subpixel": up_subpixel,
    "dgrad": up_dgrad,
    "gemm_col2im": up_gemm_col2im,
    "subpixel3x3": up_subpixel3x3,
    "onednn": up_onednn,
    "phase_matmul": up_phase_matmul,
    "phase_conv": up_phase_conv,
    "im2col3x3": up_im2col3x3,
}


# On CPU, `impl="auto"` picks by output width: `subpixel` from this many output channels up,
# `gemm_vjp` below (image layers). Forward + backward, batch 128 in chunks of 32, median ms,
# gemm_vjp / conv_vjp / subpixel (`python -m benchmarks.layers_cpu --skip-slow --layers
# up256,up128,up64to32,up64to8,up64to4,up64to1`, 2-core VM, 2026-11-26 23:30 UTC): 256->128 at
# 7x7 132 / 140 / 127 (PyTorch 101), 64->32 at 14x14 76 / 59 / 54, 64->8 18.4 / 18.4 / 15.1,
# 64->4 10.9 / 9.0 / 9.6, 64->1 5.4 / 6.0 / 7.8, 128->1 12.6 / 12.0 / 13.7. Whole train steps
# (paired, step-time ratio to conv_vjp): dcgan28 0.971, vae_conv 0.933, vqvae 1.01.
# `onednn`, where built, takes the wide side of the same threshold for up layers. It lost on the
# generator's image layer (128->1 16.2 vs 11.9 ms; benchmarks/RESULTS.md, sixth session); widths
# between 1 and 64 were not measured with it. Down layers use it at every width (resolve_down_impl).
CPU_SUBPIXEL_MIN_FEATURES = 8
# On GPU, `impl="auto"` uses `gemm_col2im` below this many output channels (measured: 1 and 3, the
# DCGAN image layers), `dgrad` from it up (measured: 64-256).
GPU_COL2IM_BELOW_FEATURES = 8


def _onednn_fits(backend: str, dtype: Any) -> bool:
    """oneDNN's kernels serve float32 on the CPU, where the library is built (`make native`)."""
    return backend == "cpu" and jnp.dtype(dtype) == jnp.float32 and onednn.available()


def resolve_up_impl(impl: str, backend: str | None = None, features: int | None = None,
                    dtype: Any = jnp.float32) -> str:
    """Maps `impl="auto"` to the formulation measured fastest for the backend (TPU: `native`).

    CPU: for layers with at least `CPU_SUBPIXEL_MIN_FEATURES` output channels
    (`features=None`: wide), `onednn` in float32 where the library is built
    (256->128 forward + backward 113 vs 131 ms for `subpixel`), else
    `subpixel`; `gemm_vjp` for narrower ones (image layers: 12 vs 16 ms for
    oneDNN on 128->1).
    GPU: `dgrad` for wide layers and `gemm_col2im` below
    `GPU_COL2IM_BELOW_FEATURES` output channels (image layers). Both do the
    exact FLOPs where Flax's transposed convolution makes XLA:GPU convolve a
    zero-dilated copy of the input (4x the FLOPs). Whole train steps on an H100
    against the previous choice (`gemm_vjp` everywhere; benchmarks/gpu_profile.py,
    with the joint discriminator pass in both): dcgan64 b256 bf16 3.18 vs 3.94
    ms, dcgan28 b1024 2.94 vs 4.85 ms, dcgan28 b128 0.74 vs 0.92 ms.
    TPU: not measured, so the compiler's own.
    """
    if impl not in UP_IMPLS:
        raise ValueError(f"UpConv2x: impl={impl!r} is not one of {UP_IMPLS}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    narrow_below = CPU_SUBPIXEL_MIN_FEATURES if backend == "cpu" else GPU_COL2IM_BELOW_FEATURES
    narrow = features is not None and features < narrow_below
    if backend == "cpu":
        if narrow:
            return "gemm_vjp"
        return "onednn" if _onednn_fits(backend, dtype) else "subpixel"
    if backend == "gpu":
        return "gemm_col2im" if narrow else "dgrad"
    return "native"


def _chunk_for(impl: str, batch_chunk: int) -> int | None:
    """Images per call: oneDNN keeps its speed on large batches, so its default is the whole batch."""
    if impl == "onednn" and batch_chunk == 0:
        return None
    return resolve_batch_chunk(batch_chunk)


def up_conv2x(x: Array, kernel: Array, impl: str = "auto", precision: Any = None, batch_chunk: int = 0) -> Array:
    """Functional `ConvTranspose2d(k=4, s=2, p=1)` on NHWC `x` with a Flax
    (4, 4, Cin, Cout) kernel, via the formulation named by `impl`, on chunks
    of `batch_chunk` images (`resolve_batch_chunk`; 0: the backend's default)."""
    _check_args(x, kernel, "up_conv2x")
    impl = resolve_up_impl(impl, features=kernel.shape[-1], dtype=x.dtype)
    fn = _UP_FNS[impl]
    return in_batch_chunks(lambda part: fn(part, kernel, precision), x, _chunk_for(impl, batch_chunk))


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
    of XLA:CPU's pathological transposed-conv kernel gradient (0.23 s vs
    2.8 s for 64->128 at 14x14, batch 128, on a loaded 2-core CPU).
    Differentiating the *kernel* gradient again (rarer) still takes XLA's
    path (3.0 s vs 6.1 s native there); `s2d_matmul` is all-GEMM throughout.
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


_DOWN_FNS = {
    "native": down_native,
    "gemm_vjp": down_gemm_vjp,
    "onednn": down_onednn,
    "s2d_conv": down_s2d_conv,
    "s2d_matmul": down_s2d_matmul,
    "s2d3x3": down_s2d3x3,
}


def resolve_down_impl(impl: str, backend: str | None = None, dtype: Any = jnp.float32) -> str:
    """Maps `impl="auto"` to `onednn` on CPU (float32, library built), else
    `gemm_vjp` on CPU and `native` on GPU/TPU.

    oneDNN: 64->128 at 14x14, batch 128, forward + backward 28 vs 37 ms. On
    an image layer (1->64 at 28x28) it loses in isolation (forward + both
    gradients 6.4 vs 4.8 ms) but wins in the train step, where the first
    layer's input gradient is rarely needed (real images, encoder inputs) and
    its forward is the faster one, on the whole batch without chunking: the
    dcgan28 step took 0.978, 0.983, 0.984 and 0.954 of the time with
    `gemm_vjp` there (paired in-process runs of 14-16 rounds, two in the
    ninth session and two in the tenth), vae_conv 0.993. `gemm_vjp` stays where oneDNN cannot run. On
    XLA:CPU `native` and `gemm_vjp` are the same computation to first order,
    but a gradient penalty differentiates the input gradient, a transposed
    conv, and that is ~10x faster through `up_gemm_vjp`.
    """
    if impl not in DOWN_IMPLS:
        raise ValueError(f"DownConv2x: impl={impl!r} is not one of {DOWN_IMPLS}")
    if impl != "auto":
        return impl
    backend = backend or jax.default_backend()
    if backend != "cpu":
        return "native"
    return "onednn" if _onednn_fits(backend, dtype) else "gemm_vjp"


def down_conv2x(x: Array, kernel: Array, impl: str = "auto", precision: Any = None, batch_chunk: int = 0) -> Array:
    """Functional `Conv2d(k=4, s=2, p=1)` on NHWC `x` with a Flax (4, 4, Cin,
    Cout) kernel, via the formulation named by `impl`, on chunks of
    `batch_chunk` images (`resolve_batch_chunk`; 0: the backend's default)."""
    _check_args(x, kernel, "down_conv2x")
    impl = resolve_down_impl(impl, dtype=x.dtype)
    fn = _DOWN_FNS[impl]
    return in_batch_chunks(lambda part: fn(part, kernel, precision), x, _chunk_for(impl, batch_chunk))


# --------------------------------------------------------------------------
# Modules.
# --------------------------------------------------------------------------
class UpConv2x(nn.Module):
    """PyTorch `ConvTranspose2d(Cin, features, 4, stride=2, padding=1)` on NHWC.

    Parameters `kernel` (4, 4, Cin, features) and `bias` (features,) are named,
    shaped and interpreted as in `nn.ConvTranspose(features, (4, 4), (2, 2),
    padding=((2, 2), (2, 2)))`, so one param tree gives the same output in
    both; a PyTorch weight maps in with `kernel_from_torch_conv_transpose`.
    `impl` picks the formulation (`resolve_up_impl`); all are exact up to
    float rounding. Computes in `dtype`, stores params in `param_dtype`.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    precision: Any = None
    impl: str = "auto"
    batch_chunk: int = 0  # images per convolution call (resolve_batch_chunk; 0: backend default)

    @nn.compact
    def __call__(self, x_bhwc: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (4, 4, x_bhwc.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x_bhwc, kernel, bias, dtype=self.dtype)
        y = up_conv2x(x, kernel, self.impl, self.precision, self.batch_chunk)
        return y if bias is None else y + bias


class DownConv2x(nn.Module):
    """PyTorch `Conv2d(Cin, features, 4, stride=2, padding=1)` on NHWC.

    Parameters match `nn.Conv(features, (4, 4), (2, 2), padding=((1, 1),
    (1, 1)))` in name, shape and meaning. Unlike the transposed conv, the
    native strided conv's XLA:CPU forward and backward (input gradient
    included) are already within ~2x of PyTorch, and neither space-to-depth
    rewrite (`s2d_conv`, `s2d_matmul`, kept as exact alternatives) beat it.
    `impl="auto"` (`resolve_down_impl`) is `onednn` on CPU in float32,
    `gemm_vjp` for the CPU's other cases (native to first order, 10x faster
    under gradient penalties; see `down_gemm_vjp`) and `native` on GPU/TPU.
    """

    features: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    precision: Any = None
    impl: str = "auto"
    batch_chunk: int = 0  # images per convolution call (resolve_batch_chunk; 0: backend default)

    @nn.compact
    def __call__(self, x_bhwc: Array) -> Array:
        kernel = self.param("kernel", self.kernel_init, (4, 4, x_bhwc.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        x, kernel, bias = promote_dtype(x_bhwc, kernel, bias, dtype=self.dtype)
        y = down_conv2x(x, kernel, self.impl, self.precision, self.batch_chunk)
        return y if bias is None else y + bias
