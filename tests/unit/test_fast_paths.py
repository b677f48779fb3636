"""Every fast path of the sampler computes the plain path's function, and the step loop never waits on the
device.

- Host-side denoiser scalings give the same float32 numbers as the tensor path.
- Batched tile windows (tile_batch > 1) give exactly the per-window result.
- CUDA-graph bookkeeping (static buffers, per-step control scale, cloned outputs, fallbacks), driven on the CPU
  by a capture that recomputes from the static buffers (cuda_graphs.RecomputingCapture), matches eager and the
  official parity fixture.
- The step loop on the meta device (a stand-in accelerator: it runs every op for shapes only) makes no
  blocking host<->device transfer and reads no device scalar; the network call makes no transfer at all,
  which is what CUDA graph capture needs.
"""
from __future__ import annotations

import logging

import pytest
import torch

from parity_helpers import build_adaptor, build_eps_network, build_unet, full_size_on_meta, mod, rel_err

from ..fast_path_probes import DeviceTraffic


# --- denoiser on the host ----------------------------------------------------------------------------------
def test_host_scalings_equal_the_tensor_scalings():
    den = mod("denoiser")
    d = den.DiscreteEpsDenoiser()
    table = den.sigma_table()
    sigmas = torch.cat([table, table * 1.001, table * 0.999, den.legacy_ddpm_sigmas(50)[:-1],
                        mod("sampling").karras_sigmas_for(8)[:-1]])
    sq, c_in, t = d.scalings(sigmas)
    for i, s in enumerate(sigmas.tolist()):
        assert d.host_scalings(s) == (sq[i].item(), c_in[i].item(), t[i].item()), s


def test_make_denoise_equals_the_tensor_denoiser():
    """Host scalars in the denoiser give the numbers of the tensor formula D = x - sigma_q eps(c_in x, t)."""
    den = mod("denoiser")
    d = den.DiscreteEpsDenoiser()
    x = torch.randn(4, 4, 8, 8)
    weights = torch.randn(4, 1, 1, 1)

    def eps(x_in, t):
        return x_in * weights + t.view(-1, 1, 1, 1) * 1e-3

    for sigma in (14.6, 3.3, 0.05):
        sq, c_in, t = d.scalings(torch.tensor([sigma]).expand(4))
        plain = x - sq.view(-1, 1, 1, 1) * eps(x * c_in.view(-1, 1, 1, 1), t)
        fast = den.make_denoise(lambda x_in, t, c, y, h, s: eps(x_in, t))(x, sigma, None, None, None, 1.0)
        assert torch.equal(plain, fast), sigma


# --- batched tile windows ----------------------------------------------------------------------------------
def _per_sample_model(target: torch.Tensor, windows, calls: list):
    """A per-sample model on stacked windows; D depends on x, sigma, control scale and the window's target."""
    def tile_model(group):
        calls.append(group)
        targets = torch.cat([target[:, :, a:b, c:d] for a, b, c, d in (windows[j] for j in group)])
        return lambda x, sigma, cs: torch.tanh(x) * (0.3 + 0.01 * sigma) + targets * cs

    return tile_model


