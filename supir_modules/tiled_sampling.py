"""Tiled sampling: follows TiledRestoreEDMSampler / TiledRestoreDPMPP2MSampler in the official
sgm/modules/diffusionmodules/sampling.py.

Every step walks sliding windows over the latent (tile 128, stride 64 by default, plus a last window flush with
each edge); each window is stepped with its own control latent, centre latent and (optionally) prompt, and the
results are blended with fixed gaussian weights: x = sum(w x_j) / sum(w). One full-size noise draw per step
is sliced per window, so overlapping windows see the same noise. Windows can be stepped `tile_batch` at a time
in one network call (stacked on the batch dimension): every step is per-sample, so the result is the same.
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
TileModel = Callable[[tuple[int, ...]], Model]  # window indices -> model on them, stacked


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


def window_groups(n_windows: int, tile_batch: int) -> list[tuple[int, ...]]:
    """Window indices in network calls of up to `tile_batch` windows each (1 = the official one by one)."""
    if tile_batch < 1:
        raise ValueError(f"tile_batch must be at least 1, got {tile_batch}")
    return [tuple(range(i, min(i + tile_batch, n_windows))) for i in range(0, n_windows, tile_batch)]


def stack_windows(t: torch.Tensor, windows: list[Window], group: tuple[int, ...]) -> torch.Tensor:
    """The windows `group` (indices into `windows`) of `t`, stacked on the batch dimension (window-major)."""
    return torch.cat([t[:, :, a:b, c:d] for a, b, c, d in (windows[j] for j in group)])


class _Tiles:
    """Slicing, stacking and blending for one sampling run; the blend weights and their sum live on the
    device once, instead of being copied there for every tile of every step."""

    def __init__(self, x: torch.Tensor, windows: list[Window], tile_batch: int):
        self.windows = windows
        self.groups = window_groups(len(windows), tile_batch)
        h0, h1, w0, w1 = windows[0]
        self.weights = gaussian_weights(h1 - h0, w1 - w0).to(x.device, x.dtype)
        weight_sum = torch.zeros_like(x)
        for a, b, c, d in windows:
            weight_sum[:, :, a:b, c:d] += self.weights
        self.weight_sum = weight_sum

    def stack(self, t: torch.Tensor | None, group: tuple[int, ...]) -> torch.Tensor | None:
        """stack_windows of `t` for this run's windows (None stays None: no centre latent, no previous step)."""
        return None if t is None else stack_windows(t, self.windows, group)

    def add(self, acc: torch.Tensor, stacked: torch.Tensor, group: tuple[int, ...]) -> None:
        for (a, b, c, d), part in zip((self.windows[j] for j in group), stacked.chunk(len(group))):
            acc[:, :, a:b, c:d] += part * self.weights

    def blend(self, acc: torch.Tensor) -> torch.Tensor:
        return acc / self.weight_sum


@torch.no_grad()
def sample_tiled_restore_edm(tile_model: TileModel, x: torch.Tensor, sigmas: torch.Tensor, *, windows: list[Window],
                             noise_sampler: NoiseSampler, churn: Churn = Churn(),
                             guidance: RestorationGuidance = RestorationGuidance(),
                             control: ControlSchedule = ControlSchedule(), x_center: torch.Tensor | None = None,
                             callback: Callback = None, tile_batch: int = 1) -> torch.Tensor:
    """`tile_model(group)` is the model of the windows `group` (indices), stacked on the batch dimension."""
    sig = float_schedule(sigmas)
    n = len(sig) - 1
    tiles = _Tiles(x, windows, tile_batch)
    for i in range(n):
        gamma = churn.gamma(sig[i], n)
        noise = noise_sampler(i, x)  # drawn every step, as the official tiled sampler does
        x_acc, denoised_acc = torch.zeros_like(x), torch.zeros_like(x)
        for group in tiles.groups:
            out, den, _ = restore_edm_step(tile_model(group), tiles.stack(x, group), sig[i], sig[i + 1], gamma,
                                           churn, guidance, control, tiles.stack(x_center, group),
                                           tiles.stack(noise, group))
            tiles.add(x_acc, out, group)
            tiles.add(denoised_acc, den, group)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sig[i], "sigma_hat": sig[i] * (gamma + 1.0),
                      "denoised": tiles.blend(denoised_acc)})
        x = tiles.blend(x_acc)
    return x


@torch.no_grad()
def sample_tiled_restore_dpmpp_2m(tile_model: TileModel, x: torch.Tensor, sigmas: torch.Tensor, *,
                                  windows: list[Window], noise_sampler: NoiseSampler, eta: float = 1.0,
                                  s_noise: float = 1.0, guidance: RestorationGuidance = RestorationGuidance(),
                                  control: ControlSchedule = ControlSchedule(),
                                  x_center: torch.Tensor | None = None, callback: Callback = None,
                                  tile_batch: int = 1) -> torch.Tensor:
    sig = float_schedule(sigmas)
    tiles = _Tiles(x, windows, tile_batch)
    old = None
    for i in range(len(sig) - 1):
        noise = noise_sampler(i, x) if (i > 0 and sig[i + 1] > 0 and eta) else torch.zeros_like(x)
        x_acc, denoised_acc = torch.zeros_like(x), torch.zeros_like(x)
        for group in tiles.groups:
            out, den = dpmpp_2m_step(tile_model(group), tiles.stack(x, group), sig[i], sig[i + 1],
                                     sig[i - 1] if i > 0 else None, tiles.stack(old, group), eta, s_noise, guidance,
                                     control, tiles.stack(x_center, group), tiles.stack(noise, group))
            tiles.add(x_acc, out, group)
            tiles.add(denoised_acc, den, group)
        old = tiles.blend(denoised_acc)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sig[i], "sigma_hat": sig[i], "denoised": old})
        x = tiles.blend(x_acc)
    return x
