"""Which formulation of each convolution runs: one decision, per backend, dtype and layer role.

Every family asks this module, and its modules receive the resolved choice
(`ConvChoice`); nothing else decides. The formulations themselves are in
`models/layers.py` (strided up/down convolutions) and `models/rnn.py`
(stride-1 convolutions inside recurrent scans); all of a role's formulations
compute the same function, tested exact in float64.

Layer roles:
  up         hidden stride-2 transposed convolutions (generators, decoders)
  out        the transposed convolution that writes the image (1-3 channels)
  down       hidden stride-2 convolutions (discriminators, encoders)
  in         the stride-2 convolution that reads the image
  recurrent  stride-1 convolutions inside scans (PixelRNN, ConvLSTM)

`model.conv_impl` picks: 'auto' (the fastest measured per backend, below),
'native' (the plain `lax` convolutions everywhere), 'matmul' (im2col + GEMM
only), 'stack' (for stacks of members, see below), or per role, e.g.
'out=im2col3x3,in=s2d_matmul' (roles not named stay 'auto'). The measurements
behind 'auto' are in docs/performance.md.

Under `jax.vmap` over members (synthjax/stack.py) a convolution with
per-member kernels becomes a grouped convolution, which XLA:CPU and cuDNN run
slowly; GEMMs stay (batched) GEMMs. 'stack' is the GEMM-only formulations
with the exact FLOPs of a convolution (`gemm_col2im` up, `s2d_matmul` down),
and oneDNN where it runs: its calls run member by member.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from synthjax.errors import UserError
from synthjax.kernels import onednn

ROLES = ("up", "out", "down", "in", "recurrent")
UP_FORMULATIONS = ("native", "gemm_vjp", "subpixel", "dgrad", "gemm_col2im", "im2col3x3", "onednn")
DOWN_FORMULATIONS = ("native", "gemm_vjp", "s2d_matmul", "onednn")
RECURRENT_FORMULATIONS = ("native", "im2col")
VALID = {"up": UP_FORMULATIONS, "out": UP_FORMULATIONS, "down": DOWN_FORMULATIONS, "in": DOWN_FORMULATIONS,
         "recurrent": RECURRENT_FORMULATIONS}

PRESETS = {
    "auto": {},
    "native": dict.fromkeys(ROLES, "native"),
    "matmul": {"up": "im2col3x3", "out": "im2col3x3", "down": "s2d_matmul", "in": "s2d_matmul", "recurrent": "im2col"},
    "stack": {"up": "gemm_col2im", "out": "gemm_col2im", "down": "s2d_matmul", "in": "s2d_matmul", "recurrent": "im2col"},
}

# 'auto' by backend and role. CPU: XLA:CPU differentiates a stride-2 transposed convolution
# very slowly, so up layers use the sub-pixel forward with strided-conv derivatives (wide) or an
# im2col + GEMM backward (image layer), and recurrent convolutions are one GEMM each. GPU: the
# transposed convolution in the form XLA hands to cuDNN's backward-data kernel, and GEMMs for the
# 1-3 channel image layers, which cuDNN tiles badly. TPU: not measured, the compiler's own.
AUTO = {
    "cpu": {"up": "subpixel", "out": "gemm_vjp", "down": "gemm_vjp", "in": "gemm_vjp", "recurrent": "im2col"},
    "gpu": {"up": "dgrad", "out": "gemm_col2im", "down": "native", "in": "s2d_matmul", "recurrent": "native"},
}
# Roles that run on oneDNN (the library PyTorch's CPU convolutions use) where it is built, on CPU
# in float32. The generator's image layer stays on `gemm_vjp`, which was faster there.
ONEDNN_ROLES = ("up", "down", "in")
# Images per convolution call on CPU: XLA:CPU's convolutions slow down on large batches. oneDNN
# keeps its speed, so it gets the whole batch; GPUs want the whole batch.
CPU_BATCH_CHUNK = 32


@dataclasses.dataclass(frozen=True)
class ConvChoice:
    """A resolved formulation and how many images each call takes (None: the whole batch)."""

    formulation: str
    batch_chunk: int | None = None


def onednn_unused_reason(backend: str, dtype: Any) -> str | None:
    """Why 'auto' does not use oneDNN for this backend and dtype, or None when it does."""
    if backend != "cpu":
        return f"oneDNN kernels are CPU-only (backend {backend})"
    if jnp.dtype(dtype) != jnp.float32:
        return f"oneDNN kernels take float32 (compute dtype {jnp.dtype(dtype).name})"
    return onednn.unavailable_reason()


def _auto(role: str, backend: str, dtype: Any) -> str:
    if role in ONEDNN_ROLES and onednn_unused_reason(backend, dtype) is None:
        return "onednn"
    return AUTO.get(backend, {}).get(role, "native")


def _chunk(role: str, formulation: str, backend: str, batch_chunk: int) -> int | None:
    if not isinstance(batch_chunk, int) or batch_chunk < 0:
        raise UserError(f"model.conv_batch_chunk={batch_chunk!r}: expected an integer >= 0 "
                        f"(0: the backend's default; n > 0: n images per convolution call)")
    if batch_chunk:
        return batch_chunk
    if backend != "cpu" or formulation == "onednn" or role == "recurrent":
        return None
    return CPU_BATCH_CHUNK


def _requested(spec: str) -> dict[str, str]:
    """`model.conv_impl` -> {role: formulation or 'auto'} for every role."""
    spec = spec or "auto"
    if spec in PRESETS:
        chosen = PRESETS[spec]
    else:
        pairs = [item.split("=", 1) for item in spec.split(",")]
        if any(len(p) != 2 or p[0].strip() not in ROLES for p in pairs):
            raise UserError(f"model.conv_impl={spec!r}: expected a preset ({', '.join(PRESETS)}) or 'role=formulation,...' "
                            f"with roles {', '.join(ROLES)}, e.g. 'out=im2col3x3,in=s2d_matmul'")
        chosen = {role.strip(): impl.strip() for role, impl in pairs}
    return {role: chosen.get(role, "auto") for role in ROLES}


def plan(spec: str = "auto", dtype: Any = jnp.float32, batch_chunk: int = 0,
         backend: str | None = None) -> dict[str, ConvChoice]:
    """The `ConvChoice` of every role for `model.conv_impl=spec` on this backend and compute dtype."""
    backend = backend or jax.default_backend()
    choices = {}
    for role, name in _requested(spec).items():
        if name == "auto":
            name = _auto(role, backend, dtype)
        elif spec == "stack" and role in ONEDNN_ROLES and onednn_unused_reason(backend, dtype) is None:
            name = "onednn"  # its calls run member by member under vmap: no grouped convolution arises
        if name not in VALID[role]:
            raise UserError(f"model.conv_impl: {role}={name!r} is not one of {', '.join(VALID[role])}")
        if name == "onednn" and onednn_unused_reason(backend, dtype):
            raise UserError(f"model.conv_impl: {role}=onednn cannot run here: {onednn_unused_reason(backend, dtype)}; "
                            f"use 'auto' (it falls back to XLA's convolutions)")
        choices[role] = ConvChoice(name, _chunk(role, name, backend, batch_chunk))
    return choices


def plan_for(model_cfg, dtype: Any) -> dict[str, ConvChoice]:
    """`plan` from a model config's `conv_impl` and `conv_batch_chunk` (both optional)."""
    return plan(model_cfg.get("conv_impl", "auto"), dtype, model_cfg.get("conv_batch_chunk", 0))


