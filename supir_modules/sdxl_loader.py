"""An SDXL checkpoint's state dict -> ComfyUI's MODEL, CLIP and VAE, on every supported ComfyUI version.

Two paths, both made of ComfyUI's own code:
- Standard SDXL (a size ComfyUI's model table recognises): ComfyUI's checkpoint loader decides everything (dtype,
  model type such as v-prediction, text encoders, VAE). 0.3.75 loads from a dict with
  `comfy.sd.load_state_dict_guess_config`; 2024-03 only has `load_checkpoint_guess_config(path)`, so its steps
  are repeated here on the dict (`_assemble`).
- Other sizes with SDXL's key layout (the tiny test models): the same steps with `comfy.supported_models.SDXL` as
  the model config, the VAE configured from its shapes, and the text encoders sized from theirs (sdxl_clip.py).

Version differences are feature-detected (never by version number): who takes `state_dict` (`BASE.matches`,
`clip_target`), `comfy.sd.CLIP`'s `tokenizer_data`/`parameters`, `ModelPatcher`'s `current_device` (2024-03),
`model_management.unet_dtype`'s `weight_dtype` and `load_models_gpu`'s `force_full_load` (0.3.75).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from typing import Mapping

import torch

import comfy.model_detection
import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.supported_models_base
import comfy.utils

from . import checkpoint
from .checkpoint import CheckpointError
from .config import decoder_config_from_state_dict
from .sdxl_clip import shaped_clip_target

logger = logging.getLogger(__name__)

UNET_PREFIX = checkpoint.UNET_PREFIX
STORAGE_DTYPES = tuple(d for d in (torch.float32, torch.float16, torch.bfloat16, getattr(torch, "float8_e4m3fn", None),
                                   getattr(torch, "float8_e5m2", None)) if d is not None)
# Parts SUPIR needs from the file (checked before anything is built).
REQUIRED_PARTS = (
    ("text encoders", "CLIP-L (conditioner.embedders.0.transformer.*)", checkpoint.SDXL_CLIP_L_PREFIX),
    ("text encoders", "OpenCLIP bigG (conditioner.embedders.1.model.*)", checkpoint.SDXL_BIGG_PREFIX),
    ("VAE", "VAE (first_stage_model.decoder.*)", f"{checkpoint.VAE_PREFIX}decoder."),
)
USE_MODEL_NODE = ("load the model with ComfyUI's own loaders (Load Checkpoint, or Load Diffusion Model + "
                  "DualCLIPLoader + Load VAE) and use the \"SUPIR Loader (from MODEL)\" node")
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@torch.no_grad()  # ComfyUI calls loaders in inference mode; 2024-03's CLIP init writes a parameter in place
def load_sdxl(sd: Mapping[str, torch.Tensor], path: str, weight_dtype: torch.dtype | None = None,
              embedding_directory: str | list[str] | None = None,
              ) -> tuple[comfy.model_patcher.ModelPatcher, comfy.sd.CLIP, comfy.sd.VAE]:
    """MODEL, CLIP and VAE from an SDXL (or full SUPIR) checkpoint in the sgm layout; `sd` is left untouched.

    `weight_dtype`: UNet weight storage (fp32/fp16/bf16/fp8); None lets ComfyUI choose for the device.
    Raises CheckpointError (a ValueError) naming `path` and what to do when the file cannot serve as SDXL.
    """
    _check_parts(sd, path)
    if weight_dtype is not None and weight_dtype not in STORAGE_DTYPES:
        raise ValueError(f"unsupported UNet weight dtype {weight_dtype}; use one of {', '.join(map(str, STORAGE_DTYPES))}")
    # ComfyUI pops the keys it loads, and would report SUPIR keys as unexpected: give it a filtered copy.
    sdxl_sd = {k: v for k, v in sd.items() if not k.startswith(checkpoint.SUPIR_PREFIXES)}
    if len(sdxl_sd) != len(sd):
        logger.info("'%s': %d SUPIR tensors set aside; loading the SDXL part (%d tensors)", path,
                    len(sd) - len(sdxl_sd), len(sdxl_sd))
    with _comfy_step(path, "UNet configuration"):
        unet_config = comfy.model_detection.detect_unet_config(sdxl_sd, UNET_PREFIX)
    if not unet_config:
        raise CheckpointError(f"'{path}': ComfyUI cannot read a UNet configuration from this file; {USE_MODEL_NODE}.")

    model_config = _match_supported_model(unet_config, sdxl_sd)
    if model_config is not None:
        _require_sdxl_architecture(model_config, path)
        if hasattr(comfy.sd, "load_state_dict_guess_config"):
            route = "ComfyUI's checkpoint loader"
            model, clip, vae = _comfy_load(sdxl_sd, path, weight_dtype, embedding_directory)
        else:
            route = "ComfyUI's checkpoint loading steps"
            model, clip, vae = _assemble(model_config, sdxl_sd, path, weight_dtype, embedding_directory, shaped=False)
    else:
        route = "ComfyUI's SDXL pieces sized from the file's shapes (not a standard SDXL size)"
        model_config = comfy.supported_models.SDXL(unet_config)
        _require_sdxl_architecture(model_config, path)
        model, clip, vae = _assemble(model_config, sdxl_sd, path, weight_dtype, embedding_directory, shaped=True)
    if clip is None or vae is None:
        raise CheckpointError(f"'{path}': ComfyUI built no {'CLIP' if clip is None else 'VAE'} from this file; "
                              f"{USE_MODEL_NODE}.")
    base = model.model
    logger.info("'%s': %s UNet (%.1fM parameters, weights %s, compute %s), CLIP, VAE (%s) via %s", path,
                type(base.model_config).__name__, sum(p.numel() for p in base.parameters()) / 1e6, base.get_dtype(),
                base.manual_cast_dtype or base.get_dtype(), getattr(vae, "vae_dtype", "?"), route)
    return model, clip, vae


# --- checks ----------------------------------------------------------------------------------------------
def _check_parts(sd: Mapping[str, torch.Tensor], path: str) -> None:
    if checkpoint.classify_state_dict(sd) not in ("sdxl", "supir_full"):
        checkpoint.require_sdxl(sd, path)  # raises, saying what the file is instead (SD1/2, refiner, UNet only...)
    missing = [(part, name) for part, name, prefix in REQUIRED_PARTS if not any(k.startswith(prefix) for k in sd)]
    if missing:
        parts = sorted({part for part, _ in missing}, reverse=True)
        raise CheckpointError(f"'{path}' has no {' and no '.join(parts)} (missing {', '.join(n for _, n in missing)}); "
                              f"the SUPIR Loader needs a complete SDXL checkpoint. Pick one, or {USE_MODEL_NODE}.")


def _require_sdxl_architecture(model_config, path: str) -> None:
    if not isinstance(model_config, comfy.supported_models.SDXL):
        raise CheckpointError(f"'{path}': ComfyUI detects this model as {type(model_config).__name__}, not SDXL; "
                              "SUPIR needs an SDXL base model such as sd_xl_base_1.0 or an SDXL fine-tune (the SDXL "
                              "refiner cannot be used).")
    in_channels = model_config.unet_config.get("in_channels", 4)
    if in_channels != 4:
        raise CheckpointError(f"'{path}' is an SDXL model with {in_channels} input channels (inpainting or "
                              "instruct-pix2pix); SUPIR needs a plain 4-channel SDXL base model or fine-tune.")


@contextlib.contextmanager
def _comfy_step(path: str, what: str):
    """ComfyUI's own errors, re-raised with the file and what to do (never a bare 'failed to load')."""
    try:
        yield
    except (_OOM, CheckpointError):
        raise
    except (RuntimeError, KeyError, ValueError, IndexError, AssertionError, TypeError, AttributeError) as e:
        detail = (str(e).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"'{path}': ComfyUI could not build the {what} from this file ({type(e).__name__}: "
                              f"{detail}). The file may be damaged or not an SDXL checkpoint: download it again, or "
                              f"{USE_MODEL_NODE}.") from e


