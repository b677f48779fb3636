"""GroupNorm-synchronised tiled VAE (supir_modules/tiled_vae.py) against the untiled ComfyUI Encoder/Decoder.

Nets: the parity fixture's tiny SDXL-shaped VAE (x8, random weights) and a tiny Encoder/Decoder built here
(ch 32, ch_mult (1, 2, 2): x4, one res block per level, attention in the lowest level and the middle), on a
192x160 image with colour ramps (so tiles differ in their statistics) plus texture.

Tolerances (relative max error vs the untiled module, measured on CPU float32 with both ComfyUI copies):
- one tile covers the input: the module itself is called, so the result is identical.
- the tiled walk over one whole-image tile: < 2e-6 (float rounding of the fixed-statistics GroupNorm).
- tiny net, encoder tile 64 / pad 32 px, decoder tile 16 / pad 8 latent px (2x2 tiles each):
  official statistics (padded tiles, averaged variances): 0.39 / 0.40; naive tiling (each tile its own
  GroupNorm): 0.52 / 0.62; valid-region statistics (pooled with the law of total variance): 0.014 / 0.018,
  as small as with the exact untiled statistics injected (0.014 / 0.024): what is left comes from the receptive
  field reaching beyond `pad`. The official combination misses the spread between tile means, which a colour
  ramp makes large; random weights also spread errors further than a trained VAE.
- seams: the step between the rows (columns) either side of a tile boundary, over the untiled output's step
  there: official 1.15-1.47, valid-region 0.99-1.03, naive tiling 2.2-3.3.
"""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from parity_helpers import build_vae, mod, rel_err

H, W = 192, 160
ENC_TILE, ENC_PAD = 64, 32
DEC_TILE, DEC_PAD = 16, 8
TILED_ONE_TILE_TOL = 2e-6
OFFICIAL_TOL = 0.5
VALID_TOL = 3e-2
SEAM_OFFICIAL, SEAM_VALID, SEAM_NAIVE = 1.6, 1.1, 1.9  # boundary step / the untiled image's step there


@pytest.fixture(scope="module")
def tv(pack):
    return mod("tiled_vae")


