"""oneDNN convolutions for XLA:CPU, as differentiable JAX functions.

`conv(x, w, stride, padding)` is `lax.conv_general_dilated` on NHWC `x` and
an HWIO kernel `w`, float32, computed by oneDNN through an XLA FFI custom
call (`onednn_conv.cc`, built by `make native`). Its derivatives are the
other two calls, `conv_input_grad` and `conv_kernel_grad`, and each of the
three is differentiable again in terms of the others, so gradients of any
order (gradient penalties included) stay on oneDNN.

Why: XLA:CPU's own convolution kernels are what kept the dcgan28 step slower
than PyTorch's, whose CPU convolutions are oneDNN's (docs/performance.md). oneDNN reads XLA's NHWC buffers in place; only the
kernel is reordered into oneDNN's blocked layout per call (small).

`available()` says whether the library loaded; where it did not (no
compiler at install time, another platform) the layers keep their XLA
formulations and `unavailable_reason()` says why. `SYNTHJAX_ONEDNN=0`
turns it off.
"""
from __future__ import annotations

import ctypes
import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]

LIBRARY = os.path.join(os.path.dirname(__file__), "_onednn_conv.so")
_TARGETS = ("synthjax_conv_fwd", "synthjax_conv_bwd_data", "synthjax_conv_bwd_weights")


@functools.cache
def _register() -> str | None:
    """Loads the library and registers its three FFI targets, once; returns why not, or None."""
    if not os.path.exists(LIBRARY):
        return f"{LIBRARY} is not built (run `make native`, or `python -m synthjax.kernels.build`: needs g++ and the onednn-cpu-gomp package)"
    try:
        lib = ctypes.cdll.LoadLibrary(LIBRARY)
    except OSError as err:
        return f"{LIBRARY} did not load: {err}"
    for name in _TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
    return None


def unavailable_reason() -> str | None:
    """Why the oneDNN convolutions cannot run here, or None when they can."""
    if os.environ.get("SYNTHJAX_ONEDNN", "1") == "0":
        return "disabled by SYNTHJAX_ONEDNN=0"
    return _register()


def available() -> bool:
    """True when the oneDNN convolutions can run (the library is built and loads)."""
    return unavailable_reason() is None


def _attrs(stride: Sequence[int], padding: Padding) -> dict[str, np.int64]:
    (top, bottom), (left, right) = padding
    values = dict(stride_h=stride[0], stride_w=stride[1], pad_top=top, pad_left=left, pad_bottom=bottom,
                  pad_right=right)
    return {k: np.int64(v) for k, v in values.items()}


def _call(target: str, shape: tuple[int, ...], a: Array, b: Array, stride: Sequence[int], padding: Padding) -> Array:
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"synthjax.kernels.onednn: {reason}")
    if a.dtype != jnp.float32 or b.dtype != jnp.float32:
        raise TypeError(f"oneDNN convolutions take float32, got {a.dtype} and {b.dtype}; "
                        f"use an XLA impl for other dtypes")
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    # Under vmap (stacks of runs) the members become leading dimensions of every buffer, and the call runs
    # them in place, side by side on the cores: no slicing copies around a loop (onednn_conv.cc).
    return jax.ffi.ffi_call(target, out, vmap_method="broadcast_all")(a, b, **_attrs(stride, padding))


def output_shape(x_shape: Sequence[int], w_shape: Sequence[int], stride: Sequence[int], padding: Padding
                 ) -> tuple[int, int, int, int]:
    n, h, w, _ = x_shape
    kh, kw, _, co = w_shape
    (top, bottom), (left, right) = padding
    return n, (h + top + bottom - kh) // stride[0] + 1, (w + left + right - kw) // stride[1] + 1, co


# The three linear maps, each a custom_vjp written in terms of the others:
# for y = conv(x, w):  <dy, conv(x, w)> = <conv_input_grad(dy, w), x> = <conv_kernel_grad(x, dy), w>.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: Array, w: Array, stride: tuple[int, int], padding: Padding) -> Array:
    """`lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=NHWC/HWIO)` on oneDNN."""
    return _call("synthjax_conv_fwd", output_shape(x.shape, w.shape, stride, padding), x, w, stride, padding)


def _conv_fwd(x, w, stride, padding):
    return conv(x, w, stride, padding), (x, w)


def _conv_bwd(stride, padding, res, dy):
    x, w = res
    return conv_input_grad(dy, w, x.shape, stride, padding), conv_kernel_grad(x, dy, w.shape, stride, padding)


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_input_grad(dy: Array, w: Array, x_shape: tuple[int, ...], stride: tuple[int, int], padding: Padding
                    ) -> Array:
    """The input gradient of `conv` (a transposed convolution) for output cotangent `dy`."""
    return _call("synthjax_conv_bwd_data", tuple(x_shape), dy, w, stride, padding)


def _input_grad_fwd(dy, w, x_shape, stride, padding):
    return conv_input_grad(dy, w, x_shape, stride, padding), (dy, w)


def _input_grad_bwd(x_shape, stride, padding, res, g):
    dy, w = res
    return conv(g, w, stride, padding), conv_kernel_grad(g, dy, w.shape, stride, padding)


conv_input_grad.defvjp(_input_grad_fwd, _input_grad_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_kernel_grad(x: Array, dy: Array, w_shape: tuple[int, ...], stride: tuple[int, int], padding: Padding
                     ) -> Array:
    """The kernel gradient of `conv` for input `x` and output cotangent `dy`."""
    return _call("synthjax_conv_bwd_weights", tuple(w_shape), x, dy, stride, padding)


def _kernel_grad_fwd(x, dy, w_shape, stride, padding):
    return conv_kernel_grad(x, dy, w_shape, stride, padding), (x, dy)


def _kernel_grad_bwd(w_shape, stride, padding, res, g):
    x, dy = res
    return conv_input_grad(dy, g, x.shape, stride, padding), conv(x, g, stride, padding)


conv_kernel_grad.defvjp(_kernel_grad_fwd, _kernel_grad_bwd)
