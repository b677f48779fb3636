"""The samplers' arithmetic on a toy denoiser: restoration guidance, the control ramp, CFG weights, DPM++ 2M,
tiling windows and blending (the official trajectory itself is matched in test_parity_sampler.py)."""
from __future__ import annotations

import math

import pytest
import torch

from fsupir_under_test.supir_modules import guidance as g
from fsupir_under_test.supir_modules import sampling as s
from fsupir_under_test.supir_modules import tiled_sampling as ts
from fsupir_under_test.supir_modules.denoiser import legacy_ddpm_sigmas


class Toy:
    """D(x) = 0.5 x + target: records the sigma and control scale of every call."""

    def __init__(self, target: torch.Tensor):
        self.target = target
        self.calls: list[tuple[float, float]] = []

    def __call__(self, x, sigma, control_scale):
        self.calls.append((sigma, control_scale))
        return 0.5 * x + self.target


def zeros_noise(i, like):
    return torch.zeros_like(like)


def test_restore_edm_step_formula():
    x = torch.randn(1, 4, 8, 8)
    center = torch.randn(1, 4, 8, 8)
    toy = Toy(torch.ones(1, 4, 8, 8))
    rg = s.RestorationGuidance(4.0, 0.05)
    sigma, nxt, gamma = 10.0, 8.0, 0.2
    noise = torch.randn_like(x)
    churn = s.Churn(s_churn=1.0, s_noise=1.01)
    out, den, sigma_hat = s.restore_edm_step(toy, x, sigma, nxt, gamma, churn, rg, g.ControlSchedule(), center, noise)
    assert sigma_hat == pytest.approx(12.0)
    xc = x + noise * 1.01 * math.sqrt(12.0 ** 2 - 10.0 ** 2)
    d = 0.5 * xc + 1.0
    d = d - (d - center) * (10.0 / g.SIGMA_MAX) ** 4.0  # un-churned sigma in the guidance weight
    assert torch.allclose(den, d, atol=1e-6)
    assert torch.allclose(out, xc + (xc - d) / 12.0 * (8.0 - 12.0), atol=1e-5)


def test_restoration_guidance_stops_below_s_tmin_and_when_off():
    d, c = torch.ones(2), torch.zeros(2)
    rg = s.RestorationGuidance(4.0, 0.05)
    assert torch.equal(rg.apply(d, c, 14.6146, 0.04), d)  # next sigma below s_tmin
    assert not torch.equal(rg.apply(d, c, 14.6146, 0.06), d)
    assert torch.equal(s.RestorationGuidance(-1.0).apply(d, c, 5.0, 1.0), d)
    with pytest.raises(ValueError, match="centre latent"):
        rg.apply(d, None, 5.0, 1.0)


def test_linear_cfg_weight_goes_from_start_to_scale():
    cfg = g.CFGSchedule(cfg_scale=4.0, cfg_scale_start=1.0, linear=True)
    assert cfg.weight(g.SIGMA_MAX) == pytest.approx(1.0)
    assert cfg.weight(0.0) == pytest.approx(4.0)
    assert g.CFGSchedule(7.5, 4.0, linear=False).weight(3.0) == 7.5


@pytest.mark.parametrize("sampler", ["edm", "dpm"])
def test_control_ramp_and_guidance_work_in_both_samplers(sampler):
    target = torch.full((1, 4, 8, 8), 2.0)
    center = torch.full((1, 4, 8, 8), -3.0)
    control = g.ControlSchedule(control_scale=1.0, control_scale_start=0.2, linear=True)

    def run(rg):
        toy = Toy(target)
        if sampler == "edm":
            sig = legacy_ddpm_sigmas(6)
            x = s.initial_latent(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), sig)
            out = s.sample_restore_edm(toy, x, sig, noise_sampler=zeros_noise, churn=s.Churn(), guidance=rg,
                                       control=control, x_center=center)
        else:
            sig = s.karras_sigmas_for(6)
            x = s.initial_latent(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), sig)
            out = s.sample_restore_dpmpp_2m(toy, x, sig, noise_sampler=zeros_noise, eta=0.0, guidance=rg,
                                            control=control, x_center=center)
        return out, toy, sig

    plain, toy, sig = run(s.RestorationGuidance(-1.0))
    guided, _, _ = run(s.RestorationGuidance(1.0))
    # The ramp: s_i = (sigma_i / sigma_max) (start - s) + s with the step's own sigma.
    expected = [(float(si) / g.SIGMA_MAX) * (0.2 - 1.0) + 1.0 for si in sig[:-1]]
    assert [c for _, c in toy.calls] == pytest.approx(expected)
    # Guidance pulls the result toward the centre latent.
    assert (guided - center).abs().mean() < (plain - center).abs().mean()


def test_karras_schedule_spans_the_legacy_range():
    sig = s.karras_sigmas_for(8)
    legacy = legacy_ddpm_sigmas(8)
    assert len(sig) == 9 and sig[-1] == 0
    assert sig[0] == pytest.approx(float(legacy[0])) and sig[-2] == pytest.approx(float(legacy[-2]))
    assert torch.all(sig[:-2] > sig[1:-1])


