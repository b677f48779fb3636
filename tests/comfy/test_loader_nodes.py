"""The two loader nodes, loaded by ComfyUI itself, on tiny checkpoints in the official layout written here."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from fsupir_under_test.supir_modules.unet import context_dim

from ..tiny_models import (
    tiny_sdxl_state_dict,
    tiny_supir_state_dict,
    write_checkpoint,
    write_sd15_like,
    write_sdxl,
    write_supir_full,
    write_supir_pruned,
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The tiny checkpoints, written once per module."""
    root = tmp_path_factory.mktemp("written")
    return {
        "checkpoints/tiny_sdxl.safetensors": write_sdxl(root / "tiny_sdxl.safetensors"),
        "checkpoints/tiny_sdxl.ckpt": write_sdxl(root / "tiny_sdxl.ckpt", "ckpt"),
        "SUPIR/SUPIR-tiny-pruned.safetensors": write_supir_pruned(root / "SUPIR-tiny-pruned.safetensors"),
        "SUPIR/SUPIR-tiny-full.ckpt": write_supir_full(root / "SUPIR-tiny-full.ckpt", "ckpt"),
        "checkpoints/tiny_sd15.safetensors": write_sd15_like(root / "tiny_sd15.safetensors"),
    }


@pytest.fixture
def files(models_dir, written):
    """A models folder holding (hard links to) the tiny checkpoints; tests may add files of their own."""
    for rel, src in written.items():
        os.link(src, models_dir / rel)
    return models_dir


def _loader(node_mappings, name="FSUPIR_Loader"):
    return node_mappings[name]()


def _eps(supir, seed=0):
    """One SUPIR network call on the loaded model (models brought in by ComfyUI's manager)."""
    import comfy.model_management as mm

    mm.load_models_gpu(supir.patchers_for_sampling())
    unet = supir.sdxl.model.diffusion_model
    ctx = context_dim(unet)
    adm = unet.label_emb[0][0].in_features
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g)
    hint = torch.randn(1, 4, 16, 16, generator=g)
    return supir.eps(x, torch.tensor([500]), torch.randn(1, 77, ctx, generator=g), torch.randn(1, adm, generator=g),
                     hint, 1.0)


@pytest.mark.parametrize("supir_file", ["SUPIR-tiny-pruned.safetensors", "SUPIR-tiny-full.ckpt"])
def test_loader_builds_a_working_model(node_mappings, files, supir_file):
    import comfy.model_patcher

    supir, clip, vae = _loader(node_mappings).load(supir_file, "tiny_sdxl.safetensors", "fp32")
    assert isinstance(supir.adaptor, comfy.model_patcher.ModelPatcher)
    assert isinstance(supir.denoise_encoder, comfy.model_patcher.ModelPatcher)
    assert isinstance(supir.sdxl, comfy.model_patcher.ModelPatcher)
    # The adaptor holds exactly the file's weights (pruned files are fp16: compare at that precision).
    sd = tiny_supir_state_dict(tiny_sdxl_state_dict(0), 0)
    got = supir.adaptor.model.control_model.state_dict()
    for k in ("input_hint_block.0.weight", "middle_block.1.transformer_blocks.0.attn2.to_k.weight"):
        ref = sd[f"model.control_model.{k}"]
        assert torch.allclose(got[k].float(), ref.float(), atol=1e-3), k
    conn = supir.adaptor.model.project_modules.state_dict()
    assert torch.allclose(conn["3.attn.to_q.weight"].float(),
                          sd["model.diffusion_model.project_modules.3.attn.to_q.weight"].float(), atol=1e-3)
    eps = _eps(supir)
    assert eps.shape == (1, 4, 16, 16) and torch.isfinite(eps).all()
    tokens = clip.tokenize("a photo")
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert torch.isfinite(cond).all() and cond.shape[1] == 77
    assert vae.first_stage_model is not None


def test_sdxl_from_an_official_style_ckpt(node_mappings, files):
    supir, clip, vae = _loader(node_mappings).load("SUPIR-tiny-pruned.safetensors", "tiny_sdxl.ckpt", "fp32")
    ref, _, _ = _loader(node_mappings).load("SUPIR-tiny-pruned.safetensors", "tiny_sdxl.safetensors", "fp32")
    assert torch.allclose(_eps(supir), _eps(ref), atol=1e-6)


