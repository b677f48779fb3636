"""The restoration-guided EDM sampler against the official code: replay the recorded noise and match every
step of the trajectory (fixture README: ~1e-4 relative on the trajectory in float32)."""
from __future__ import annotations

import pytest
import torch

from parity_helpers import build_eps_network, mod, rel_err

TRAJECTORY_TOL = 1e-4


@pytest.fixture(scope="module")
def setup(pack, parity):
    return parity, mod("denoiser").make_denoise(build_eps_network(parity))


def official_settings(p):
    g, s = mod("guidance"), mod("sampling")
    cfg = p.config["sampler"]
    return dict(
        cfg=g.CFGSchedule(cfg["cfg_scale"], cfg["cfg_scale_start"], cfg["use_linear_CFG"]),
        control=g.ControlSchedule(cfg["control_scale"], cfg["control_scale_start"], cfg["use_linear_control_scale"]),
        churn=s.Churn(s_churn=cfg["s_churn"], s_noise=cfg["s_noise"]),
        guidance=s.RestorationGuidance(cfg["restore_cfg"], cfg["restore_cfg_s_tmin"]),
    )


@torch.no_grad()
def run_replay(p, denoise, settings, x_center):
    g, s = mod("guidance"), mod("sampling")
    c = p.case
    cond = g.Conditioning(c["cond_crossattn"], c["cond_vector"])
    uncond = g.Conditioning(c["uncond_crossattn"], c["uncond_vector"])
    inputs = g.cfg_inputs(cond, uncond, c["control_latent"])

    def model(x, sigma_hat, control_scale):
        return g.cfg_denoise(denoise, x, sigma_hat, inputs, control_scale, settings["cfg"])

    seen = []
    sigmas = c["sigmas"].float()
    x = s.initial_latent(c["noise"], sigmas)
    out = s.sample_restore_edm(model, x, sigmas, noise_sampler=lambda i, like: c["churn_noise"][i],
                               churn=settings["churn"], guidance=settings["guidance"], control=settings["control"],
                               x_center=x_center, callback=lambda d: seen.append(d))
    return out, seen


def test_trajectory_matches_official_every_step(setup):
    p, denoise = setup
    c = p.case
    out, seen = run_replay(p, denoise, official_settings(p), c["center_latent"])
    n = c["trajectory"].shape[0]
    assert len(seen) == n
    for i in range(n - 1):
        # The callback's x of step i+1 is the state after step i.
        assert rel_err(seen[i + 1]["x"], c["trajectory"][i]) < TRAJECTORY_TOL, f"trajectory[{i}]"
    assert rel_err(out, c["trajectory"][-1]) < TRAJECTORY_TOL
    assert rel_err(out, c["samples"]) < TRAJECTORY_TOL


def test_every_sampler_feature_matters(setup):
    """Turning off any one of churn noise replay, restoration guidance, linear CFG or the control ramp moves the
    result away from the official samples: the parity above exercises each of them."""
    p, denoise = setup
    c = p.case
    g, s = mod("guidance"), mod("sampling")
    base = official_settings(p)
    variants = {
        "no restoration guidance": dict(base, guidance=s.RestorationGuidance(-1.0)),
        "constant CFG": dict(base, cfg=g.CFGSchedule(base["cfg"].cfg_scale, base["cfg"].cfg_scale_start, False)),
        "constant control": dict(base, control=g.ControlSchedule(base["control"].control_scale, 0.0, False)),
        "no churn": dict(base, churn=s.Churn(s_churn=0.0)),
    }
    for name, settings in variants.items():
        out, _ = run_replay(p, denoise, settings, c["center_latent"])
        assert rel_err(out, c["samples"]) > 10 * TRAJECTORY_TOL, name
