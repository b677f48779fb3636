"""Full-reference image quality as restoration papers report it: PSNR and SSIM on the Y channel (or RGB) with a
border crop, following XPixelGroup/BasicSR `basicsr/metrics/psnr_ssim.py` (`calculate_psnr`, `calculate_ssim`) and
`basicsr/utils/color_util.py` (`bgr2ycbcr(y_only=True)`); LPIPS (Zhang et al. 2018) only from weights already on
this machine. torch and numpy only: the command-line tools import this without ComfyUI.

Images are float arrays in [0, 1] ([H, W, C] or [H, W]); scores are computed in float64 on the 0-255 scale.
- Y: ITU-R BT.601 studio swing, Y = 16 + 65.481 R + 128.553 G + 24.966 B (R, G, B in [0, 1]), not rounded.
- SSIM (Wang et al. 2004, as the MATLAB reference and BasicSR): 11x11 Gaussian window, sigma 1.5, "valid" region,
  C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 255; RGB: the mean over the three channels. scikit-image's
  `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)` gives the
  same number.
- crop_border: pixels dropped on every side before scoring; the usual convention is crop = the scale factor.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

COLOR_SPACES = ("Y", "RGB")
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
_Y_WEIGHTS = (65.481, 128.553, 24.966)  # BT.601, RGB order


@dataclass(frozen=True)
class Score:
    name: str
    psnr: float
    ssim: float
    lpips: float | None = None


def _as_tensor(image, what: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(image) if not isinstance(image, torch.Tensor) else image)
    if t.ndim == 2:
        t = t.unsqueeze(-1)
    if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{what} must be one image [H, W, C] with 1, 3 or 4 channels, got shape {tuple(t.shape)}")
    return t.detach().to(torch.float64).cpu()[..., :3]  # alpha is not scored


def to_y(rgb: torch.Tensor) -> torch.Tensor:
    """[H, W, 3] in [0, 1] -> [H, W, 1] Y on 16-235 (BasicSR `to_y_channel`); grey [H, W, 1] -> x 255."""
    if rgb.shape[-1] == 1:
        return rgb * 255.0
    w = torch.tensor(_Y_WEIGHTS, dtype=rgb.dtype)
    return (rgb @ w + 16.0).unsqueeze(-1)


def prepare(image, reference, crop_border: int = 0, color_space: str = "Y") -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 [H, W, C] on 0-255 after the border crop and colour conversion."""
    if color_space not in COLOR_SPACES:
        raise ValueError(f"color_space={color_space!r}: use one of {COLOR_SPACES}")
    a, b = _as_tensor(image, "the restored image"), _as_tensor(reference, "the reference image")
    if a.shape[:2] != b.shape[:2]:
        raise ValueError(f"the restored image is {a.shape[1]}x{a.shape[0]} px but the reference is "
                         f"{b.shape[1]}x{b.shape[0]} px: restore at the reference size (SUPIR Encode upscale = "
                         "the downscale factor) or resize one of them first")
    if a.shape[-1] != b.shape[-1]:  # grey against colour: compare colour
        a, b = a.expand(*a.shape[:2], 3), b.expand(*b.shape[:2], 3)
    c = int(crop_border)
    if c < 0 or 2 * c >= min(a.shape[0], a.shape[1]):
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {a.shape[1]}x{a.shape[0]} image: use 0 to "
                         f"{(min(a.shape[0], a.shape[1]) - 1) // 2}")
    if c:
        a, b = a[c:-c, c:-c], b[c:-c, c:-c]
    if color_space == "Y":
        return to_y(a), to_y(b)
    return a * 255.0, b * 255.0


def psnr(image, reference, crop_border: int = 0, color_space: str = "Y") -> float:
    """10 log10(255^2 / MSE); inf for identical images."""
    a, b = prepare(image, reference, crop_border, color_space)
    mse = float(torch.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


def _window() -> torch.Tensor:
    t = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(t ** 2) / (2 * SSIM_SIGMA ** 2))
    return g / g.sum()  # = cv2.getGaussianKernel(11, 1.5)


