"""Configurations of the SUPIR modules, read from state-dict shapes (never from YAML or constants).

Follows the official configs in SUPIR/options/SUPIR_v0.yaml: GLVControl is a copy of SDXL's encoder half
(legacy=False, linear projections), the 12 connectors are sized by `LightGLVUNet.__init__` in
SUPIR/modules/SUPIR_v0.py. The widths of every tensor are taken from the checkpoint, so the full-size model and
the tiny test models load through the same code.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch

# Head size of SDXL's attention: shapes cannot tell it (heads x head size is all a weight shows), so it is a
# parameter; the official SDXL config uses num_head_channels 64. ZeroCrossAttn always uses 64
# (SUPIR_v0.py: `heads=query_dim//64, dim_head=64`).
SDXL_HEAD_CHANNELS = 64
ZERO_CROSS_ATTN_HEAD_CHANNELS = 64
ZERO_SFT_HIDDEN = 128  # SUPIR_v0.py ZeroSFT: nhidden = 128


def _shape(sd: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if key not in sd:
        raise KeyError(key)
    return tuple(sd[key].shape)


def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd for m in [rx.match(k)] if m}
    return sorted(found)


@dataclass(frozen=True)
class ControlConfig:
    """GLVControl's architecture (official argument names)."""

    in_channels: int
    model_channels: int
    channel_mult: tuple[int, ...]
    num_res_blocks: int
    attention_levels: tuple[bool, ...]  # per level: does each res block carry a SpatialTransformer
    transformer_depth: tuple[int, ...]  # per level (0 where no attention)
    transformer_depth_middle: int
    context_dim: int
    adm_in_channels: int
    num_head_channels: int = SDXL_HEAD_CHANNELS
    use_linear_in_transformer: bool = True

    @property
    def time_embed_dim(self) -> int:
        return self.model_channels * 4

    def feature_channels(self) -> list[int]:
        """Channels of the 10 control features c0..c9 (9 input blocks + middle block)."""
        chans = [self.model_channels]
        for level, mult in enumerate(self.channel_mult):
            chans += [mult * self.model_channels] * self.num_res_blocks
            if level != len(self.channel_mult) - 1:
                chans.append(mult * self.model_channels)
        return chans + [self.channel_mult[-1] * self.model_channels]

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], num_head_channels: int = SDXL_HEAD_CHANNELS,
                        prefix: str = "") -> "ControlConfig":
        """Read the adaptor's configuration from its keys (prefix stripped or given)."""
        p = prefix
        try:
            model_channels, in_channels = _shape(sd, f"{p}input_blocks.0.0.weight")[:2]
            adm_in_channels = _shape(sd, f"{p}label_emb.0.0.weight")[1]
        except KeyError as e:
            raise ValueError(f"GLVControl weights lack {e.args[0]!r}; the SUPIR file is incomplete") from None
        blocks = _indices(sd, rf"{re.escape(p)}input_blocks\.(\d+)\.")
        # Walk the input blocks the way the official constructor builds them: per level, num_res_blocks
        # ResBlocks (optionally with a transformer), then a Downsample except after the last level.
        levels: list[list[int]] = [[]]
        downsample_blocks = {i for i in blocks if f"{p}input_blocks.{i}.0.op.weight" in sd}
        for i in blocks[1:]:
            if i in downsample_blocks:
                levels.append([])
            else:
                levels[-1].append(i)
        counts = {len(lv) for lv in levels}
        if len(counts) != 1 or 0 in counts:
            raise ValueError(f"GLVControl input blocks have uneven levels {levels}; unsupported layout")
        channel_mult, attention, depth = [], [], []
        context_dim = 0
        for lv in levels:
            out_ch = _shape(sd, f"{p}input_blocks.{lv[0]}.0.out_layers.3.weight")[0]
            channel_mult.append(out_ch // model_channels)
            has_attn = f"{p}input_blocks.{lv[0]}.1.proj_in.weight" in sd
            attention.append(has_attn)
            if has_attn:
                depth.append(len(_indices(sd, rf"{re.escape(p)}input_blocks\.{lv[0]}\.1\.transformer_blocks\.(\d+)\.")))
                context_dim = _shape(sd, f"{p}input_blocks.{lv[0]}.1.transformer_blocks.0.attn2.to_k.weight")[1]
            else:
                depth.append(0)
        middle_depth = len(_indices(sd, rf"{re.escape(p)}middle_block\.1\.transformer_blocks\.(\d+)\."))
        if middle_depth:
            context_dim = _shape(sd, f"{p}middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
        linear = True
        if f"{p}middle_block.1.proj_in.weight" in sd:
            linear = len(_shape(sd, f"{p}middle_block.1.proj_in.weight")) == 2
        return cls(
            in_channels=in_channels, model_channels=model_channels, channel_mult=tuple(channel_mult),
            num_res_blocks=len(levels[0]), attention_levels=tuple(attention), transformer_depth=tuple(depth),
            transformer_depth_middle=middle_depth, context_dim=context_dim, adm_in_channels=adm_in_channels,
            num_head_channels=num_head_channels, use_linear_in_transformer=linear,
        )


@dataclass(frozen=True)
class ZeroSFTConfig:
    label_nc: int  # control feature width
    norm_nc: int  # skip width
    concat_channels: int  # decoder-state width (0: no concat, connector 11)


@dataclass(frozen=True)
class ZeroCrossAttnConfig:
    context_dim: int  # control feature width (keys/values)
    query_dim: int  # decoder-state width
    heads: int
    dim_head: int = ZERO_CROSS_ATTN_HEAD_CHANNELS


ConnectorConfig = ZeroSFTConfig | ZeroCrossAttnConfig


def connector_configs_from_state_dict(sd: Mapping[str, torch.Tensor]) -> list[ConnectorConfig]:
    """Configs of `project_modules` 0..N-1 from keys `<idx>.<param>` (prefix stripped)."""
    indices = _indices(sd, r"(\d+)\.")
    if indices != list(range(len(indices))) or not indices:
        raise ValueError(f"connector indices must run 0..N-1, found {indices}")
    out: list[ConnectorConfig] = []
    for i in indices:
        if f"{i}.attn.to_q.weight" in sd:
            inner, query_dim = _shape(sd, f"{i}.attn.to_q.weight")
            context_dim = _shape(sd, f"{i}.attn.to_k.weight")[1]
            dim_head = ZERO_CROSS_ATTN_HEAD_CHANNELS if inner % ZERO_CROSS_ATTN_HEAD_CHANNELS == 0 else inner
            out.append(ZeroCrossAttnConfig(context_dim=context_dim, query_dim=query_dim, heads=inner // dim_head,
                                           dim_head=dim_head))
        elif f"{i}.zero_conv.weight" in sd:
            norm_nc, label_nc = _shape(sd, f"{i}.zero_conv.weight")[:2]
            total = _shape(sd, f"{i}.zero_mul.weight")[0]
            out.append(ZeroSFTConfig(label_nc=label_nc, norm_nc=norm_nc, concat_channels=total - norm_nc))
        else:
            raise ValueError(f"connector {i} is neither ZeroSFT (zero_conv) nor ZeroCrossAttn (attn.to_q)")
    return out


@dataclass(frozen=True)
class EncoderConfig:
    """The VAE encoder's `ddconfig` (official argument names), read from shapes."""

    ch: int
    ch_mult: tuple[int, ...]
    num_res_blocks: int
    in_channels: int
    z_channels: int
    double_z: bool = True

    def ddconfig(self) -> dict:
        return {
            "double_z": self.double_z, "z_channels": self.z_channels, "resolution": 256,
            "in_channels": self.in_channels, "out_ch": 3, "ch": self.ch, "ch_mult": list(self.ch_mult),
            "num_res_blocks": self.num_res_blocks, "attn_resolutions": [], "dropout": 0.0,
        }

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], prefix: str = "") -> "EncoderConfig":
        p = prefix
        try:
            ch, in_channels = _shape(sd, f"{p}conv_in.weight")[:2]
            out = _shape(sd, f"{p}conv_out.weight")[0]
        except KeyError as e:
            raise ValueError(f"VAE encoder weights lack {e.args[0]!r}") from None
        levels = _indices(sd, rf"{re.escape(p)}down\.(\d+)\.")
        mult = []
        for lv in levels:
            w = _shape(sd, f"{p}down.{lv}.block.0.conv2.weight")[0]
            mult.append(w // ch)
        nres = len(_indices(sd, rf"{re.escape(p)}down\.0\.block\.(\d+)\."))
        return cls(ch=ch, ch_mult=tuple(mult), num_res_blocks=nres, in_channels=in_channels, z_channels=out // 2)


def decoder_config_from_state_dict(sd: Mapping[str, torch.Tensor], prefix: str = "decoder.") -> dict:
    """A ddconfig for ComfyUI's AutoencoderKL from the decoder's shapes (any SDXL-style KL VAE)."""
    p = prefix
    z_channels = _shape(sd, f"{p}conv_in.weight")[1]
    top = _shape(sd, f"{p}conv_in.weight")[0]
    out_ch, ch = _shape(sd, f"{p}conv_out.weight")[:2]
    levels = _indices(sd, rf"{re.escape(p)}up\.(\d+)\.")
    mult = [_shape(sd, f"{p}up.{lv}.block.0.conv2.weight")[0] // ch for lv in levels]
    nres = len(_indices(sd, rf"{re.escape(p)}up\.0\.block\.(\d+)\.")) - 1  # the decoder has one more per level
    if mult and top != mult[-1] * ch:
        raise ValueError(f"VAE decoder widths are inconsistent: conv_in {top}, levels {mult} x {ch}")
    return {
        "double_z": True, "z_channels": z_channels, "resolution": 256, "in_channels": 3, "out_ch": out_ch,
        "ch": ch, "ch_mult": mult, "num_res_blocks": nres, "attn_resolutions": [], "dropout": 0.0,
    }
