"""Degradation synthesis on ComfyUI IMAGE batches ([B, H, W, C] float in [0, 1]); torch, numpy and Pillow only.

Two pipelines:
- SPIRE's parameterised one (Qi et al., "SPIRE: Semantic Prompt-Driven Image Restoration", ECCV 2024, Table 2):
  Gaussian blur -> downsample -> Gaussian noise -> JPEG, each stage optional, whose parameters become the
  restoration prompt ("Deblur with sigma 3.0; Upsample to 4.0x; Denoise with sigma 0.10; Dejpeg with quality 40").
- Real-ESRGAN's second-order one (Wang et al., ICCV-W 2021; xinntao/Real-ESRGAN
  `realesrgan/models/realesrgan_model.py` `feed_data`, kernels from `realesrgan/data/realesrgan_dataset.py` and
  XPixelGroup/BasicSR `basicsr/data/degradations.py`, settings from `options/train_realesrgan_x4plus.yml`).

All randomness comes from one ``numpy.random.Generator`` seeded by the caller: same seed, same output.
"""
from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .images import split_channels

REALESRGAN_PROMPT = "Remove all degradation"

# Random ranges of the parameterised mode (uniform; integers for JPEG). SPIRE samples each stage's parameter from a
# range and keeps each stage with probability 0.5. The numbers follow Real-ESRGAN's first-order ranges
# (train_realesrgan_x4plus.yml: blur_sigma [0.2, 3], noise_range [1, 30]/255, jpeg_range [30, 95]) with the x1-x4
# downsampling of SPIRE's super-resolution prompts ("Upsample to 4.0x").
SPIRE_RANGES = {"blur_sigma": (0.2, 3.0), "downsample": (1.0, 4.0), "noise_sigma": (0.01, 0.12),
                "jpeg_quality": (30, 95)}
SPIRE_KEEP_PROBABILITY = 0.5
# Precision of each number in the prompt; applied values are rounded to it, so the text states what was applied.
_DECIMALS = {"blur_sigma": 1, "downsample": 1, "noise_sigma": 2}


@dataclass(frozen=True)
class SpireParams:
    """One parameterised degradation; a stage is off at its neutral value."""
    blur_sigma: float = 0.0  # Gaussian blur sigma in pixels; 0 = off
    downsample: float = 1.0  # output = floor(size / factor); 1 = off
    noise_sigma: float = 0.0  # Gaussian noise standard deviation on [0, 1] pixel values; 0 = off
    jpeg_quality: int = 0  # Pillow JPEG quality 1-100; 0 = off

    def __post_init__(self):
        for name, lo, hi in (("blur_sigma", 0.0, 50.0), ("downsample", 1.0, 64.0), ("noise_sigma", 0.0, 1.0),
                             ("jpeg_quality", 0, 100)):
            value = getattr(self, name)
            if not (lo <= value <= hi) or (name == "jpeg_quality" and int(value) != value):
                raise ValueError(f"{name}={value!r} is out of range: use {lo}..{hi} "
                                 f"({'an integer, ' if name == 'jpeg_quality' else ''}neutral value turns it off)")

    def rounded(self) -> "SpireParams":
        """The values the prompt states (sigma and factor to 0.1, noise to 0.01)."""
        return SpireParams(round(self.blur_sigma, 1), round(self.downsample, 1), round(self.noise_sigma, 2),
                           int(self.jpeg_quality))

    def prompt(self) -> str:
        """SPIRE's restoration prompt: the applied stages in pipeline order, joined by "; "; "" if none."""
        p = self.rounded()
        parts = []
        if p.blur_sigma > 0:
            parts.append(f"Deblur with sigma {p.blur_sigma:.1f}")
        if p.downsample > 1:
            parts.append(f"Upsample to {p.downsample:.1f}x")
        if p.noise_sigma > 0:
            parts.append(f"Denoise with sigma {p.noise_sigma:.2f}")
        if p.jpeg_quality > 0:
            parts.append(f"Dejpeg with quality {p.jpeg_quality:d}")
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return asdict(self.rounded())


def sample_spire_params(rng: np.random.Generator) -> SpireParams:
    """SPIRE's random synthesis: each stage kept with probability 0.5, its parameter uniform in SPIRE_RANGES."""
    values = {}
    for name, (lo, hi) in SPIRE_RANGES.items():
        keep = rng.random() < SPIRE_KEEP_PROBABILITY
        value = int(rng.integers(lo, hi + 1)) if name == "jpeg_quality" else float(rng.uniform(lo, hi))
        if keep:
            values[name] = round(value, _DECIMALS[name]) if name in _DECIMALS else value
    return SpireParams(**values)


