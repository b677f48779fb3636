"""Degradation-Robust Encode: IMAGE -> SUPIR latents (control + centre) and the stage-1 IMAGE."""
from __future__ import annotations

from ..supir_modules import images
from ..supir_modules.latents import SupirLatents
from ..supir_modules.pipeline import run_stage1
from ..supir_modules.stage_report import StageMeter, ui_output
from .common import CATEGORY, SUPIR_LATENTS_TYPE, SUPIR_MODEL_TYPE, TILE_NORM_INPUT, check_supir_model


class FSUPIREncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "supir_model": (SUPIR_MODEL_TYPE, {"tooltip": "From a SUPIR Loader."}),
            "vae": ("VAE", {"tooltip": "The SDXL VAE from the same loader."}),
            "image": ("IMAGE", {"tooltip": "The degraded image(s): RGB, grey or RGBA (alpha is carried through)."}),
            "upscale": ("FLOAT", {"default": 1.0, "min": 0.1, "max": 16.0, "step": 0.05,
                                  "tooltip": "Output size = input size x upscale."}),
            "min_size": ("INT", {"default": 1024, "min": 64, "max": 8192, "step": 64,
                                 "tooltip": "SUPIR works with the short side at least this large (official 1024); "
                                            "the result is resized back to input x upscale."}),
            "seed": ("INT", {"default": 1234, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Seed of the centre latent's sample (restoration guidance target)."}),
            "tiled_vae": ("BOOLEAN", {"default": False,
                                      "tooltip": "GroupNorm-synchronised tiled VAE: seamless, for large images."}),
            "encoder_tile_size": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64,
                                          "tooltip": "Tiled VAE encoder tile in pixels (official 512)."}),
            "decoder_tile_size": ("INT", {"default": 64, "min": 16, "max": 512, "step": 8,
                                          "tooltip": "Tiled VAE decoder tile in latent pixels (official 64)."}),
            "tile_norm": TILE_NORM_INPUT,
        }}

    RETURN_TYPES = (SUPIR_LATENTS_TYPE, "IMAGE")
    RETURN_NAMES = ("supir_latents", "stage1_image")
    OUTPUT_TOOLTIPS = ("Control and centre latents for the SUPIR Sampler.",
                       "The degradation-robust stage-1 result at the working size: preview it, caption it, and "
                       "give it to Tiled Decode for the colour fix.")
    FUNCTION = "encode"
    CATEGORY = CATEGORY
    DESCRIPTION = "Stage 1 of SUPIR: the degradation-robust encoder, its decode, and the guidance target."

    def encode(self, supir_model, vae, image, upscale=1.0, min_size=1024, seed=1234, tiled_vae=False,
               encoder_tile_size=512, decoder_tile_size=64, tile_norm="whole image"):
        check_supir_model(supir_model)
        if image is None or image.shape[0] == 0:
            raise ValueError("the image batch is empty: connect a Load Image node")
        rgb, alpha = images.split_channels(image)
        h, w = rgb.shape[1], rgb.shape[2]
        if min(h, w) * upscale < images.MIN_SIDE:
            raise ValueError(f"the image is {w}x{h} px and upscale {upscale} gives under {images.MIN_SIDE} px on a "
                             f"side; SUPIR needs at least {images.MIN_SIDE}: raise upscale or enlarge the image")
        size = images.plan_size(h, w, upscale, min_size)
        with StageMeter("encode") as meter:
            x = images.prepare_batch(rgb, size)
            r = run_stage1(supir_model, vae, x, seed, tiled_vae, encoder_tile_size, decoder_tile_size,
                           official_tile_norm=tile_norm == "official")
        latents = SupirLatents(control=r.control_latent, center=r.center_latent, out_size=(size.out_h, size.out_w),
                               source=supir_model.source, alpha=alpha,
                               info={"work_size": (size.work_h, size.work_w), "seed": seed})
        return {"ui": ui_output(meter.report), "result": (latents, images.to_comfy_image(r.stage1))}


NODE_CLASS_MAPPINGS = {"FSUPIR_Encode": FSUPIREncode}
NODE_DISPLAY_NAME_MAPPINGS = {"FSUPIR_Encode": "SUPIR Degradation-Robust Encode"}
