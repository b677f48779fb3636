"""The degradation-robust encoder and the stage-1 path: follows SUPIR/models/SUPIR_model.py
(`encode_first_stage_with_denoise`, `decode_first_stage`, `encode_first_stage`, `batchify_sample` steps 2-4).

The degradation-robust encoder is a second VAE encoder (`first_stage_model.denoise_encoder.*` in the SUPIR file)
that shares the SDXL VAE's frozen `quant_conv` and decoder. The SDXL VAE itself is ComfyUI's (`VAE.first_stage_model`,
an AutoencoderKL with `encoder`, `quant_conv`, `post_quant_conv`, `decoder`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from comfy.ldm.modules.diffusionmodules.model import Encoder

from .config import EncoderConfig

SCALE_FACTOR = 0.13025  # SDXL's latent scale (official config `scale_factor`)


class DegradationRobustEncoder(nn.Module):
    """Holds `denoise_encoder` under its official name so `first_stage_model.denoise_encoder.*` keys load."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.config = cfg
        self.denoise_encoder = Encoder(**cfg.ddconfig())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.denoise_encoder(x)


def _moments(h: torch.Tensor, quant_conv: nn.Module | None) -> tuple[torch.Tensor, torch.Tensor]:
    moments = quant_conv(h) if quant_conv is not None else h
    mean, logvar = torch.chunk(moments, 2, dim=1)
    return mean, torch.clamp(logvar, -30.0, 20.0)  # DiagonalGaussianDistribution's clamp


Runner = Callable[[nn.Module, torch.Tensor], torch.Tensor]  # runs an Encoder/Decoder on a tensor


def direct(net: nn.Module, t: torch.Tensor) -> torch.Tensor:
    return net(t)


def encode_control_latent(encoder: DegradationRobustEncoder, quant_conv: nn.Module | None,
                          x: torch.Tensor, run: Runner = direct) -> torch.Tensor:
    """0.13025 * mode(quant_conv(denoise_encoder(x))) for x in [-1, 1] NCHW (official step 2).

    `run(net, x)` evaluates the encoder network (the tiled VAE passes its own)."""
    mean, _ = _moments(run(encoder.denoise_encoder, x), quant_conv)
    return SCALE_FACTOR * mean


def decode_latent(vae_model: nn.Module, z: torch.Tensor, run: Runner = direct) -> torch.Tensor:
    """decoder(post_quant_conv(z / 0.13025)), unclamped, in [-1, 1] space (official decode_first_stage)."""
    z = z / SCALE_FACTOR
    pqc = getattr(vae_model, "post_quant_conv", None)
    if pqc is not None:
        z = pqc(z)
    return run(vae_model.decoder, z)


def encode_center_latent(vae_model: nn.Module, x: torch.Tensor, eps: torch.Tensor | None = None,
                         generator: torch.Generator | None = None, run: Runner = direct) -> torch.Tensor:
    """0.13025 * sample(encoder(x)): the restoration-guidance target (official encode_first_stage).

    The official sample draws `torch.randn` on the CPU; `eps` replays a recorded draw, `generator` seeds one.
    """
    mean, logvar = _moments(run(vae_model.encoder, x), getattr(vae_model, "quant_conv", None))
    if eps is None:
        eps = torch.randn(mean.shape, generator=generator, device="cpu", dtype=torch.float32)
    std = torch.exp(0.5 * logvar)
    return SCALE_FACTOR * (mean + std * eps.to(mean.device, mean.dtype))


@dataclass
class Stage1Result:
    control_latent: torch.Tensor  # control latent for GLVControl (scaled)
    stage1: torch.Tensor  # decoded control latent, [-1, 1] NCHW, unclamped
    center_latent: torch.Tensor  # restoration-guidance target (scaled)


def run_stage1(encoder: DegradationRobustEncoder, vae_model: nn.Module, x: torch.Tensor,
               eps: torch.Tensor | None = None, generator: torch.Generator | None = None,
               encode: Runner = direct, decode: Runner = direct) -> Stage1Result:
    """Official batchify_sample steps 2-4 on x in [-1, 1] NCHW; `encode`/`decode` run the VAE networks."""
    control = encode_control_latent(encoder, getattr(vae_model, "quant_conv", None), x, run=encode)
    stage1 = decode_latent(vae_model, control, run=decode)
    center = encode_center_latent(vae_model, stage1, eps=eps, generator=generator, run=encode)
    return Stage1Result(control, stage1, center)
