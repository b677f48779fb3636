"""Image preparation as the official test.py does it (SUPIR/util.py `PIL2Tensor` / `Tensor2PIL`), on ComfyUI
IMAGE batches ([B, H, W, C] float in [0, 1]).

Resizing goes through Pillow's bicubic filter on 8-bit images exactly as the official code (torch's bicubic uses
another kernel constant, so it would not match).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

MIN_SIDE = 64  # the VAE and the UNet need at least one 64-pixel unit


@dataclass(frozen=True)
class PreparedSize:
    out_h: int  # size the restored image is given back at (after `upscale`, before `min_size`)
    out_w: int
    work_h: int  # size SUPIR works at (multiples of 64)
    work_w: int


def plan_size(h: int, w: int, upscale: float, min_size: int, unit: int = 64) -> PreparedSize:
    """PIL2Tensor's arithmetic: scale by `upscale`; if the short side is below `min_size`, scale it up to it;
    round each side to a multiple of `unit`. The output size keeps only the `upscale` part."""
    if upscale <= 0:
        raise ValueError(f"upscale must be positive, got {upscale}")
    fw, fh = w * upscale, h * upscale
    out_w, out_h = round(fw), round(fh)
    if min(fw, fh) < min_size:
        s = min_size / min(fw, fh)
        fw, fh = fw * s, fh * s
    work_w = int(np.round(fw / unit)) * unit
    work_h = int(np.round(fh / unit)) * unit
    if work_w < unit or work_h < unit:
        raise ValueError(f"a {w}x{h} image at upscale {upscale} is too small to restore (under {unit} px); "
                         "raise upscale or min_size")
    return PreparedSize(out_h, out_w, work_h, work_w)


def split_channels(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """RGB and optional alpha from a ComfyUI IMAGE with 1 (grey), 2 (grey+alpha), 3 or 4 channels."""
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"expected an IMAGE batch [B, H, W, C], got shape {tuple(image.shape)}")
    c = image.shape[-1]
    if c == 1:
        return image.expand(*image.shape[:-1], 3), None
    if c == 2:
        return image[..., :1].expand(*image.shape[:-1], 3), image[..., 1]
    if c == 3:
        return image, None
    if c == 4:
        return image[..., :3], image[..., 3]
    raise ValueError(f"an image with {c} channels cannot be restored; give 1 (grey), 3 (RGB) or 4 (RGBA) "
                     "channels")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().float().cpu().numpy() * 255.0).round().clip(0, 255).astype(np.uint8)


def prepare_batch(rgb: torch.Tensor, size: PreparedSize) -> torch.Tensor:
    """[B, H, W, 3] in [0, 1] -> [B, 3, work_h, work_w] in [-1, 1], via 8-bit Pillow bicubic as the official."""
    out = []
    for img in to_uint8(rgb):
        pil = Image.fromarray(img).resize((size.work_w, size.work_h), Image.BICUBIC)
        arr = np.asarray(pil).round().clip(0, 255).astype(np.uint8) / 255 * 2 - 1
        out.append(torch.tensor(arr, dtype=torch.float32).permute(2, 0, 1))
    return torch.stack(out)


def restore_size(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Tensor2PIL's resize back: bicubic interpolation of [-1, 1] NCHW to (h, w)."""
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bicubic")


def to_comfy_image(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] NCHW -> ComfyUI IMAGE [B, H, W, 3] in [0, 1] (clamped: IMAGEs must stay in range)."""
    return ((x.float() + 1.0) / 2.0).clamp(0.0, 1.0).permute(0, 2, 3, 1).contiguous().cpu()


def from_comfy_image(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE [B, H, W, 3] in [0, 1] -> [-1, 1] NCHW float32."""
    return image[..., :3].float().permute(0, 3, 1, 2) * 2.0 - 1.0


def resize_alpha(alpha: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[B, H, W] alpha to (h, w), bilinear with antialiasing, kept in [0, 1]."""
    if alpha.shape[-2:] == (h, w):
        return alpha
    a = F.interpolate(alpha.float().unsqueeze(1), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return a.squeeze(1).clamp(0.0, 1.0)
