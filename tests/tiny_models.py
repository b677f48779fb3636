"""Tiny random checkpoints in the official key layouts, for tests (no test functions here).

- `tiny_sdxl_state_dict`: an SDXL base checkpoint as sgm saves it (`model.diffusion_model.*`, HF CLIP-L under
  `conditioner.embedders.0.transformer.*`, open_clip bigG under `conditioner.embedders.1.model.*`,
  `first_stage_model.*`), with SDXL's structure (3 levels, 2 res blocks each, attention in levels 1-2, linear
  projections, 64-wide heads) at small widths.
- `tiny_supir_state_dict`: the SUPIR-v0 keys that fit that UNet (`model.control_model.*` incl. `mask_LQ`,
  `model.diffusion_model.project_modules.*`, `first_stage_model.denoise_encoder.*`), see
  docs/supir-reference.md sections 1-2.
- `write_*`: files as users have them (official .ckpt wraps a `state_dict`; pruned SUPIR is fp16 safetensors).
- `tiny_sdxl_clip_target`, `tiny_supported_model`, `tiny_config_vae`: what ComfyUI's model table needs to load the
  tiny SDXL through its standard path (registered by tests/comfy/test_sdxl_loader.py per test, and by the server
  tier's test-only custom node for a server's life).
- `pack_package`: the repository registered as the package `fsupir_under_test` (tests/conftest.py's, and this
  file's when it is used outside pytest).

Every tensor comes from a real module's state dict (ComfyUI's UNetModel and VAE, an HF-CLIP-shaped and an
open_clip-shaped text tower, the pack's GLVControl / connectors / degradation-robust encoder), so shapes agree
with what loaders build; values are then replaced deterministically per (seed, key): N(0, 0.02) everywhere,
norms weight 1 / bias 0. Layers the official code zero-initialises are random here, so tests see their effect.
Needs ComfyUI on sys.path (tests/conftest.py puts it there).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import re
import sys
import zlib
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parent.parent
PACK_MODULE_NAME = "fsupir_under_test"  # the pack's name in every test process (tests/conftest.py)

UNET_PREFIX = "model.diffusion_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
BIGG_PREFIX = "conditioner.embedders.1.model."
VAE_PREFIX = "first_stage_model."
SD1_TE_PREFIX = "cond_stage_model.transformer."

CLIP_L_WIDTH = 32  # ComfyUI reads 1 head of 32 (it assumes 64-wide heads where the width allows)
BIGG_WIDTH = 64  # 1 head of 64; pooled (projected) width 64
CLIP_LAYERS = 3  # ComfyUI takes hidden layer -2 and asserts abs(-2) < layers
CONTEXT_DIM = CLIP_L_WIDTH + BIGG_WIDTH  # crossattn = cat(CLIP-L, bigG)
SIZE_EMBED_WIDTH = 6 * 256  # model_base.SDXL.encode_adm: Timestep(256) of h, w, crop h/w, target h/w
ADM_IN_CHANNELS = BIGG_WIDTH + SIZE_EMBED_WIDTH
VOCAB_SIZE = 49408  # the SDXL tokenizer emits ids up to 49407
MAX_POSITIONS = 77
INIT_STD = 0.02

# ComfyUI UNetModel kwargs: what comfy.model_detection.detect_unet_config reads from the tiny keys, plus SDXL's
# num_head_channels 64 (supported_models_base.BASE.unet_extra_config).
TINY_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": ADM_IN_CHANNELS, "in_channels": 4, "out_channels": 4,
    "model_channels": 64, "num_res_blocks": [2, 2, 2], "channel_mult": [1, 1, 2],
    "transformer_depth": [0, 0, 1, 1, 1, 1], "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1],
    "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": CONTEXT_DIM,
    "num_heads": -1, "num_head_channels": 64, "use_temporal_resblock": False, "use_temporal_attention": False,
}
# SD1.5's form: 4 levels (input blocks 0..11), attention in levels 0-2, conv projections, no label_emb.
TINY_SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "out_channels": 4, "model_channels": 32,
    "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "transformer_depth_output": [0, 0, 0] + [1] * 9,
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": CLIP_L_WIDTH,
    "num_heads": -1, "num_head_channels": 32, "use_temporal_resblock": False, "use_temporal_attention": False,
}
# Four levels, so the VAE scales by 8 as ComfyUI's VAE class assumes for an AutoencoderKL.
TINY_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 32,
    "ch_mult": [1, 1, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0,
}
VAE_EMBED_DIM = 4
# ComfyUI's table entry (comfy.supported_models.*.unet_config) that matches the tiny SDXL.
TINY_SDXL_TABLE_ENTRY = {
    "model_channels": 64, "use_linear_in_transformer": True, "transformer_depth": [0, 0, 1, 1, 1, 1],
    "context_dim": CONTEXT_DIM, "adm_in_channels": ADM_IN_CHANNELS, "use_temporal_attention": False,
}


# --- deterministic values --------------------------------------------------------------------------------
def _generator(seed: int, key: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63))


def _randomized(module: nn.Module, prefix: str, seed: int) -> dict[str, torch.Tensor]:
    """`module`'s state dict under `prefix`, every float tensor replaced: norms 1/0, the rest N(0, 0.02)."""
    norms = {name for name, m in module.named_modules() if isinstance(m, (nn.GroupNorm, nn.LayerNorm))}
    out = {}
    for key, t in module.state_dict().items():
        full = prefix + key
        owner, _, leaf = key.rpartition(".")
        if not t.is_floating_point():
            out[full] = t.clone()
        elif owner in norms:
            out[full] = torch.ones(t.shape) if leaf == "weight" else torch.zeros(t.shape)
        else:
            out[full] = torch.randn(t.shape, generator=_generator(seed, full)).mul_(INIT_STD)
    return out


