"""supir_modules/sdxl_loader.py on a real ComfyUI (the copy SUPIR_COMFY_ROOT names), with tiny checkpoints.

Tiny models miss ComfyUI's table of model sizes, so they take the "assembled from shapes" path; the standard
path (ComfyUI's own loader on 0.3.75, its steps by hand on 2024-03) is exercised by registering the tiny size in
that table (monkeypatched, per test).
"""
from __future__ import annotations

import importlib
import logging

import pytest
import torch

from ..tiny_models import (
    ADM_IN_CHANNELS,
    BIGG_WIDTH,
    CONTEXT_DIM,
    PACK_MODULE_NAME,
    TINY_UNET_CONFIG,
    UNET_PREFIX,
    connector_configs_for,
    tiny_config_vae,
    tiny_sdxl_clip_target,
    tiny_sdxl_state_dict,
    tiny_supir_state_dict,
    tiny_supported_model,
    write_checkpoint,
    write_sd15_like,
    write_supir_full,
    write_supir_pruned,
)

SUPIR_MARKERS = ("project_modules", "control_model", "denoise_encoder", "mask_LQ")


@pytest.fixture(scope="module")
def mods(comfy_root):
    """`mods("x")`: the pack's supir_modules.x (imported after ComfyUI is known to be there)."""
    def mod(name):
        return importlib.import_module(f"{PACK_MODULE_NAME}.supir_modules.{name}")

    return mod


@pytest.fixture(scope="module")
def sdxl_sd(comfy_root):
    return tiny_sdxl_state_dict(seed=0)


@pytest.fixture(scope="module")
def files(tmp_path_factory, sdxl_sd):
    root = tmp_path_factory.mktemp("tiny_ckpts")
    return {
        "safetensors": write_checkpoint(sdxl_sd, root / "tiny_sdxl.safetensors", "safetensors"),
        "ckpt": write_checkpoint(sdxl_sd, root / "tiny_sdxl.ckpt", "ckpt"),
        "supir_full": write_supir_full(root / "tiny_supir_full.ckpt", "ckpt", seed=0),
    }


@pytest.fixture(scope="module")
def reference_unet(sdxl_sd):
    """ComfyUI's UNetModel built directly from the tiny config and weights (no detection involved)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**TINY_UNET_CONFIG, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    unet.load_state_dict({k[len(UNET_PREFIX):]: v for k, v in sdxl_sd.items() if k.startswith(UNET_PREFIX)},
                         strict=True)
    return unet.eval()


@pytest.fixture(scope="module")
def reference_out(reference_unet):
    """The reference UNet's output for `_unet_inputs()`."""
    return _unet_out(reference_unet, _unet_inputs())


def _unet_inputs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, 8, 8, generator=g), torch.tensor([437.0]),
            torch.randn(1, 77, CONTEXT_DIM, generator=g), torch.randn(1, ADM_IN_CHANNELS, generator=g))


@torch.no_grad()
def _unet_out(unet, inputs):
    x, t, context, y = inputs
    return unet(x, t, context=context, y=y)


def _check_clip_and_vae(clip, vae):
    tokens = clip.tokenize("a photo of a cat, highly detailed")
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape == (1, 77, CONTEXT_DIM) and pooled.shape == (1, BIGG_WIDTH), (cond.shape, pooled.shape)
    assert torch.isfinite(cond).all() and torch.isfinite(pooled).all()
    image = vae.decode(torch.randn(1, 4, 8, 12, generator=torch.Generator().manual_seed(2)))
    assert image.shape == (1, 64, 96, 3), image.shape
    assert torch.isfinite(image).all()


@pytest.mark.parametrize("fmt", ["safetensors", "ckpt"])
def test_tiny_sdxl_loads_as_model_clip_vae(mods, files, fmt, reference_out):
    sd = mods("checkpoint").read_state_dict(files[fmt])
    keys = set(sd)
    model, clip, vae = mods("sdxl_loader").load_sdxl(sd, str(files[fmt]))
    assert set(sd) == keys, "load_sdxl must leave the caller's state dict untouched"

    import comfy.supported_models

    assert isinstance(model.model.model_config, comfy.supported_models.SDXL)
    inputs = _unet_inputs()
    out = _unet_out(model.model.diffusion_model, inputs)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, reference_out, rtol=1e-5, atol=1e-6)
    _check_clip_and_vae(clip, vae)


