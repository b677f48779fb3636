"""GroupNorm-synchronised tiled VAE encode/decode: follows SUPIR/utils/tilevae.py (the multidiffusion-upscaler
"Tiled VAE" that SUPIR installs with `init_tile_vae(encoder_tile_size=512, decoder_tile_size=64)`, fast modes off).

The input is split into tiles with a margin of `pad` pixels (split_tiles); every tile runs through ComfyUI's
Encoder/Decoder (comfy.ldm.modules.diffusionmodules.model) one layer at a time. At each GroupNorm all tiles
pause, their per-tile group mean/variance are averaged weighted by pixel count, and every tile is normalised with
those shared statistics, so the stitched result has no seams. Each tile's valid region is then cropped and placed.
As in the official code, the mid-block attention runs on each (padded) tile with the shared normalisation, and
the shared statistics are the pixel-weighted mean of the padded tiles' means and variances (the spread between
tile means is not counted, overlaps count twice): the result is close to, not identical with, the untiled VAE.
`valid_region_stats=True` (not official) pools each tile's own region instead, which reproduces the untiled
statistics up to the tiles' border error. Tiles waiting at a GroupNorm are parked on `park_device` (default: the
input's device; the official code parks them on the CPU) to bound accelerator memory.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from comfy import model_management
from comfy.ldm.modules.diffusionmodules.model import AttnBlock, ResnetBlock

logger = logging.getLogger(__name__)

ENCODER_TILE_SIZE = 512  # pixels (official init_tile_vae default)
ENCODER_PAD = 32  # pixels (official VAEHook: pad 32 for the encoder)
DECODER_TILE_SIZE = 64  # latent pixels
DECODER_PAD = 11  # latent pixels
MIN_ENCODER_TILE = 16
ENCODER_ALIGN = 8  # encoder tile sizes and pads: multiples of 8 px (and of the VAE's scale)
MIN_DECODER_TILE = 8

Callback = Callable[[int, int], None]  # (steps done, steps in all)


# --- the network as a flat program --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Step:
    kind: str  # call | silu | tanh | save | add | norm | attn
    module: nn.Module | None = None


def _resnet_steps(block: nn.Module, where: str) -> list[_Step]:
    if not isinstance(block, ResnetBlock) or type(block).forward is not ResnetBlock.forward:
        raise TypeError(f"tiled VAE: {where} is {type(block).__name__}, not ComfyUI's ResnetBlock; "
                        "run this VAE untiled")
    shortcut = None
    if block.in_channels != block.out_channels:
        shortcut = block.conv_shortcut if block.use_conv_shortcut else block.nin_shortcut
    return [_Step("save", shortcut), _Step("norm", block.norm1), _Step("silu"), _Step("call", block.conv1),
            _Step("norm", block.norm2), _Step("silu"), _Step("call", block.conv2), _Step("add")]


def _attn_steps(block: nn.Module, where: str) -> list[_Step]:
    if not isinstance(block, AttnBlock) or type(block).forward is not AttnBlock.forward:
        raise TypeError(f"tiled VAE: {where} is {type(block).__name__}, not ComfyUI's AttnBlock; "
                        "run this VAE untiled")
    return [_Step("save"), _Step("norm", block.norm), _Step("attn", block), _Step("add")]


def _level_steps(level: nn.Module, n_blocks: int, name: str) -> list[_Step]:
    steps: list[_Step] = []
    for i in range(n_blocks):
        steps += _resnet_steps(level.block[i], f"{name}.block.{i}")
        if len(level.attn) > 0:
            steps += _attn_steps(level.attn[i], f"{name}.attn.{i}")
    return steps


def _mid_steps(net: nn.Module) -> list[_Step]:
    return (_resnet_steps(net.mid.block_1, "mid.block_1") + _attn_steps(net.mid.attn_1, "mid.attn_1")
            + _resnet_steps(net.mid.block_2, "mid.block_2"))


def _check_net(net: nn.Module, what: str, levels_attr: str) -> None:
    if not isinstance(net, nn.Module) or not hasattr(net, levels_attr) or not hasattr(net, "mid"):
        raise TypeError(f"expected ComfyUI's VAE {what} (comfy.ldm.modules.diffusionmodules.model.{what.title()}), "
                        f"got {type(net).__name__}")
    if not isinstance(net.conv_in, nn.Conv2d):
        raise TypeError(f"{type(net).__name__}.conv_in is {type(net.conv_in).__name__}: only 2D (image) VAEs can be "
                        "tiled")


def _encoder_program(enc: nn.Module) -> list[_Step]:
    """The steps of Encoder.forward in order (official build_task_queue with is_decoder=False)."""
    _check_net(enc, "encoder", "down")
    steps = [_Step("call", enc.conv_in)]
    for i in range(enc.num_resolutions):
        steps += _level_steps(enc.down[i], enc.num_res_blocks, f"down.{i}")
        if i != enc.num_resolutions - 1:
            steps.append(_Step("call", enc.down[i].downsample))
    steps += _mid_steps(enc)
    return steps + [_Step("norm", enc.norm_out), _Step("silu"), _Step("call", enc.conv_out)]


def _decoder_program(dec: nn.Module) -> list[_Step]:
    """The steps of Decoder.forward in order (official build_task_queue with is_decoder=True)."""
    _check_net(dec, "decoder", "up")
    steps = [_Step("call", dec.conv_in)] + _mid_steps(dec)
    for i in reversed(range(dec.num_resolutions)):
        steps += _level_steps(dec.up[i], dec.num_res_blocks + 1, f"up.{i}")
        if i != 0:
            steps.append(_Step("call", dec.up[i].upsample))
    if getattr(dec, "give_pre_end", False):
        return steps
    steps += [_Step("norm", dec.norm_out), _Step("silu"), _Step("call", dec.conv_out)]
    if getattr(dec, "tanh_out", False):
        steps.append(_Step("tanh"))
    return steps


def _attention(block: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """AttnBlock.forward minus its norm and residual: single-head attention over this tile's tokens (as the
    official xformer_attn_forward), with the block's own attention kernel."""
    return block.proj_out(block.optimized_attention(block.q(h), block.k(h), block.v(h)))


