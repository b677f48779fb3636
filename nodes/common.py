"""Shared pieces of the node layer: the pack's type names, category and model folder."""
from __future__ import annotations

import os

import folder_paths

CATEGORY = "image/restoration/FSUPIR"
SUPIR_MODEL_TYPE = "FSUPIR_MODEL"
SUPIR_LATENTS_TYPE = "FSUPIR_LATENTS"
SUPIR_FOLDER = "SUPIR"
# Tiled VAE GroupNorm statistics: pooled over each tile's own region (matches the untiled VAE closely), or
# combined as the official tilevae.py does (whole padded tiles; measurably further from untiled).
TILE_NORM_CHOICES = ["whole image", "official"]
TILE_NORM_INPUT = (TILE_NORM_CHOICES, {"default": "whole image",
                                       "tooltip": "Tiled VAE GroupNorm statistics. whole image: close to untiled. "
                                                  "official: as SUPIR's tilevae.py (visibly less exact)."})



def tile_inputs(size_tooltip: str, stride_tooltip: str) -> dict:
    """The sampler's tile_size / tile_stride widgets (pixels; official 1024 / 512). The caption node uses the same
    ones, so its per-tile captions fall on exactly the sampler's windows."""
    return {
        "tile_size": ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 64, "tooltip": size_tooltip}),
        "tile_stride": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64, "tooltip": stride_tooltip}),
    }


def register_model_folder(name: str, extensions: set[str]) -> None:
    """Make models/<name> a ComfyUI model folder, keeping paths that others or extra_model_paths.yaml added."""
    default = os.path.join(folder_paths.models_dir, name)
    entry = folder_paths.folder_names_and_paths.get(name)
    if entry is None:
        folder_paths.folder_names_and_paths[name] = ([default], set(extensions))
    elif default not in entry[0]:
        entry[0].append(default)


def supir_file_list() -> list[str]:
    """SUPIR files: everything in models/SUPIR, then models/checkpoints (where many users keep them)."""
    names = list(folder_paths.get_filename_list(SUPIR_FOLDER))
    names += [n for n in folder_paths.get_filename_list("checkpoints") if n not in names]
    return names


def resolve_supir_file(name: str) -> str:
    for folder in (SUPIR_FOLDER, "checkpoints"):
        path = folder_paths.get_full_path(folder, name)
        if path is not None and os.path.isfile(path):
            return path
    raise ValueError(f"SUPIR model {name!r} not found; put SUPIR-v0Q/v0F (.ckpt or .safetensors) into "
                     f"models/{SUPIR_FOLDER} (or models/checkpoints) and refresh the page")


def check_supir_model(value) -> None:
    from ..supir_modules.model import SupirModel

    if not isinstance(value, SupirModel):
        raise TypeError(f"expected a SUPIR model (from a SUPIR Loader), got {type(value).__name__}")


def check_supir_latents(value) -> None:
    from ..supir_modules.latents import SupirLatents

    if not isinstance(value, SupirLatents):
        raise TypeError(f"expected SUPIR latents (from SUPIR Degradation-Robust Encode), got {type(value).__name__}")


register_model_folder(SUPIR_FOLDER, folder_paths.supported_pt_extensions)