# ------------------------------------------------------------------------------------------------ filters ---------
def filter2d(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] convolved with one [k, k] kernel per image ([k, k] or [B, k, k]), reflect padding as BasicSR's
    `filter2D` (replicate where the image is smaller than the kernel)."""
    b, c, h, w = x.shape
    k = kernel.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    weight = kernel.to(x).reshape(-1, 1, k, k).expand(b, 1, k, k).repeat_interleave(c, dim=0)
    return F.conv2d(xp.reshape(1, b * c, h + 2 * pad, w + 2 * pad), weight, groups=b * c).reshape(b, c, h, w)


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> torch.Tensor:
    """Sampled, normalised Gaussian of `sigma` pixels, radius ceil(4 sigma) (scipy's truncate=4) unless given."""
    radius = max(1, math.ceil(4.0 * sigma)) if radius is None else radius
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    return g / g.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B, C, H, W] with reflect padding."""
    if sigma <= 0:
        return x
    g = gaussian_kernel1d(sigma).to(x)
    r = g.numel() // 2
    b, c, h, w = x.shape
    y = x.reshape(b * c, 1, h, w)
    mode_h = "reflect" if r < h else "replicate"
    mode_w = "reflect" if r < w else "replicate"
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode_h), g.view(1, 1, -1, 1))
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode_w), g.view(1, 1, 1, -1))
    return y.reshape(b, c, h, w)


def downsampled_size(h: int, w: int, factor: float) -> tuple[int, int]:
    """floor(size / factor) per side (at least 1), as Real-ESRGAN's `ori_h // scale`."""
    return max(1, math.floor(h / factor + 1e-9)), max(1, math.floor(w / factor + 1e-9))


def crop_for_factor(h: int, w: int, factor: float) -> tuple[int, int]:
    """The largest (h', w') <= (h, w) that survive the round trip floor(s / factor) -> round(. x factor) exactly,
    so an image restored with upscale = factor lines up pixel for pixel with the clean crop (benchmark modcrop)."""
    def side(s: int) -> int:
        for t in range(s, 0, -1):
            if round(downsampled_size(t, t, factor)[0] * factor) == t:
                return t
        return s
    return side(h), side(w)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str = "bicubic", antialias: bool = True) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=antialias)


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Round-trip each [C=3, H, W] image of a batch through Pillow's JPEG encoder (default 4:2:0 subsampling)."""
    out = []
    for img in x.clamp(0, 1):
        arr = (img.permute(1, 2, 0).double().cpu().numpy() * 255.0).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=int(quality))
        buf.seek(0)
        dec = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0
        out.append(torch.from_numpy(dec).permute(2, 0, 1))
    return torch.stack(out).to(x)


def gaussian_noise(x: torch.Tensor, sigma, rng: np.random.Generator, gray: bool = False) -> torch.Tensor:
    """Noise N(0, sigma^2) of x's shape (sigma on [0, 1] values); `gray`: one field shared by the channels."""
    b, c, h, w = x.shape
    shape = (b, 1, h, w) if gray else (b, c, h, w)
    n = torch.from_numpy(rng.standard_normal(shape)).to(x) * sigma
    return n.expand(b, c, h, w)


