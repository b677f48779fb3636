"""Weight-storage and compute dtypes for the SUPIR adaptor, chosen by ComfyUI's rules when "auto"."""
from __future__ import annotations

import torch

import comfy.model_management as mm

WEIGHT_DTYPE_CHOICES: dict[str, torch.dtype | None] = {
    "auto": None,
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    # fp8 storage halves the adaptor's memory; layers are cast to fp16/bf16 to compute.
    "fp8_e4m3fn": getattr(torch, "float8_e4m3fn", None),
}


def parse_weight_dtype(choice: str) -> torch.dtype | None:
    """None for "auto"; ValueError naming the choices for anything unknown."""
    if choice not in WEIGHT_DTYPE_CHOICES:
        raise ValueError(f"unknown weight dtype {choice!r}; choose one of {sorted(WEIGHT_DTYPE_CHOICES)}")
    dtype = WEIGHT_DTYPE_CHOICES[choice]
    if choice != "auto" and dtype is None:
        raise ValueError(f"this torch ({torch.__version__}) has no {choice}; choose fp16 or bf16")
    return dtype


def resolve_weight_dtype(choice: str, load_device: torch.device, params: int) -> torch.dtype:
    """The storage dtype: the explicit choice, or ComfyUI's `unet_dtype` rule (honours --fp16-unet etc.)."""
    dtype = parse_weight_dtype(choice)
    if dtype is not None:
        return dtype
    return mm.unet_dtype(device=load_device, model_params=params)


def model_compute_dtype(model_base) -> torch.dtype:
    """Compute dtype of a ComfyUI `BaseModel` (its manual-cast dtype when weights are cast per layer)."""
    cast = getattr(model_base, "manual_cast_dtype", None)
    return cast if cast is not None else model_base.get_dtype()