def test_tiny_text_encoders_load_without_missing_keys(mods, sdxl_sd):
    import comfy.supported_models
    import comfy.model_detection

    sdxl_clip = mods("sdxl_clip")
    config = comfy.supported_models.SDXL(comfy.model_detection.detect_unet_config(sdxl_sd, UNET_PREFIX))
    clip_sd = config.process_clip_state_dict(dict(sdxl_sd))
    target = sdxl_clip.shaped_clip_target(clip_sd)
    assert target.params["clip_l_config"]["hidden_size"] + target.params["clip_g_config"]["hidden_size"] == CONTEXT_DIM
    with torch.no_grad():  # as ComfyUI runs loaders; 2024-03's text model init writes a parameter in place
        model = target.clip(**target.params, dtype=torch.float32, device="cpu")
    missing, unexpected = model.load_state_dict(clip_sd, strict=False)
    # As ComfyUI's own filter: CLIP-L in SDXL files has no projection; logit_scale is unused.
    assert sorted(missing) == ["clip_l.logit_scale", "clip_l.transformer.text_projection.weight"], missing
    assert list(unexpected) == ["clip_l.transformer.text_model.embeddings.position_ids"], unexpected


def test_full_supir_file_loads_as_sdxl(mods, files, reference_out, caplog):
    sd = mods("checkpoint").read_state_dict(files["supir_full"])
    assert mods("checkpoint").classify_state_dict(sd) == "supir_full"
    n = len(sd)
    with caplog.at_level(logging.DEBUG):
        model, clip, vae = mods("sdxl_loader").load_sdxl(sd, str(files["supir_full"]))
    noisy = [r.getMessage()[:200] for r in caplog.records if any(m in r.getMessage() for m in SUPIR_MARKERS)]
    assert not noisy, f"SUPIR keys reported while loading SDXL: {noisy}"
    assert len(sd) == n
    assert not any("project_modules" in k for k in model.model.diffusion_model.state_dict())
    torch.testing.assert_close(_unet_out(model.model.diffusion_model, _unet_inputs()), reference_out,
                               rtol=1e-5, atol=1e-6)
    _check_clip_and_vae(clip, vae)
    parts = mods("checkpoint").split_supir_state_dict(sd, str(files["supir_full"]))  # still usable afterwards
    assert parts.kind == "supir_full" and len(parts.connectors) > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn], ids=["fp16", "fp8_e4m3fn"])
def test_weight_dtype_sets_unet_storage(mods, sdxl_sd, dtype):
    model, _, _ = mods("sdxl_loader").load_sdxl(sdxl_sd, "tiny_sdxl.safetensors", weight_dtype=dtype)
    dtypes = {p.dtype for p in model.model.diffusion_model.parameters()}
    assert dtypes == {dtype}, dtypes
    x, t, context, y = _unet_inputs()
    with torch.no_grad():
        out = model.model.apply_model(x, torch.tensor([3.0]), c_crossattn=context, y=y)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("drop, what", [(("conditioner.",), "no text encoders"),
                                        (("first_stage_model.",), "no VAE"),
                                        (("conditioner.", "first_stage_model."), "no text encoders and no VAE")])
def test_missing_parts_raise_a_clear_error(mods, sdxl_sd, drop, what):
    path = "/models/checkpoints/unet_only.safetensors"
    with pytest.raises(ValueError) as info:
        mods("sdxl_loader").load_sdxl({k: v for k, v in sdxl_sd.items() if not k.startswith(drop)}, path)
    message = str(info.value)
    assert path in message and f"has {what}" in message, message
    assert "SUPIR Loader (from MODEL)" in message, message


def test_sd15_file_is_rejected(mods, tmp_path):
    path = write_sd15_like(tmp_path / "tiny_sd15.safetensors")
    with pytest.raises(ValueError, match="Stable Diffusion 1.x"):
        mods("sdxl_loader").load_sdxl(mods("checkpoint").read_state_dict(path), str(path))


def test_unsupported_weight_dtype(mods, sdxl_sd):
    with pytest.raises(ValueError, match="weight dtype"):
        mods("sdxl_loader").load_sdxl(sdxl_sd, "tiny.safetensors", weight_dtype=torch.int8)


