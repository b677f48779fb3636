"""SUPIR's samplers in the k-diffusion shape: follows RestoreEDMSampler and RestoreDPMPP2MSampler in
sgm/modules/diffusionmodules/sampling.py of the official SUPIR code.

`model(x, sigma_hat, control_scale) -> denoised` is the CFG denoiser (see guidance.py). The schedule lives on
the host as Python floats, so the step loop never waits on the device. Noise comes from outside
(`noise_sampler(i, like)`), which makes replay against recorded official noise and tiling easy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .denoiser import legacy_ddpm_sigmas
from .guidance import SIGMA_MAX, ControlSchedule

Model = Callable[[torch.Tensor, float, float], torch.Tensor]
NoiseSampler = Callable[[int, torch.Tensor], torch.Tensor]
Callback = Optional[Callable[[dict], None]]


@dataclass(frozen=True)
class RestorationGuidance:
    """Pull each denoised estimate toward the stage-1 latent: D <- D - (D - z_c) (sigma_i / sigma_max)^scale,
    applied while sigma_{i+1} > s_tmin and scale > 0 (official `restore_cfg`, -1 = off)."""

    scale: float = -1.0
    s_tmin: float = 0.05

    def apply(self, denoised: torch.Tensor, x_center: torch.Tensor | None, sigma: float,
              next_sigma: float) -> torch.Tensor:
        if self.scale <= 0 or next_sigma <= self.s_tmin:
            return denoised
        if x_center is None:
            raise ValueError("restoration guidance is on but no centre latent was given")
        return denoised - (denoised - x_center) * ((sigma / SIGMA_MAX) ** self.scale)


@dataclass(frozen=True)
class Churn:
    """EDM stochastic churn (Karras et al. 2022, Alg. 2): gamma = min(s_churn / n, sqrt(2) - 1) on steps with
    s_tmin <= sigma_i <= s_tmax."""

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0

    def gamma(self, sigma: float, n_steps: int) -> float:
        if self.s_tmin <= sigma <= self.s_tmax:
            return min(self.s_churn / n_steps, 2 ** 0.5 - 1)
        return 0.0


def float_schedule(sigmas: torch.Tensor) -> list[float]:
    """The schedule as host floats (one transfer, before the loop)."""
    return [float(s) for s in sigmas.detach().to("cpu", torch.float32)]


def initial_latent(noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Official start: pure noise scaled by sqrt(1 + sigma_0^2) (not a noised LQ latent)."""
    return noise * torch.sqrt(1.0 + sigmas[0].to(noise.dtype) ** 2.0)


def host_draw_to_device(draw: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A CPU noise draw on `like`'s device without stalling the host: on CUDA it is copied from pinned memory
    asynchronously (a plain copy from pageable memory would wait for every queued kernel)."""
    if like.device.type == "cuda":
        draw = draw.pin_memory()
    return draw.to(like.device, like.dtype, non_blocking=True)


def generator_noise_sampler(seed: int, device: torch.device | str = "cpu") -> NoiseSampler:
    """Standard-normal draws from a CPU generator: the same numbers for a seed on every device."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def sample(i: int, like: torch.Tensor) -> torch.Tensor:
        return host_draw_to_device(torch.randn(like.shape, generator=gen, dtype=torch.float32), like)

    return sample


def restore_edm_step(model: Model, x: torch.Tensor, sigma: float, next_sigma: float, gamma: float,
                     churn: Churn, guidance: RestorationGuidance, control: ControlSchedule,
                     x_center: torch.Tensor | None, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One RestoreEDMSampler step: churn, denoise at sigma_hat, restoration guidance, Euler to next_sigma."""
    sigma_hat = sigma * (gamma + 1.0)
    if gamma > 0:
        x = x + noise * churn.s_noise * (sigma_hat ** 2 - sigma ** 2) ** 0.5
    denoised = model(x, sigma_hat, control.scale(sigma))
    denoised = guidance.apply(denoised, x_center, sigma, next_sigma)
    d = (x - denoised) / sigma_hat
    return x + d * (next_sigma - sigma_hat), denoised, sigma_hat


@torch.no_grad()
def sample_restore_edm(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, noise_sampler: NoiseSampler,
                       churn: Churn = Churn(), guidance: RestorationGuidance = RestorationGuidance(),
                       control: ControlSchedule = ControlSchedule(), x_center: torch.Tensor | None = None,
                       callback: Callback = None) -> torch.Tensor:
    """SUPIR's restoration-guided EDM sampler (Euler with churn); x is already scaled by initial_latent."""
    sig = float_schedule(sigmas)
    n = len(sig) - 1
    for i in range(n):
        gamma = churn.gamma(sig[i], n)
        noise = noise_sampler(i, x) if gamma > 0 else None
        x_next, denoised, sigma_hat = restore_edm_step(model, x, sig[i], sig[i + 1], gamma, churn, guidance,
                                                       control, x_center, noise)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sig[i], "sigma_hat": sigma_hat, "denoised": denoised})
        x = x_next
    return x


