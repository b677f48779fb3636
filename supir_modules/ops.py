"""Choosing ComfyUI's layer operations for a weight-storage dtype and a compute dtype.

ComfyUI builds its models with an `operations` namespace (`comfy.ops`): `disable_weight_init` when weights are
stored in the compute dtype, `manual_cast` when they are cast per layer at run time (fp8 storage, low-VRAM
partial loading). Newer ComfyUI picks between them (and fp8 matmul variants) with `pick_operations`; the
2024-03 copy has no such helper, so we fall back to the same rule by hand.
"""
from __future__ import annotations

import torch

import comfy.ops


def pick_operations(weight_dtype: torch.dtype, compute_dtype: torch.dtype, load_device: torch.device | None = None):
    picker = getattr(comfy.ops, "pick_operations", None)
    if picker is not None:
        try:
            return picker(weight_dtype, compute_dtype, load_device=load_device)
        except TypeError:  # older signatures without load_device
            return picker(weight_dtype, compute_dtype)
    if weight_dtype == compute_dtype:
        return comfy.ops.disable_weight_init
    return comfy.ops.manual_cast
