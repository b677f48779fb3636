"""Colour fix (supir_modules/colorfix.py) against the official SUPIR/utils/colorfix.py outputs in the parity
fixture, plus properties of the two methods.

Tolerance: the official functions are plain float32 tensor ops; ours reproduce them bit for bit on the fixture
(measured max error 0.0), held here to 1e-6 relative.
"""
from __future__ import annotations

import pytest
import torch

from parity_helpers import mod, rel_err

COLORFIX_TOL = 1e-6


@pytest.fixture(scope="module")
def cf(pack):
    return mod("colorfix")


@pytest.fixture(scope="module")
def case(pack, parity):
    c = parity.case
    return {k: c[k].float() for k in ("decoded", "stage1", "colorfix_wavelet", "colorfix_adain")}


def _pair(seed: int = 0, shape=(2, 3, 40, 56)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sample = torch.rand(shape, generator=g) * 2 - 1
    reference = 0.5 * torch.rand(shape, generator=g) + torch.linspace(-0.5, 0.3, shape[1])[None, :, None, None]
    return sample, reference


def test_wavelet_matches_official(cf, case):
    out = cf.wavelet_color_fix(case["decoded"], case["stage1"])
    assert rel_err(out, case["colorfix_wavelet"]) < COLORFIX_TOL


def test_adain_matches_official(cf, case):
    out = cf.adain_color_fix(case["decoded"], case["stage1"])
    assert rel_err(out, case["colorfix_adain"]) < COLORFIX_TOL


@pytest.mark.parametrize("mode, key", [("Wavelet", "colorfix_wavelet"), ("AdaIN", "colorfix_adain"),
                                       ("AdaIn", "colorfix_adain")])
def test_apply_color_fix_dispatches(cf, case, mode, key):
    out = cf.apply_color_fix(case["decoded"], case["stage1"], mode)
    assert rel_err(out, case[key]) < COLORFIX_TOL


def test_mode_none_returns_the_sample(cf, case):
    assert cf.apply_color_fix(case["decoded"], case["stage1"], "None") is case["decoded"]


def test_fixture_colour_fixes_change_the_image(case):
    """Guards the parity tests: both fixes move the decoded image by far more than the tolerance."""
    assert rel_err(case["colorfix_wavelet"], case["decoded"]) > 1e-2
    assert rel_err(case["colorfix_adain"], case["decoded"]) > 1e-2


def test_adain_output_has_the_reference_statistics(cf):
    sample, reference = _pair()
    out = cf.adain_color_fix(sample, reference)
    flat_out, flat_ref = out.flatten(2), reference.flatten(2)
    torch.testing.assert_close(flat_out.mean(2), flat_ref.mean(2), atol=1e-5, rtol=0)
    # std_out = std_ref * sqrt(var_x / (var_x + 1e-5)): equal up to the official epsilon.
    torch.testing.assert_close(flat_out.std(2), flat_ref.std(2), atol=0, rtol=1e-3)


def test_wavelet_of_a_constant_sample_is_the_reference_low_frequency(cf):
    sample, reference = _pair(1)
    constant = torch.full_like(sample, 0.25)
    _, low = cf.wavelet_decomposition(reference)
    torch.testing.assert_close(cf.wavelet_color_fix(constant, reference), low, atol=1e-6, rtol=0)


def test_wavelet_keeps_the_sample_high_frequency(cf):
    sample, reference = _pair(2)
    high, _ = cf.wavelet_decomposition(sample)
    _, low = cf.wavelet_decomposition(reference)
    torch.testing.assert_close(cf.wavelet_color_fix(sample, reference) - low, high, atol=1e-6, rtol=0)


def test_wavelet_against_itself_is_identity(cf):
    sample, _ = _pair(3)
    torch.testing.assert_close(cf.wavelet_color_fix(sample, sample), sample, atol=1e-5, rtol=0)


def test_wavelet_low_frequency_is_smooth(cf):
    """Five dilated binomial blurs (radius up to 16) leave almost no pixel-to-pixel variation."""
    sample, _ = _pair(4, shape=(1, 3, 96, 96))
    high, low = cf.wavelet_decomposition(sample)
    step = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()  # noqa: E731
    assert step(low) < 0.05 * step(sample)
    torch.testing.assert_close(high + low, sample, atol=1e-5, rtol=0)


def test_colour_fix_keeps_dtype_and_shape(cf):
    sample, reference = _pair(5, shape=(1, 3, 32, 24))
    for mode in ("Wavelet", "AdaIN"):
        out = cf.apply_color_fix(sample.double(), reference.double(), mode)
        assert out.dtype == torch.float64 and out.shape == sample.shape


@pytest.mark.parametrize("mode", ["wavelets", "Histogram", "", None])
def test_unknown_mode_raises(cf, mode):
    sample, reference = _pair(shape=(1, 3, 8, 8))
    with pytest.raises(ValueError, match="colour fix mode"):
        cf.apply_color_fix(sample, reference, mode)


def test_mismatched_shapes_raise_naming_both(cf):
    sample, _ = _pair(shape=(1, 3, 32, 24))
    _, reference = _pair(shape=(1, 3, 16, 12))
    for mode in ("Wavelet", "AdaIN", "None"):
        with pytest.raises(ValueError, match=r"\(1, 3, 32, 24\).*\(1, 3, 16, 12\)"):
            cf.apply_color_fix(sample, reference, mode)


def test_non_image_input_raises(cf):
    with pytest.raises(ValueError, match="NCHW"):
        cf.wavelet_color_fix(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
    with pytest.raises(TypeError):
        cf.adain_color_fix([[0.0]], torch.zeros(1, 3, 8, 8))
