"""The four restoration nodes chained inside a real ComfyUI (the copy SUPIR_COMFY_ROOT names) on tiny weights:
Loader -> Degradation-Robust Encode -> Conditioner -> Sampler -> Tiled Decode."""
from __future__ import annotations

import os

import pytest
import torch

from fsupir_under_test.supir_modules.unet import context_dim

from ..node_chain import CONDITIONER_DEFAULTS, SAMPLER_DEFAULTS, image


def test_chain_restores_to_the_input_size(chain):
    out, samples = chain.run(image(h=80, w=120))
    assert out.shape == (1, 80, 120, 3)
    assert torch.isfinite(out).all() and out.std() > 0
    # min_size 128: 80x120 is scaled by 1.6 to 128x192 (multiples of 64), i.e. a 16x24 latent.
    assert samples["samples"].shape == (1, 4, 16, 24)


def test_each_stage_node_reports_its_time(chain):
    """Encode, Sampler and Tiled Decode return their time (and peak VRAM, none on the CPU) as UI output."""
    chain.reports.clear()
    chain.run(image(), steps=4)
    assert [r["stage"] for r in chain.reports] == ["encode", "sample", "decode"], chain.reports
    encode, sample, decode = chain.reports
    assert sample["steps"] == 4 and sample["ms_per_step"] > 0
    assert encode["steps"] is None and decode["steps"] is None
    assert all(r["seconds"] > 0 and r["device"] == "cpu" and r["peak_vram_gib"] is None for r in chain.reports)


def test_upscale_and_batches(chain):
    out, _ = chain.run(image(b=2, h=64, w=96, seed=3), seed=1)
    latents, _ = chain.encode(image(b=2, h=64, w=96, seed=3), upscale=2.0)
    assert latents.out_size == (128, 192)
    assert out.shape == (2, 64, 96, 3)
    assert not torch.allclose(out[0], out[1])


def test_same_seed_same_result_other_seed_differs(chain):
    img = image()
    a, _ = chain.run(img, seed=5)
    b, _ = chain.run(img, seed=5)
    c, _ = chain.run(img, seed=6)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("preset", ["Fidelity", "Quality", "Lightning"])
def test_presets_run(chain, preset):
    out, _ = chain.run(image(), steps=2, preset=preset) if preset != "Fidelity" else chain.run(image(), preset=preset,
                                                                                                steps=2)
    assert torch.isfinite(out).all()


def test_grey_and_rgba_inputs(chain):
    grey, _ = chain.run(image(c=1))
    assert grey.shape[-1] == 3
    rgba = image(c=4)
    rgba[..., 3] = torch.linspace(0, 1, rgba.shape[2])
    out, _ = chain.run(rgba)
    assert out.shape == (1, 80, 72, 4)
    assert torch.allclose(out[..., 3], rgba[..., 3], atol=1e-5)


def test_per_image_captions_change_each_image(chain):
    img = image(b=1).expand(2, -1, -1, -1).contiguous()
    latents, stage1 = chain.encode(img)
    pos_same, neg = chain.condition(["a cat", "a cat"])
    pos_diff, _ = chain.condition(["a cat", "a red car on a street"])
    same = chain.sample(latents, pos_same, neg)["samples"]
    diff = chain.sample(latents, pos_diff, neg)["samples"]
    assert torch.allclose(same[0], diff[0], atol=1e-5)  # the first caption is the same in both runs
    assert not torch.allclose(same[1], diff[1], atol=1e-4)


def test_one_tile_equals_untiled(chain):
    latents, stage1 = chain.encode(image())
    pos, neg = chain.condition()
    plain = chain.sample(latents, pos, neg, steps=3)["samples"]
    tiled = chain.sample(latents, pos, neg, steps=3, tiled=True, tile_size=1024, tile_stride=512)["samples"]
    assert (plain - tiled).abs().max() <= 1e-5 * plain.abs().max(), (plain - tiled).abs().max()