def test_corrupt_file(node_mappings, files):
    (files / "SUPIR" / "SUPIR-noise.ckpt").write_bytes(bytes(range(256)) * 64)
    with pytest.raises(ValueError, match=r"SUPIR-noise\.ckpt"):
        _loader(node_mappings).load("SUPIR-noise.ckpt", "tiny_sdxl.safetensors", "auto")


def test_full_and_pruned_files_give_the_same_adaptor(node_mappings, files):
    a, _, _ = _loader(node_mappings).load("SUPIR-tiny-pruned.safetensors", "tiny_sdxl.safetensors", "fp32")
    b, _, _ = _loader(node_mappings).load("SUPIR-tiny-full.ckpt", "tiny_sdxl.safetensors", "fp32")
    ea, eb = _eps(a), _eps(b)
    # Pruned files hold fp16 copies of the same weights.
    assert torch.allclose(ea, eb, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("choice,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16),
                                          ("fp8_e4m3fn", torch.float8_e4m3fn), ("fp32", torch.float32)])
def test_weight_dtype_choice_sets_storage(node_mappings, files, choice, dtype):
    supir, _, _ = _loader(node_mappings).load("SUPIR-tiny-pruned.safetensors", "tiny_sdxl.safetensors", choice)
    params = list(supir.adaptor.model.parameters())
    linear_weights = [p for n, p in supir.adaptor.model.named_parameters() if n.endswith("to_q.weight")]
    assert linear_weights and all(p.dtype == dtype for p in linear_weights)
    assert params
    eps = _eps(supir)
    assert torch.isfinite(eps).all()


def test_auto_dtype_follows_comfy_rules(node_mappings, files):
    import comfy.model_management as mm

    supir, _, _ = _loader(node_mappings).load("SUPIR-tiny-pruned.safetensors", "tiny_sdxl.safetensors", "auto")
    expected = mm.unet_dtype(device=mm.get_torch_device(), model_params=1)
    w = next(p for n, p in supir.adaptor.model.named_parameters() if n.endswith("to_q.weight"))
    assert w.dtype == expected


def test_loader_from_model_uses_the_given_model_and_its_patches(node_mappings, files, pack):
    """LoRA-style weight patches on the MODEL (applied upstream) change what SUPIR computes."""
    import importlib

    ck = importlib.import_module(f"{pack.__name__}.supir_modules.checkpoint")
    sdxl_loader = importlib.import_module(f"{pack.__name__}.supir_modules.sdxl_loader")
    path = str(files / "checkpoints" / "tiny_sdxl.safetensors")
    model, clip, vae = sdxl_loader.load_sdxl(ck.read_state_dict(path), path)
    node = _loader(node_mappings, "FSUPIR_LoaderFromModel")
    supir, clip_out, vae_out = node.load(model, clip, vae, "SUPIR-tiny-pruned.safetensors", "fp32")
    assert supir.sdxl is model and clip_out is clip and vae_out is vae
    plain = _eps(supir)

    patched = model.clone()
    key = "diffusion_model.out.2.weight"
    w = patched.model.state_dict()[key]
    patched.add_patches({key: (torch.ones_like(w),)}, strength_patch=0.5)
    supir2, _, _ = node.load(patched, clip, vae, "SUPIR-tiny-pruned.safetensors", "fp32")
    lora = _eps(supir2)
    assert not torch.allclose(plain, lora), "a weight patch on the MODEL must reach the SUPIR forward"
    # ... and the original MODEL is untouched once it is loaded again.
    again = _eps(supir)
    assert torch.allclose(plain, again, atol=1e-6)


def test_models_are_managed_by_comfy(node_mappings, files):
    import comfy.model_management as mm

    supir, _, _ = _loader(node_mappings).load("SUPIR-tiny-pruned.safetensors", "tiny_sdxl.safetensors", "fp32")
    mm.load_models_gpu(supir.patchers_for_sampling())
    # LoadedModel.model is the patcher on both ComfyUI versions.
    loaded = [m.model for m in mm.current_loaded_models]
    assert any(p is supir.adaptor for p in loaded) and any(p is supir.sdxl for p in loaded)
    mm.unload_all_models()
    assert not any(m.model is supir.adaptor for m in mm.current_loaded_models)
    assert supir.adaptor.model_size() > 0