@pytest.mark.parametrize("sampler", ["edm", "dpm"])
@pytest.mark.parametrize("tile_batch", [2, 3, 4, 6, 64])
def test_batched_windows_equal_one_by_one(sampler, tile_batch):
    s, g, den = mod("sampling"), mod("guidance"), mod("denoiser")
    gen = torch.Generator().manual_seed(0)
    target, center = torch.randn(2, 4, 24, 40, generator=gen), torch.randn(2, 4, 24, 40, generator=gen)
    ts = mod("tiled_sampling")
    windows = ts.sliding_windows(24, 40, 16, 8)
    assert len(windows) == 8
    control = g.ControlSchedule(1.0, 0.3, True)
    rg = s.RestorationGuidance(3.0)

    def run(batch):
        calls: list = []
        tile_model = _per_sample_model(target, windows, calls)
        if sampler == "edm":
            sig = den.legacy_ddpm_sigmas(5)
            x = s.initial_latent(torch.randn(2, 4, 24, 40, generator=torch.Generator().manual_seed(1)), sig)
            out = ts.sample_tiled_restore_edm(tile_model, x, sig, windows=windows, tile_batch=batch,
                                              noise_sampler=s.generator_noise_sampler(3), churn=s.Churn(5.0),
                                              guidance=rg, control=control, x_center=center)
        else:
            sig = s.karras_sigmas_for(5)
            x = s.initial_latent(torch.randn(2, 4, 24, 40, generator=torch.Generator().manual_seed(1)), sig)
            out = ts.sample_tiled_restore_dpmpp_2m(tile_model, x, sig, windows=windows, tile_batch=batch,
                                                   noise_sampler=s.generator_noise_sampler(3), guidance=rg,
                                                   control=control, x_center=center)
        return out, calls

    plain, plain_calls = run(1)
    fast, fast_calls = run(tile_batch)
    assert torch.equal(plain, fast)
    per_step = len(windows), -(-len(windows) // tile_batch)
    assert len(plain_calls) == 5 * per_step[0] and len(fast_calls) == 5 * per_step[1]
    assert sorted(j for group in fast_calls[:per_step[1]] for j in group) == list(range(len(windows)))


def test_window_groups_validate():
    ts = mod("tiled_sampling")
    assert ts.window_groups(5, 2) == [(0, 1), (2, 3), (4,)]
    with pytest.raises(ValueError, match="tile_batch must be at least 1, got 0"):
        ts.window_groups(5, 0)


# --- CUDA graph bookkeeping --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def parity_network(pack, parity):
    """(the parity fixture, its eps network on the fixture's weights)."""
    return parity, build_eps_network(parity)


def _replay_official(p, network):
    """The parity case's sampler run (official settings, recorded noise) through `network`."""
    g, s = mod("guidance"), mod("sampling")
    c, cfg = p.case, p.config["sampler"]
    inputs = g.cfg_inputs(g.Conditioning(c["cond_crossattn"], c["cond_vector"]),
                          g.Conditioning(c["uncond_crossattn"], c["uncond_vector"]), c["control_latent"])
    cfg_schedule = g.CFGSchedule(cfg["cfg_scale"], cfg["cfg_scale_start"], cfg["use_linear_CFG"])
    denoise = mod("denoiser").make_denoise(network)
    sigmas = c["sigmas"].float()
    return s.sample_restore_edm(
        lambda x, sigma, cs: g.cfg_denoise(denoise, x, sigma, inputs, cs, cfg_schedule),
        s.initial_latent(c["noise"], sigmas), sigmas, noise_sampler=lambda i, like: c["churn_noise"][i],
        churn=s.Churn(s_churn=cfg["s_churn"], s_noise=cfg["s_noise"]),
        guidance=s.RestorationGuidance(cfg["restore_cfg"], cfg["restore_cfg_s_tmin"]),
        control=g.ControlSchedule(cfg["control_scale"], cfg["control_scale_start"], cfg["use_linear_control_scale"]),
        x_center=c["center_latent"])


def test_graphed_network_matches_eager_and_the_official_code(parity_network):
    p, eps_network = parity_network
    assert p.config["sampler"]["use_linear_control_scale"]  # the control scale changes every step
    backend = mod("cuda_graphs").RecomputingCapture()
    graphed = mod("cuda_graphs").GraphedNetwork(eps_network, backend)
    fast = _replay_official(p, graphed)
    plain = _replay_official(p, eps_network)
    steps = p.case["sigmas"].numel() - 1
    assert backend.captures == 1 and backend.replays == steps and graphed.disabled is None
    assert rel_err(fast, plain) < 1e-6
    assert rel_err(fast, p.case["samples"]) < 1e-4


def test_graphed_network_copies_every_input_and_hands_out_copies(parity_network):
    _, eps_network = parity_network
    graphed = mod("cuda_graphs").GraphedNetwork(eps_network, mod("cuda_graphs").RecomputingCapture())
    gen = torch.Generator().manual_seed(5)

    def inputs():
        return (torch.randn(2, 4, 16, 12, generator=gen), torch.randint(0, 999, (2,), generator=gen),
                torch.randn(2, 77, 64, generator=gen), torch.randn(2, 96, generator=gen),
                torch.randn(2, 4, 16, 12, generator=gen))

    outs, eagers = [], []
    for scale in (1.0, 0.5, 0.8):
        args = inputs()
        outs.append(graphed(*args, scale))
        eagers.append(eps_network(*args, scale))
    for out, eager in zip(outs, eagers):  # earlier outputs were not overwritten by later replays
        assert rel_err(out, eager) < 1e-6
    assert len(graphed.graphs) == 2  # scale exactly 1 (baked in), and any other scale (a device scalar)
    # Another shape (the last, smaller group of tiles) gets its own graph.
    args = tuple(torch.cat([a, a]) for a in inputs())
    assert rel_err(graphed(*args, 0.7), eps_network(*args, 0.7)) < 1e-6 and len(graphed.graphs) == 3


def test_connectors_at_scale_one_skip_the_blend_exactly(pack, parity):
    """At a host control scale of exactly 1 the connectors return their transform without blending (h * 1 +
    h_raw * 0); the result is identical to the blended one (a device scale of 1 takes the blending path)."""
    adaptor = build_adaptor(parity)
    gen = torch.Generator().manual_seed(2)
    for module in adaptor.project_modules:
        if type(module).__name__ == "ZeroSFT":
            c_ch = module.mlp_shared[0].in_channels
            width = module.param_free_norm.num_channels
            skip_ch = module.zero_conv.out_channels
            c = torch.randn(1, c_ch, 4, 4, generator=gen)
            h = torch.randn(1, skip_ch, 4, 4, generator=gen)
            h_ori = torch.randn(1, width - skip_ch, 4, 4, generator=gen) if width > skip_ch else None
            args = (c, h, h_ori) if h_ori is not None else (c, h)
        else:
            query, context = module.norm1.num_channels, module.norm2.num_channels
            args = (torch.randn(1, context, 4, 4, generator=gen), torch.randn(1, query, 4, 4, generator=gen))
        with torch.no_grad():
            assert torch.equal(module(*args, control_scale=1.0), module(*args, control_scale=torch.tensor(1.0)))


@pytest.mark.parametrize("backend, why", [
    (mod("cuda_graphs").RecomputingCapture(fail=RuntimeError("operation not permitted when stream is capturing")), "capture failed"),
    (mod("cuda_graphs").RecomputingCapture(corrupt=True), "the replay differs from eager"),
])
def test_failed_or_wrong_capture_falls_back_to_eager(parity_network, caplog, backend, why):
    p, eps_network = parity_network
    graphed = mod("cuda_graphs").GraphedNetwork(eps_network, backend)
    with caplog.at_level(logging.WARNING):
        fast = _replay_official(p, graphed)
    assert graphed.disabled is not None and graphed.disabled.startswith(why)
    assert f"CUDA graph off for this run, sampling eagerly: {why}" in caplog.text
    assert rel_err(fast, _replay_official(p, eps_network)) < 1e-6


def test_all_on_device():
    cg = mod("cuda_graphs")
    lin = torch.nn.Linear(2, 2)
    assert cg.all_on_device([lin], torch.device("cpu"))
    assert not cg.all_on_device([lin], torch.device("meta"))
    lin.to("meta")
    assert cg.all_on_device([lin], torch.device("meta"))


# --- no host-device synchronisation in the step loop -------------------------------------------------------
@pytest.fixture
def on_meta(pack, parity, sdpa_attention):
    """The parity network moved to the meta device, with the attention CUDA runs use."""
    meta_network = build_eps_network(parity, build_adaptor(parity).to("meta"), build_unet(parity).to("meta"))
    traffic = DeviceTraffic()

    def eps_network(*args):
        traffic.in_network = True
        try:
            return meta_network(*args)
        finally:
            traffic.in_network = False

    return parity, eps_network, traffic


def _meta_loop(p, network, traffic, sampler: str, tiled: bool, steps: int = 5):
    """Run a sampler loop on meta tensors; record only steps 1 .. n-2 (between the first and last callback)."""
    g, s, ts = mod("guidance"), mod("sampling"), mod("tiled_sampling")
    c, cfg = p.case, p.config["sampler"]
    meta = lambda t: t.to("meta")  # noqa: E731
    cond = g.Conditioning(meta(c["cond_crossattn"]), meta(c["cond_vector"]))
    uncond = g.Conditioning(meta(c["uncond_crossattn"]), meta(c["uncond_vector"]))
    h, w = c["control_latent"].shape[-2:]
    windows = ts.sliding_windows(h, w, 8, 4) if tiled else [(0, h, 0, w)]
    denoise = mod("denoiser").make_denoise(network)
    cfg_schedule = g.CFGSchedule(cfg["cfg_scale"], cfg["cfg_scale_start"], True)
    control = g.ControlSchedule(0.9, 0.5, True)
    models = {}

    def tile_model(group):
        if group not in models:
            hint = torch.cat([meta(c["control_latent"])[:, :, a:b, cc:d] for a, b, cc, d in (windows[j] for j in group)])
            n = len(group)
            stack = lambda t: torch.cat([t] * n)  # noqa: E731
            inputs = g.cfg_inputs(g.Conditioning(stack(cond.crossattn), stack(cond.vector)),
                                  g.Conditioning(stack(uncond.crossattn), stack(uncond.vector)), hint)
            models[group] = lambda x, sigma, cs: g.cfg_denoise(denoise, x, sigma, inputs, cs, cfg_schedule)
        return models[group]

    seen = []

    def callback(d):
        seen.append(d["i"])
        if d["i"] == 0:
            traffic.__enter__()
        elif d["i"] == steps - 1:
            traffic.__exit__(None, None, None)

    common = dict(guidance=s.RestorationGuidance(4.0, 0.05), control=control, x_center=meta(c["center_latent"]),
                  callback=callback)
    if sampler == "edm":
        sigmas = mod("denoiser").legacy_ddpm_sigmas(steps)
        x = meta(s.initial_latent(c["noise"], sigmas))
        noise = s.generator_noise_sampler(1)
        churn = s.Churn(s_churn=5.0, s_noise=1.01)
        if tiled:
            out = ts.sample_tiled_restore_edm(tile_model, x, sigmas, windows=windows, noise_sampler=noise,
                                              churn=churn, tile_batch=2, **common)
        else:
            out = s.sample_restore_edm(tile_model((0,)), x, sigmas, noise_sampler=noise, churn=churn, **common)
    else:
        sigmas = s.karras_sigmas_for(steps)
        x = meta(s.initial_latent(c["noise"], sigmas))
        noise = s.brownian_noise_sampler(x, sigmas, 1)
        if tiled:
            out = ts.sample_tiled_restore_dpmpp_2m(tile_model, x, sigmas, windows=windows, noise_sampler=noise,
                                                   eta=1.0, tile_batch=2, **common)
        else:
            out = s.sample_restore_dpmpp_2m(tile_model((0,)), x, sigmas, noise_sampler=noise, eta=1.0, **common)
    assert out.device.type == "meta" and seen == list(range(steps))
    return len(windows)


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("sampler", ["edm", "dpm"])
def test_step_loop_never_waits_on_the_device(on_meta, sampler, tiled):
    p, network, traffic = on_meta
    n_windows = _meta_loop(p, network, traffic, sampler, tiled)
    assert n_windows > 2 if tiled else n_windows == 1
    assert traffic.blocking == []
    assert traffic.network_transfers == []
    # The recorder does see transfers: every recorded step uploads its noise draw, asynchronously (EDM draws
    # for steps 1-4 before the last callback; DPM++ 2M draws none into sigma = 0, so steps 1-3).
    assert traffic.async_uploads == (4 if sampler == "edm" else 3)


def test_the_recorder_catches_a_blocking_transfer(on_meta):
    """Negative control: a model that builds its sigma tensor on the host and copies it over is caught."""
    p, network, traffic = on_meta

    def syncing_network(x_in, t, context, y, hint, scale):
        traffic.in_network = True
        torch.tensor([0.5]).to(x_in.device)  # a host-to-device copy inside the network
        return network(x_in, t, context, y, hint, scale)

    _meta_loop(p, syncing_network, traffic, "edm", False)
    assert traffic.blocking and traffic.network_transfers


# --- the full-size step, on the meta device ------------------------------------------------------------------
# FLOPs of one official sampler step at 1024 x 1024 (batch 2 for CFG), counted with the same
# torch.utils.flop_counter on the official code (../shared/docs/performance-notes.md).
OFFICIAL_CONTROL_TFLOP = 5.87
OFFICIAL_UNET_TFLOP = 14.41


def _meta_step_inputs(latent: int, compute_dtype: torch.dtype):
    """One CFG network call at latent size `latent` (1024 px -> 128): x_in, t, context, y, hint."""
    return (torch.empty(2, 4, latent, latent, device="meta"), torch.full((2,), 500, device="meta", dtype=torch.long),
            torch.empty(2, 77, 2048, device="meta"), torch.empty(2, 2816, device="meta"),
            torch.empty(2, 4, latent, latent, device="meta", dtype=compute_dtype))


def test_full_size_step_does_the_official_work_without_transfers(pack, layout_json, sdpa_attention):
    """GLVControl + ComfyUI's SDXL UNet with our connectors, built in the official shapes on the meta device, do
    the official step's FLOPs (same work, nothing missing or repeated) and move nothing between host and device
    inside the network, which is what a CUDA graph needs."""
    from torch.utils.flop_counter import FlopCounterMode

    unet, adaptor = full_size_on_meta(layout_json)
    x, t, context, y, hint = _meta_step_inputs(128, torch.float16)
    traffic = DeviceTraffic()
    with torch.no_grad(), traffic:
        traffic.in_network = True
        with FlopCounterMode(display=False) as counter:
            control = adaptor.control_model(hint, t, x, context, y)
        control_tflop = counter.get_total_flops() / 1e12
        with FlopCounterMode(display=False) as counter:
            eps = mod("unet").supir_unet_forward(unet, x, t, context, y, control, adaptor.project_modules, 0.8)
        unet_tflop = counter.get_total_flops() / 1e12
    assert eps.shape == x.shape and eps.dtype == torch.float16
    assert control_tflop == pytest.approx(OFFICIAL_CONTROL_TFLOP, rel=5e-3)
    assert unet_tflop == pytest.approx(OFFICIAL_UNET_TFLOP, rel=5e-3)
    assert traffic.network_transfers == [] and traffic.blocking == []


# Issue targets for peak VRAM at 1024 x 1024. The estimate below leaves this much for what it cannot see: the
# caching allocator's rounding and fragmentation, cuBLAS/cuDNN workspaces, the sampler's latents.
VRAM_TARGET_GIB = {torch.float16: 9.0, torch.float8_e4m3fn: 5.5}
UNSEEN_ALLOWANCE_GIB = 0.75


def _flash_attention(q, k, v, heads, mask=None, *args, **kwargs):
    """Memory stand-in for SDPA's flash kernel, which allocates only its output (math SDPA on the meta device
    would materialise the attention matrix, which no CUDA run does)."""
    return torch.empty(q.shape[0], q.shape[1], v.shape[-1], device=q.device, dtype=q.dtype)


@pytest.mark.parametrize("weight_dtype", [torch.float16, torch.float8_e4m3fn], ids=["fp16", "fp8"])
def test_full_size_sampling_step_fits_the_vram_targets(pack, layout_json, monkeypatch, weight_dtype):
    """Weights plus the peak of the tensors one CFG network call allocates, full size at 1024 x 1024, on the meta
    device: an estimate of the sampling stage's peak VRAM (fp16 compute), within the issue's targets with room
    for what it cannot see. It fails on a memory regression (kept weight copies, features held in fp32...)."""
    import comfy.ldm.modules.attention as attention

    from ..fast_path_probes import LiveStorage

    monkeypatch.setattr(attention, "optimized_attention", _flash_attention)
    monkeypatch.setattr(attention, "optimized_attention_masked", _flash_attention, raising=False)
    unet, adaptor = full_size_on_meta(layout_json, weight_dtype, torch.float16)
    params = [p for m in (unet, adaptor) for p in m.parameters()]
    weights = sum(p.numel() * p.element_size() for p in params)
    inputs = _meta_step_inputs(128, torch.float16)
    eps_network = mod("unet").supir_unet_forward
    probe = LiveStorage(existing=[*params, *inputs])
    with torch.no_grad(), probe:
        x, t, context, y, hint = inputs
        control = adaptor.control_model(hint, t, x, context, y)
        eps = eps_network(unet, x, t, context, y, control, adaptor.project_modules, 0.9)
        del control
    assert eps.shape == x.shape
    gib = 2 ** 30
    estimate = (weights + probe.peak) / gib
    logging.getLogger(__name__).info("sampling-stage estimate at 1024 px, %s weights: %.2f GiB weights + %.2f GiB "
                                     "activations = %.2f GiB", weight_dtype, weights / gib, probe.peak / gib, estimate)
    assert 0.1 < probe.peak / gib < 2.0, probe.peak / gib  # the probe saw the activations, and no weights
    assert estimate + UNSEEN_ALLOWANCE_GIB <= VRAM_TARGET_GIB[weight_dtype], \
        f"weights {weights / gib:.2f} GiB + activations {probe.peak / gib:.2f} GiB"