def test_dpmpp_2m_matches_the_exponential_integrator_on_a_linear_model():
    """D(x) = a (constant): DPM++ 2M (eta 0) is exact, x_next = (s'/s) x + (1 - s'/s) a."""
    a = torch.full((1, 1, 2, 2), 0.7)
    x = torch.randn(1, 1, 2, 2)
    toy = lambda x_, sigma, cs: a  # noqa: E731
    out, den = s.dpmpp_2m_step(toy, x, 5.0, 2.0, None, None, 0.0, 1.0, s.RestorationGuidance(), g.ControlSchedule(),
                               None, None)
    assert torch.allclose(out, 0.4 * x + 0.6 * a, atol=1e-6)
    out2, _ = s.dpmpp_2m_step(toy, out, 2.0, 1.0, 5.0, den, 0.0, 1.0, s.RestorationGuidance(), g.ControlSchedule(),
                              None, None)
    assert torch.allclose(out2, 0.5 * out + 0.5 * a, atol=1e-6)  # the 2nd-order correction vanishes for constant D
    last, _ = s.dpmpp_2m_step(toy, out2, 1.0, 0.0, 2.0, den, 1.0, 1.0, s.RestorationGuidance(), g.ControlSchedule(),
                              None, None)
    assert torch.equal(last, a)


@pytest.mark.parametrize("h,w,tile,stride,expected", [
    (128, 128, 128, 64, [(0, 128, 0, 128)]),
    (160, 128, 128, 64, [(0, 128, 0, 128), (32, 160, 0, 128)]),
    (64, 300, 128, 64, [(0, 64, 0, 128), (0, 64, 64, 192), (0, 64, 128, 256), (0, 64, 172, 300)]),
])
def test_sliding_windows_as_official(h, w, tile, stride, expected):
    assert ts.sliding_windows(h, w, tile, stride) == expected


def test_sliding_windows_reject_bad_strides():
    with pytest.raises(ValueError, match="stride 96 is larger than the tile size 64"):
        ts.sliding_windows(128, 128, 64, 96)
    with pytest.raises(ValueError, match="positive"):
        ts.sliding_windows(128, 128, 64, 0)


def test_gaussian_weights_as_official():
    w = ts.gaussian_weights(128, 128)
    assert w.shape == (128, 128)
    # x uses midpoint (T-1)/2 (symmetric), y uses T/2 (peak one row lower): the official asymmetry.
    assert torch.allclose(w[:, 10], w[:, 117])
    assert int(w[:, 0].argmax()) == 64
    peak = 1 / math.sqrt(2 * math.pi * 0.01)
    assert w.max().item() == pytest.approx(peak * peak * math.exp(-0.25 / (128 * 128) / 0.02), rel=1e-5)


@pytest.mark.parametrize("sampler", ["edm", "dpm"])
def test_one_window_tiled_equals_untiled(sampler):
    center = torch.randn(1, 4, 8, 12)
    target = torch.randn(1, 4, 8, 12)
    rg = s.RestorationGuidance(2.0)
    if sampler == "edm":
        sig = legacy_ddpm_sigmas(5)
        x = s.initial_latent(torch.randn(1, 4, 8, 12), sig)
        plain = s.sample_restore_edm(Toy(target), x, sig, noise_sampler=s.generator_noise_sampler(3),
                                     churn=s.Churn(s_churn=5.0), guidance=rg, x_center=center)
        tiled = ts.sample_tiled_restore_edm(lambda group: Toy(target), x, sig, windows=[(0, 8, 0, 12)],
                                            noise_sampler=s.generator_noise_sampler(3), churn=s.Churn(s_churn=5.0),
                                            guidance=rg, x_center=center)
    else:
        sig = s.karras_sigmas_for(5)
        x = s.initial_latent(torch.randn(1, 4, 8, 12), sig)
        plain = s.sample_restore_dpmpp_2m(Toy(target), x, sig, noise_sampler=s.generator_noise_sampler(3),
                                          guidance=rg, x_center=center)
        tiled = ts.sample_tiled_restore_dpmpp_2m(lambda group: Toy(target), x, sig, windows=[(0, 8, 0, 12)],
                                                 noise_sampler=s.generator_noise_sampler(3), guidance=rg,
                                                 x_center=center)
    assert torch.allclose(plain, tiled, rtol=1e-5, atol=1e-5)


def test_tiles_get_their_own_slices_and_blend_without_seams():
    """Each window's model sees its own slice; a model that returns the same D everywhere gives the same result
    tiled and untiled (blending is a partition of unity)."""
    sig = legacy_ddpm_sigmas(4)
    x = s.initial_latent(torch.randn(1, 4, 16, 40), sig)
    target = torch.randn(1, 4, 16, 40)
    windows = ts.sliding_windows(16, 40, 16, 8)
    seen = []

    def tile_model(group):
        seen.extend(windows[j] for j in group)
        targets = torch.cat([target[:, :, a:b, c:d] for a, b, c, d in (windows[j] for j in group)])
        return lambda xt, sigma, cs: 0.5 * xt + targets

    tiled = ts.sample_tiled_restore_edm(tile_model, x, sig, windows=windows, noise_sampler=zeros_noise)
    plain = s.sample_restore_edm(Toy(target), x, sig, noise_sampler=zeros_noise)
    assert set(seen) == set(windows) and len(windows) == 4
    assert torch.allclose(tiled, plain, atol=1e-5)
