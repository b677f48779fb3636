"""The SUPIR adaptor's layer operations follow ComfyUI's rules and the user's SDXL MODEL (tiny weights, CPU).

fp16 storage computing in fp16 gets plain layers, fp8 storage gets per-layer casts, and fp8 storage under an SDXL
model built with fp8 matrix multiplication (the loader's `fp8_e4m3fn_fast`, `model_config.optimizations["fp8"]`)
gets ComfyUI's `fp8_ops`, where the device computes in fp8. ComfyUI 2024-03 has neither `pick_operations` nor fp8
ops: there the adaptor keeps plain or cast layers.
"""
from __future__ import annotations

import functools

import comfy.ops
import pytest
import torch

from fsupir_under_test.supir_modules import checkpoint, model, ops
from fsupir_under_test.supir_modules.config import ControlConfig

from ..tiny_models import tiny_sdxl_state_dict, tiny_supir_state_dict

FP8 = getattr(torch, "float8_e4m3fn", None)
needs_fp8 = pytest.mark.skipif(FP8 is None, reason=f"torch {torch.__version__} has no float8_e4m3fn")


needs_fp8_ops = pytest.mark.skipif(not (hasattr(comfy.ops, "pick_operations") and hasattr(comfy.ops, "fp8_ops")),
                                   reason="this ComfyUI (2024-03) has no pick_operations and no fp8_ops: fp8 "
                                   "matrix multiplication does not exist there")


@pytest.fixture(scope="module")
def parts() -> checkpoint.SupirStateDicts:
    sd = {k: v.half() for k, v in tiny_supir_state_dict(tiny_sdxl_state_dict()).items()}
    return checkpoint.split_supir_state_dict(sd, "SUPIR-tiny")


def _adaptor(parts, weight_dtype, compute_dtype, **kw) -> model.SupirAdaptor:
    return model.build_adaptor(parts.control, parts.connectors, "SUPIR-tiny", weight_dtype, compute_dtype,
                               load_device=torch.device("cpu"), **kw)


def _layer_types(adaptor: torch.nn.Module) -> dict[str, set[type]]:
    found: dict[str, set[type]] = {"Linear": set(), "Conv2d": set()}
    for m in adaptor.modules():
        for kind in found:
            if isinstance(m, getattr(torch.nn, kind)):
                found[kind].add(type(m))
    return found


def _expect(adaptor: torch.nn.Module, operations) -> None:
    got = _layer_types(adaptor)
    for kind, types in got.items():
        assert types == {getattr(operations, kind)}, f"{kind} layers are {types}, expected {operations.__name__}"


@pytest.fixture
def fp8_compute(monkeypatch):
    """What ComfyUI's `--supports-fp8-compute` sets: `supports_fp8_compute()` is then true on any device."""
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "SUPPORT_FP8_OPS", True)


def _control_inputs(parts) -> tuple:
    cfg = ControlConfig.from_state_dict(parts.control)
    g = torch.Generator().manual_seed(0)
    return (torch.randn(1, 4, 16, 16, generator=g), torch.tensor([400]), torch.randn(1, 4, 16, 16, generator=g),
            torch.randn(1, 77, cfg.context_dim, generator=g), torch.randn(1, cfg.adm_in_channels, generator=g))


def _features(adaptor, inputs, dtype) -> torch.Tensor:
    hint, *rest = inputs
    outs = adaptor.control_model(hint.to(dtype), *rest)
    return torch.cat([o.float().flatten() for o in outs])


def test_fp16_storage_fp16_compute_gets_plain_layers(parts):
    _expect(_adaptor(parts, torch.float16, torch.float16), comfy.ops.disable_weight_init)


@needs_fp8
def test_fp8_storage_fp16_compute_gets_cast_layers(parts):
    _expect(_adaptor(parts, FP8, torch.float16), comfy.ops.manual_cast)


@needs_fp8
@needs_fp8_ops
def test_fp8_storage_under_an_fp8_matmul_sdxl_gets_fp8_ops(parts, fp8_compute):
    _expect(_adaptor(parts, FP8, torch.float16, fp8_matmul=True), comfy.ops.fp8_ops)


