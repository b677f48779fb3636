"""Degradation synthesis (supir_modules/degrade.py), measured: blur's frequency response, noise standard deviation,
JPEG error against quality, exact sizes, the SPIRE prompt text, seeds; Real-ESRGAN's kernels and pipeline."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fsupir_under_test.supir_modules import degrade as d

SPEC_PROMPT = "Deblur with sigma 3.0; Upsample to 4.0x; Denoise with sigma 0.10; Dejpeg with quality 40"


def photo(name: str = "astronaut", size: int | None = None) -> torch.Tensor:
    """A real photo that scikit-image ships, as a ComfyUI IMAGE [1, H, W, 3]."""
    data = pytest.importorskip("skimage.data")
    arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if size:
        arr = arr[:size, :size]
    return torch.from_numpy(arr).float().div(255).unsqueeze(0)


def noise_image(n: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((1, n, n, 3))).float()


# --------------------------------------------------------------------------------- blur ------------------
def sampled_gaussian_response(f: np.ndarray, sigma: float) -> np.ndarray:
    """Frequency response of the sampled, normalised Gaussian (its continuous transform summed over aliases)."""
    k = np.arange(-3, 4, dtype=np.float64)
    gain = np.exp(-2 * np.pi ** 2 * sigma ** 2 * (f[..., None] - k) ** 2).sum(-1)
    return gain / np.exp(-2 * np.pi ** 2 * sigma ** 2 * k ** 2).sum()


@pytest.mark.parametrize("sigma", [0.5, 0.8, 1.0, 1.5])
def test_blur_removes_the_expected_share_of_high_frequency_energy(sigma):
    """Energy above 0.25 cycles/px kept by the blur = sum |H(f)|^2 |X(f)|^2 / sum |X(f)|^2 with H the Gaussian's
    response (Hann window against edge leakage). Measured agreement: 0.5% (sigma <= 1), 2% (1.5)."""
    x = noise_image()
    y = d.degrade_parameterised(x, d.SpireParams(blur_sigma=sigma)).image
    n = x.shape[1]
    f = np.fft.fftfreq(n)
    fy, fx = np.meshgrid(f, f, indexing="ij")
    band = np.hypot(fx, fy) > 0.25
    window = np.outer(np.hanning(n), np.hanning(n))[..., None]

    def power(img):
        return np.abs(np.fft.fft2((img[0].double().numpy() - 0.5) * window, axes=(0, 1))) ** 2

    px, py = power(x), power(y)
    h2 = ((sampled_gaussian_response(fx, sigma) * sampled_gaussian_response(fy, sigma)) ** 2)[..., None]
    kept = py[band].sum() / px[band].sum()
    expected = (h2 * px)[band].sum() / px[band].sum()
    assert kept == pytest.approx(expected, rel=0.03), f"sigma {sigma}: kept {kept:.3e}, expected {expected:.3e}"
    assert 1 - kept > {0.5: 0.6, 0.8: 0.95, 1.0: 0.99, 1.5: 0.999}[sigma]


def test_blur_keeps_the_mean_and_grows_with_sigma():
    x = photo(size=128)
    blurred = [d.degrade_parameterised(x, d.SpireParams(blur_sigma=s)).image for s in (0.5, 1.0, 2.0, 3.0)]
    errors = [float((b - x).abs().mean()) for b in blurred]
    assert errors == sorted(errors) and errors[0] > 0
    for b in blurred:
        assert float(b.mean()) == pytest.approx(float(x.mean()), abs=2e-3)


# --------------------------------------------------------------------------------- noise -----------------
@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_noise_has_the_requested_standard_deviation(sigma):
    grey = torch.full((2, 128, 128, 3), 0.5)  # mid-grey: clipping at 0/1 is > 5 sigma away
    out = d.degrade_parameterised(grey, d.SpireParams(noise_sigma=sigma), seed=3).image
    noise = out - grey
    assert float(noise.std()) == pytest.approx(sigma, rel=0.01)
    assert abs(float(noise.mean())) < 0.05 * sigma
    # independent per pixel and channel: neighbours and channels uncorrelated
    def corr(a, b):
        return abs(float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]))

    assert corr(noise[..., 1:, :], noise[..., :-1, :]) < 0.02 and corr(noise[..., 0], noise[..., 1]) < 0.02
    assert not torch.equal(noise[0], noise[1]), "each image of a batch gets its own noise"


# --------------------------------------------------------------------------------- JPEG ------------------
def test_jpeg_error_grows_as_quality_falls():
    x = photo(size=256)
    mse = [float(((d.degrade_parameterised(x, d.SpireParams(jpeg_quality=q)).image - x) ** 2).mean())
           for q in (95, 75, 50, 30, 10)]
    assert all(a < b for a, b in zip(mse, mse[1:])), mse
    assert mse[0] > 0
    # quality 100 is near-lossless (8-bit rounding and 4:2:0 chroma only)
    psnr100 = -10 * math.log10(float(((d.jpeg(x.permute(0, 3, 1, 2), 100).permute(0, 2, 3, 1) - x) ** 2).mean()))
    assert psnr100 > 35


# --------------------------------------------------------------------------------- sizes -----------------
@pytest.mark.parametrize("h,w,factor,expected", [(64, 64, 4.0, (16, 16)), (100, 75, 4.0, (25, 18)),
                                                 (60, 45, 2.5, (24, 18)), (64, 64, 3.0, (21, 21)),
                                                 (33, 17, 1.0, (33, 17))])
def test_downsample_gives_the_exact_size(h, w, factor, expected):
    out = d.degrade_parameterised(torch.rand(2, h, w, 3), d.SpireParams(downsample=factor)).image
    assert tuple(out.shape) == (2, *expected, 3)
    assert d.downsampled_size(h, w, factor) == expected


def test_crop_for_factor_round_trips():
    for factor in (1.0, 2.0, 2.7, 3.0, 4.0):
        h, w = d.crop_for_factor(97, 64, factor)
        lh, lw = d.downsampled_size(h, w, factor)
        assert (round(lh * factor), round(lw * factor)) == (h, w) and h <= 97 and w <= 64
    assert d.crop_for_factor(100, 75, 4.0) == (100, 72)


# --------------------------------------------------------------------------------- prompt ----------------
def test_prompt_text_exactly_as_specified():
    assert d.SpireParams(3.0, 4.0, 0.1, 40).prompt() == SPEC_PROMPT
    assert d.SpireParams(noise_sigma=0.05).prompt() == "Denoise with sigma 0.05"
    assert d.SpireParams(blur_sigma=1.0, jpeg_quality=75).prompt() == "Deblur with sigma 1.0; Dejpeg with quality 75"
    assert d.SpireParams(downsample=2.0).prompt() == "Upsample to 2.0x"
    assert d.SpireParams().prompt() == ""
    result = d.degrade_parameterised(photo(size=64), d.SpireParams(3.0, 4.0, 0.1, 40))
    assert result.prompt == SPEC_PROMPT
    assert result.params == {"blur_sigma": 3.0, "downsample": 4.0, "noise_sigma": 0.1, "jpeg_quality": 40}


def test_applied_values_are_what_the_prompt_says():
    """Values are rounded to the prompt's precision before they are applied."""
    x = photo(size=64)
    a = d.degrade_parameterised(x, d.SpireParams(2.96, 2.04, 0.0951, 0), seed=1)
    b = d.degrade_parameterised(x, d.SpireParams(3.0, 2.0, 0.1, 0), seed=1)
    assert a.prompt == b.prompt == "Deblur with sigma 3.0; Upsample to 2.0x; Denoise with sigma 0.10"
    assert torch.equal(a.image, b.image)