def test_tiled_sampling_with_per_tile_captions(chain):
    latents, stage1 = chain.encode(image(h=64, w=192), min_size=64)  # latent 8 x 24
    assert latents.control.shape[-2:] == (8, 24)
    pos, neg = chain.condition(["left", "middle", "right"], captions_are=["one per tile"])
    out = chain.sample(latents, pos, neg, tiled=True, tile_size=64, tile_stride=64)["samples"]  # windows at 0, 8, 16
    assert out.shape == latents.control.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="3 tile captions for 4 tiles"):
        chain.sample(latents, pos, neg, tiled=True, tile_size=64, tile_stride=48)  # windows at 0, 6, 12, 16


def test_tiled_vae_matches_untiled(chain):
    img = image(h=64, w=256, seed=4)
    lat_a, st_a = chain.encode(img, min_size=64)
    other, _ = chain.encode(image(h=64, w=256, seed=5), min_size=64)
    spread = (lat_a.control - other.control).abs().mean()  # how far apart two different images are
    errs = {}
    for norm in ("whole image", "official"):
        lat_b, st_b = chain.encode(img, min_size=64, tiled_vae=True, encoder_tile_size=128, decoder_tile_size=8,
                                   tile_norm=norm)
        assert st_b.shape == st_a.shape and torch.isfinite(st_b).all()
        assert not torch.equal(st_a, st_b)  # the tiled path was taken
        errs[norm] = (lat_a.control - lat_b.control).abs().mean() / spread
    # GroupNorm-synchronised tiling is close to untiled, not identical (tile borders see padded context); the
    # accuracy of each statistic is measured in tests/unit/test_tiled_vae.py.
    assert errs["whole image"] < 0.05, errs
    assert errs["official"] < 0.5, errs
    assert errs["whole image"] < errs["official"], errs


def test_cancel_stops_within_a_step_and_models_stay_usable(chain, monkeypatch):
    import comfy.model_management as mm

    latents, stage1 = chain.encode(image())
    pos, neg = chain.condition()
    calls = []
    real_eps = type(chain.supir).eps

    def counting_eps(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            mm.interrupt_current_processing(True)
        return real_eps(self, *a, **k)

    monkeypatch.setattr(type(chain.supir), "eps", counting_eps)
    with pytest.raises(BaseException) as err:
        chain.sample(latents, pos, neg, steps=10)
    assert type(err.value).__name__ == "InterruptProcessingException"
    assert len(calls) == 2  # stopped right after the step in which Cancel was pressed
    monkeypatch.undo()
    again = chain.sample(latents, pos, neg, steps=2)
    assert torch.isfinite(again["samples"]).all()


# --- bad input --------------------------------------------------------------------------------------------
def test_bad_images(chain):
    with pytest.raises(ValueError, match="64"):
        chain.encode(image(h=40, w=200), upscale=1.0)
    with pytest.raises(ValueError, match="channels"):
        chain.encode(image(c=5))
    with pytest.raises(ValueError, match="empty"):
        chain.encode(torch.zeros(0, 64, 64, 3))


def test_bad_sampler_inputs(chain, node_mappings, models_dir, tiny_files):
    latents, stage1 = chain.encode(image())
    pos, neg = chain.condition()
    with pytest.raises(ValueError, match="stride"):
        chain.sample(latents, pos, neg, tiled=True, tile_size=512, tile_stride=1024)
    # Latents from another SUPIR model.
    os.link(tiny_files["SUPIR/SUPIR-tiny.safetensors"], models_dir / "SUPIR" / "other.safetensors")
    other = node_mappings["FSUPIR_Loader"]().load("other.safetensors", "tiny_sdxl.safetensors", "fp32")[0]
    with pytest.raises(ValueError, match="same SUPIR model"):
        node_mappings["FSUPIR_Sampler"]().sample(other, latents, pos, neg, 1, **SAMPLER_DEFAULTS)
    with pytest.raises(TypeError, match="SUPIR latents"):
        chain.sample({"samples": latents.control}, pos, neg)
    # Conditioning from a CLIP of another width.
    bad = [[torch.zeros(1, 77, 8), {"pooled_output": pos[0][1]["pooled_output"]}]]
    with pytest.raises(ValueError, match="CLIP"):
        chain.sample(latents, bad, neg)


def test_missing_clip_and_missing_reference(chain):
    with pytest.raises(ValueError, match="CLIP"):
        chain.n["FSUPIR_Conditioner"]().condition([None], ["x"], ["y"], ["z"], **CONDITIONER_DEFAULTS)
    latents, stage1 = chain.encode(image())
    pos, neg = chain.condition()
    samples = chain.sample(latents, pos, neg, steps=1)
    with pytest.raises(ValueError, match="stage-1 image"):
        chain.n["FSUPIR_TiledDecode"]().decode(chain.vae, samples, "Wavelet")
    with pytest.raises(ValueError, match="reference has 3 images"):
        chain.decode(samples, stage1.expand(3, -1, -1, -1))
    _, other_stage1 = chain.encode(image(h=64, w=192), min_size=64)
    with pytest.raises(ValueError, match="another image"):
        chain.decode(samples, other_stage1)
    # The same picture at another size (e.g. the original input) is a fine colour reference.
    assert chain.decode(samples, torch.nn.functional.interpolate(
        stage1.permute(0, 3, 1, 2), scale_factor=0.5).permute(0, 2, 3, 1)).shape[-1] == 3


def test_progress_bar_and_latent_previews(chain, monkeypatch):
    import comfy.cli_args
    import comfy.utils
    import latent_preview

    latents, _ = chain.encode(image())
    pos, neg = chain.condition()
    monkeypatch.setattr(comfy.cli_args.args, "preview_method", latent_preview.LatentPreviewMethod.Latent2RGB)
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, *a, **k: calls.append((value, total, preview)))
    try:
        chain.sample(latents, pos, neg, steps=3)
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert [(v, t) for v, t, _ in calls] == [(1, 3), (2, 3), (3, 3)]
    assert all(p is not None for _, _, p in calls), "every step sends a latent preview"


