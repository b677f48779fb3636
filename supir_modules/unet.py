"""The SUPIR UNet forward over ComfyUI's SDXL `UNetModel`: follows LightGLVUNet.forward in
SUPIR/modules/SUPIR_v0.py (official).

The user's UNet is run block by block, untouched (its weights, LoRA patches, fp8 storage and attention are
ComfyUI's); the 12 connectors act only in the decoder:
- after the middle block: connector 11 on c9 (no concat);
- output block j (0..8): connector on (control c[8-j], skip, decoder state) replaces SDXL's concat;
- output blocks with an Upsample (2 and 5): ResBlock + transformer, then a ZeroCrossAttn on the same control
  feature, then the Upsample.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from comfy.ldm.modules.diffusionmodules.openaimodel import Upsample, forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding


def context_dim(unet: nn.Module) -> int | None:
    """Cross-attention (text context) width of a ComfyUI UNetModel, which keeps it only in its transformers."""
    return next((m.attn2.to_k.in_features for m in unet.modules() if hasattr(m, "attn2")), None)


def check_connectors_fit(unet: nn.Module, connectors: nn.ModuleList, n_control: int) -> None:
    """Raise ValueError when the connectors were made for another UNet layout."""
    n_up = sum(1 for m in unet.output_blocks if isinstance(m[-1], Upsample))
    expected = len(unet.output_blocks) + 1 + n_up
    if len(connectors) != expected:
        raise ValueError(f"the SUPIR connectors ({len(connectors)}) do not fit this UNet, which needs {expected}: "
                         "use an SDXL base model (or fine-tune) with SUPIR-v0Q/v0F")
    if n_control != len(unet.output_blocks) + 1:
        raise ValueError(f"{n_control} control features for a UNet with {len(unet.output_blocks)} output blocks")


def supir_unet_forward(
    unet: nn.Module,
    x: torch.Tensor,
    timesteps: torch.Tensor,
    context: torch.Tensor,
    y: torch.Tensor,
    control: Sequence[torch.Tensor],
    connectors: nn.ModuleList,
    control_scale: float | torch.Tensor = 1.0,
    transformer_options: dict | None = None,
) -> torch.Tensor:
    """eps prediction of the SDXL `unet` (a ComfyUI UNetModel) with SUPIR control applied in its decoder."""
    opts = {} if transformer_options is None else transformer_options
    opts["original_shape"] = list(x.shape)
    opts["transformer_index"] = 0
    dtype = control[0].dtype  # as the official forward: everything in the control features' dtype
    x, context, y = x.to(dtype), context.to(dtype), y.to(dtype)

    emb = unet.time_embed(timestep_embedding(timesteps, unet.model_channels, repeat_only=False).to(dtype))
    emb = emb + unet.label_emb(y)

    hs = []
    h = x
    for i, module in enumerate(unet.input_blocks):
        opts["block"] = ("input", i)
        h = forward_timestep_embed(module, h, emb, context, opts)
        hs.append(h)
    opts["block"] = ("middle", 0)
    h = forward_timestep_embed(unet.middle_block, h, emb, context, opts)

    a = len(connectors) - 1
    k = len(control) - 1
    h = connectors[a](control[k], h, control_scale=control_scale)
    a -= 1
    k -= 1
    for i, module in enumerate(unet.output_blocks):
        opts["block"] = ("output", i)
        skip = hs.pop()
        h = connectors[a](control[k], skip, h, control_scale=control_scale)
        a -= 1
        output_shape = hs[-1].shape if hs else None
        if isinstance(module[-1], Upsample):
            h = forward_timestep_embed(module[:-1], h, emb, context, opts)
            h = connectors[a](control[k], h, control_scale=control_scale)
            a -= 1
            h = module[-1](h, output_shape=output_shape)
        else:
            h = forward_timestep_embed(module, h, emb, context, opts, output_shape)
        k -= 1
    return unet.out(h.type(x.dtype))
