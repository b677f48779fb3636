"""Tiled sampling: follows TiledRestoreEDMSampler / TiledRestoreDPMPP2MSampler in the official
sgm/modules/diffusionmodules/sampling.py.

Every step walks sliding windows over the latent (tile 128, stride 64 by default, plus a last window flush with
each edge); each window is stepped with its own control latent, centre latent and (optionally) prompt, and the
results are blended with fixed gaussian weights: x = sum(w x_j) / sum(w). One full-size noise draw per step
is sliced per window, so overlapping windows see the same noise.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .guidance import ControlSchedule
from .sampling import (
    Callback,
    Churn,
    Model,
    NoiseSampler,
    RestorationGuidance,
    dpmpp_2m_step,
    float_schedule,
    restore_edm_step,
)

Window = tuple[int, int, int, int]  # (h0, h1, w0, w1) in latent pixels
TileModel = Callable[[int, Window], Model]


def sliding_windows(h: int, w: int, tile: int, stride: int) -> list[Window]:
    """The official `_sliding_windows`, row-major; a latent smaller than the tile is one window."""
    if stride <= 0 or tile <= 0:
        raise ValueError(f"tile size and stride must be positive, got tile {tile}, stride {stride}")
    if stride > tile:
        raise ValueError(f"tile stride {stride} is larger than the tile size {tile}: parts of the image would "
                         "never be sampled; use a stride at most the tile size (half the tile is usual)")
    th, tw = min(tile, h), min(tile, w)

    def starts(n: int, t: int) -> list[int]:
        s = list(range(0, n - t + 1, stride))
        if (n - t) % stride != 0:
            s.append(n - t)
        return s

    return [(a, a + th, b, b + tw) for a in starts(h, th) for b in starts(w, tw)]


def gaussian_weights(tile_h: int, tile_w: int) -> torch.Tensor:
    """The official `gaussian_weights`: var 0.01 relative to the tile; midpoint (T-1)/2 across, T/2 down."""
    var = 0.01
    mid_x = (tile_w - 1) / 2
    xs = [math.exp(-(x - mid_x) ** 2 / (tile_w * tile_w) / (2 * var)) / math.sqrt(2 * math.pi * var)
          for x in range(tile_w)]
    mid_y = tile_h / 2
    ys = [math.exp(-(y - mid_y) ** 2 / (tile_h * tile_h) / (2 * var)) / math.sqrt(2 * math.pi * var)
          for y in range(tile_h)]
    return torch.tensor(np.outer(ys, xs), dtype=torch.float32)


def _weight_sum(x: torch.Tensor, windows: list[Window], weights: torch.Tensor) -> torch.Tensor:
    count = torch.zeros_like(x)
    w = weights.to(x.device, x.dtype)
    for h0, h1, w0, w1 in windows:
        count[:, :, h0:h1, w0:w1] += w
    return count


def _blend(x: torch.Tensor, windows: list[Window], step_tile: Callable[[int, Window], torch.Tensor],
           weights: torch.Tensor) -> torch.Tensor:
    acc = torch.zeros_like(x)
    w = weights.to(x.device, x.dtype)
    for j, win in enumerate(windows):
        h0, h1, w0, w1 = win
        acc[:, :, h0:h1, w0:w1] += step_tile(j, win) * w
    return acc / _weight_sum(x, windows, weights)


@torch.no_grad()
def sample_tiled_restore_edm(tile_model: TileModel, x: torch.Tensor, sigmas: torch.Tensor, *, windows: list[Window],
                             noise_sampler: NoiseSampler, churn: Churn = Churn(),
                             guidance: RestorationGuidance = RestorationGuidance(),
                             control: ControlSchedule = ControlSchedule(), x_center: torch.Tensor | None = None,
                             callback: Callback = None) -> torch.Tensor:
    sig = float_schedule(sigmas)
    n = len(sig) - 1
    h0, h1, w0, w1 = windows[0]
    weights = gaussian_weights(h1 - h0, w1 - w0)
    for i in range(n):
        gamma = churn.gamma(sig[i], n)
        noise = noise_sampler(i, x)  # drawn every step, as the official tiled sampler does
        denoised_acc = torch.zeros_like(x)

        def step_tile(j: int, win: Window) -> torch.Tensor:
            a, b, c, d = win
            center = x_center[:, :, a:b, c:d] if x_center is not None else None
            out, den, _ = restore_edm_step(tile_model(j, win), x[:, :, a:b, c:d], sig[i], sig[i + 1], gamma, churn,
                                           guidance, control, center, noise[:, :, a:b, c:d])
            denoised_acc[:, :, a:b, c:d] += den * weights.to(x.device, x.dtype)
            return out

        x_next = _blend(x, windows, step_tile, weights)
        if callback is not None:
            denoised = denoised_acc / _weight_sum(x, windows, weights)
            callback({"x": x, "i": i, "sigma": sig[i], "sigma_hat": sig[i] * (gamma + 1.0), "denoised": denoised})
        x = x_next
    return x


@torch.no_grad()
def sample_tiled_restore_dpmpp_2m(tile_model: TileModel, x: torch.Tensor, sigmas: torch.Tensor, *,
                                  windows: list[Window], noise_sampler: NoiseSampler, eta: float = 1.0,
                                  s_noise: float = 1.0, guidance: RestorationGuidance = RestorationGuidance(),
                                  control: ControlSchedule = ControlSchedule(),
                                  x_center: torch.Tensor | None = None, callback: Callback = None) -> torch.Tensor:
    sig = float_schedule(sigmas)
    h0, h1, w0, w1 = windows[0]
    weights = gaussian_weights(h1 - h0, w1 - w0)
    old = None
    for i in range(len(sig) - 1):
        noise = noise_sampler(i, x) if (i > 0 and sig[i + 1] > 0 and eta) else torch.zeros_like(x)
        denoised_acc = torch.zeros_like(x)

        def step_tile(j: int, win: Window) -> torch.Tensor:
            a, b, c, d = win
            center = x_center[:, :, a:b, c:d] if x_center is not None else None
            old_tile = old[:, :, a:b, c:d] if old is not None else None
            out, den = dpmpp_2m_step(tile_model(j, win), x[:, :, a:b, c:d], sig[i], sig[i + 1],
                                     sig[i - 1] if i > 0 else None, old_tile, eta, s_noise, guidance, control,
                                     center, noise[:, :, a:b, c:d])
            denoised_acc[:, :, a:b, c:d] += den * weights.to(x.device, x.dtype)
            return out

        x_next = _blend(x, windows, step_tile, weights)
        old = denoised_acc / _weight_sum(x, windows, weights)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sig[i], "sigma_hat": sig[i], "denoised": old})
        x = x_next
    return x