def encoder_convs(choices: dict[str, ConvChoice]) -> tuple[ConvChoice, ConvChoice]:
    """(image layer, hidden layers) of an encoder or discriminator."""
    return choices["in"], choices["down"]


def decoder_convs(choices: dict[str, ConvChoice]) -> tuple[ConvChoice, ConvChoice]:
    """(hidden layers, image layer) of a decoder or generator."""
    return choices["up"], choices["out"]


def describe(choices: dict[str, ConvChoice], dtype: Any = jnp.float32, backend: str | None = None) -> dict[str, Any]:
    """A JSON-ready record of the choices: formulation (and chunk) per role, and why oneDNN is unused."""
    backend = backend or jax.default_backend()
    record: dict[str, Any] = {
        role: c.formulation + (f"/{c.batch_chunk}" if c.batch_chunk else "") for role, c in choices.items()}
    reason = onednn_unused_reason(backend, dtype)
    if backend == "cpu" and reason:
        record["onednn_unused"] = reason
    return record


def summary_line(choices: dict[str, ConvChoice], dtype: Any = jnp.float32) -> str:
    """One log line: 'convolutions: up=onednn, out=gemm_vjp/32, ...' plus why oneDNN is unused on CPU."""
    record = describe(choices, dtype)
    reason = record.pop("onednn_unused", None)
    line = "convolutions (role=formulation[/images per call]): " + ", ".join(f"{k}={v}" for k, v in record.items())
    return line + (f"; oneDNN not used: {reason}" if reason else "")
