"""The one place that picks convolution formulations: 'auto' per backend, dtype and role, presets, errors."""
import jax.numpy as jnp
import pytest

from synthjax.errors import UserError
from synthjax.kernels import onednn
from synthjax.models import formulations
from synthjax.models.formulations import ConvChoice


def names(choices: dict) -> dict:
    return {role: c.formulation for role, c in choices.items()}


def test_auto_on_cpu_uses_onednn_where_it_runs_else_xla_rewrites():
    got = names(formulations.plan("auto", jnp.float32, backend="cpu"))
    wide = "onednn" if onednn.available() else None
    assert got == {"up": wide or "subpixel", "out": "gemm_vjp", "down": wide or "gemm_vjp", "in": wide or "gemm_vjp",
                   "recurrent": "im2col"}
    # oneDNN takes float32 only: bfloat16 stays on the XLA rewrites
    assert names(formulations.plan("auto", jnp.bfloat16, backend="cpu"))["up"] == "subpixel"


def test_auto_on_gpu_and_tpu():
    assert names(formulations.plan("auto", backend="gpu")) == {
        "up": "dgrad", "out": "gemm_col2im", "down": "native", "in": "s2d_matmul", "recurrent": "native"}
    assert set(names(formulations.plan("auto", backend="tpu")).values()) == {"native"}  # not measured


def test_batch_chunks_by_backend_and_formulation():
    cpu = formulations.plan("native", backend="cpu")
    assert cpu["up"] == ConvChoice("native", formulations.CPU_BATCH_CHUNK)
    assert cpu["recurrent"].batch_chunk is None
    assert formulations.plan("native", backend="gpu")["up"].batch_chunk is None
    assert formulations.plan("native", batch_chunk=8, backend="gpu")["down"].batch_chunk == 8
    with pytest.raises(UserError, match=r"model.conv_batch_chunk=-2: expected an integer >= 0"):
        formulations.plan("auto", batch_chunk=-2)


def test_presets_and_per_role_specs():
    assert set(names(formulations.plan("native")).values()) == {"native"}
    matmul = names(formulations.plan("matmul", backend="cpu"))
    assert matmul == {"up": "im2col3x3", "out": "im2col3x3", "down": "s2d_matmul", "in": "s2d_matmul", "recurrent": "im2col"}
    got = names(formulations.plan("out=im2col3x3, in=s2d_matmul", backend="gpu"))
    assert got["out"] == "im2col3x3" and got["in"] == "s2d_matmul" and got["up"] == "dgrad"


def test_bad_specs_name_the_value_and_the_choices():
    with pytest.raises(UserError, match="roles up, out, down, in, recurrent"):
        formulations.plan("side=native")
    with pytest.raises(UserError, match="out='fast' is not one of"):
        formulations.plan("out=fast")


def test_onednn_refused_where_it_cannot_run_and_auto_says_why(monkeypatch):
    monkeypatch.setenv("SYNTHJAX_ONEDNN", "0")
    with pytest.raises(UserError, match="up=onednn cannot run here: disabled by SYNTHJAX_ONEDNN=0"):
        formulations.plan("up=onednn", backend="cpu")
    choices = formulations.plan("auto", backend="cpu")
    assert choices["up"].formulation == "subpixel"
    record = formulations.describe(choices, backend="cpu")
    assert record["onednn_unused"] == "disabled by SYNTHJAX_ONEDNN=0" and record["out"] == "gemm_vjp/32"
    assert "oneDNN not used: disabled by SYNTHJAX_ONEDNN=0" in formulations.summary_line(choices)