def ssim(image, reference, crop_border: int = 0, color_space: str = "Y") -> float:
    """Mean SSIM over the valid region (and the channels)."""
    a, b = prepare(image, reference, crop_border, color_space)
    if min(a.shape[0], a.shape[1]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} px after the border crop, got "
                         f"{a.shape[1]}x{a.shape[0]}: use a smaller crop_border or larger images")
    g = _window()
    x = torch.stack([a, b, a * a, b * b, a * b]).permute(0, 3, 1, 2)  # [5, C, H, W]
    n, c, h, w = x.shape
    x = x.reshape(n * c, 1, h, w)
    x = F.conv2d(F.conv2d(x, g.view(1, 1, -1, 1)), g.view(1, 1, 1, -1)).reshape(n, c, h - 10, w - 10)
    mu1, mu2, e11, e22, e12 = x
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s1, s2, s12 = e11 - mu1 ** 2, e22 - mu2 ** 2, e12 - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))
    return float(ssim_map.mean(dim=(1, 2)).mean())


# ---------------------------------------------------------------------------------------------- LPIPS -------------
LPIPS_BACKBONE_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet weights, which lpips.LPIPS(net="alex") loads


def lpips_status() -> tuple[bool, str]:
    """(available, why not): LPIPS needs the `lpips` package (its linear layers ship with it) and torchvision's
    AlexNet weights already in torch's hub cache. Nothing is ever downloaded."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return False, "the lpips package is not installed (pip install lpips)"
    linear = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "alex.pth")
    if not os.path.isfile(linear):
        return False, f"the lpips package has no linear weights at {linear}"
    backbone = os.path.join(torch.hub.get_dir(), "checkpoints", LPIPS_BACKBONE_FILE)
    if not os.path.isfile(backbone):
        return False, (f"torchvision's AlexNet weights are not at {backbone} (put {LPIPS_BACKBONE_FILE} there; "
                       "they are never downloaded)")
    return True, ""


class LpipsScorer:
    """LPIPS (AlexNet, v0.1) from local files; raises RuntimeError("LPIPS unavailable: ...") otherwise."""

    def __init__(self):
        ok, why = lpips_status()
        if not ok:
            raise RuntimeError(f"LPIPS unavailable: {why}")
        import lpips

        self.model = lpips.LPIPS(net="alex", version="0.1", verbose=False).eval()

    @torch.no_grad()
    def __call__(self, image, reference, crop_border: int = 0) -> float:
        a, b = prepare(image, reference, crop_border, "RGB")  # 0-255 -> LPIPS's [-1, 1] NCHW
        a, b = ((t / 127.5 - 1.0).float().permute(2, 0, 1).unsqueeze(0) for t in (a, b))
        return float(self.model(a, b).flatten()[0])


# ------------------------------------------------------------------------------------------- batches --------------
def score(name: str, image, reference, crop_border: int = 0, color_space: str = "Y",
          lpips_scorer: LpipsScorer | None = None) -> Score:
    return Score(name, psnr(image, reference, crop_border, color_space), ssim(image, reference, crop_border,
                                                                              color_space),
                 lpips_scorer(image, reference, crop_border) if lpips_scorer is not None else None)


def mean_score(scores: list[Score], name: str = "mean") -> Score:
    lp = [s.lpips for s in scores if s.lpips is not None]
    return Score(name, float(np.mean([s.psnr for s in scores])), float(np.mean([s.ssim for s in scores])),
                 float(np.mean(lp)) if lp and len(lp) == len(scores) else None)


def format_number(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def format_line(s: Score) -> str:
    text = f"{s.name}: PSNR {format_number(s.psnr, 2)} dB, SSIM {format_number(s.ssim, 4)}"
    return text + (f", LPIPS {format_number(s.lpips, 4)}" if s.lpips is not None else "")