# --- ComfyUI's table and loader --------------------------------------------------------------------------
def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _match_supported_model(unet_config: dict, sd: Mapping[str, torch.Tensor]):
    """ComfyUI's table lookup (model_detection.model_config_from_unet_config) without its "no match" error log,
    since a miss is expected here for the sizes we assemble ourselves."""
    takes_sd = _accepts(comfy.supported_models_base.BASE.matches, "state_dict")  # 0.3.75 checks required keys
    for cls in comfy.supported_models.models:
        if cls.matches(unet_config, sd) if takes_sd else cls.matches(unet_config):
            return cls(unet_config)
    return None


def _comfy_load(sd: dict, path: str, weight_dtype, embedding_directory):
    """0.3.75+: ComfyUI's own dict loader; the storage dtype goes in as the UNet loader's model_options."""
    model_options = {} if weight_dtype is None else {"dtype": weight_dtype}
    with _comfy_step(path, "SDXL model"):
        out = comfy.sd.load_state_dict_guess_config(sd, output_vae=True, output_clip=True, output_clipvision=False,
                                                    embedding_directory=embedding_directory, output_model=True,
                                                    model_options=model_options)
    if out is None:
        raise CheckpointError(f"'{path}': ComfyUI could not detect the model type of this file; {USE_MODEL_NODE}.")
    model, clip, vae = out[:3]
    return model, clip, vae


