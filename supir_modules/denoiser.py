"""The discrete eps denoiser of the official code: sgm DiscreteDenoiser with EpsScaling and
LegacyDDPMDiscretization (sgm/modules/diffusionmodules/denoiser.py, discretizer.py), 1000 steps.

D(x, sigma) = x - sigma_q * eps(x / sqrt(sigma_q^2 + 1), t_q), where sigma_q is sigma snapped to the
1000-entry table and t_q its index.
"""
from __future__ import annotations

import numpy as np
import torch

LINEAR_START = 0.00085
LINEAR_END = 0.012
NUM_TIMESTEPS = 1000


def legacy_ddpm_alphas_cumprod(n: int = NUM_TIMESTEPS) -> np.ndarray:
    """sgm make_beta_schedule('linear'): betas = linspace(sqrt(start), sqrt(end), n)^2 in float64."""
    betas = np.linspace(LINEAR_START ** 0.5, LINEAR_END ** 0.5, n, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas, axis=0)


def _sigmas_from_acp(acp: np.ndarray) -> torch.Tensor:
    # As sgm: the ratio is computed in float64, converted to float32, and the square root taken in float32.
    return torch.tensor((1 - acp) / acp, dtype=torch.float32) ** 0.5


def sigma_table() -> torch.Tensor:
    """All 1000 legacy-DDPM sigmas, ascending (index = DDPM timestep)."""
    return _sigmas_from_acp(legacy_ddpm_alphas_cumprod())


def legacy_ddpm_sigmas(steps: int) -> torch.Tensor:
    """The sampler's schedule: `steps` sigmas descending, with 0 appended (LegacyDDPMDiscretization, flip)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    acp = legacy_ddpm_alphas_cumprod()
    if steps < NUM_TIMESTEPS:
        # generate_roughly_equally_spaced_steps: linspace(n-1, 0, steps, endpoint=False) as int, reversed
        idx = np.linspace(NUM_TIMESTEPS - 1, 0, steps, endpoint=False).astype(int)[::-1]
        acp = acp[idx]
    sigmas = _sigmas_from_acp(acp)
    return torch.cat([torch.flip(sigmas, (0,)), sigmas.new_zeros([1])])


class DiscreteEpsDenoiser:
    """Snaps sigma to the table and gives the eps scalings. The table stays on the host: the sampler's sigmas
    are host floats, so the lookup never waits on the device."""

    def __init__(self):
        self.sigmas = sigma_table()
        self._host_cache: dict[float, tuple[float, float, int]] = {}

    def sigma_to_index(self, sigma: torch.Tensor) -> torch.Tensor:
        sigma = sigma.to(self.sigmas.device, torch.float32)
        return (sigma.reshape(-1)[None, :] - self.sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)

    def scalings(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sigma_q, c_in, timestep index) for a batch of sigmas."""
        idx = self.sigma_to_index(sigma)
        sigma_q = self.sigmas[idx]
        c_in = 1.0 / (sigma_q ** 2 + 1.0) ** 0.5
        return sigma_q, c_in, idx

    def host_scalings(self, sigma: float) -> tuple[float, float, int]:
        """`scalings` of one host sigma as host numbers (the same float32 values), cached per sigma."""
        key = float(sigma)
        hit = self._host_cache.get(key)
        if hit is None:
            sigma_q, c_in, idx = self.scalings(torch.tensor([key], dtype=torch.float32))
            hit = self._host_cache[key] = (float(sigma_q), float(c_in), int(idx))
        return hit


def make_denoise(eps_network, denoiser: DiscreteEpsDenoiser | None = None):
    """D(x, sigma, context, y, hint, control_scale) around `eps_network(x_in, t, context, y, hint, scale)`.

    `sigma` is a host float (the sampler's schedule lives on the host): the table lookup and scalings are host
    arithmetic and enter the device work as kernel scalars, and the timesteps are filled on the device, so a
    call makes no host-device transfer.
    """
    den = denoiser if denoiser is not None else DiscreteEpsDenoiser()

    def denoise(x: torch.Tensor, sigma: float, context: torch.Tensor, y: torch.Tensor, hint: torch.Tensor,
                control_scale: float) -> torch.Tensor:
        sigma_q, c_in, t = den.host_scalings(sigma)
        timesteps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = eps_network(x * c_in, timesteps, context, y, hint, control_scale)
        return x - sigma_q * eps.to(x.dtype)

    return denoise
