"""Image Quality: PSNR / SSIM of restored images against references (supir_modules/metrics.py)."""
from __future__ import annotations

from ..supir_modules import metrics
from .common import CATEGORY


def score_batch(restored, reference, crop_border: int, color_space: str) -> list[metrics.Score]:
    """One Score per restored image; a single reference is compared with every restored image."""
    if restored is None or reference is None or restored.shape[0] == 0 or reference.shape[0] == 0:
        raise ValueError("connect a restored and a reference IMAGE (neither may be empty)")
    n, m = restored.shape[0], reference.shape[0]
    if m not in (1, n):
        raise ValueError(f"{n} restored images but {m} references: give one reference or one per restored image")
    if tuple(restored.shape[1:3]) != tuple(reference.shape[1:3]):
        raise ValueError(f"the restored images are {restored.shape[2]}x{restored.shape[1]} px but the references are "
                         f"{reference.shape[2]}x{reference.shape[1]} px: restore at the reference size (SUPIR Encode "
                         "upscale = the downscale factor) or resize one of them (e.g. Upscale Image) first")
    return [metrics.score(f"image {i + 1}", restored[i], reference[i if m > 1 else 0], crop_border, color_space)
            for i in range(n)]


class FSUPIRImageQuality:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "restored": ("IMAGE", {"tooltip": "The restored image(s)."}),
            "reference": ("IMAGE", {"tooltip": "The clean reference: one, or one per restored image; same size."}),
            "crop_border": ("INT", {"default": 0, "min": 0, "max": 64,
                                    "tooltip": "Pixels dropped on every side before scoring; the usual convention is "
                                               "the scale factor (4 for x4)."}),
            "color_space": (list(metrics.COLOR_SPACES), {
                "default": "Y", "tooltip": "Y: BT.601 luma as BasicSR and most papers; RGB: mean over channels."}),
        }}

    RETURN_TYPES = ("STRING", "FLOAT", "FLOAT")
    RETURN_NAMES = ("report", "psnr", "ssim")
    OUTPUT_TOOLTIPS = ("One line per image and the mean.", "Mean PSNR in dB.", "Mean SSIM.")
    FUNCTION = "measure"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY
    DESCRIPTION = ("PSNR and SSIM (11x11 Gaussian window, sigma 1.5, as BasicSR / the MATLAB reference) of restored "
                   "images against clean references, on Y or RGB, with a border crop.")

    def measure(self, restored, reference, crop_border=0, color_space="Y"):
        scores = score_batch(restored, reference, crop_border, color_space)
        mean = metrics.mean_score(scores, f"mean of {len(scores)} ({color_space}, crop border {crop_border})")
        report = "\n".join(metrics.format_line(s) for s in [*scores, mean])
        return {"ui": {"text": [report]}, "result": (report, mean.psnr, mean.ssim)}


NODE_CLASS_MAPPINGS = {"FSUPIR_ImageQuality": FSUPIRImageQuality}
NODE_DISPLAY_NAME_MAPPINGS = {"FSUPIR_ImageQuality": "SUPIR Image Quality"}