# --- bad input --------------------------------------------------------------------------------------------
def test_sdxl_file_given_as_supir(node_mappings, files):
    shutil.copy(files / "checkpoints" / "tiny_sdxl.safetensors", files / "SUPIR" / "oops_sdxl.safetensors")
    with pytest.raises(ValueError, match=r"(?s)oops_sdxl\.safetensors.*SDXL.*SUPIR"):
        _loader(node_mappings).load("oops_sdxl.safetensors", "tiny_sdxl.safetensors", "auto")


def test_sd15_given_as_sdxl(node_mappings, files):
    with pytest.raises(ValueError, match=r"(?s)tiny_sd15\.safetensors.*(1\.x|1\.5).*SDXL"):
        _loader(node_mappings).load("SUPIR-tiny-pruned.safetensors", "tiny_sd15.safetensors", "auto")


def test_truncated_supir_file(node_mappings, files):
    src = files / "SUPIR" / "SUPIR-tiny-pruned.safetensors"
    data = src.read_bytes()
    (files / "SUPIR" / "SUPIR-cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"SUPIR-cut\.safetensors"):
        _loader(node_mappings).load("SUPIR-cut.safetensors", "tiny_sdxl.safetensors", "auto")


def test_supir_file_with_missing_keys_lists_them(node_mappings, files):
    sd = tiny_supir_state_dict(tiny_sdxl_state_dict(0), 0)
    dropped = sorted(k for k in sd if k.startswith("model.control_model.middle_block.2."))
    for k in dropped:
        del sd[k]
    write_checkpoint(sd, files / "SUPIR" / "SUPIR-holes.safetensors")
    with pytest.raises(ValueError) as err:
        _loader(node_mappings).load("SUPIR-holes.safetensors", "tiny_sdxl.safetensors", "auto")
    msg = str(err.value)
    assert "SUPIR-holes.safetensors" in msg
    assert any(k.split("model.control_model.")[-1] in msg for k in dropped), msg


def test_unknown_file_and_dtype(node_mappings, files):
    with pytest.raises(ValueError, match="not found"):
        _loader(node_mappings).load("nope.safetensors", "tiny_sdxl.safetensors", "auto")
    with pytest.raises(ValueError, match="weight dtype"):
        _loader(node_mappings).load("SUPIR-tiny-pruned.safetensors", "tiny_sdxl.safetensors", "fp4")


def test_loader_lists_supir_and_checkpoint_files(node_mappings, files):
    for name in ("FSUPIR_Loader", "FSUPIR_LoaderFromModel"):
        choices = node_mappings[name].INPUT_TYPES()["required"]["supir_model"][0]
        assert "SUPIR-tiny-pruned.safetensors" in choices and "tiny_sdxl.safetensors" in choices


def _sdxl_from_file(files, pack):
    import importlib

    ck = importlib.import_module(f"{pack.__name__}.supir_modules.checkpoint")
    sdxl_loader = importlib.import_module(f"{pack.__name__}.supir_modules.sdxl_loader")
    path = str(files / "checkpoints" / "tiny_sdxl.safetensors")
    return sdxl_loader.load_sdxl(ck.read_state_dict(path), path)


def test_attention_patches_on_the_model_reach_its_blocks(node_mappings, files, pack):
    """Upstream nodes patch attention through the MODEL's transformer options; SUPIR's forward honours them."""
    model, clip, vae = _sdxl_from_file(files, pack)
    patched = model.clone()
    seen = []

    def attn1_patch(q, k, v, extra_options):
        seen.append(extra_options.get("block"))
        return q, k, v

    patched.set_model_attn1_patch(attn1_patch)
    supir, _, _ = node_mappings["FSUPIR_LoaderFromModel"]().load(patched, clip, vae, "SUPIR-tiny-pruned.safetensors",
                                                                 "fp32")
    _eps(supir)
    assert seen and {b[0] for b in seen} >= {"input", "middle", "output"}


def test_non_eps_sdxl_is_refused(node_mappings, files, pack):
    import comfy.model_base

    model, clip, vae = _sdxl_from_file(files, pack)
    model.model.model_type = comfy.model_base.ModelType.V_PREDICTION
    with pytest.raises(ValueError, match="V_PREDICTION.*eps"):
        node_mappings["FSUPIR_LoaderFromModel"]().load(model, clip, vae, "SUPIR-tiny-pruned.safetensors", "auto")