def karras_sigmas_for(steps: int, rho: float = 7.0) -> torch.Tensor:
    """RestoreDPMPP2MSampler's schedule: Karras between the legacy schedule's smallest and largest sigma."""
    legacy = legacy_ddpm_sigmas(steps)
    sigma_min, sigma_max = float(legacy[-2]), float(legacy[0])
    ramp = torch.linspace(0, 1, steps)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv + ramp * (min_inv - max_inv)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def dpmpp_2m_step(model: Model, x: torch.Tensor, sigma: float, next_sigma: float, prev_sigma: float | None,
                  old_denoised: torch.Tensor | None, eta: float, s_noise: float, guidance: RestorationGuidance,
                  control: ControlSchedule, x_center: torch.Tensor | None,
                  noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DPM++ 2M step (eta > 0: the SDE form of the official RestoreDPMPP2MSampler), with restoration
    guidance and the control ramp, which the official version leaves out."""
    denoised = model(x, sigma, control.scale(sigma))
    denoised = guidance.apply(denoised, x_center, sigma, next_sigma)
    if next_sigma == 0:
        return denoised, denoised  # the official mults reduce to exactly this at sigma_next = 0
    t, t_next = -math.log(sigma), -math.log(next_sigma)
    h = t_next - t
    eta_h = eta * h
    mult1 = next_sigma / sigma * math.exp(-eta_h)
    mult2 = math.expm1(-h - eta_h)
    if old_denoised is None:
        return mult1 * x - mult2 * denoised, denoised
    r = (t - (-math.log(prev_sigma))) / h
    denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
    x = mult1 * x - mult2 * denoised_d
    if eta:
        x = x + noise * next_sigma * (-math.expm1(-2 * eta_h)) ** 0.5 * s_noise
    return x, denoised


def brownian_noise_sampler(x: torch.Tensor, sigmas: torch.Tensor, seed: int) -> NoiseSampler:
    """The official Brownian-tree noise (via ComfyUI's k-diffusion copy), seeded for replay."""
    from comfy.k_diffusion.sampling import BrownianTreeNoiseSampler

    sig = sigmas.detach().to("cpu", torch.float32)
    positive = sig[sig > 0]
    # The interval is widened by a hair: torchsde compares in float64 and would warn that the smallest sigma, a
    # float32, lies just outside it.
    # The tree lives on the CPU (as ComfyUI's cpu=True); it only needs x's shape, so it is not handed the device
    # tensor (which it would copy back to the host).
    tree = BrownianTreeNoiseSampler(torch.zeros(x.shape, dtype=torch.float32), positive.min() * (1 - 1e-5),
                                    positive.max() * (1 + 1e-5), seed=int(seed), cpu=True)

    def sample(i: int, like: torch.Tensor) -> torch.Tensor:
        return host_draw_to_device(tree(sig[i], sig[i + 1]), like)

    return sample


@torch.no_grad()
def sample_restore_dpmpp_2m(model: Model, x: torch.Tensor, sigmas: torch.Tensor, *, noise_sampler: NoiseSampler,
                            eta: float = 1.0, s_noise: float = 1.0,
                            guidance: RestorationGuidance = RestorationGuidance(),
                            control: ControlSchedule = ControlSchedule(), x_center: torch.Tensor | None = None,
                            callback: Callback = None) -> torch.Tensor:
    """DPM++ 2M (Lu et al. 2022) as SUPIR's RestoreDPMPP2MSampler; sigmas from karras_sigmas_for."""
    sig = float_schedule(sigmas)
    old = None
    for i in range(len(sig) - 1):
        # As the official: no noise on the first step or into sigma = 0.
        noise = noise_sampler(i, x) if (i > 0 and sig[i + 1] > 0 and eta) else None
        x_next, denoised = dpmpp_2m_step(model, x, sig[i], sig[i + 1], sig[i - 1] if i > 0 else None, old, eta,
                                         s_noise, guidance, control, x_center, noise)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sig[i], "sigma_hat": sig[i], "denoised": denoised})
        x, old = x_next, denoised
    return x