def poisson_noise(x: torch.Tensor, scale: float, rng: np.random.Generator, gray: bool = False) -> torch.Tensor:
    """Shot noise as BasicSR's `generate_poisson_noise_pt`: the 8-bit image times 2^ceil(log2(#levels)) is Poisson
    sampled; (sample - image) x scale. `gray`: drawn on the luma (0.2989, 0.587, 0.114) and shared."""
    img = x
    if gray:
        img = (0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    img = (img * 255.0).round().clamp(0, 255) / 255.0
    noise = torch.empty_like(img)
    for i in range(img.shape[0]):
        vals = 2.0 ** math.ceil(math.log2(max(2, len(torch.unique(img[i])))))
        lam = (img[i].double().cpu().numpy() * vals)
        noise[i] = torch.from_numpy(rng.poisson(lam) / vals).to(img) - img[i]
    return (noise * scale).expand_as(x)


# ---------------------------------------------------------------------------------------- parameterised -----------
def spire_degrade_rgb(rgb: torch.Tensor, params: SpireParams, rng: np.random.Generator) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> degraded [B, 3, h, w]: blur, downsample (bicubic, antialiased), Gaussian noise,
    JPEG, in this order; values are clamped to [0, 1] after each stage."""
    p = params.rounded()
    x = rgb.float()
    if p.blur_sigma > 0:
        x = gaussian_blur(x, p.blur_sigma).clamp(0, 1)
    if p.downsample > 1:
        x = resize(x, downsampled_size(x.shape[-2], x.shape[-1], p.downsample)).clamp(0, 1)
    if p.noise_sigma > 0:
        x = (x + gaussian_noise(x, p.noise_sigma, rng)).clamp(0, 1)
    if p.jpeg_quality > 0:
        x = jpeg(x, p.jpeg_quality)
    return x


# ------------------------------------------------------------------------------------------- Real-ESRGAN ----------
# options/train_realesrgan_x4plus.yml (first / second degradation) and RealESRGANDataset's kernel settings.
@dataclass(frozen=True)
class RealEsrganOrder:
    kernel_prob: tuple  # iso, aniso, generalized_iso, generalized_aniso, plateau_iso, plateau_aniso
    sinc_prob: float
    blur_sigma: tuple
    blur_prob: float
    resize_prob: tuple  # up, down, keep
    resize_range: tuple
    gaussian_noise_prob: float
    noise_range: tuple  # on 0-255 values
    poisson_scale_range: tuple
    gray_noise_prob: float
    jpeg_range: tuple


KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
FIRST_ORDER = RealEsrganOrder((0.45, 0.25, 0.12, 0.03, 0.12, 0.03), 0.1, (0.2, 3.0), 1.0, (0.2, 0.7, 0.1),
                              (0.15, 1.5), 0.5, (1.0, 30.0), (0.05, 3.0), 0.4, (30, 95))
SECOND_ORDER = RealEsrganOrder((0.45, 0.25, 0.12, 0.03, 0.12, 0.03), 0.1, (0.2, 1.5), 0.8, (0.3, 0.4, 0.3),
                               (0.3, 1.2), 0.5, (1.0, 25.0), (0.05, 2.5), 0.4, (30, 95))
BETAG_RANGE, BETAP_RANGE = (0.5, 4.0), (1.0, 2.0)
FINAL_SINC_PROB = 0.8
KERNEL_SIZES = tuple(range(7, 22, 2))  # 7..21
RESIZE_MODES = ("area", "bilinear", "bicubic")


def _grid(size: int) -> torch.Tensor:
    ax = torch.arange(-(size // 2), size // 2 + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([xx, yy], dim=-1)  # [k, k, 2] (x, y) as BasicSR's mesh_grid


def _quadratic(size: int, sig_x: float, sig_y: float, theta: float) -> torch.Tensor:
    """x^T Sigma^-1 x on the grid, Sigma = U diag(sig_x^2, sig_y^2) U^T (BasicSR `sigma_matrix2`)."""
    c, s = math.cos(theta), math.sin(theta)
    u = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    sigma = u @ torch.diag(torch.tensor([sig_x ** 2, sig_y ** 2], dtype=torch.float64)) @ u.T
    g = _grid(size)
    return ((g @ torch.linalg.inv(sigma)) * g).sum(-1)


def gaussian_kernel(size: int, sig_x: float, sig_y: float, theta: float) -> torch.Tensor:
    k = torch.exp(-0.5 * _quadratic(size, sig_x, sig_y, theta))
    return k / k.sum()


def generalized_gaussian_kernel(size: int, sig_x: float, sig_y: float, theta: float, beta: float) -> torch.Tensor:
    """exp(-0.5 q^beta) (Pascal et al. 2013); beta = 1 is the Gaussian."""
    k = torch.exp(-0.5 * _quadratic(size, sig_x, sig_y, theta) ** beta)
    return k / k.sum()


def plateau_kernel(size: int, sig_x: float, sig_y: float, theta: float, beta: float) -> torch.Tensor:
    """1 / (1 + q^beta)."""
    k = 1.0 / (_quadratic(size, sig_x, sig_y, theta) ** beta + 1.0)
    return k / k.sum()


def sinc_kernel(cutoff: float, size: int, pad_to: int = 0) -> torch.Tensor:
    """Circular low-pass (2-D sinc) filter, BasicSR `circular_lowpass_kernel`: cutoff J1(cutoff r) / (2 pi r)."""
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    r = torch.sqrt(ax.view(-1, 1) ** 2 + ax.view(1, -1) ** 2)
    k = cutoff * torch.special.bessel_j1(cutoff * r) / (2 * math.pi * r)
    k[(size - 1) // 2, (size - 1) // 2] = cutoff ** 2 / (4 * math.pi)
    k = k / k.sum()
    if pad_to > size:
        p = (pad_to - size) // 2
        k = F.pad(k, (p, p, p, p))
    return k


def _beta(rng: np.random.Generator, lo: float, hi: float) -> float:
    """BasicSR: beta below or above 1 with probability 0.5 each."""
    return float(rng.uniform(lo, 1)) if rng.random() < 0.5 else float(rng.uniform(1, hi))


def random_mixed_kernel(rng: np.random.Generator, order: RealEsrganOrder, size: int) -> torch.Tensor:
    """BasicSR `random_mixed_kernels` with Real-ESRGAN's kernel list; sigma_y and rotation only when anisotropic."""
    kind = KERNEL_TYPES[int(rng.choice(len(KERNEL_TYPES), p=order.kernel_prob))]
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sig_x = float(rng.uniform(*order.blur_sigma))
    sig_y, theta = (sig_x, 0.0) if iso else (float(rng.uniform(*order.blur_sigma)), float(rng.uniform(-math.pi,
                                                                                                     math.pi)))
    if kind in ("iso", "aniso"):
        return gaussian_kernel(size, sig_x, sig_y, theta)
    if kind.startswith("generalized"):
        return generalized_gaussian_kernel(size, sig_x, sig_y, theta, _beta(rng, *BETAG_RANGE))
    return plateau_kernel(size, sig_x, sig_y, theta, _beta(rng, *BETAP_RANGE))


def random_blur_kernel(rng: np.random.Generator, order: RealEsrganOrder) -> torch.Tensor:
    """RealESRGANDataset.__getitem__: size 7-21, sinc with `sinc_prob` (cutoff from pi/3 (size < 13) or pi/5 up to
    pi), else a mixed kernel; padded to 21."""
    size = int(rng.choice(KERNEL_SIZES))
    if rng.random() < order.sinc_prob:
        cutoff = float(rng.uniform(math.pi / 3 if size < 13 else math.pi / 5, math.pi))
        k = sinc_kernel(cutoff, size)
    else:
        k = random_mixed_kernel(rng, order, size)
    p = (21 - size) // 2
    return F.pad(k, (p, p, p, p))


def random_final_sinc(rng: np.random.Generator) -> torch.Tensor | None:
    if rng.random() < FINAL_SINC_PROB:
        size = int(rng.choice(KERNEL_SIZES))
        return sinc_kernel(float(rng.uniform(math.pi / 3, math.pi)), size, pad_to=21)
    return None


def _random_resize(x: torch.Tensor, rng: np.random.Generator, order: RealEsrganOrder, base: tuple[int, int]):
    kind = int(rng.choice(3, p=order.resize_prob))
    scale = float(rng.uniform(1, order.resize_range[1])) if kind == 0 else \
        float(rng.uniform(order.resize_range[0], 1)) if kind == 1 else 1.0
    mode = RESIZE_MODES[int(rng.integers(3))]
    size = (max(1, int(base[0] * scale)), max(1, int(base[1] * scale)))
    return resize(x, size, mode, antialias=False)


def _random_noise(x: torch.Tensor, rng: np.random.Generator, order: RealEsrganOrder) -> torch.Tensor:
    if rng.random() < order.gaussian_noise_prob:
        sigma = float(rng.uniform(*order.noise_range)) / 255.0
        noise = gaussian_noise(x, sigma, rng, gray=bool(rng.random() < order.gray_noise_prob))
    else:
        scale = float(rng.uniform(*order.poisson_scale_range))
        noise = poisson_noise(x, scale, rng, gray=bool(rng.random() < order.gray_noise_prob))
    return (x + noise).clamp(0, 1)


def _random_jpeg(x: torch.Tensor, rng: np.random.Generator, order: RealEsrganOrder) -> torch.Tensor:
    # DiffJPEG takes a float quality in jpeg_range; Pillow takes an integer.
    return jpeg(x.clamp(0, 1), int(round(float(rng.uniform(*order.jpeg_range)))))


def realesrgan_degrade_one(rgb: torch.Tensor, rng: np.random.Generator, scale: float = 4.0) -> torch.Tensor:
    """One [1, 3, H, W] image through RealESRGANModel.feed_data's second-order degradation; output
    [1, 3, floor(H / scale), floor(W / scale)] quantised to 8 bits. The LQ is made from the clean image itself
    (the official trainer degrades a USM-sharpened copy for its sharpened training targets)."""
    h, w = rgb.shape[-2:]
    k1, k2 = random_blur_kernel(rng, FIRST_ORDER), random_blur_kernel(rng, SECOND_ORDER)
    final = random_final_sinc(rng)
    x = filter2d(rgb.float(), k1)
    x = _random_resize(x, rng, FIRST_ORDER, (h, w))
    x = _random_jpeg(_random_noise(x, rng, FIRST_ORDER), rng, FIRST_ORDER)
    if rng.random() < SECOND_ORDER.blur_prob:
        x = filter2d(x, k2)
    x = _random_resize(x, rng, SECOND_ORDER, (h / scale, w / scale))
    x = _random_noise(x, rng, SECOND_ORDER)
    out_size = downsampled_size(h, w, scale)

    def resize_back_and_sinc(y):
        y = resize(y, out_size, RESIZE_MODES[int(rng.integers(3))], antialias=False)
        return filter2d(y, final) if final is not None else y

    if rng.random() < 0.5:
        x = _random_jpeg(resize_back_and_sinc(x), rng, SECOND_ORDER)
    else:
        x = resize_back_and_sinc(_random_jpeg(x, rng, SECOND_ORDER))
    return ((x * 255.0).round().clamp(0, 255) / 255.0).float()


# ------------------------------------------------------------------------------------------ entry points ----------
@dataclass(frozen=True)
class Degraded:
    image: torch.Tensor  # [B, h, w, C] in [0, 1], C as the input's (grey becomes RGB)
    prompt: str
    params: dict  # what was applied (parameterised mode) or {"mode": "Real-ESRGAN", "scale": ...}


def _to_bchw(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected an IMAGE tensor [B, H, W, C], got {type(image).__name__}")
    rgb, alpha = split_channels(image)
    if rgb.shape[0] == 0:
        raise ValueError("the image batch is empty: connect an image")
    return rgb.float().permute(0, 3, 1, 2).contiguous(), alpha


def _finish(x: torch.Tensor, alpha: torch.Tensor | None) -> torch.Tensor:
    out = x.permute(0, 2, 3, 1).clamp(0, 1)
    if alpha is not None:
        a = resize(alpha.float().unsqueeze(1), tuple(out.shape[1:3])).squeeze(1).clamp(0, 1)
        out = torch.cat([out, a.unsqueeze(-1)], dim=-1)
    return out.contiguous()


def degrade_parameterised(image: torch.Tensor, params: SpireParams | None = None, seed: int = 0,
                          random: bool = False) -> Degraded:
    """SPIRE's parameterised degradation of a batch. `random`: the parameters are drawn from `seed` (one set for the
    whole batch, so one prompt); otherwise `params` are used. Noise differs per image, same seed -> same output."""
    rng = np.random.default_rng(seed)
    if random:
        params = sample_spire_params(rng)
    params = (params or SpireParams()).rounded()
    rgb, alpha = _to_bchw(image)
    x = spire_degrade_rgb(rgb, params, rng)
    return Degraded(_finish(x, alpha), params.prompt(), params.as_dict())


def degrade_realesrgan(image: torch.Tensor, seed: int = 0, scale: float = 4.0) -> Degraded:
    """Real-ESRGAN's second-order degradation of a batch, each image its own random draw from `seed`; the output is
    floor(size / scale) (scale 4 as train_realesrgan_x4plus.yml; 1 keeps the size)."""
    if not 1.0 <= scale <= 64.0:
        raise ValueError(f"scale={scale!r} is out of range: use 1 (same size) to 64 (Real-ESRGAN x4plus uses 4)")
    rng = np.random.default_rng(seed)
    rgb, alpha = _to_bchw(image)
    x = torch.cat([realesrgan_degrade_one(rgb[i:i + 1], rng, scale) for i in range(rgb.shape[0])])
    return Degraded(_finish(x, alpha), REALESRGAN_PROMPT, {"mode": "Real-ESRGAN", "scale": float(scale)})