# --- the same steps by hand ------------------------------------------------------------------------------
def _assemble(model_config, sd: dict, path: str, weight_dtype, embedding_directory, shaped: bool):
    """comfy.sd.load_checkpoint_guess_config's steps (2024-03) on a dict; `shaped`: size CLIP and VAE from `sd`."""
    params = comfy.utils.calculate_parameters(sd, UNET_PREFIX)
    load_device = mm.get_torch_device()
    unet_dtype = weight_dtype if weight_dtype is not None else _auto_unet_dtype(sd, params, model_config)
    manual_cast = mm.unet_manual_cast(unet_dtype, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    initial_device = mm.unet_inital_load_device(params, unet_dtype)
    with _comfy_step(path, "UNet"):
        model = model_config.get_model(sd, UNET_PREFIX, device=initial_device)
        model.load_model_weights(sd, UNET_PREFIX)  # logs missing / unexpected UNet keys itself
    vae = _build_vae(model_config, sd, path, shaped)
    clip = _build_clip(model_config, sd, path, embedding_directory, shaped)

    extra = {"current_device": initial_device} if _accepts(comfy.model_patcher.ModelPatcher.__init__, "current_device") else {}
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=mm.unet_offload_device(),
                                               **extra)
    if initial_device != torch.device("cpu"):  # built on the GPU: register it as loaded, as ComfyUI does
        if _accepts(mm.load_models_gpu, "force_full_load"):
            mm.load_models_gpu([patcher], force_full_load=True)
        else:
            mm.load_model_gpu(patcher)
    return patcher, clip, vae


def _auto_unet_dtype(sd: Mapping[str, torch.Tensor], params: int, model_config) -> torch.dtype:
    kwargs = {"model_params": params, "supported_dtypes": list(model_config.supported_inference_dtypes)}
    if _accepts(mm.unet_dtype, "weight_dtype") and hasattr(comfy.utils, "weight_dtype"):
        kwargs["weight_dtype"] = comfy.utils.weight_dtype(sd, UNET_PREFIX)  # 0.3.75: an fp8 file may stay fp8
    return mm.unet_dtype(**kwargs)


def _build_vae(model_config, sd: dict, path: str, shaped: bool) -> comfy.sd.VAE:
    vae_sd = comfy.utils.state_dict_prefix_replace(sd, {k: "" for k in model_config.vae_key_prefix}, filter_keys=True)
    vae_sd = model_config.process_vae_state_dict(vae_sd)
    config = None
    with _comfy_step(path, "VAE"):
        if shaped:  # ComfyUI's VAE class assumes SD's full-size widths unless told
            ddconfig = decoder_config_from_state_dict(vae_sd)
            config = {"params": {"embed_dim": vae_sd["quant_conv.weight"].shape[0] // 2, "ddconfig": ddconfig}}
        return comfy.sd.VAE(sd=vae_sd, config=config)  # logs missing / leftover VAE keys itself


def _build_clip(model_config, sd: dict, path: str, embedding_directory, shaped: bool) -> comfy.sd.CLIP:
    target = None
    if not shaped:  # ComfyUI's order: the target first (0.3.75 may read the state dict), then the keys
        target = (model_config.clip_target(state_dict=sd) if _accepts(model_config.clip_target, "state_dict")
                  else model_config.clip_target())
    clip_sd = model_config.process_clip_state_dict(sd)
    with _comfy_step(path, "text encoders"):
        if target is None:
            target = shaped_clip_target(clip_sd)
        extra = {}
        if _accepts(comfy.sd.CLIP.__init__, "tokenizer_data"):  # 0.3.75
            extra = {"tokenizer_data": clip_sd, "parameters": comfy.utils.calculate_parameters(clip_sd)}
        clip = comfy.sd.CLIP(target, embedding_directory=embedding_directory, **extra)
        missing, unexpected = clip.load_sd(clip_sd, full_model=True)
    # As ComfyUI: CLIP-L in SDXL files has no text projection and neither encoder needs logit_scale.
    missing = [k for k in missing if ".logit_scale" not in k and ".transformer.text_projection.weight" not in k]
    if missing:
        logger.warning("'%s': %d text-encoder weights missing: %s", path, len(missing),
                       checkpoint.describe_missing(missing))
    if unexpected:
        logger.debug("'%s': unused text-encoder keys: %s", path, checkpoint.describe_missing(list(unexpected)))
    return clip
