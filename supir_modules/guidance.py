"""Classifier-free guidance as the official SUPIR samplers use it (sgm guiders.py VanillaCFG / LinearCFG).

One batched network call on [uncond; cond], then D = D_u + w (D_c - D_u). With linear CFG the weight moves
with the noise level: w(sigma) = (scale - scale_min) * sigma / 14.6146 + scale_min, where the official
`batchify_sample` sets scale = cfg_scale_start and scale_min = cfg_scale, so guidance grows from the start
value at high noise to cfg_scale at the end.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

SIGMA_MAX = 14.6146  # the constant of guiders.py and sampling.py (not the table's 14.614641...)


@dataclass(frozen=True)
class CFGSchedule:
    cfg_scale: float = 4.0
    cfg_scale_start: float = 1.0
    linear: bool = True

    def weight(self, sigma: float) -> float:
        if not self.linear:
            return self.cfg_scale
        return (self.cfg_scale_start - self.cfg_scale) * sigma / SIGMA_MAX + self.cfg_scale


@dataclass(frozen=True)
class ControlSchedule:
    control_scale: float = 1.0
    control_scale_start: float = 0.0
    linear: bool = False

    def scale(self, sigma: float) -> float:
        """sampling.py: s = (sigma_i / sigma_max) * (start - s) + s, with the un-churned sigma_i."""
        if not self.linear:
            return self.control_scale
        return (sigma / SIGMA_MAX) * (self.control_scale_start - self.control_scale) + self.control_scale


@dataclass
class Conditioning:
    """Tensors of one side of CFG: SDXL cross-attention context [B,77,2048] and vector [B,2816]."""

    crossattn: torch.Tensor
    vector: torch.Tensor


@dataclass
class CFGInputs:
    """The network's inputs besides x for one CFG call, batched [uncond; cond] once per sampling run (not per
    step): context [2B,77,2048], vector [2B,2816] and the control latent twice [2B,4,h,w]."""

    context: torch.Tensor
    y: torch.Tensor
    hint: torch.Tensor


def cfg_inputs(cond: Conditioning, uncond: Conditioning, hint: torch.Tensor,
               device: torch.device | str | None = None) -> CFGInputs:
    """Both halves carry the same control latent `hint` (official batchify_sample)."""
    device = hint.device if device is None else device
    return CFGInputs(torch.cat([uncond.crossattn, cond.crossattn]).to(device),
                     torch.cat([uncond.vector, cond.vector]).to(device),
                     torch.cat([hint, hint]).to(device))


def cfg_denoise(denoise: Callable[..., torch.Tensor], x: torch.Tensor, sigma: float, inputs: CFGInputs,
                control_scale: float, cfg: CFGSchedule) -> torch.Tensor:
    """D(x, sigma) with CFG in one batched call on [uncond; cond] (sgm VanillaCFG / LinearCFG).

    `denoise(x, sigma, context, y, hint, control_scale)` is the discrete eps denoiser around the SUPIR network;
    `sigma` is a host float, so nothing here waits on the device.
    """
    d = denoise(torch.cat([x, x]), sigma, inputs.context, inputs.y, inputs.hint, control_scale)
    d_u, d_c = d.chunk(2)
    return d_u + cfg.weight(sigma) * (d_c - d_u)