@needs_fp8
@needs_fp8_ops
def test_fp8_matmul_needs_fp8_storage_and_fp8_compute(parts, monkeypatch):
    """No fp8 ops for fp16 storage (ComfyUI's fp8 linear would only cast), nor without fp8 compute (the CPU, or a
    GPU before Ada/Hopper: ComfyUI's supports_fp8_compute is false) even when the SDXL model asks for them."""
    import comfy.model_management as mm
    _expect(_adaptor(parts, FP8, torch.float16, fp8_matmul=True), comfy.ops.manual_cast)  # CPU: no fp8 compute
    monkeypatch.setattr(mm, "SUPPORT_FP8_OPS", True)
    _expect(_adaptor(parts, torch.float16, torch.float16, fp8_matmul=True), comfy.ops.disable_weight_init)
    _expect(_adaptor(parts, FP8, torch.float16, fp8_matmul=False), comfy.ops.manual_cast)


@needs_fp8
@needs_fp8_ops
def test_fp8_ops_compute_the_manual_cast_function(parts, fp8_compute):
    """fp8 ops on the CPU compute what manual casting does, up to rounding the inputs to fp8.

    ComfyUI's fp8 linear quantises the activation to float8_e4m3fn and multiplies with `torch._scaled_mm`. A real
    fp8 matrix product needs a CUDA GPU with fp8 support (compute capability 8.9+); on the CPU, recent torch runs
    `_scaled_mm` with a reference kernel (older torch raises and ComfyUI falls back to casting the weight, which
    gives the manual-cast result exactly). Either way the result equals the manual-cast path up to the input's
    e4m3 rounding (3 mantissa bits), which is the bound checked here; fp8 ops' convolutions are manual_cast's.
    The fp8 speed itself can only be measured on such a GPU.
    """
    inputs = _control_inputs(parts)
    cast = _features(_adaptor(parts, FP8, torch.float16), inputs, torch.float16)
    fast = _features(_adaptor(parts, FP8, torch.float16, fp8_matmul=True), inputs, torch.float16)
    assert torch.isfinite(fast).all()
    rel = ((fast - cast).norm() / cast.norm()).item()
    assert rel < 0.05, f"fp8 ops differ from manual casting by {rel:.3f} (relative)"  # measured: 0.006


@needs_fp8
def test_cpu_without_fp8_compute_is_exactly_manual_cast(parts):
    """The SDXL model's fp8 flag on a device without fp8 compute (this CPU run): ComfyUI's choice is manual cast,
    so the adaptor computes exactly the manual-cast function."""
    inputs = _control_inputs(parts)
    cast = _features(_adaptor(parts, FP8, torch.float32), inputs, torch.float32)
    flagged = _features(_adaptor(parts, FP8, torch.float32, fp8_matmul=True), inputs, torch.float32)
    assert torch.equal(cast, flagged)


# --- through the loader: the adaptor follows the SDXL MODEL ------------------------------------------------


def _rewrap(supir, vae, parts, choice: str):
    return model.make_supir_model(supir.sdxl, vae, parts.control, parts.connectors, parts.denoise_encoder,
                                  "SUPIR-tiny", choice)


@needs_fp8
@needs_fp8_ops
def test_make_supir_model_follows_the_sdxl_models_fp8_matmul(tiny_supir, parts, fp8_compute, monkeypatch):
    import comfy.model_management as mm
    supir, _, vae = tiny_supir
    seen = []
    real = comfy.ops.pick_operations

    @functools.wraps(real)
    def spy(*args, **kw):
        seen.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(comfy.ops, "pick_operations", spy)
    _expect(_rewrap(supir, vae, parts, "fp8_e4m3fn").adaptor.model, comfy.ops.manual_cast)
    assert seen[-1]["load_device"] == mm.get_torch_device()
    assert ops.fp8_optimizations(supir.sdxl.model) is False
    supir.sdxl.model.model_config.optimizations["fp8"] = True  # what the loader's fp8_e4m3fn_fast sets
    assert ops.fp8_optimizations(supir.sdxl.model) is True
    _expect(_rewrap(supir, vae, parts, "fp8_e4m3fn").adaptor.model, comfy.ops.fp8_ops)
    _expect(_rewrap(supir, vae, parts, "fp16").adaptor.model, comfy.ops.manual_cast)  # fp32 compute on the CPU


def test_sdxl_models_without_the_flag(tiny_supir):
    """2024-03 model configs have no `optimizations`; objects that are no ComfyUI model have no config."""
    supir, _, _ = tiny_supir
    assert ops.fp8_optimizations(supir.sdxl.model) is False
    assert ops.fp8_optimizations(object()) is False
