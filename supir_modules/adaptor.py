"""GLVControl, ZeroSFT and ZeroCrossAttn: follows SUPIR/modules/SUPIR_v0.py (official, commit bda91af).

Built from ComfyUI's own blocks (`ResBlock`, `SpatialTransformer`, `Downsample`, `CrossAttention`) and an
`operations` namespace, so weight storage (fp8, low-VRAM casting) and attention kernels are ComfyUI's.
Attribute names are the official ones, so `model.control_model.*` and `project_modules.*` keys load unchanged.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from einops import rearrange

import comfy.ops
from comfy.ldm.modules.attention import CrossAttention, SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import (
    Downsample,
    ResBlock,
    TimestepEmbedSequential,
    forward_timestep_embed,
)
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

from .config import ConnectorConfig, ControlConfig, ZeroCrossAttnConfig, ZeroSFTConfig


def _group_norm_32(operations):
    """sgm's `normalization()`: GroupNorm(32, affine, eps 1e-5) evaluated in float32 (its GroupNorm32)."""

    class GroupNorm32(operations.GroupNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return super().forward(x.float()).to(x.dtype)

    return GroupNorm32


def _is_one(control_scale: float | torch.Tensor) -> bool:
    """A host control scale of exactly 1 (a device tensor is never inspected: that would wait on the device)."""
    return not isinstance(control_scale, torch.Tensor) and control_scale == 1


class ZeroSFT(nn.Module):
    """Spatial feature transform of a skip feature by a control feature (SUPIR_v0.py, ZeroSFT).

    out = GN(cat[h_o, h + conv1x1(c)]) * (1 + gamma(c)) + beta(c), blended with the untouched
    cat[h_o, h] by the control scale.
    """

    def __init__(self, label_nc: int, norm_nc: int, concat_channels: int = 0, nhidden: int = 128,
                 dtype=None, device=None, operations=comfy.ops.disable_weight_init):
        super().__init__()
        width = norm_nc + concat_channels
        self.param_free_norm = _group_norm_32(operations)(32, width, eps=1e-5, affine=True, dtype=dtype, device=device)
        self.mlp_shared = nn.Sequential(
            operations.Conv2d(label_nc, nhidden, kernel_size=3, padding=1, dtype=dtype, device=device), nn.SiLU()
        )
        self.zero_mul = operations.Conv2d(nhidden, width, kernel_size=3, padding=1, dtype=dtype, device=device)
        self.zero_add = operations.Conv2d(nhidden, width, kernel_size=3, padding=1, dtype=dtype, device=device)
        self.zero_conv = operations.Conv2d(label_nc, norm_nc, kernel_size=1, padding=0, dtype=dtype, device=device)
        self.pre_concat = concat_channels != 0

    def forward(self, c: torch.Tensor, h: torch.Tensor, h_ori: torch.Tensor | None = None,
                control_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        concat = h_ori is not None and self.pre_concat
        # At control scale exactly 1 the blend below is h * 1 + h_raw * 0 = h: skip it and the concat it needs
        # (the official code computes them anyway; this saves the largest activation of the step).
        full = _is_one(control_scale)
        # Concat order [decoder state, skip] as SDXL's cat([h, hs.pop()]).
        h_raw = None if full else (torch.cat([h_ori, h], dim=1) if concat else h)
        h = h + self.zero_conv(c)
        if concat:
            h = torch.cat([h_ori, h], dim=1)
        actv = self.mlp_shared(c)
        gamma = self.zero_mul(actv)
        beta = self.zero_add(actv)
        h = self.param_free_norm(h) * (gamma + 1) + beta
        if h_ori is not None and not self.pre_concat:
            h = torch.cat([h_ori, h], dim=1)
        if full:
            return h
        return h * control_scale + h_raw * (1 - control_scale)


class ZeroCrossAttn(nn.Module):
    """Cross-attention from the decoder state (queries) to a control feature (SUPIR_v0.py, ZeroCrossAttn)."""

    def __init__(self, context_dim: int, query_dim: int, heads: int | None = None, dim_head: int = 64,
                 dtype=None, device=None, operations=comfy.ops.disable_weight_init):
        super().__init__()
        heads = query_dim // dim_head if heads is None else heads
        self.attn = CrossAttention(query_dim=query_dim, context_dim=context_dim, heads=heads, dim_head=dim_head,
                                   dtype=dtype, device=device, operations=operations)
        norm = _group_norm_32(operations)
        self.norm1 = norm(32, query_dim, eps=1e-5, affine=True, dtype=dtype, device=device)
        self.norm2 = norm(32, context_dim, eps=1e-5, affine=True, dtype=dtype, device=device)

    def forward(self, context: torch.Tensor, x: torch.Tensor, control_scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        x_in = x
        b, c, h, w = x.shape
        q = rearrange(self.norm1(x), "b c h w -> b (h w) c").contiguous()
        kv = rearrange(self.norm2(context), "b c h w -> b (h w) c").contiguous()
        out = self.attn(q, context=kv)
        out = rearrange(out, "b (h w) c -> b c h w", h=h, w=w)
        return x_in + (out if _is_one(control_scale) else out * control_scale)


def build_connectors(configs: Sequence[ConnectorConfig], dtype=None, device=None,
                     operations=comfy.ops.disable_weight_init) -> nn.ModuleList:
    """The 12 `project_modules` in official order (ZeroSFT with ZeroCrossAttn inserted at 3 and 7)."""
    mods = nn.ModuleList()
    for cfg in configs:
        if isinstance(cfg, ZeroSFTConfig):
            mods.append(ZeroSFT(cfg.label_nc, cfg.norm_nc, cfg.concat_channels, dtype=dtype, device=device,
                                operations=operations))
        elif isinstance(cfg, ZeroCrossAttnConfig):
            mods.append(ZeroCrossAttn(cfg.context_dim, cfg.query_dim, cfg.heads, cfg.dim_head, dtype=dtype,
                                      device=device, operations=operations))
        else:
            raise TypeError(f"unknown connector config {cfg!r}")
    return mods


class GLVControl(nn.Module):
    """SDXL's encoder half with its own embeddings and a zero-initialised hint conv (SUPIR_v0.py, GLVControl)."""

    def __init__(self, cfg: ControlConfig, dtype=None, device=None, operations=comfy.ops.disable_weight_init):
        super().__init__()
        self.config = cfg
        self.model_channels = mc = cfg.model_channels
        ted = cfg.time_embed_dim
        kw = dict(dtype=dtype, device=device)
        self.time_embed = nn.Sequential(operations.Linear(mc, ted, **kw), nn.SiLU(), operations.Linear(ted, ted, **kw))
        self.label_emb = nn.Sequential(nn.Sequential(
            operations.Linear(cfg.adm_in_channels, ted, **kw), nn.SiLU(), operations.Linear(ted, ted, **kw)))

        def transformer(ch: int, depth: int) -> nn.Module:
            return SpatialTransformer(ch, ch // cfg.num_head_channels, cfg.num_head_channels, depth=depth,
                                      context_dim=cfg.context_dim, use_linear=cfg.use_linear_in_transformer,
                                      use_checkpoint=False, operations=operations, **kw)

        def resblock(ch: int, out: int | None = None) -> nn.Module:
            return ResBlock(ch, ted, 0.0, out_channels=out, dims=2, use_checkpoint=False,
                            use_scale_shift_norm=False, operations=operations, **kw)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(
            operations.conv_nd(2, cfg.in_channels, mc, 3, padding=1, **kw))])
        ch = mc
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers = [resblock(ch, mult * mc)]
                ch = mult * mc
                if cfg.attention_levels[level]:
                    layers.append(transformer(ch, cfg.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(
                    Downsample(ch, True, dims=2, out_channels=ch, operations=operations, **kw)))
        middle = [resblock(ch)]
        if cfg.transformer_depth_middle:
            middle.append(transformer(ch, cfg.transformer_depth_middle))
        middle.append(resblock(ch))
        self.middle_block = TimestepEmbedSequential(*middle)
        self.input_hint_block = TimestepEmbedSequential(
            operations.conv_nd(2, cfg.in_channels, mc, 3, padding=1, **kw))

    def forward(self, hint: torch.Tensor, timesteps: torch.Tensor, xt: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor, transformer_options: dict | None = None) -> list[torch.Tensor]:
        """Control features c0..c9 for noisy input `xt` (c_in-scaled) guided by the control latent `hint`.

        As the official forward: inputs are cast to the hint's dtype, the hint conv output is added after
        input block 0, and the 9 input-block outputs plus the middle-block output are returned.
        """
        opts = {} if transformer_options is None else transformer_options
        xt, context, y = xt.to(hint.dtype), context.to(hint.dtype), y.to(hint.dtype)
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(hint.dtype))
        emb = emb + self.label_emb(y)
        guided_hint = forward_timestep_embed(self.input_hint_block, hint, emb, context, opts)
        hs = []
        h = xt
        for i, module in enumerate(self.input_blocks):
            h = forward_timestep_embed(module, h, emb, context, opts)
            if i == 0:
                h = h + guided_hint
            hs.append(h)
        hs.append(forward_timestep_embed(self.middle_block, h, emb, context, opts))
        return hs