def _init(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """ComfyUI's layers skip initialisation: N(0, 0.02) everywhere, GroupNorms weight 1 / bias 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".norm" in name or name.startswith("norm"):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return net.eval()


@pytest.fixture(scope="module")
def tiny(pack):
    from comfy.ldm.modules.diffusionmodules.model import Decoder, Encoder

    dd = dict(ch=32, out_ch=3, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=[16], in_channels=3,
              resolution=64, z_channels=4, double_z=True)
    return _init(Encoder(**dd), 1), _init(Decoder(**dd), 2), 4


@pytest.fixture(scope="module")
def parity_vae(pack, parity):
    return build_vae(parity)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, H), torch.linspace(-1, 1, W), indexing="ij")
    texture = torch.nn.functional.interpolate(torch.rand(1, 3, H // 8, W // 8, generator=g) * 2 - 1, size=(H, W),
                                              mode="bicubic")
    return (0.6 * torch.stack([xx, yy, -xx * yy])[None] + 0.3 * texture).clamp(-1, 1)


def _naive(tv, net, x, tile, pad, align, scale):
    """Independent tiles: each padded tile through the module (its own GroupNorm statistics), cropped, stitched."""
    rows, cols = tv._split_axis(x.shape[2], tile, pad, align), tv._split_axis(x.shape[3], tile, pad, align)
    out = None
    for r in rows:
        for c in cols:
            h = net(x[:, :, r.lo:r.hi, c.lo:c.hi])
            if out is None:
                out = torch.zeros(x.shape[0], h.shape[1], scale(x.shape[2]), scale(x.shape[3]))
            cut = lambda n, s: slice(n * (s.out_lo - s.lo) // (s.hi - s.lo), n * (s.out_hi - s.lo) // (s.hi - s.lo))  # noqa: E731
            out[:, :, scale(r.out_lo):scale(r.out_hi), scale(c.out_lo):scale(c.out_hi)] = \
                h[:, :, cut(h.shape[2], r), cut(h.shape[3], c)]
    return out


def _bounds(tv, length, tile, pad, align, scale) -> list[int]:
    """Output rows where a tile's region starts (the first tile's start, 0, is no boundary)."""
    return [scale(s.out_lo) for s in tv._split_axis(length, tile, pad, align)[1:]]


@pytest.fixture(scope="module")
def runs(tv, tiny, image):
    """Untiled, official-tiled, valid-region-tiled and naive-tiled outputs of the tiny net, computed once."""
    enc, dec, f = tiny
    with torch.no_grad():
        ref_e = enc(image)
        z = ref_e[:, :4]
        ref_d = dec(z)
        return {
            "encode": dict(ref=ref_e, official=tv.tiled_encode(enc, image, ENC_TILE, ENC_PAD),
                           valid=tv.tiled_encode(enc, image, ENC_TILE, ENC_PAD, valid_region_stats=True),
                           naive=_naive(tv, enc, image, ENC_TILE, ENC_PAD, f, lambda v: v // f),
                           row_bounds=_bounds(tv, H, ENC_TILE, ENC_PAD, f, lambda v: v // f),
                           col_bounds=_bounds(tv, W, ENC_TILE, ENC_PAD, f, lambda v: v // f)),
            "decode": dict(ref=ref_d, official=tv.tiled_decode(dec, z, DEC_TILE, DEC_PAD),
                           valid=tv.tiled_decode(dec, z, DEC_TILE, DEC_PAD, valid_region_stats=True),
                           naive=_naive(tv, dec, z, DEC_TILE, DEC_PAD, 1, lambda v: v * f),
                           row_bounds=_bounds(tv, z.shape[2], DEC_TILE, DEC_PAD, 1, lambda v: v * f),
                           col_bounds=_bounds(tv, z.shape[3], DEC_TILE, DEC_PAD, 1, lambda v: v * f)),
        }


# --- one tile -----------------------------------------------------------------------------------------------
@torch.no_grad()
def test_one_tile_calls_the_module(tv, parity_vae, pack, parity):
    vae, robust = parity_vae
    lq = parity.case["lq"].float()  # 128x96: fits 512 + 2*32
    assert torch.equal(tv.tiled_encode(vae.encoder, lq), vae.encoder(lq))
    assert torch.equal(tv.tiled_encode(robust.denoise_encoder, lq), robust.denoise_encoder(lq))
    z = torch.randn(1, 4, 16, 12, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tv.tiled_decode(vae.decoder, z), vae.decoder(z))


@torch.no_grad()
def test_the_tiled_walk_is_the_forward_pass(tv, tiny, parity_vae, image):
    """One tile spanning the whole input through the layer-by-layer program: the module's forward, op for op."""
    enc, dec, f = tiny
    vae, robust = parity_vae
    x = image[:, :, :96, :64]
    whole = lambda n: [tv._Span(0, n, 0, n)]  # noqa: E731
    cpu = torch.device("cpu")
    for net, g in ((enc, f), (vae.encoder, 8), (robust.denoise_encoder, 8)):
        out = tv._run_tiled(tv._encoder_program(net), x, whole(96), whole(64), lambda v: v // g, cpu, cpu,
                            False, None)
        assert rel_err(out, net(x)) < TILED_ONE_TILE_TOL
    z = torch.randn(1, 4, 20, 16, generator=torch.Generator().manual_seed(1))
    for net, g in ((dec, f), (vae.decoder, 8)):
        out = tv._run_tiled(tv._decoder_program(net), z, whole(20), whole(16), lambda v: v * g, cpu, cpu,
                            True, None)
        assert rel_err(out, net(z)) < TILED_ONE_TILE_TOL


# --- several tiles ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("part", ["encode", "decode"])
def test_tiled_is_close_to_untiled(runs, part):
    r = runs[part]
    official, valid, naive = (rel_err(r[k], r["ref"]) for k in ("official", "valid", "naive"))
    assert r["row_bounds"] and r["col_bounds"]  # several tiles each way
    assert official < OFFICIAL_TOL, official
    assert official < 0.85 * naive, (official, naive)  # synchronised statistics beat independent tiles
    assert valid < VALID_TOL, valid
    assert 10 * valid < naive, (valid, naive)


def _row_steps(y: torch.Tensor) -> torch.Tensor:
    """Mean |row i+1 - row i| for every i (over images, channels, columns)."""
    return (y[:, :, 1:] - y[:, :, :-1]).abs().mean(dim=(0, 1, 3))