def pack_package():
    """The repository as the package `fsupir_under_test` in sys.modules, registered on first use without running
    its `__init__.py`.

    Submodules then import normally (`from fsupir_under_test.supir_modules import checkpoint`), without the node
    layer. tests/conftest.py registers it before any test module is imported, and its `pack` fixture runs
    `__init__.py` on this same module object; outside pytest (the server tier's test-only node) it is registered
    on the first `_pack_module` call.
    """
    module = sys.modules.get(PACK_MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(PACK_MODULE_NAME, REPO / "__init__.py",
                                                      submodule_search_locations=[str(REPO)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACK_MODULE_NAME] = module
    return module


def _pack_module(name: str):
    """The pack's `supir_modules.<name>` (see pack_package)."""
    pack_package()
    return importlib.import_module(f"{PACK_MODULE_NAME}.supir_modules.{name}")


# --- the pieces ------------------------------------------------------------------------------------------
def _unet(config: dict, seed: int) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**config, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    return _randomized(unet, UNET_PREFIX, seed)


class _HFCLIPLayer(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.self_attn = nn.Module()
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self.self_attn, name, nn.Linear(width, width))
        self.layer_norm1 = nn.LayerNorm(width)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.layer_norm2 = nn.LayerNorm(width)


class _HFCLIPText(nn.Module):
    """HF transformers' CLIPTextModel names as SDXL files store them (`text_model.*`, `position_ids`, no
    projection). Written out here because transformers 5 no longer puts `text_model.` in its state dict keys."""

    def __init__(self, width: int):
        super().__init__()
        self.text_model = nn.Module()
        self.text_model.embeddings = nn.Module()
        self.text_model.embeddings.token_embedding = nn.Embedding(VOCAB_SIZE, width)
        self.text_model.embeddings.position_embedding = nn.Embedding(MAX_POSITIONS, width)
        self.text_model.embeddings.register_buffer("position_ids", torch.arange(MAX_POSITIONS).unsqueeze(0))
        self.text_model.encoder = nn.Module()
        self.text_model.encoder.layers = nn.ModuleList(_HFCLIPLayer(width) for _ in range(CLIP_LAYERS))
        self.text_model.final_layer_norm = nn.LayerNorm(width)


class _OpenCLIPBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, max(1, width // 64))  # in_proj_weight/bias, out_proj
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=nn.GELU(),
                                             c_proj=nn.Linear(4 * width, width)))


class _OpenCLIPText(nn.Module):
    """open_clip's text tower names (sgm FrozenOpenCLIPEmbedder2 keeps `model.*` of open_clip.CLIP)."""

    def __init__(self, width: int):
        super().__init__()
        self.token_embedding = nn.Embedding(VOCAB_SIZE, width)
        self.positional_embedding = nn.Parameter(torch.empty(MAX_POSITIONS, width))
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(_OpenCLIPBlock(width) for _ in range(CLIP_LAYERS))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, width))  # x @ P; ComfyUI transposes it
        self.logit_scale = nn.Parameter(torch.empty(()))


