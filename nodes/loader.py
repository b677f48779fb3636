"""Loader nodes: the SUPIR file + an SDXL checkpoint (or ComfyUI's MODEL/CLIP/VAE) -> FSUPIR_MODEL, CLIP, VAE."""
from __future__ import annotations

import logging
import os

import folder_paths

from ..supir_modules import checkpoint
from ..supir_modules.dtypes import WEIGHT_DTYPE_CHOICES, parse_weight_dtype
from ..supir_modules.model import SupirModel, make_supir_model
from ..supir_modules.sdxl_loader import load_sdxl
from .common import CATEGORY, SUPIR_FOLDER, SUPIR_MODEL_TYPE, resolve_supir_file, supir_file_list

logger = logging.getLogger(__name__)

_DTYPE_TOOLTIP = ("Storage dtype of the weights. auto: ComfyUI's choice for your device. fp8_e4m3fn halves memory; "
                  "layers are cast to fp16/bf16 to compute.")
_SUPIR_TOOLTIP = (f"SUPIR-v0Q (heavy degradations) or SUPIR-v0F (light): the official .ckpt or a pruned .safetensors, "
                  f"from models/{SUPIR_FOLDER} or models/checkpoints. The weights are for non-commercial use only.")


def _weight_dtype_input() -> tuple:
    return (list(WEIGHT_DTYPE_CHOICES), {"default": "auto", "tooltip": _DTYPE_TOOLTIP})


def _supir_parts(path: str) -> checkpoint.SupirStateDicts:
    return checkpoint.split_supir_state_dict(checkpoint.read_state_dict(path), path)


def _wrap(model, vae, parts: checkpoint.SupirStateDicts, path: str, weight_dtype: str) -> SupirModel:
    if parts.kind == "supir_full":
        logger.info("%s also holds SDXL weights; only its SUPIR weights are used, on the SDXL model you chose "
                    "(pick this same file as the SDXL checkpoint to use its SDXL, as the official app does)", path)
    return make_supir_model(model, vae, parts.control, parts.connectors, parts.denoise_encoder, path, weight_dtype)


class FSUPIRLoader:
    """SUPIR file + SDXL checkpoint file -> SUPIR model, CLIP, VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "supir_model": (supir_file_list(), {"tooltip": _SUPIR_TOOLTIP}),
            "sdxl_model": (folder_paths.get_filename_list("checkpoints"), {
                "tooltip": "An SDXL base model or fine-tune (models/checkpoints) with its text encoders and VAE."}),
            "weight_dtype": _weight_dtype_input(),
        }}

    RETURN_TYPES = (SUPIR_MODEL_TYPE, "CLIP", "VAE")
    RETURN_NAMES = ("supir_model", "clip", "vae")
    OUTPUT_TOOLTIPS = ("SDXL with the SUPIR adaptor and degradation-robust encoder.", "SDXL's text encoders.",
                       "SDXL's VAE.")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Loads SUPIR (Yu et al., CVPR 2024) on an SDXL checkpoint."

    def load(self, supir_model: str, sdxl_model: str, weight_dtype: str = "auto"):
        dtype = parse_weight_dtype(weight_dtype)
        supir_path = resolve_supir_file(supir_model)
        sdxl_path = folder_paths.get_full_path("checkpoints", sdxl_model)
        if sdxl_path is None or not os.path.isfile(sdxl_path):
            raise ValueError(f"SDXL checkpoint {sdxl_model!r} not found in models/checkpoints; put the file there "
                             "and refresh the page")
        supir_sd = checkpoint.read_state_dict(supir_path)
        parts = checkpoint.split_supir_state_dict(supir_sd, supir_path)
        sdxl_sd = supir_sd if os.path.samefile(sdxl_path, supir_path) else checkpoint.read_state_dict(sdxl_path)
        del supir_sd
        checkpoint.require_sdxl(sdxl_sd, sdxl_path)
        model, clip, vae = load_sdxl(sdxl_sd, sdxl_path, weight_dtype=dtype,
                                     embedding_directory=folder_paths.get_folder_paths("embeddings"))
        del sdxl_sd
        return (_wrap(model, vae, parts, supir_path, weight_dtype), clip, vae)


class FSUPIRLoaderFromModel:
    """ComfyUI's MODEL/CLIP/VAE (LoRAs applied upstream take effect) + SUPIR file -> SUPIR model, CLIP, VAE."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SDXL MODEL from ComfyUI's loaders (LoRAs may be applied)."}),
            "clip": ("CLIP", {"tooltip": "The SDXL CLIP that goes with the model."}),
            "vae": ("VAE", {"tooltip": "The SDXL VAE; the degradation-robust encoder shares its quant_conv."}),
            "supir_model": (supir_file_list(), {"tooltip": _SUPIR_TOOLTIP}),
            "weight_dtype": _weight_dtype_input(),
        }}

    RETURN_TYPES = (SUPIR_MODEL_TYPE, "CLIP", "VAE")
    RETURN_NAMES = ("supir_model", "clip", "vae")
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Adds SUPIR to an SDXL model from ComfyUI's own loaders."

    def load(self, model, clip, vae, supir_model: str, weight_dtype: str = "auto"):
        parse_weight_dtype(weight_dtype)
        if clip is None:
            raise ValueError("no CLIP connected: connect the CLIP output of your SDXL checkpoint loader")
        supir_path = resolve_supir_file(supir_model)
        parts = _supir_parts(supir_path)
        return (_wrap(model, vae, parts, supir_path, weight_dtype), clip, vae)


NODE_CLASS_MAPPINGS = {
    "FSUPIR_Loader": FSUPIRLoader,
    "FSUPIR_LoaderFromModel": FSUPIRLoaderFromModel,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "FSUPIR_Loader": "SUPIR Loader",
    "FSUPIR_LoaderFromModel": "SUPIR Loader (from MODEL)",
}