# --- synchronised GroupNorm ---------------------------------------------------------------------------------
def _group_stats(h: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and group: biased variance and mean, in float32 ([B, groups] each)."""
    var, mean = torch.var_mean(h.float().reshape(h.shape[0], groups, -1), dim=2, unbiased=False)
    return var, mean


def _combine(stats: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Official GroupNormParam.summary: pixel-count-weighted average of the padded tiles' variances and means
    (the spread between tile means is not counted, and overlapping margins count twice)."""
    total = sum(p for _, _, p in stats)
    var = sum(v * (p / total) for v, _, p in stats)
    mean = sum(m * (p / total) for _, m, p in stats)
    return var, mean


def _pool(stats: list[tuple[torch.Tensor, torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Law of total variance over disjoint parts: the statistics of their union."""
    total = sum(p for _, _, p in stats)
    mean = sum(m * (p / total) for _, m, p in stats)
    var = sum((v + (m - mean) ** 2) * (p / total) for v, m, p in stats)
    return var, mean


def _apply_group_norm(norm: nn.GroupNorm, h: torch.Tensor, var: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """GroupNorm of `h` with the given statistics and the module's affine weights (in float32 for half inputs)."""
    b, c = h.shape[:2]
    rstd = torch.rsqrt(var.to(h.device) + norm.eps)  # [B, groups], float32
    scale = rstd.repeat_interleave(c // norm.num_groups, dim=1)  # per channel
    shift = -mean.to(h.device).repeat_interleave(c // norm.num_groups, dim=1) * scale
    if norm.weight is not None:
        weight = norm.weight.to(h.device, torch.float32)
        scale, shift = scale * weight, shift * weight
    if norm.bias is not None:
        shift = shift + norm.bias.to(h.device, torch.float32)
    x = h if h.dtype in (torch.float32, torch.float64) else h.float()
    out = torch.addcmul(shift.to(x.dtype)[..., None, None], x, scale.to(x.dtype)[..., None, None])
    return out.to(h.dtype)


# --- tiles --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Span:
    """One tile along one axis, in input pixels: the padded input [lo, hi) and the part it fills [out_lo, out_hi)."""
    lo: int
    hi: int
    out_lo: int
    out_hi: int


def _best_tile_size(lower: int, upper: int, align: int) -> int:
    """Round `lower` up to a multiple of 32, 16, ... (at least `align`) that stays <= upper (official
    get_best_tile_size)."""
    divider = 32
    while divider >= max(2, align):
        candidate = lower if lower % divider == 0 else lower - lower % divider + divider
        if candidate <= upper:
            return candidate
        divider //= 2
    return lower


def _split_axis(length: int, tile: int, pad: int, align: int) -> list[_Span]:
    """Official split_tiles along one axis: equal tiles after the outer margins, each padded by `pad`."""
    count = max(math.ceil((length - 2 * pad) / tile), 1)
    size = _best_tile_size(math.ceil((length - 2 * pad) / count), tile, align)
    spans = []
    for i in range(count):
        start, end = pad + i * size, min(pad + (i + 1) * size, length)
        spans.append(_Span(max(0, start - pad), min(length, end + pad),
                           start if start > pad else 0, end if end < length - pad else length))
    return spans


@dataclass
class _TileState:
    rows: _Span
    cols: _Span
    h: torch.Tensor | None
    res: torch.Tensor | None = None
    pc: int = 0  # index of the next step


def _move(state: _TileState, device: torch.device) -> None:
    same = state.res is state.h  # an identity residual: move it once
    state.h = state.h.to(device)
    if state.res is not None:
        state.res = state.h if same else state.res.to(device)


def _check_interrupt() -> None:
    check = getattr(model_management, "throw_exception_if_processing_interrupted", None)
    if check is not None:
        check()


def _run_step(step: _Step, state: _TileState) -> None:
    h = state.h
    if step.kind == "call":
        state.h = step.module(h)
    elif step.kind == "silu":
        state.h = F.silu(h)
    elif step.kind == "tanh":
        state.h = torch.tanh(h)
    elif step.kind == "save":
        state.res = h if step.module is None else step.module(h)
    elif step.kind == "add":
        state.h, state.res = state.res + h, None
    elif step.kind == "attn":
        state.h = _attention(step.module, h)
    else:
        raise AssertionError(f"unexpected step {step.kind!r}")


def _valid(h: torch.Tensor, st: _TileState) -> torch.Tensor:
    """The part of a tile's activation `h` (at any layer) that lies in the tile's own output region."""
    def cut(n: int, span: _Span) -> slice:
        size = span.hi - span.lo  # h spans the padded input span at n / size of the input's resolution
        return slice(n * (span.out_lo - span.lo) // size, n * (span.out_hi - span.lo) // size)
    return h[:, :, cut(h.shape[2], st.rows), cut(h.shape[3], st.cols)]


@torch.no_grad()
def _run_tiled(program: list[_Step], x: torch.Tensor, rows: list[_Span], cols: list[_Span],
               scale: Callable[[int], int], device: torch.device, park: torch.device, valid_region_stats: bool,
               callback: Callback | None) -> torch.Tensor:
    """Runs every tile through `program`, pausing all of them at each GroupNorm; returns the stitched output."""
    states = [_TileState(r, c, x[:, :, r.lo:r.hi, c.lo:c.hi]) for r in rows for c in cols]
    n_norms = sum(step.kind == "norm" for step in program)
    total, done = len(states) * (n_norms + 1), 0
    shared: tuple[torch.Tensor, torch.Tensor] | None = None
    result: torch.Tensor | None = None
    for _ in range(n_norms + 1):
        collected = []
        for st in states:
            _check_interrupt()
            _move(st, device)
            if shared is not None:  # resume at the GroupNorm every tile paused at
                st.h = _apply_group_norm(program[st.pc].module, st.h, *shared)
                st.pc += 1
            while st.pc < len(program) and program[st.pc].kind != "norm":
                _run_step(program[st.pc], st)
                st.pc += 1
            if st.pc < len(program):
                part = _valid(st.h, st) if valid_region_stats else st.h
                var, mean = _group_stats(part, program[st.pc].module.num_groups)
                collected.append((var, mean, part.shape[2] * part.shape[3]))
                _move(st, park)
            else:
                result = _place(result, st, scale, x)
            done += 1
            if callback is not None:
                callback(done, total)
        if collected:
            shared = _pool(collected) if valid_region_stats else _combine(collected)
    return result


def _place(result: torch.Tensor | None, st: _TileState, scale: Callable[[int], int],
           x: torch.Tensor) -> torch.Tensor:
    """Writes the tile's valid region into the (lazily allocated) output on x's device."""
    if result is None:
        size = (x.shape[0], st.h.shape[1], scale(x.shape[2]), scale(x.shape[3]))
        result = torch.zeros(size, dtype=st.h.dtype, device=x.device)
    r, c = st.rows, st.cols
    result[:, :, scale(r.out_lo):scale(r.out_hi), scale(c.out_lo):scale(c.out_hi)] = _valid(st.h, st).to(x.device)
    st.h = None
    return result


# --- public API ---------------------------------------------------------------------------------------------
def _check_int(name: str, value: object, minimum: int, multiple: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum or value % multiple:
        rule = f">= {minimum}" + (f" and a multiple of {multiple}" if multiple > 1 else "")
        raise ValueError(f"{name}={value} is invalid: it must be {rule}")
    return value


def _check_input(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{what} must be an NCHW tensor, got {shape}")


def _device_of(net: nn.Module, x: torch.Tensor) -> torch.device:
    param = next(net.parameters(), None)
    return param.device if param is not None else x.device


def _tiled(net: nn.Module, program: list[_Step], x: torch.Tensor, tile_size: int, pad: int, align: int,
           scale: Callable[[int], int], park_device: torch.device | str | None, valid_region_stats: bool,
           callback: Callback | None, what: str) -> torch.Tensor:
    height, width = x.shape[2:]
    device = _device_of(net, x)
    if max(height, width) <= 2 * pad + tile_size:  # fits one padded tile (official VAEHook.__call__)
        return net(x.to(device)).to(x.device)
    rows, cols = _split_axis(height, tile_size, pad, align), _split_axis(width, tile_size, pad, align)
    logger.info("tiled VAE %s: %dx%d input in %dx%d tiles (tile %d, pad %d)", what, height, width, len(rows),
                len(cols), tile_size, pad)
    park = torch.device(park_device) if park_device is not None else x.device
    return _run_tiled(program, x, rows, cols, scale, device, park, valid_region_stats, callback)


@torch.no_grad()
def tiled_encode(encoder: nn.Module, x: torch.Tensor, tile_size: int = ENCODER_TILE_SIZE, pad: int = ENCODER_PAD,
                 *, park_device: torch.device | str | None = None, valid_region_stats: bool = False,
                 callback: Callback | None = None) -> torch.Tensor:
    """encoder(x) (the moments before quant_conv) computed in tiles of `tile_size` pixels padded by `pad`.

    Runs on the encoder's device and returns on x's device; tiles waiting at a GroupNorm are kept on
    `park_device` (default x's device). Inputs that fit one padded tile go through the encoder directly.
    `valid_region_stats=False` combines GroupNorm statistics as the official code does (whole padded tiles,
    averaged variances); True pools each tile's own region with the law of total variance, which gives the
    untiled statistics up to the tiles' border error (not the official behaviour, but closer to untiled).
    `callback(done, total)` reports progress.
    """
    program = _encoder_program(encoder)
    factor = 2 ** (encoder.num_resolutions - 1)  # 8 for SDXL's VAE
    align = max(ENCODER_ALIGN, factor)  # tile edges must fall on the latent grid
    _check_int("encoder tile_size", tile_size, max(MIN_ENCODER_TILE, align), align)
    _check_int("encoder pad", pad, 0, align)
    _check_input(x, "tiled_encode input")
    if x.shape[2] % factor or x.shape[3] % factor:
        raise ValueError(f"tiled_encode input is {x.shape[2]}x{x.shape[3]} px: height and width must be multiples "
                         f"of {factor}; crop or resize the image first")
    return _tiled(encoder, program, x, tile_size, pad, align, lambda v: v // factor, park_device,
                  valid_region_stats, callback, "encode")


@torch.no_grad()
def tiled_decode(decoder: nn.Module, z: torch.Tensor, tile_size: int = DECODER_TILE_SIZE, pad: int = DECODER_PAD,
                 *, park_device: torch.device | str | None = None, valid_region_stats: bool = False,
                 callback: Callback | None = None) -> torch.Tensor:
    """decoder(z) (z already through post_quant_conv) computed in tiles of `tile_size` latent pixels padded by `pad`.

    Device handling, `valid_region_stats` and `callback` as in `tiled_encode`.
    """
    program = _decoder_program(decoder)
    factor = 2 ** (decoder.num_resolutions - 1)
    _check_int("decoder tile_size", tile_size, MIN_DECODER_TILE)
    _check_int("decoder pad", pad, 0)
    _check_input(z, "tiled_decode input")
    return _tiled(decoder, program, z, tile_size, pad, 1, lambda v: v * factor, park_device, valid_region_stats,
                  callback, "decode")
