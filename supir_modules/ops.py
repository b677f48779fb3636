"""Choosing ComfyUI's layer operations for a weight-storage dtype and a compute dtype.

ComfyUI builds its models with an `operations` namespace (`comfy.ops`): `disable_weight_init` when weights are
stored in the compute dtype, `manual_cast` when they are cast per layer at run time (fp8 storage, low-VRAM
partial loading), `fp8_ops` when fp8-stored linear layers multiply in fp8 (recent ComfyUI, GPUs with fp8 compute).
Newer ComfyUI picks between them with `pick_operations`; the 2024-03 copy has no such helper (and no fp8 matmul),
so we fall back to the same rule by hand.
"""
from __future__ import annotations

import inspect

import torch

import comfy.ops

FP8_DTYPES = tuple(d for d in (getattr(torch, "float8_e4m3fn", None), getattr(torch, "float8_e5m2", None)) if d)


def fp8_optimizations(model_base) -> bool:
    """Whether ComfyUI built this model (a `BaseModel`) with fp8 matrix multiplication requested: the loader's
    `fp8_e4m3fn_fast` weight dtype or a scaled-fp8 checkpoint that asks for it (`model_config.optimizations`)."""
    optimizations = getattr(getattr(model_base, "model_config", None), "optimizations", None)
    return bool(isinstance(optimizations, dict) and optimizations.get("fp8", False))


def pick_operations(weight_dtype: torch.dtype, compute_dtype: torch.dtype, load_device: torch.device | None = None,
                    fp8_matmul: bool = False):
    """ComfyUI's operations for these dtypes on `load_device`, chosen as ComfyUI chooses them for its UNet.

    `fp8_matmul`: the SDXL model the layers run with was built with fp8 matrix multiplication (see
    `fp8_optimizations`); ComfyUI then picks its fp8 ops if the device computes in fp8, as it does with
    `--fast fp8_matrix_mult`. fp8 ops only ever apply to fp8-stored weights: others get plain or cast layers.
    """
    picker = getattr(comfy.ops, "pick_operations", None)
    if picker is None:  # 2024-03
        return comfy.ops.disable_weight_init if weight_dtype == compute_dtype else comfy.ops.manual_cast
    fp8_storage = weight_dtype in FP8_DTYPES
    wanted = {"load_device": load_device, "fp8_optimizations": fp8_matmul and fp8_storage,
              "disable_fast_fp8": not fp8_storage}
    params = inspect.signature(picker).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        wanted = {k: v for k, v in wanted.items() if k in params}  # older ComfyUI: fewer options
    return picker(weight_dtype, compute_dtype, **wanted)