def test_adaptor_partial_low_vram_load_computes_the_same(chain):
    """ComfyUI's low-VRAM mode loads part of a model and casts the rest per layer: the adaptor, built from
    ComfyUI's operations, must compute the same function that way."""
    import comfy.model_management as mm

    g = torch.Generator().manual_seed(0)
    unet = chain.supir.sdxl.model.diffusion_model
    ctx = context_dim(unet)
    args = (torch.randn(1, 4, 16, 16, generator=g), torch.tensor([400]), torch.randn(1, 77, ctx, generator=g),
            torch.randn(1, unet.label_emb[0][0].in_features, generator=g), torch.randn(1, 4, 16, 16, generator=g), 1.0)
    mm.load_models_gpu(chain.supir.patchers_for_sampling())
    full = chain.supir.eps(*args)
    mm.unload_all_models()
    patcher = chain.supir.adaptor
    cpu = torch.device("cpu")
    if hasattr(patcher, "patch_model_lowvram"):  # ComfyUI 2024-03
        patcher.patch_model_lowvram(device_to=cpu, lowvram_model_memory=1)
    else:
        patcher.load(cpu, lowvram_model_memory=1)
    try:
        assert any(getattr(m, "comfy_cast_weights", False) for m in patcher.model.modules())
        partial = chain.supir.eps(*args)
    finally:
        patcher.unpatch_model(cpu)
    assert torch.allclose(full, partial, atol=1e-5)


def test_official_prompt_length_keeps_exactly_the_first_75_tokens(chain):
    """The official encoders truncate the text at 77 tokens; ComfyUI chunks at word boundaries."""
    import importlib

    cond_mod = importlib.import_module(chain.n["FSUPIR_Conditioner"].__module__)
    words = " ".join(f"word{i} extraordinarily" for i in range(40))  # ~200 tokens, multi-token words
    full = chain.clip.tokenize(words)
    for key in ("l", "g"):
        tok = getattr(chain.clip.tokenizer, f"clip_{key}")
        hf_ids = tok.tokenizer(words)["input_ids"]  # the whole text as one HF sequence: start, body..., end
        official = cond_mod._official_tokens(chain.clip, key, full[key])
        assert len(official) == 1 and len(official[0]) == 77
        ids = [t[0] for t in official[0]]
        assert ids[:76] == hf_ids[:76], key  # start + the first 75 body tokens
        assert ids[76] == tok.end_token
        assert len(full[key]) > 1  # ComfyUI itself made several chunks
    short = chain.clip.tokenize("a cat")
    for key in ("l", "g"):
        assert cond_mod._official_tokens(chain.clip, key, short[key]) == short[key]
