"""Degrade Image: synthesise a low-quality image and its SPIRE restoration prompt (supir_modules/degrade.py)."""
from __future__ import annotations

from ..supir_modules import degrade
from .common import CATEGORY

MODE_PARAMETERISED = "parameterised"
MODE_REALESRGAN = "Real-ESRGAN"
_R = degrade.SPIRE_RANGES
RANDOM_TOOLTIP = (
    "parameterised: draw the parameters from the seed instead of the inputs below, keeping each stage with "
    f"probability {degrade.SPIRE_KEEP_PROBABILITY} as SPIRE does; blur sigma {_R['blur_sigma'][0]}-"
    f"{_R['blur_sigma'][1]}, downsample x{_R['downsample'][0]}-{_R['downsample'][1]}, noise sigma "
    f"{_R['noise_sigma'][0]}-{_R['noise_sigma'][1]}, JPEG quality {_R['jpeg_quality'][0]}-{_R['jpeg_quality'][1]} "
    "(uniform; one draw for the whole batch). Real-ESRGAN mode is always random.")


class FSUPIRDegradeImage:
    """SPIRE (Qi et al., ECCV 2024) Table 2 degradations, blur -> downsample -> noise -> JPEG, each optional, with
    the restoration prompt naming them in that order; or Real-ESRGAN's second-order degradation ("Remove all
    degradation"). Random ranges: see RANDOM_TOOLTIP and degrade.SPIRE_RANGES."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Clean image(s); RGBA keeps its alpha (resized with the image)."}),
            "mode": ([MODE_PARAMETERISED, MODE_REALESRGAN], {
                "default": MODE_PARAMETERISED,
                "tooltip": "parameterised: SPIRE's blur/downsample/noise/JPEG with a prompt naming them. Real-ESRGAN: "
                           "its random second-order degradation (x4plus settings), output size / downsample."}),
            "random": ("BOOLEAN", {"default": False, "tooltip": RANDOM_TOOLTIP}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Noise and random parameters; same seed, same output."}),
            "blur_sigma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1,
                                     "tooltip": "Gaussian blur sigma in pixels (0 = off). Prompt: 'Deblur with sigma "
                                                "3.0'."}),
            "downsample": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 16.0, "step": 0.1,
                                     "tooltip": "Downscale factor (1 = off); the output is the small (LQ) image, "
                                                "floor(size / factor). Prompt: 'Upsample to 4.0x'. In Real-ESRGAN "
                                                "mode: its final scale (4 = x4plus)."}),
            "noise_sigma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                      "tooltip": "Gaussian noise std on [0, 1] pixel values (0 = off). Prompt: "
                                                 "'Denoise with sigma 0.10'."}),
            "jpeg_quality": ("INT", {"default": 0, "min": 0, "max": 100,
                                     "tooltip": "JPEG quality 1-100 (0 = off). Prompt: 'Dejpeg with quality 40'."}),
        }}

    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("image", "restoration_prompt")
    OUTPUT_TOOLTIPS = ("The degraded (low-quality) image.",
                       "SPIRE restoration instruction; connect it to the SUPIR Conditioner's restoration_instruction.")
    FUNCTION = "degrade"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Synthesise a degraded image and its restoration prompt (SPIRE's parameterised pipeline or "
                   "Real-ESRGAN's second-order degradation) for testing and benchmarking restoration.")

    def degrade(self, image, mode=MODE_PARAMETERISED, random=False, seed=0, blur_sigma=0.0, downsample=1.0,
                noise_sigma=0.0, jpeg_quality=0):
        if image is None:
            raise ValueError("no image connected: connect a Load Image node")
        if mode == MODE_REALESRGAN:
            result = degrade.degrade_realesrgan(image, seed=seed, scale=downsample)
        elif mode == MODE_PARAMETERISED:
            params = degrade.SpireParams(blur_sigma, downsample, noise_sigma, jpeg_quality)
            result = degrade.degrade_parameterised(image, params, seed=seed, random=random)
        else:
            raise ValueError(f"mode={mode!r}: use {MODE_PARAMETERISED!r} or {MODE_REALESRGAN!r}")
        return (result.image, result.prompt)


NODE_CLASS_MAPPINGS = {"FSUPIR_DegradeImage": FSUPIRDegradeImage}
NODE_DISPLAY_NAME_MAPPINGS = {"FSUPIR_DegradeImage": "SUPIR Degrade Image"}