def _vae(seed: int) -> dict[str, torch.Tensor]:
    from comfy.ldm.models.autoencoder import AutoencoderKL

    vae = AutoencoderKL(ddconfig=TINY_VAE_DDCONFIG, embed_dim=VAE_EMBED_DIM)
    return _randomized(vae, VAE_PREFIX, seed)


# --- state dicts -----------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=2)
def _cached_sdxl(seed: int) -> dict[str, torch.Tensor]:
    sd = _unet(TINY_UNET_CONFIG, seed)
    sd.update(_randomized(_HFCLIPText(CLIP_L_WIDTH), CLIP_L_PREFIX, seed))
    sd.update(_randomized(_OpenCLIPText(BIGG_WIDTH), BIGG_PREFIX, seed))
    sd.update(_vae(seed))
    return sd


def tiny_sdxl_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny SDXL base checkpoint in the sgm layout, fp32. A new dict, but the tensors are shared with a
    per-process cache (copying them costs more than loading): never modify them in place."""
    return dict(_cached_sdxl(seed))


def tiny_sd15_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A tiny SD1.5-layout checkpoint (ldm keys: cond_stage_model.transformer.*, input blocks 0..11)."""
    sd = _unet(TINY_SD15_UNET_CONFIG, seed)
    sd.update(_randomized(_HFCLIPText(CLIP_L_WIDTH), SD1_TE_PREFIX, seed))
    sd.update(_vae(seed))
    return sd


def _shape(sd: dict, key: str) -> tuple[int, ...]:
    return tuple(sd[key].shape)


