"""The SUPIR model as ComfyUI sees it: the user's SDXL `ModelPatcher`, plus the adaptor (GLVControl and the 12
connectors) and the degradation-robust encoder, each held by its own `ModelPatcher` so ComfyUI's memory manager
loads, partially loads (low VRAM) and offloads them like its own models.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn as nn

import comfy.model_management as mm
import comfy.model_patcher

from .adaptor import GLVControl, build_connectors
from .config import SDXL_HEAD_CHANNELS, ControlConfig, EncoderConfig, connector_configs_from_state_dict
from .dtypes import model_compute_dtype, resolve_weight_dtype
from .ops import fp8_optimizations, pick_operations
from .unet import check_connectors_fit, supir_unet_forward
from .vae import DegradationRobustEncoder

logger = logging.getLogger(__name__)


class SupirLoadError(ValueError):
    """A SUPIR file that cannot be built into the model; the message names the file and the fix."""


class SupirAdaptor(nn.Module):
    """`control_model` (GLVControl) and `project_modules` (connectors), under their official names."""

    def __init__(self, control: ControlConfig, connectors: list, dtype=None, device=None, operations=None):
        super().__init__()
        self.control_model = GLVControl(control, dtype=dtype, device=device, operations=operations)
        self.project_modules = build_connectors(connectors, dtype=dtype, device=device, operations=operations)
        self.weight_dtype = dtype

    def get_dtype(self) -> torch.dtype:  # ModelPatcher.model_dtype() asks for this
        return self.weight_dtype


def _count(sd: Mapping[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in sd.values())


def _load_checked(module: nn.Module, sd: Mapping[str, torch.Tensor], what: str, path: str) -> None:
    """load_state_dict(strict=False), then an error listing missing keys and a log of unexpected ones."""
    missing, unexpected = module.load_state_dict(dict(sd), strict=False)
    if unexpected:
        logger.warning("%s: %d unexpected %s keys ignored, e.g. %s", path, len(unexpected), what, unexpected[:5])
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise SupirLoadError(f"{path}: the SUPIR file lacks {len(missing)} {what} weights ({', '.join(missing[:5])}"
                             f"{more}); the file is incomplete or not SUPIR-v0Q/v0F: download it again")


def build_adaptor(control_sd: Mapping[str, torch.Tensor], connector_sd: Mapping[str, torch.Tensor], path: str,
                  weight_dtype: torch.dtype, compute_dtype: torch.dtype, device: torch.device | str = "cpu",
                  num_head_channels: int = SDXL_HEAD_CHANNELS, load_device: torch.device | None = None,
                  fp8_matmul: bool = False) -> SupirAdaptor:
    """Build the adaptor from its (prefix-stripped) weights, configuration read from their shapes.

    The layers are built on `device` with ComfyUI's operations for `load_device`, the device they compute on
    (`fp8_matmul`: fp8 matrix multiplication there for fp8-stored weights, as the SDXL model has it).
    """
    try:
        control_cfg = ControlConfig.from_state_dict(control_sd, num_head_channels=num_head_channels)
        connector_cfgs = connector_configs_from_state_dict(connector_sd)
    except (KeyError, ValueError) as e:
        raise SupirLoadError(f"{path}: cannot read the SUPIR adaptor's layout: {e}") from None
    ops = pick_operations(weight_dtype, compute_dtype, load_device=load_device, fp8_matmul=fp8_matmul)
    adaptor = SupirAdaptor(control_cfg, connector_cfgs, dtype=weight_dtype, device=device, operations=ops)
    _load_checked(adaptor.control_model, control_sd, "GLVControl", path)
    _load_checked(adaptor.project_modules, connector_sd, "connector", path)
    return adaptor.eval().requires_grad_(False)


def build_denoise_encoder(sd: Mapping[str, torch.Tensor], path: str, dtype: torch.dtype,
                          device: torch.device | str = "cpu") -> DegradationRobustEncoder:
    try:
        cfg = EncoderConfig.from_state_dict(sd)
    except (KeyError, ValueError) as e:
        raise SupirLoadError(f"{path}: cannot read the degradation-robust encoder's layout: {e}") from None
    enc = DegradationRobustEncoder(cfg)
    _load_checked(enc.denoise_encoder, sd, "degradation-robust encoder", path)
    return enc.to(device=device, dtype=dtype).eval().requires_grad_(False)


@dataclass
class SupirModel:
    """What the pack's FSUPIR_MODEL socket carries between nodes."""

    sdxl: "comfy.model_patcher.ModelPatcher"  # the user's SDXL MODEL (never modified)
    adaptor: "comfy.model_patcher.ModelPatcher"  # SupirAdaptor
    denoise_encoder: "comfy.model_patcher.ModelPatcher"  # DegradationRobustEncoder, on the VAE's devices
    source: str  # the SUPIR file, for messages
    info: dict = field(default_factory=dict)

    @property
    def compute_dtype(self) -> torch.dtype:
        return model_compute_dtype(self.sdxl.model)

    def patchers_for_sampling(self) -> list:
        return [self.sdxl, self.adaptor]

    def eps(self, x_in: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor,
            hint: torch.Tensor, control_scale: float | torch.Tensor = 1.0,
            transformer_options: dict | None = None) -> torch.Tensor:
        """eps(x_in, t) of SDXL steered by SUPIR: GLVControl on the control latent `hint`, then the UNet walk.

        `x_in` is the c_in-scaled noisy latent (the official GLVControl and UNet both read it). Models must
        already be on their device (`comfy.model_management.load_models_gpu(self.patchers_for_sampling())`).
        """
        adaptor: SupirAdaptor = self.adaptor.model
        unet = self.sdxl.model.diffusion_model
        hint = hint.to(x_in.device, self.compute_dtype)
        control = adaptor.control_model(hint, timesteps, x_in, context, y)
        if transformer_options is None:
            # The MODEL's own transformer options (attention patches of upstream nodes) reach its blocks; the
            # adaptor gets none, as ComfyUI's ControlNets do.
            transformer_options = dict(self.sdxl.model_options.get("transformer_options", {}))
        return supir_unet_forward(unet, x_in, timesteps, context, y, control, adaptor.project_modules,
                                  control_scale, transformer_options=transformer_options)