@pytest.mark.parametrize("bad", [dict(blur_sigma=-1.0), dict(downsample=0.5), dict(noise_sigma=2.0),
                                 dict(jpeg_quality=101), dict(jpeg_quality=40.5)])
def test_out_of_range_parameters_name_the_value(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        d.SpireParams(**bad)


# --------------------------------------------------------------------------------- random & seeds --------
def test_random_mode_keeps_each_stage_half_the_time_within_the_documented_ranges():
    draws = [d.sample_spire_params(np.random.default_rng(seed)) for seed in range(400)]
    neutral = d.SpireParams()
    for name, (lo, hi) in d.SPIRE_RANGES.items():
        kept = [getattr(p, name) for p in draws if getattr(p, name) != getattr(neutral, name)]
        assert 0.42 < len(kept) / len(draws) < 0.58, (name, len(kept))
        assert lo <= min(kept) and max(kept) <= hi, name
        assert max(kept) - min(kept) > 0.7 * (hi - lo), f"{name}: draws should cover the range"


def test_same_seed_same_output_other_seed_differs():
    x = photo(size=96)
    for kwargs in (dict(params=d.SpireParams(1.0, 2.0, 0.05, 60)), dict(random=True)):
        a = d.degrade_parameterised(x, seed=11, **kwargs)
        b = d.degrade_parameterised(x, seed=11, **kwargs)
        c = d.degrade_parameterised(x, seed=12, **kwargs)
        assert torch.equal(a.image, b.image) and a.prompt == b.prompt
        assert a.image.shape != c.image.shape or not torch.equal(a.image, c.image)
    prompts = {d.degrade_parameterised(x[:, :16, :16], seed=s, random=True).prompt for s in range(12)}
    assert len(prompts) > 6, "random prompts should vary with the seed"


def test_batches_rgba_and_grey():
    x = torch.rand(3, 40, 48, 4)
    x[..., 3] = torch.linspace(0, 1, 48)
    out = d.degrade_parameterised(x, d.SpireParams(1.0, 2.0, 0.05, 50), seed=0).image
    assert out.shape == (3, 20, 24, 4)
    assert torch.allclose(out[..., 3], torch.linspace(0, 1, 24).expand(3, 20, 24), atol=0.03)
    assert out[..., :3].min() >= 0 and out[..., :3].max() <= 1
    assert d.degrade_parameterised(torch.rand(1, 32, 32, 1), d.SpireParams(noise_sigma=0.1)).image.shape[-1] == 3
    with pytest.raises(TypeError, match="IMAGE"):
        d.degrade_parameterised(np.zeros((1, 8, 8, 3)))


# --------------------------------------------------------------------------------- Real-ESRGAN -----------
def test_kernels_follow_the_basicsr_formulas():
    g = d.gaussian_kernel(21, 2.0, 2.0, 0.0)
    t = torch.arange(-10, 11, dtype=torch.float64)
    iso = torch.exp(-(t.view(-1, 1) ** 2 + t.view(1, -1) ** 2) / 8)
    assert torch.allclose(g, iso / iso.sum(), atol=1e-12)
    aniso = d.gaussian_kernel(21, 3.0, 1.0, math.pi / 2)  # long axis rotated onto y
    assert aniso[:, 10].sum() > aniso[10, :].sum() * 2
    assert torch.allclose(d.generalized_gaussian_kernel(21, 1.5, 1.0, 0.3, 1.0), d.gaussian_kernel(21, 1.5, 1.0, 0.3))
    q = t.view(-1, 1) ** 2 + t.view(1, -1) ** 2
    plateau = 1 / (1 + (q / 4) ** 1.5)
    assert torch.allclose(d.plateau_kernel(21, 2.0, 2.0, 0.0, 1.5), plateau / plateau.sum(), atol=1e-12)
    sinc = d.sinc_kernel(math.pi / 2, 13, pad_to=21)
    assert sinc.shape == (21, 21) and float(sinc.sum()) == pytest.approx(1.0)
    assert torch.allclose(sinc, sinc.T) and torch.allclose(sinc, sinc.flip(0))
    # a circular low-pass: the response at DC is 1 and it falls off beyond the cutoff (pi/2 rad = 0.25 cycles/px)
    response = torch.fft.fft2(sinc).abs()
    assert float(response[0, 0]) == pytest.approx(1.0) and float(response[10, 0]) < 0.2


def test_random_kernels_are_normalised_and_padded():
    rng = np.random.default_rng(0)
    for _ in range(40):
        k = d.random_blur_kernel(rng, d.FIRST_ORDER)
        assert k.shape == (21, 21) and float(k.sum()) == pytest.approx(1.0) and torch.isfinite(k).all()


def test_realesrgan_mode_size_prompt_and_determinism():
    x = photo(size=128).expand(2, -1, -1, -1).contiguous()
    a = d.degrade_realesrgan(x, seed=5)
    assert a.prompt == "Remove all degradation"
    assert a.image.shape == (2, 32, 32, 3)
    assert torch.equal(a.image, (a.image * 255).round() / 255), "Real-ESRGAN's LQ is quantised to 8 bits"
    assert not torch.equal(a.image[0], a.image[1]), "each image of a batch gets its own degradation"
    assert torch.equal(a.image, d.degrade_realesrgan(x, seed=5).image)
    assert not torch.equal(a.image, d.degrade_realesrgan(x, seed=6).image)
    same_size = d.degrade_realesrgan(x[:1], seed=1, scale=1.0).image
    assert same_size.shape == (1, 128, 128, 3)
    # degraded, yet still the same picture
    err = float((same_size - x[:1]).abs().mean())
    corr = float(torch.corrcoef(torch.stack([same_size.flatten(), x[:1].flatten()]))[0, 1])
    assert err > 0.005 and corr > 0.7
    with pytest.raises(ValueError, match="scale"):
        d.degrade_realesrgan(x, scale=0.5)