def connector_configs_for(sdxl_sd: dict[str, torch.Tensor]) -> list:
    """The 12 connector configs that fit the UNet in `sdxl_sd`, built the way LightGLVUNet.__init__ sizes them.

    Walks the decoder as supir_unet_forward does (connector 11 after the middle block, then one ZeroSFT per
    output block, plus a ZeroCrossAttn before each Upsample): ZeroSFT(label = control feature c_k width,
    norm = skip width (= c_k width), concat = decoder-state width), ZeroCrossAttn(context = c_k width,
    query = decoder width, 64-wide heads).
    """
    config = _pack_module("config")
    feats = config.ControlConfig.from_state_dict(sdxl_sd, prefix=UNET_PREFIX).feature_channels()
    n_out = len({m.group(1) for k in sdxl_sd for m in [re.match(rf"{re.escape(UNET_PREFIX)}output_blocks\.(\d+)\.", k)]
                 if m})
    rev = [config.ZeroSFTConfig(label_nc=feats[-1], norm_nc=feats[-1], concat_channels=0)]
    k = len(feats) - 2
    for j in range(n_out):
        block = f"{UNET_PREFIX}output_blocks.{j}."
        width_in = _shape(sdxl_sd, f"{block}0.in_layers.2.weight")[1]
        rev.append(config.ZeroSFTConfig(label_nc=feats[k], norm_nc=feats[k], concat_channels=width_in - feats[k]))
        if any(re.fullmatch(rf"{re.escape(block)}\d+\.conv\.weight", key) for key in sdxl_sd):  # has an Upsample
            query = _shape(sdxl_sd, f"{block}0.out_layers.3.weight")[0]
            rev.append(config.ZeroCrossAttnConfig(context_dim=feats[k], query_dim=query,
                                                  heads=query // config.ZERO_CROSS_ATTN_HEAD_CHANNELS))
        k -= 1
    return rev[::-1]


def tiny_supir_state_dict(sdxl_sd: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """SUPIR-v0 keys (adaptor, connectors, mask_LQ, degradation-robust encoder) that fit `sdxl_sd`, fp32.

    Depends only on `sdxl_sd`'s shapes and `seed`; cached on those like `tiny_sdxl_state_dict` (a new dict whose
    tensors are shared: never modify them in place)."""
    shapes = tuple(sorted((k, tuple(v.shape)) for k, v in sdxl_sd.items()
                          if k.startswith((UNET_PREFIX, f"{VAE_PREFIX}encoder."))))
    return dict(_cached_supir(shapes, seed))


@functools.lru_cache(maxsize=2)
def _cached_supir(shapes: tuple, seed: int) -> dict[str, torch.Tensor]:
    sdxl_sd = {k: torch.empty(shape, device="meta") for k, shape in shapes}  # only shapes are read
    config, adaptor, vae = _pack_module("config"), _pack_module("adaptor"), _pack_module("vae")
    control_cfg = config.ControlConfig.from_state_dict(sdxl_sd, prefix=UNET_PREFIX)
    sd = _randomized(adaptor.GLVControl(control_cfg), "model.control_model.", seed)
    sd["model.control_model.mask_LQ"] = torch.randn(1, 4, 64, 64, generator=_generator(seed, "mask_LQ"))
    sd.update(_randomized(adaptor.build_connectors(connector_configs_for(sdxl_sd)),
                          f"{UNET_PREFIX}project_modules.", seed))
    enc_cfg = config.EncoderConfig.from_state_dict(sdxl_sd, prefix=f"{VAE_PREFIX}encoder.")
    sd.update(_randomized(vae.DegradationRobustEncoder(enc_cfg), VAE_PREFIX, seed))
    return sd


# --- files -----------------------------------------------------------------------------------------------
def write_checkpoint(sd: dict[str, torch.Tensor], path: str | Path, fmt: str = "safetensors") -> Path:
    """`sd` as .safetensors, or as the official .ckpt layout (torch.save({"state_dict": sd}))."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "ckpt":
        torch.save({"state_dict": sd}, path)
    else:
        raise ValueError(f"unknown checkpoint format {fmt!r}; use 'safetensors' or 'ckpt'")
    return path


def write_sdxl(path: str | Path, fmt: str = "safetensors", seed: int = 0) -> Path:
    return write_checkpoint(tiny_sdxl_state_dict(seed), path, fmt)


def write_supir_full(path: str | Path, fmt: str = "ckpt", seed: int = 0) -> Path:
    """SDXL + SUPIR keys in one fp32 file, as the official SUPIR-v0Q/v0F .ckpt."""
    sdxl = tiny_sdxl_state_dict(seed)
    return write_checkpoint({**sdxl, **tiny_supir_state_dict(sdxl, seed)}, path, fmt)


def write_supir_pruned(path: str | Path, seed: int = 0) -> Path:
    """SUPIR keys only, fp16 safetensors: the pruned files most ComfyUI users have."""
    supir = tiny_supir_state_dict(tiny_sdxl_state_dict(seed), seed)
    return write_checkpoint({k: v.half() for k, v in supir.items()}, path, "safetensors")


def write_sd15_like(path: str | Path, fmt: str = "safetensors", seed: int = 0) -> Path:
    return write_checkpoint(tiny_sd15_state_dict(seed), path, fmt)


# --- the tiny SDXL in ComfyUI's model table --------------------------------------------------------------
def tiny_sdxl_clip_target(sdxl_sd: dict[str, torch.Tensor] | None = None):
    """The pack's shaped CLIP target (sdxl_clip.shaped_clip_target) for the text encoders of `sdxl_sd` (default:
    `tiny_sdxl_state_dict()`), as ComfyUI's SDXL config renames them."""
    import comfy.model_detection
    import comfy.supported_models

    sdxl_sd = tiny_sdxl_state_dict() if sdxl_sd is None else sdxl_sd
    probe = comfy.supported_models.SDXL(comfy.model_detection.detect_unet_config(sdxl_sd, UNET_PREFIX))
    return _pack_module("sdxl_clip").shaped_clip_target(probe.process_clip_state_dict(dict(sdxl_sd)))


def tiny_supported_model(clip_target, base=None, name: str = "Tiny") -> type:
    """A ComfyUI supported-model class named `name`, derived from `base` (default comfy.supported_models.SDXL),
    whose table entry is the tiny SDXL's size and whose text encoders are `clip_target`. Put it first in
    comfy.supported_models.models to make ComfyUI detect the tiny SDXL as it."""
    import comfy.supported_models

    def clip_target_method(self, state_dict=None):
        return clip_target

    base = comfy.supported_models.SDXL if base is None else base
    return type(name, (base,), {"unet_config": dict(TINY_SDXL_TABLE_ENTRY), "clip_target": clip_target_method,
                                "__module__": __name__})


def tiny_config_vae() -> type:
    """A subclass of the current comfy.sd.VAE whose config defaults to the tiny VAE's (ComfyUI's VAE class assumes
    full-size widths without a config); set it as comfy.sd.VAE while loading the tiny SDXL."""
    import comfy.sd

    vae_config = {"params": {"embed_dim": VAE_EMBED_DIM, "ddconfig": TINY_VAE_DDCONFIG}}

    class TinyConfigVAE(comfy.sd.VAE):
        def __init__(self, sd=None, device=None, config=None, dtype=None, **kwargs):
            super().__init__(sd=sd, device=device, config=config or vae_config, dtype=dtype, **kwargs)

    return TinyConfigVAE
