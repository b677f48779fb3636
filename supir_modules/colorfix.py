"""Colour fix of the restored image against the stage-1 image: follows SUPIR/utils/colorfix.py
(`wavelet_reconstruction`, `adaptive_instance_normalization`), as SUPIR_model.py `batchify_sample` applies them.

Both work on NCHW tensors in the VAE's [-1, 1] space (the official code applies them to the decoded tensors,
before any clamp); the reference is the stage-1 image and must already have the sample's shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

WAVELET_LEVELS = 5  # official wavelet_decomposition(levels=5), radius 2**i
ADAIN_EPS = 1e-5  # official calc_mean_std(eps=1e-5), added to the unbiased variance
MODES = ("Wavelet", "AdaIN", "None")
_ALIASES = {"wavelet": "Wavelet", "adain": "AdaIN", "none": "None"}  # "AdaIn" is the official spelling


def _check_pair(sample: torch.Tensor, reference: torch.Tensor) -> None:
    if not isinstance(sample, torch.Tensor) or not isinstance(reference, torch.Tensor):
        raise TypeError(f"colour fix takes two tensors, got {type(sample).__name__} and "
                        f"{type(reference).__name__}")
    if sample.ndim != 4:
        raise ValueError(f"colour fix takes NCHW tensors, got sample shape {tuple(sample.shape)}")
    if sample.shape != reference.shape:
        raise ValueError(f"colour fix: sample shape {tuple(sample.shape)} != reference shape "
                         f"{tuple(reference.shape)}; resize the reference (stage-1 image) to the sample's size first")


def _wavelet_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """3x3 binomial kernel [[1,2,1],[2,4,2],[1,2,1]]/16 dilated by `radius`, replicate padding, per channel."""
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=image.dtype, device=image.device)
    kernel = (k1[:, None] * k1[None, :]).expand(image.shape[1], 1, 3, 3)
    padded = F.pad(image, (radius, radius, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel, groups=image.shape[1], dilation=radius)


def wavelet_decomposition(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): low is `levels` successive blurs (radius 1, 2, 4, ...); high = image - low."""
    high = torch.zeros_like(image)
    low = image
    for i in range(levels):
        blurred = _wavelet_blur(low, 2**i)
        high = high + (low - blurred)  # accumulated per level, in the official order
        low = blurred
    return high, low


def wavelet_color_fix(sample: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """High frequencies of `sample` + low frequencies of `reference` (official wavelet_reconstruction)."""
    _check_pair(sample, reference)
    high, _ = wavelet_decomposition(sample)
    _, low = wavelet_decomposition(reference)
    return high + low


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    std = (flat.var(dim=2) + ADAIN_EPS).sqrt()  # unbiased variance, as the official calc_mean_std
    return flat.mean(dim=2)[..., None, None], std[..., None, None]


def adain_color_fix(sample: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image and channel: (x - mu) / sigma * sigma_ref + mu_ref (official adaptive_instance_normalization)."""
    _check_pair(sample, reference)
    mean, std = _mean_std(sample)
    ref_mean, ref_std = _mean_std(reference)
    return (sample - mean) / std * ref_std + ref_mean


def normalize_mode(mode: str) -> str:
    """The canonical name of a colour-fix mode ("Wavelet", "AdaIN", "None"); accepts the official "AdaIn"."""
    canonical = _ALIASES.get(mode.lower()) if isinstance(mode, str) else None
    if canonical is None:
        raise ValueError(f"unknown colour fix mode {mode!r}; use one of {', '.join(MODES)}")
    return canonical


def apply_color_fix(sample: torch.Tensor, reference: torch.Tensor, mode: str) -> torch.Tensor:
    """Colour-fix `sample` against `reference` (both NCHW, [-1, 1], same shape) with `mode`."""
    mode = normalize_mode(mode)
    _check_pair(sample, reference)
    if mode == "Wavelet":
        return wavelet_color_fix(sample, reference)
    if mode == "AdaIN":
        return adain_color_fix(sample, reference)
    return sample
