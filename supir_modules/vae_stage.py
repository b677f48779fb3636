"""Running the VAE for a restoration stage on ComfyUI's memory management: what to ask `load_models_gpu` to
free (ComfyUI's own VAE estimates, of the whole image or of one padded tile), where the tiled VAE parks waiting
tiles, and the runners (direct or GroupNorm-synchronised tiled) that vae.py's official steps call.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

import comfy.model_management as mm

from . import tiled_vae
from . import vae as vae_ops

logger = logging.getLogger(__name__)


# ComfyUI's AutoencoderKL estimates (comfy/sd.py VAE.__init__), for a VAE object without memory_used_* lambdas.
_KL_ENCODE_BYTES_PER_PIXEL = 1767
_KL_DECODE_BYTES_PER_LATENT_PIXEL = 2178 * 64


@dataclass(frozen=True)
class VaePass:
    """Memory of one VAE network pass over one image, in bytes."""

    working: int  # what ComfyUI budgets for the network on its input: the whole image, or one padded tile
    parked: int = 0  # tiled: the other tiles' activations while they wait at a GroupNorm (0 when untiled)


def working_memory(vae, kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """What `comfy.sd.VAE.encode/decode` ask `load_models_gpu` to free for `shape` (encode: pixels NCHW,
    decode: latent NCHW)."""
    estimate = getattr(vae, f"memory_used_{kind}", None)
    if callable(estimate):
        return int(estimate(shape, dtype))
    per = _KL_ENCODE_BYTES_PER_PIXEL if kind == "encode" else _KL_DECODE_BYTES_PER_LATENT_PIXEL
    return int(per * shape[2] * shape[3] * mm.dtype_size(dtype))


def latent_scale(net) -> int:
    """Pixels per latent pixel of a VAE Encoder/Decoder (8 for SDXL's)."""
    return 2 ** (getattr(net, "num_resolutions", 4) - 1)


def parked_channels(net) -> float:
    """Channels per image pixel that all tiles together hold at a GroupNorm, at most: a ResnetBlock's activation
    plus residual (its input and output widths) for the widest block, at its level's resolution (level i runs at
    1/2**i of the image's size)."""
    levels = net.down if hasattr(net, "down") else net.up
    return max(((b.in_channels + b.out_channels) / 4 ** i for i, level in enumerate(levels) for b in level.block),
               default=0.0)


def padded_length(length: int, tile: int, pad: int) -> int:
    """Sum of the padded tiles' lengths along one axis (tiled_vae._split_axis): the margins overlap."""
    count = max(math.ceil((length - 2 * pad) / tile), 1)
    return length + 2 * pad * (count - 1)


def vae_pass(vae, kind: str, net, size: tuple[int, int], dtype: torch.dtype, tile: int | None) -> VaePass:
    """Memory of `net` ("encode": an Encoder on pixels, "decode": a Decoder on latents) over one image of `size`
    (its input's H, W), untiled (`tile` None) or tiled as tiled_vae.py does it."""
    h, w = size
    channels = 3 if kind == "encode" else getattr(vae, "latent_channels", 4)
    if tile is None:
        return VaePass(working_memory(vae, kind, (1, channels, h, w), dtype))
    pad = tiled_vae.ENCODER_PAD if kind == "encode" else tiled_vae.DECODER_PAD
    shape = (1, channels, min(h, tile + 2 * pad), min(w, tile + 2 * pad))  # largest padded tile
    parked = 0
    if max(h, w) > tile + 2 * pad:  # more than one tile
        px = 1 if kind == "encode" else latent_scale(net)
        area = padded_length(h, tile, pad) * padded_length(w, tile, pad) * px * px
        parked = int(parked_channels(net) * area * mm.dtype_size(dtype))
    return VaePass(working_memory(vae, kind, shape, dtype), parked)


def load_vae_stage(vae, patchers: list, passes: list[VaePass]) -> int:
    """Loads the VAE-stage models, asking ComfyUI to free (offloading the UNet and adaptor if it must) the
    largest pass's working memory, as ComfyUI's own VAE.encode/decode do; returns that amount."""
    working = max(p.working for p in passes)
    kwargs = {"force_full_load": True} if getattr(vae, "disable_offload", False) else {}  # 0.3.75's VAE option
    mm.load_models_gpu(patchers, memory_required=working, **kwargs)
    return working


def park_device(vae, device, working: int, parked: int):
    """Where waiting tiles are kept: their input's device (None) while they fit in its free memory next to one
    tile's working memory (fastest), else the VAE's offload device as the official tilevae.py does, so the
    stage's VRAM stays bounded by the tile size."""
    if parked == 0 or torch.device(device).type == "cpu":
        return None
    if mm.get_free_memory(device) >= working + parked:
        return None
    offload = vae.patcher.offload_device
    logger.info("tiled VAE: %.0f MiB of waiting tiles do not fit in free VRAM, keeping them on %s",
                parked / 2**20, offload)
    return offload


def runners(tiled: bool, encoder_tile: int, decoder_tile: int, official_tile_norm: bool,
             park_encode=None, park_decode=None):
    """How the VAE networks run: directly, or GroupNorm-synchronised tiled (see tiled_vae.py), with waiting tiles
    on `park_encode`/`park_decode` (None: the input's device)."""
    if not tiled:
        return vae_ops.direct, vae_ops.direct
    valid = not official_tile_norm  # pooled per-tile statistics by default: far closer to the untiled VAE

    def encode(net, x):
        return tiled_vae.tiled_encode(net, x, tile_size=encoder_tile, valid_region_stats=valid, park_device=park_encode)

    def decode(net, z):
        return tiled_vae.tiled_decode(net, z, tile_size=decoder_tile, valid_region_stats=valid, park_device=park_decode)

    return encode, decode