# --- the standard path: the tiny size registered in ComfyUI's table -----------------------------------------
@pytest.fixture
def tiny_in_comfy_table(mods, sdxl_sd, monkeypatch):
    """Registers the tiny size as a ComfyUI supported model (and its VAE config), so the standard path runs
    (tests/tiny_models.py's classes; the server tier's test-only node registers the same).

    Returns a function registering a class named Tiny derived from `base` (default SDXL); records calls of
    0.3.75's load_state_dict_guess_config in the returned `calls` list."""
    import comfy.sd
    import comfy.supported_models

    target = tiny_sdxl_clip_target(sdxl_sd)
    calls = []
    monkeypatch.setattr(comfy.sd, "VAE", tiny_config_vae())
    if hasattr(comfy.sd, "load_state_dict_guess_config"):
        original = comfy.sd.load_state_dict_guess_config

        def spy(*args, **kwargs):
            calls.append(kwargs)
            return original(*args, **kwargs)

        monkeypatch.setattr(comfy.sd, "load_state_dict_guess_config", spy)

    def register(base=comfy.supported_models.SDXL):
        tiny = tiny_supported_model(target, base, name="Tiny")
        monkeypatch.setattr(comfy.supported_models, "models", [tiny] + list(comfy.supported_models.models))
        return calls

    return register


@pytest.mark.parametrize("dtype", [None, torch.float16], ids=["auto", "fp16"])
def test_standard_size_goes_through_comfy_loader(mods, files, tiny_in_comfy_table, reference_out, caplog, dtype):
    import comfy.sd

    calls = tiny_in_comfy_table()
    sd = mods("checkpoint").read_state_dict(files["supir_full"])
    with caplog.at_level(logging.DEBUG):
        model, clip, vae = mods("sdxl_loader").load_sdxl(sd, str(files["supir_full"]), weight_dtype=dtype)
    noisy = [r.getMessage()[:200] for r in caplog.records if any(m in r.getMessage() for m in SUPIR_MARKERS)]
    assert not noisy, f"SUPIR keys reported while loading SDXL: {noisy}"
    if hasattr(comfy.sd, "load_state_dict_guess_config"):  # 0.3.75: ComfyUI's own loader, dtype as model_options
        assert len(calls) == 1 and calls[0]["model_options"] == ({} if dtype is None else {"dtype": dtype})
    assert type(model.model.model_config).__name__ == "Tiny"
    if dtype is None:
        torch.testing.assert_close(_unet_out(model.model.diffusion_model, _unet_inputs()), reference_out,
                                   rtol=1e-5, atol=1e-6)
    else:
        assert {p.dtype for p in model.model.diffusion_model.parameters()} == {dtype}
    _check_clip_and_vae(clip, vae)


def test_non_sdxl_architecture_is_rejected(mods, sdxl_sd, tiny_in_comfy_table):
    import comfy.supported_models

    tiny_in_comfy_table(base=comfy.supported_models.SDXLRefiner)
    with pytest.raises(ValueError, match="detects this model as Tiny, not SDXL"):
        mods("sdxl_loader").load_sdxl(sdxl_sd, "refiner_like.safetensors")


# --- the tiny SUPIR weights fit the tiny UNet ----------------------------------------------------------------
def test_tiny_supir_weights_fit_the_tiny_unet(mods, sdxl_sd, reference_unet, reference_out, tmp_path):
    supir = tiny_supir_state_dict(sdxl_sd, seed=0)
    parts = mods("checkpoint").split_supir_state_dict({**sdxl_sd, **supir}, "tiny_supir_full")
    config, adaptor, unet = mods("config"), mods("adaptor"), mods("unet")
    assert config.connector_configs_from_state_dict(parts.connectors) == connector_configs_for(sdxl_sd)
    control = adaptor.GLVControl(config.ControlConfig.from_state_dict(parts.control))
    control.load_state_dict(parts.control, strict=True)
    connectors = adaptor.build_connectors(config.connector_configs_from_state_dict(parts.connectors))
    connectors.load_state_dict(parts.connectors, strict=True)
    x, t, context, y = _unet_inputs()
    with torch.no_grad():
        features = control(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)), t, x, context, y)
        unet.check_connectors_fit(reference_unet, connectors, len(features))
        plain = reference_out
        full = unet.supir_unet_forward(reference_unet, x, t, context, y, features, connectors, control_scale=1.0)
        off = unet.supir_unet_forward(reference_unet, x, t, context, y, features, connectors, control_scale=0.0)
    assert torch.isfinite(full).all()
    torch.testing.assert_close(off, plain, rtol=1e-5, atol=1e-6)
    assert (full - plain).abs().max() > 1e-3, "random connectors should change the output"

    pruned = mods("checkpoint").read_state_dict(write_supir_pruned(tmp_path / "tiny_supir.safetensors"))
    assert mods("checkpoint").classify_state_dict(pruned) == "supir_pruned"
    assert {v.dtype for v in pruned.values()} == {torch.float16} and set(pruned) == set(supir)
