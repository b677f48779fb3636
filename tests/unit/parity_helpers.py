"""Reading the official-code parity fixture (shared/fixtures/parity, see its README) into our modules.

Every width, depth and context size comes from the tensors; only the attention head size, which shapes
cannot show, comes from the fixture's config.json.
"""
from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file


def strip(sd: dict, prefix: str, drop: tuple[str, ...] = ()) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix) and not any(d in k for d in drop)}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """max |a - ref| / max |ref|: the fixture README states its tolerances in these terms."""
    assert a.shape == ref.shape, f"shape {tuple(a.shape)} != reference {tuple(ref.shape)}"
    return ((a.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


@dataclass
class Parity:
    weights: dict
    case: dict
    config: dict

    @property
    def unet_head_channels(self) -> int:
        return int(self.config["unet"]["num_head_channels"])

    @property
    def control_head_channels(self) -> int:
        return int(self.config["control"]["num_head_channels"])


def load_parity(parity_dir: Path) -> Parity:
    weights = {k: v.float() for k, v in load_file(str(parity_dir / "tiny_supir.safetensors")).items()}
    case = load_file(str(parity_dir / "case.safetensors"))
    config = json.loads((parity_dir / "config.json").read_text())
    return Parity(weights, case, config)


def mod(name: str):
    return importlib.import_module(f"fsupir_under_test.supir_modules.{name}")


def build_adaptor(p: Parity):
    model = mod("model")
    return model.build_adaptor(
        strip(p.weights, "model.control_model.", drop=("mask_LQ",)),
        strip(p.weights, "model.diffusion_model.project_modules."),
        "tiny_supir.safetensors", torch.float32, torch.float32, num_head_channels=p.control_head_channels)


def build_unet(p: Parity):
    """ComfyUI's own UNetModel on the fixture's UNet weights (config detected by ComfyUI from the keys)."""
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    usd = {k: v for k, v in p.weights.items()
           if k.startswith("model.diffusion_model.") and ".project_modules." not in k}
    cfg = comfy.model_detection.detect_unet_config(usd, "model.diffusion_model.")
    cfg["num_head_channels"] = p.unet_head_channels
    unet = UNetModel(**cfg, operations=comfy.ops.disable_weight_init)
    missing, unexpected = unet.load_state_dict(strip(usd, "model.diffusion_model."), strict=False)
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    return unet.eval()


def build_vae(p: Parity):
    """ComfyUI's VAE (config from the decoder's shapes) and our degradation-robust encoder."""
    import comfy.sd

    config = mod("config")
    vsd = strip(p.weights, "first_stage_model.", drop=("denoise_encoder",))
    ddconfig = config.decoder_config_from_state_dict(vsd)
    embed_dim = vsd["quant_conv.weight"].shape[0] // 2
    comfy_vae = comfy.sd.VAE(sd=vsd, config={"params": {"embed_dim": embed_dim, "ddconfig": ddconfig}})
    enc = mod("model").build_denoise_encoder(strip(p.weights, "first_stage_model.denoise_encoder."),
                                            "tiny_supir.safetensors", torch.float32)
    return comfy_vae.first_stage_model.float().eval(), enc


def build_eps_network(p: Parity, adaptor=None, unet=None):
    """eps(x_in, t, context, y, hint, control_scale): GLVControl, then ComfyUI's UNet with the connectors, as
    SupirModel.eps runs them (on the fixture's weights, or on the given modules)."""
    adaptor = build_adaptor(p) if adaptor is None else adaptor
    unet = build_unet(p) if unet is None else unet
    unet_mod = mod("unet")

    def eps_network(x_in, t, context, y, hint, scale):
        control = adaptor.control_model(hint, t, x_in, context, y)
        return unet_mod.supir_unet_forward(unet, x_in, t, context, y, control, adaptor.project_modules, scale)

    return eps_network


def full_size_on_meta(layout_json: Path, weight_dtype: torch.dtype = torch.float16,
                      compute_dtype: torch.dtype = torch.float16):
    """(ComfyUI's SDXL UNetModel, our SUPIR adaptor) in the official shapes (shared/fixtures/supir_v0_layout.json)
    on the meta device: weights stored in `weight_dtype`, computing in `compute_dtype` (per-layer casts when
    they differ, as ComfyUI does for fp8 storage)."""
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    shapes = json.loads(layout_json.read_text())["shapes"]
    meta = {k: torch.empty(s, device="meta", dtype=weight_dtype) for k, s in shapes.items()}
    usd = {k: v for k, v in meta.items() if k.startswith("model.diffusion_model.") and ".project_modules." not in k}
    cfg = comfy.model_detection.detect_unet_config(usd, "model.diffusion_model.")
    cfg.update(num_heads=-1, num_head_channels=64)  # ComfyUI's unet_extra_config for SD-family models
    ops = comfy.ops.disable_weight_init if weight_dtype == compute_dtype else comfy.ops.manual_cast
    unet = UNetModel(**cfg, device="meta", dtype=weight_dtype, operations=ops)
    adaptor = mod("model").build_adaptor(strip(meta, "model.control_model.", drop=("mask_LQ",)),
                                         strip(meta, "model.diffusion_model.project_modules."), "layout",
                                         weight_dtype, compute_dtype, device="meta")
    return unet, adaptor
