"""The full-size model this pack builds takes exactly the official SUPIR-v0 keys and shapes
(shared/fixtures/supir_v0_layout.json), checked on the meta device: no memory, no weights.
"""
from __future__ import annotations

import json

import pytest
import torch

from parity_helpers import mod, strip

# Parameter counts of the official checkpoint (supir-reference.md §2).
CONTROL_PARAMS = 1_243_378_880 + 16_384  # GLVControl + the unused mask_LQ
CONNECTOR_PARAMS = 54_797_440
DENOISE_ENCODER_PARAMS = 34_163_592


@pytest.fixture(scope="module")
def layout(pack, layout_json):
    data = json.loads(layout_json.read_text())
    meta = {k: torch.empty(shape, device="meta", dtype=torch.float16) for k, shape in data["shapes"].items()}
    return data, meta


def shapes_of(module: torch.nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def assert_same_layout(built: dict[str, tuple], expected: dict[str, tuple], what: str) -> None:
    missing = sorted(set(expected) - set(built))
    extra = sorted(set(built) - set(expected))
    assert not missing, f"{what}: the pack's module lacks {len(missing)} official keys, e.g. {missing[:5]}"
    assert not extra, f"{what}: the pack's module has {len(extra)} keys the checkpoint lacks, e.g. {extra[:5]}"
    wrong = [(k, built[k], expected[k]) for k in expected if built[k] != expected[k]]
    assert not wrong, f"{what}: shape mismatches, e.g. {wrong[:5]}"


def test_supir_key_list_is_what_the_checkpoint_module_splits(layout):
    data, meta = layout
    ck = mod("checkpoint")
    assert len(data["supir_keys"]) == 1035
    supir = {k: meta[k] for k in data["supir_keys"]}
    parts = ck.split_supir_state_dict(supir, "SUPIR-v0Q layout")
    assert parts.kind == "supir_pruned"
    assert len(parts.control) + len(parts.connectors) + len(parts.denoise_encoder) + 1 == 1035  # + mask_LQ


def test_adaptor_takes_exactly_the_official_keys(layout):
    data, meta = layout
    control_sd = strip(meta, "model.control_model.", drop=("mask_LQ",))
    connector_sd = strip(meta, "model.diffusion_model.project_modules.")
    adaptor = mod("model").build_adaptor(control_sd, connector_sd, "SUPIR-v0Q layout", torch.float16,
                                         torch.float16, device="meta")
    assert_same_layout(shapes_of(adaptor.control_model), {k: tuple(v.shape) for k, v in control_sd.items()},
                       "GLVControl")
    assert_same_layout(shapes_of(adaptor.project_modules), {k: tuple(v.shape) for k, v in connector_sd.items()},
                       "project_modules")
    n_control = sum(p.numel() for p in adaptor.control_model.parameters())
    n_conn = sum(p.numel() for p in adaptor.project_modules.parameters())
    assert n_control + data["shapes"]["model.control_model.mask_LQ"][0] * 4 * 64 * 64 == CONTROL_PARAMS
    assert n_conn == CONNECTOR_PARAMS
    cfg = adaptor.control_model.config
    # The released config keeps SDXL's full depth (reference §1: "Depth is NOT trimmed").
    assert cfg.transformer_depth == (0, 2, 10) and cfg.transformer_depth_middle == 10
    assert cfg.context_dim == 2048 and cfg.adm_in_channels == 2816 and cfg.model_channels == 320
    kinds = [type(m).__name__ for m in adaptor.project_modules]
    assert kinds == ["ZeroSFT"] * 3 + ["ZeroCrossAttn"] + ["ZeroSFT"] * 3 + ["ZeroCrossAttn"] + ["ZeroSFT"] * 4
    assert [m.attn.heads for m in adaptor.project_modules if type(m).__name__ == "ZeroCrossAttn"] == [10, 20]


def test_denoise_encoder_takes_exactly_the_official_keys(layout):
    _, meta = layout
    sd = strip(meta, "first_stage_model.denoise_encoder.")
    config, vae = mod("config"), mod("vae")
    with torch.device("meta"):
        enc = vae.DegradationRobustEncoder(config.EncoderConfig.from_state_dict(sd))
    assert_same_layout(shapes_of(enc.denoise_encoder), {k: tuple(v.shape) for k, v in sd.items()},
                       "denoise_encoder")
    assert sum(p.numel() for p in enc.parameters()) == DENOISE_ENCODER_PARAMS


def test_comfy_unet_with_our_connectors_fits_the_sdxl_layout(layout):
    """ComfyUI's UNetModel, configured from the official keys, holds exactly the SDXL UNet keys; our
    connectors fit its decoder."""
    import comfy.model_detection
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    _, meta = layout
    usd = {k: v for k, v in meta.items() if k.startswith("model.diffusion_model.") and ".project_modules." not in k}
    cfg = comfy.model_detection.detect_unet_config(usd, "model.diffusion_model.")
    cfg.update(num_heads=-1, num_head_channels=64)  # ComfyUI's unet_extra_config for SD-family models
    unet = UNetModel(**cfg, device="meta", operations=comfy.ops.disable_weight_init)
    expected = {k: tuple(v.shape) for k, v in strip(usd, "model.diffusion_model.").items()}
    assert_same_layout(shapes_of(unet), expected, "SDXL UNet")
    connectors = mod("model").build_adaptor(
        strip(meta, "model.control_model.", drop=("mask_LQ",)), strip(meta, "model.diffusion_model.project_modules."),
        "layout", torch.float16, torch.float16, device="meta").project_modules
    mod("unet").check_connectors_fit(unet, connectors, 10)


def test_comfy_vae_from_shapes_fits_the_sdxl_layout(layout):
    from comfy.ldm.models.autoencoder import AutoencoderKL

    _, meta = layout
    vsd = strip(meta, "first_stage_model.", drop=("denoise_encoder",))
    ddconfig = mod("config").decoder_config_from_state_dict(vsd)
    assert ddconfig["ch"] == 128 and ddconfig["ch_mult"] == [1, 2, 4, 4] and ddconfig["num_res_blocks"] == 2
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    assert_same_layout(shapes_of(vae), {k: tuple(v.shape) for k, v in vsd.items()}, "SDXL VAE")