def make_supir_model(sdxl_patcher, vae, control_sd: Mapping[str, torch.Tensor],
                     connector_sd: Mapping[str, torch.Tensor], encoder_sd: Mapping[str, torch.Tensor], path: str,
                     weight_dtype_choice: str = "auto", num_head_channels: int = SDXL_HEAD_CHANNELS) -> SupirModel:
    """Wrap the SUPIR weights around a ComfyUI SDXL MODEL and VAE.

    The adaptor computes in the SDXL model's compute dtype (the official code runs control and UNet under one
    fp16 autocast); its storage dtype is the user's choice or ComfyUI's rule. The degradation-robust encoder
    computes in the VAE's dtype, since it shares the VAE's quant_conv.
    """
    model_type = getattr(getattr(sdxl_patcher.model, "model_type", None), "name", "EPS")
    if model_type != "EPS":
        raise SupirLoadError(f"the SDXL model predicts {model_type}, but SUPIR was trained on SDXL's eps prediction "
                             "and samples with it: use an eps-prediction SDXL base or fine-tune (most are)")
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    params = _count(control_sd) + _count(connector_sd)
    weight_dtype = resolve_weight_dtype(weight_dtype_choice, load_device, params)
    # The UNet walk runs in the control features' dtype, so the adaptor must compute in the UNet's dtype.
    compute_dtype = model_compute_dtype(sdxl_patcher.model)
    # The adaptor's fp8 layers multiply in fp8 when the SDXL model's do (its loader's fp8_e4m3fn_fast).
    adaptor = build_adaptor(control_sd, connector_sd, path, weight_dtype, compute_dtype, offload_device,
                            num_head_channels=num_head_channels, load_device=load_device,
                            fp8_matmul=fp8_optimizations(sdxl_patcher.model))
    check_connectors_fit(sdxl_patcher.model.diffusion_model, adaptor.project_modules,
                         len(adaptor.control_model.config.feature_channels()))
    adaptor_patcher = comfy.model_patcher.ModelPatcher(adaptor, load_device=load_device, offload_device=offload_device)

    vae_dtype = getattr(vae, "vae_dtype", torch.float32)
    vae_device = getattr(vae, "device", load_device)
    vae_offload = getattr(vae, "offload_device", mm.vae_offload_device())
    encoder = build_denoise_encoder(encoder_sd, path, vae_dtype, vae_offload)
    encoder_patcher = comfy.model_patcher.ModelPatcher(encoder, load_device=vae_device, offload_device=vae_offload)
    logger.info("SUPIR adaptor from %s: %.1fM parameters stored as %s, computing in %s; "
                "degradation-robust encoder %.1fM parameters in %s", path, params / 1e6, weight_dtype,
                compute_dtype, _count(encoder_sd) / 1e6, vae_dtype)
    return SupirModel(sdxl=sdxl_patcher, adaptor=adaptor_patcher, denoise_encoder=encoder_patcher, source=path,
                      info={"weight_dtype": str(weight_dtype), "compute_dtype": str(compute_dtype)})