@pytest.mark.parametrize("part", ["encode", "decode"])
@pytest.mark.parametrize("stats, max_ratio", [("official", SEAM_OFFICIAL), ("valid", SEAM_VALID)])
def test_no_seams_at_tile_boundaries(runs, part, stats, max_ratio):
    """Across each tile boundary (rows, then columns) the tiled output steps no more than elsewhere, and about as
    much as the untiled output steps there."""
    r = runs[part]
    for dim, bounds in ((2, r["row_bounds"]), (3, r["col_bounds"])):
        at = [b - 1 for b in bounds]
        ref, tiled, naive = (_row_steps(r[k].transpose(2, dim)) for k in ("ref", stats, "naive"))
        elsewhere = torch.cat([tiled[:at[0]], tiled[at[-1] + 1:]]).mean()
        assert (tiled[at] <= elsewhere).all(), (dim, tiled[at], elsewhere)
        assert (tiled[at] <= max_ratio * ref[at]).all(), (dim, tiled[at] / ref[at])
        assert (naive[at] > SEAM_NAIVE * ref[at]).any(), (dim, naive[at] / ref[at])  # the measure sees seams


# --- arguments ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tile, pad, bad", [(60, 32, "tile_size=60"), (8, 0, "tile_size=8"), (0, 32, "tile_size=0"),
                                           (64, 30, "pad=30"), (64, -8, "pad=-8")])
def test_bad_encoder_tiles_raise(tv, tiny, parity_vae, image, tile, pad, bad):
    for enc in (tiny[0], parity_vae[0].encoder):
        with pytest.raises(ValueError, match=bad):
            tv.tiled_encode(enc, image, tile, pad)


@pytest.mark.parametrize("tile, pad, bad", [(4, 11, "tile_size=4"), (0, 11, "tile_size=0"), (16, -1, "pad=-1")])
def test_bad_decoder_tiles_raise(tv, tiny, tile, pad, bad):
    with pytest.raises(ValueError, match=bad):
        tv.tiled_decode(tiny[1], torch.zeros(1, 4, 48, 40), tile, pad)


def test_bad_arguments_raise(tv, tiny, image):
    enc, dec, _ = tiny
    with pytest.raises(TypeError, match="int"):
        tv.tiled_encode(enc, image, 64.0)
    with pytest.raises(TypeError, match="int"):
        tv.tiled_decode(dec, torch.zeros(1, 4, 48, 40), True)
    with pytest.raises(ValueError, match="190x160 px"):
        tv.tiled_encode(enc, image[:, :, :190], 64, 32)
    with pytest.raises(ValueError, match="NCHW"):
        tv.tiled_encode(enc, image[0], 64, 32)
    with pytest.raises(TypeError, match="Decoder"):
        tv.tiled_encode(dec, image, 64, 32)
    with pytest.raises(TypeError, match="Encoder"):
        tv.tiled_decode(enc, torch.zeros(1, 4, 48, 40), 16, 8)


# --- progress, interrupts, devices --------------------------------------------------------------------------
def test_callback_counts_every_tile_step(tv, tiny, image):
    enc, _, _ = tiny
    seen = []
    tv.tiled_encode(enc, image[:, :, :96, :96], 32, 8, callback=lambda done, total: seen.append((done, total)))
    tiles = len(tv._split_axis(96, 32, 8, 8)) ** 2
    norms = sum(isinstance(m, torch.nn.GroupNorm) for m in enc.modules())
    assert tiles > 1 and seen == [(i, tiles * (norms + 1)) for i in range(1, tiles * (norms + 1) + 1)]


def test_interrupt_stops_between_tiles(tv, tiny, image, monkeypatch):
    """The check runs before every tile step; without the function (older ComfyUI) tiling still works."""
    class Stop(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    enc, _, _ = tiny
    x = image[:, :, :96, :96]
    monkeypatch.setattr(tv, "model_management", SimpleNamespace(throw_exception_if_processing_interrupted=interrupt))
    with pytest.raises(Stop):
        tv.tiled_encode(enc, x, 32, 8)
    assert len(calls) == 3
    monkeypatch.setattr(tv, "model_management", SimpleNamespace())
    assert tv.tiled_encode(enc, x, 32, 8).shape == (1, 8, 24, 24)


def test_parking_device_does_not_change_the_result(tv, tiny, image):
    enc, _, _ = tiny
    x = image[:, :, :96, :96]
    assert torch.equal(tv.tiled_encode(enc, x, 32, 8), tv.tiled_encode(enc, x, 32, 8, park_device="cpu"))
