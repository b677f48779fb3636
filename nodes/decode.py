"""Tiled Decode: LATENT -> IMAGE, GroupNorm-synchronised tiling, colour fix against the stage-1 image."""
from __future__ import annotations

from ..supir_modules import images
from ..supir_modules.colorfix import MODES
from ..supir_modules.pipeline import decode, finish
from ..supir_modules.stage_report import StageMeter, ui_output
from .common import CATEGORY, TILE_NORM_INPUT


class FSUPIRDecode:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "vae": ("VAE", {"tooltip": "The SDXL VAE."}),
                "samples": ("LATENT", {"tooltip": "From the SUPIR Sampler."}),
                "color_fix": (list(MODES), {"default": "Wavelet",
                                            "tooltip": "Match colours to the stage-1 image (official Wavelet)."}),
                "tiled_vae": ("BOOLEAN", {"default": False, "tooltip": "Seamless tiled decoding for large images."}),
                "decoder_tile_size": ("INT", {"default": 64, "min": 16, "max": 512, "step": 8,
                                              "tooltip": "Tile in latent pixels (official 64)."}),
                "tile_norm": TILE_NORM_INPUT,
            },
            "optional": {
                "stage1_image": ("IMAGE", {"tooltip": "The stage-1 image from Encode: the colour reference."}),
            },
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    FUNCTION = "decode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Decodes SUPIR's result, fixes colours against stage 1, restores the size and alpha."

    def decode(self, vae, samples, color_fix="Wavelet", tiled_vae=False, decoder_tile_size=64, tile_norm="whole image",
               stage1_image=None):
        if not isinstance(samples, dict) or "samples" not in samples:
            raise ValueError("samples must be a LATENT (from the SUPIR Sampler)")
        if color_fix != "None" and stage1_image is None:
            raise ValueError(f"colour fix {color_fix} needs the stage-1 image: connect Encode's stage1_image, or "
                             "set color_fix to None")
        with StageMeter("decode") as meter:
            decoded = decode(vae, samples["samples"], tiled_vae, decoder_tile_size,
                             official_tile_norm=tile_norm == "official")
            reference = images.from_comfy_image(stage1_image) if stage1_image is not None else None
            image = finish(decoded, reference, color_fix, samples.get("fsupir_out_size"), samples.get("fsupir_alpha"))
        return {"ui": ui_output(meter.report), "result": (image,)}


NODE_CLASS_MAPPINGS = {"FSUPIR_TiledDecode": FSUPIRDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"FSUPIR_TiledDecode": "SUPIR Tiled Decode"}
