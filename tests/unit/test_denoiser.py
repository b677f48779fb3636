"""The discrete eps denoiser (sgm DiscreteDenoiser + EpsScaling + LegacyDDPMDiscretization)."""
from __future__ import annotations

import pytest
import torch

from parity_helpers import mod


@pytest.fixture(scope="module")
def den(pack):
    return mod("denoiser")


def test_table_endpoints_and_schedule(den):
    table = den.sigma_table()
    assert table.shape == (1000,) and table.dtype == torch.float32
    assert torch.all(table[1:] > table[:-1])
    assert table[-1].item() == pytest.approx(14.6146, abs=1e-4)  # sigma_max of the reference
    s50 = den.legacy_ddpm_sigmas(50)
    assert s50.shape == (51,) and s50[-1] == 0 and s50[0] == table[-1]
    # Step timesteps 19, 39, ..., 999 (reference §3): each schedule sigma is a table entry.
    idx = [int((table - s).abs().argmin()) for s in s50[:-1]]
    assert idx == list(range(999, 0, -20))
    with pytest.raises(ValueError, match="steps"):
        den.legacy_ddpm_sigmas(0)


def test_snapping_and_scalings(den):
    d = den.DiscreteEpsDenoiser()
    table = den.sigma_table()
    sigma = torch.tensor([table[10].item() * 1.001, table[500].item() * 0.999])
    sq, c_in, t = d.scalings(sigma)
    assert t.tolist() == [10, 500]
    assert torch.equal(sq, table[[10, 500]])
    assert torch.allclose(c_in, 1 / (sq ** 2 + 1).sqrt())


def test_call_is_x_minus_sigma_eps(den):
    d = den.DiscreteEpsDenoiser()
    x = torch.randn(2, 4, 8, 8)
    seen = {}

    def eps_fn(x_in, t, context, y, hint, scale):
        seen.update(x_in=x_in, t=t, scale=scale)
        return torch.ones_like(x_in)

    sigma = torch.tensor([3.0])
    out = den.make_denoise(eps_fn, d)(x, 3.0, None, None, None, 0.5)
    sq, c_in, t = d.scalings(sigma)
    assert torch.allclose(out, x - sq)
    assert torch.allclose(seen["x_in"], x * c_in)
    assert seen["t"].tolist() == [t.item()] * 2 and seen["scale"] == 0.5
