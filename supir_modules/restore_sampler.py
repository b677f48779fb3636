"""The restoration sampler as a stage: conditioning from ComfyUI's CONDITIONING, the CFG model around the SUPIR
network (eager or replayed from CUDA graphs), tiles and their prompts, on ComfyUI's model management.

Follows the official SUPIR/models/SUPIR_model.py `batchify_sample` (sampling part).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import comfy.model_management as mm

from . import tiled_sampling
from .cuda_graphs import CaptureBackend, CudaGraphBackend, GraphedNetwork, all_on_device
from .denoiser import legacy_ddpm_sigmas, make_denoise
from .guidance import CFGSchedule, Conditioning, ControlSchedule, cfg_denoise, cfg_inputs
from .latents import SupirLatents
from .model import SupirModel
from .presets import SamplerSettings
from .prompts import SIZE_CONDITIONING
from .sampling import (
    Churn,
    RestorationGuidance,
    brownian_noise_sampler,
    generator_noise_sampler,
    initial_latent,
    karras_sigmas_for,
    sample_restore_dpmpp_2m,
    sample_restore_edm,
)
from .unet import context_dim

logger = logging.getLogger(__name__)

StepCallback = Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]]  # (step, steps, x, denoised)


# --- conditioning ------------------------------------------------------------------------------------------
def conditioning_tensors(conditioning: list, model_base, what: str) -> list[Conditioning]:
    """ComfyUI CONDITIONING -> one (crossattn, vector) per entry, the vector built by ComfyUI's SDXL
    `encode_adm` with the official size conditioning where the entry gives none."""
    if not isinstance(conditioning, list) or not conditioning:
        raise ValueError(f"{what} conditioning is empty; connect the SUPIR Conditioner (or a CLIP Text Encode) here")
    out = []
    for entry in conditioning:
        cross, extra = entry[0], dict(entry[1])
        if extra.get("pooled_output") is None:
            raise ValueError(f"{what} conditioning has no pooled output: it was not made by an SDXL CLIP; "
                             "use the CLIP that comes with the SDXL model")
        for k, v in SIZE_CONDITIONING.items():
            extra.setdefault(k, v)
        vector = model_base.encode_adm(**extra)
        out.append(Conditioning(cross.float(), vector.float()))
    return out


def _check_context(conds: list[Conditioning], unet, what: str) -> None:
    want = context_dim(unet)
    for c in conds:
        if want is not None and c.crossattn.shape[-1] != want:
            raise ValueError(f"{what} conditioning has width {c.crossattn.shape[-1]} but this SDXL model expects "
                             f"{want}: it was encoded with another model's CLIP; use the CLIP from the same loader")


def _per(conds: list[Conditioning], index: int) -> Conditioning:
    return conds[index] if len(conds) > 1 else conds[0]


# --- sampling ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileOptions:
    enabled: bool = False
    size: int = 128  # latent pixels (official default: 1024 px)
    stride: int = 64


CUDA_GRAPH_CHOICES = ("auto", "off")


@dataclass(frozen=True)
class Acceleration:
    """Fast paths of the sampler; each computes the plain path's function (tests/unit/test_fast_paths.py).

    cuda_graph "auto": on CUDA with the models fully loaded, the network call is replayed from CUDA graphs
    (checked against eager once, eager fallback; see cuda_graphs.py); "off": always eager.
    tile_batch: windows per network call in tiled sampling (more is faster on big GPUs, needs more memory).
    capture_backend: replaces CUDA graph capture (tests drive the graph bookkeeping on the CPU with it).
    """

    cuda_graph: str = "auto"
    tile_batch: int = 1
    capture_backend: Optional[CaptureBackend] = None

    def validate(self) -> None:
        if self.cuda_graph not in CUDA_GRAPH_CHOICES:
            raise ValueError(f"cuda_graph must be one of {CUDA_GRAPH_CHOICES}, got {self.cuda_graph!r}")
        if not isinstance(self.tile_batch, int) or self.tile_batch < 1:
            raise ValueError(f"tile_batch must be a whole number of at least 1, got {self.tile_batch!r}")


def _network(supir: SupirModel, accel: Acceleration, device: torch.device):
    """The network call of this run: eager `supir.eps`, or the same replayed from CUDA graphs."""
    if accel.cuda_graph == "off":
        return supir.eps
    if accel.capture_backend is not None:
        return GraphedNetwork(supir.eps, accel.capture_backend)
    if device.type != "cuda":
        return supir.eps
    if not all_on_device([supir.sdxl.model.diffusion_model, supir.adaptor.model], device):
        logger.info("SUPIR sampling eagerly: the models are only partly on the GPU (low VRAM), and a CUDA graph "
                    "cannot capture the weight copies of a partial load")
        return supir.eps
    return GraphedNetwork(supir.eps, CudaGraphBackend())


def _prompt_layout(n_pos: int, batch: int, n_windows: int, kind: str) -> str:
    if n_pos == 1:
        return "shared"
    if kind == "tile":
        if n_pos != n_windows:
            raise ValueError(f"{n_pos} tile captions for {n_windows} tiles: caption with the sampler's tile size "
                             "and stride, or use one caption")
        return "tile"
    if n_pos != batch:
        raise ValueError(f"{n_pos} captions for a batch of {batch} images: give one caption per image, or one")
    return "batch"


class _CFGModels:
    """The CFG denoisers of one run, their conditioning batched on the device once: one for the whole latent, or
    one per group of tile windows (stacked on the batch dimension), with per-tile prompts where given."""

    def __init__(self, denoise, cfg: CFGSchedule, pos: list[Conditioning], neg: list[Conditioning], layout: str,
                 control_latent: torch.Tensor, windows: list, device: torch.device):
        self.denoise, self.cfg, self.pos, self.neg = denoise, cfg, pos, neg
        self.layout, self.control_latent, self.windows, self.device = layout, control_latent, windows, device
        self.batch = control_latent.shape[0]
        self.shared_pos, self.shared_neg = self._stacked(pos), self._stacked(neg)
        self._groups: dict[tuple[int, ...], Callable] = {}

    def _stacked(self, conds: list[Conditioning]) -> Conditioning:
        """One prompt for every image, or (batch layout) one per image, as a batch on the device."""
        if len(conds) == 1:
            c = conds[0]
            return Conditioning(c.crossattn.expand(self.batch, -1, -1).to(self.device),
                                c.vector.expand(self.batch, -1).to(self.device))
        return Conditioning(torch.cat([c.crossattn for c in conds]).to(self.device),
                            torch.cat([c.vector for c in conds]).to(self.device))

    def _model(self, cond: Conditioning, uncond: Conditioning, hint: torch.Tensor):
        inputs = cfg_inputs(cond, uncond, hint, self.device)  # batched once per run, not per step

        def model(x: torch.Tensor, sigma_hat: float, control_scale: float) -> torch.Tensor:
            return cfg_denoise(self.denoise, x, sigma_hat, inputs, control_scale, self.cfg)
        return model

    def whole(self):
        return self._model(self.shared_pos, self.shared_neg, self.control_latent)

    def _group_conditioning(self, group: tuple[int, ...], conds: list[Conditioning], shared: Conditioning,
                            per_tile: bool) -> Conditioning:
        parts = [self._stacked([_per(conds, j)]) if per_tile else shared for j in group]
        return Conditioning(torch.cat([c.crossattn for c in parts]), torch.cat([c.vector for c in parts]))

    def group(self, group: tuple[int, ...]):
        """The model of windows `group`, stacked on the batch dimension (built once per run)."""
        if group not in self._groups:
            per_tile = self.layout == "tile"
            cond = self._group_conditioning(group, self.pos, self.shared_pos, per_tile)
            uncond = self._group_conditioning(group, self.neg, self.shared_neg, per_tile and len(self.neg) > 1)
            hint = tiled_sampling.stack_windows(self.control_latent, self.windows, group)
            self._groups[group] = self._model(cond, uncond, hint)
        return self._groups[group]


def _start(settings: SamplerSettings, seed: int, shape: torch.Size, initial_noise: torch.Tensor | None,
           device: torch.device):
    """(sigmas, x_0 on the device, noise sampler) as the official samplers start; seeded CPU draws."""
    if settings.sampler == "restore_edm":
        sigmas = legacy_ddpm_sigmas(settings.steps)
    else:
        sigmas = karras_sigmas_for(settings.steps)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = initial_noise if initial_noise is not None else torch.randn(shape, generator=gen)
    x = initial_latent(noise.float(), sigmas).to(device)
    if settings.sampler == "restore_edm":
        noise_sampler = generator_noise_sampler(seed + 1)
    else:
        noise_sampler = brownian_noise_sampler(x, sigmas, seed)
    return sigmas, x, noise_sampler


@torch.no_grad()
def sample(supir: SupirModel, latents: SupirLatents, positive: list, negative: list, settings: SamplerSettings,
           seed: int, tiles: TileOptions = TileOptions(), callback: StepCallback = None,
           initial_noise: torch.Tensor | None = None, accel: Acceleration = Acceleration()) -> torch.Tensor:
    """The restoration sampler on a batch; returns the final latent (scaled, as ComfyUI's LATENT) on the CPU.

    Inside the step loop nothing waits on the device: the schedule, denoiser scalings and guidance weights are
    host floats, the conditioning is batched once, and noise draws are copied asynchronously.
    """
    settings.validate()
    accel.validate()
    if latents.source != supir.source:
        raise ValueError(f"these SUPIR latents were encoded with {latents.source!r} but the sampler was given "
                         f"{supir.source!r}: connect the same SUPIR model to Encode and Sampler")
    model_base = supir.sdxl.model
    unet = model_base.diffusion_model
    if latents.control.shape[1] != unet.in_channels:
        raise ValueError(f"latents have {latents.control.shape[1]} channels, the model takes {unet.in_channels}")
    pos = conditioning_tensors(positive, model_base, "positive")
    neg = conditioning_tensors(negative, model_base, "negative")
    _check_context(pos + neg, unet, "the")
    b, _, h, w = latents.control.shape
    windows = (tiled_sampling.sliding_windows(h, w, tiles.size, tiles.stride) if tiles.enabled
               else [(0, h, 0, w)])
    layout = _prompt_layout(len(pos), b, len(windows), positive[0][1].get("fsupir_caption_kind", "batch"))
    if len(neg) not in (1, len(pos)):
        raise ValueError(f"{len(neg)} negative prompts for {len(pos)} positive ones: give one negative prompt")

    tile_h, tile_w = windows[0][1] - windows[0][0], windows[0][3] - windows[0][2]
    per_call = min(accel.tile_batch, len(windows)) if tiles.enabled else 1
    mm.load_models_gpu(supir.patchers_for_sampling(),
                       memory_required=model_base.memory_required([2 * b * per_call, 4, tile_h, tile_w]) * 1.5)
    device = mm.get_torch_device()
    network = _network(supir, accel, device)
    models = _CFGModels(make_denoise(network), CFGSchedule(settings.cfg_scale, settings.cfg_scale_start,
                                                           settings.linear_cfg),
                        pos, neg, layout, latents.control.to(device), windows, device)
    sigmas, x, noise_sampler = _start(settings, seed, latents.control.shape, initial_noise, device)
    steps = len(sigmas) - 1

    def on_step(d: dict) -> None:
        mm.throw_exception_if_processing_interrupted()
        if callback is not None:
            callback(d["i"], steps, d["x"], d["denoised"])

    common = dict(noise_sampler=noise_sampler, callback=on_step, x_center=latents.center.to(device),
                  guidance=RestorationGuidance(settings.restore_cfg, settings.restore_cfg_s_tmin),
                  control=ControlSchedule(settings.control_scale, settings.control_scale_start,
                                          settings.linear_control_scale))
    churn = Churn(s_churn=settings.s_churn, s_noise=settings.s_noise)
    edm = settings.sampler == "restore_edm"
    try:
        if not tiles.enabled and edm:
            out = sample_restore_edm(models.whole(), x, sigmas, churn=churn, **common)
        elif not tiles.enabled:
            out = sample_restore_dpmpp_2m(models.whole(), x, sigmas, eta=settings.eta, s_noise=settings.s_noise,
                                          **common)
        elif edm:
            out = tiled_sampling.sample_tiled_restore_edm(models.group, x, sigmas, windows=windows, churn=churn,
                                                          tile_batch=accel.tile_batch, **common)
        else:
            out = tiled_sampling.sample_tiled_restore_dpmpp_2m(models.group, x, sigmas, windows=windows,
                                                               eta=settings.eta, s_noise=settings.s_noise,
                                                               tile_batch=accel.tile_batch, **common)
    finally:
        if isinstance(network, GraphedNetwork):
            network.release()  # the graphs' memory pool goes now, not whenever Python collects it
    return out.float().cpu()
