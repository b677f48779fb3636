"""Reading, recognising and splitting SUPIR / SDXL checkpoints (pure torch + safetensors, no ComfyUI).

Follows the loading in the official SUPIR/util.py (``load_state_dict``: safetensors or ``torch.load``, then
``d.get('state_dict', d)``), but never unpickles code: ``torch.load`` always runs with ``weights_only=True``.
The layout of a SUPIR-v0 file is described in docs/supir-reference.md section 2.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

logger = logging.getLogger(__name__)

# --- key tables ------------------------------------------------------------------------------------------
CONTROL_PREFIX = "model.control_model."
CONNECTOR_PREFIX = "model.diffusion_model.project_modules."
DENOISE_PREFIX = "first_stage_model.denoise_encoder."
SUPIR_PREFIXES = (CONTROL_PREFIX, CONNECTOR_PREFIX, DENOISE_PREFIX)
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."  # HF CLIP-L (sgm FrozenCLIPEmbedder)
SDXL_BIGG_PREFIX = "conditioner.embedders.1.model."  # open_clip bigG (sgm FrozenOpenCLIPEmbedder2)
SDXL_REFINER_TE_PREFIX = "conditioner.embedders.0.model."  # the refiner has only bigG, at index 0
SD1_TE_PREFIX = "cond_stage_model.transformer."  # ldm FrozenCLIPEmbedder
SD2_TE_PREFIX = "cond_stage_model.model."  # ldm FrozenOpenCLIPEmbedder

MASK_LQ_KEY = "mask_LQ"  # model.control_model.mask_LQ: saved by SUPIR, never read by SUPIR/modules/SUPIR_v0.py
NUM_CONNECTORS = 12  # project_modules 0..11 (SUPIR/modules/SUPIR_v0.py, LightGLVUNet.__init__)
REQUIRED_CONTROL = ("input_hint_block.0.weight", "time_embed.0.weight", "label_emb.0.0.weight",
                    "input_blocks.0.0.weight", "middle_block.*")
REQUIRED_DENOISE = ("conv_in.weight", "conv_out.weight")

# Context width (attn2.to_k.weight shape[1]) of the full-size models: a secondary check only.
CONTEXT_WIDTH_KIND = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
KIND_NAMES = {"sd1": "a Stable Diffusion 1.x checkpoint", "sd2": "a Stable Diffusion 2.x checkpoint",
              "sdxl": "an SDXL checkpoint"}

SAFETENSORS_EXTS = {".safetensors", ".sft"}
TORCH_EXTS = {".ckpt", ".pt", ".pth", ".bin"}
SAFETENSORS_MAX_HEADER = 100_000_000  # the limit the safetensors library enforces
ZIP_MAGIC = b"PK\x03\x04"


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file and what to do instead."""


@dataclass(frozen=True)
class SupirStateDicts:
    """The three SUPIR weight groups of one file, prefixes stripped."""

    control: dict[str, torch.Tensor]  # GLVControl, without mask_LQ
    connectors: dict[str, torch.Tensor]  # "<idx>.<rest>" for project_modules 0..11
    denoise_encoder: dict[str, torch.Tensor]  # the degradation-robust VAE encoder
    kind: str
    path: str
    has_mask_lq: bool = False
    other_keys: int = field(default=0)  # keys outside the three groups (SDXL UNet, VAE, ...) left untouched


# --- reading ---------------------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a .safetensors / .ckpt / .pt / .pth / .bin file to a CPU tensor dict, refusing pickled code."""
    p = Path(path)
    size = _check_file(p)
    fmt = _detect_format(p, size)
    sd = _read_safetensors(p, size) if fmt == "safetensors" else _read_torch(p, fmt == "torch_zip")
    dtypes = collections.Counter(str(t.dtype).removeprefix("torch.") for t in sd.values())
    logger.info("read %s: kind %s, %d tensors, dtypes %s", p, classify_state_dict(sd), len(sd),
                ", ".join(f"{d} x{n}" for d, n in dtypes.most_common()))
    return sd


def _check_file(p: Path) -> int:
    if not p.exists():
        raise CheckpointError(f"'{p}' was not found; check the path, or put the file in ComfyUI's models "
                              "folder and pick it from the list.")
    if p.is_dir():
        raise CheckpointError(f"'{p}' is a folder, not a checkpoint file; pick the .safetensors or .ckpt "
                              "file itself (diffusers folders are not supported here).")
    size = p.stat().st_size
    if size == 0:
        raise CheckpointError(f"'{p}' is empty (0 bytes); the download failed: download the file again.")
    return size


def _head(p: Path, n: int = 64) -> bytes:
    try:
        with open(p, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise CheckpointError(f"'{p}' cannot be opened ({e}); check the file's permissions.") from e


def _content_hint(head: bytes) -> str:
    """A sentence naming what a non-checkpoint file seems to be (common broken downloads)."""
    if head.startswith(b"version https://git-lfs"):
        return (" It is a Git LFS pointer, not the weights: download the real file (git lfs pull, or the "
                "model page's download link).")
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<?xml", b"{\"error")):
        return " It is a web page or error response saved in place of the weights: download the file again."
    return ""


def _sniff_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n <= min(size - 8, SAFETENSORS_MAX_HEADER) and head[8:9] == b"{"


def _detect_format(p: Path, size: int) -> str:
    """'safetensors', 'torch_zip' or 'torch_legacy', from the extension checked against the first bytes."""
    ext, head = p.suffix.lower(), _head(p)
    if ext in SAFETENSORS_EXTS:
        return "safetensors"  # _read_safetensors explains what is wrong with a bad header
    if _sniff_safetensors(head, size):
        if ext in TORCH_EXTS:
            logger.warning("'%s' is named %s but holds safetensors data; reading it as safetensors", p, ext)
        return "safetensors"
    if head.startswith(ZIP_MAGIC):
        return "torch_zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch_legacy"  # a pre-1.6 torch.save pickle; weights_only still applies
    if ext in TORCH_EXTS:
        raise CheckpointError(f"'{p}' is not a PyTorch checkpoint: it is neither a zip archive nor a pickle "
                              f"(first bytes {head[:8]!r}).{_content_hint(head)} Download it again, or use "
                              "the .safetensors version of the model.")
    raise CheckpointError(f"'{p}' has an unknown extension '{ext}' and is neither safetensors nor a PyTorch "
                          f"checkpoint (first bytes {head[:8]!r}).{_content_hint(head)} Use a .safetensors "
                          "or .ckpt file.")


def _safetensors_header(p: Path, size: int) -> dict[str, Any]:
    """Check the safetensors framing ourselves so a broken file gets a specific message."""
    redownload = "the download was probably interrupted: download the file again."
    head = _head(p)
    hint = _content_hint(head)
    if head.startswith(ZIP_MAGIC):
        raise CheckpointError(f"'{p}' is named .safetensors but is a PyTorch zip checkpoint; rename it to "
                              ".ckpt (it is then read with weights_only) or convert it to real safetensors.")
    if size < 8:
        raise CheckpointError(f"'{p}' is truncated: {size} bytes, shorter than the 8-byte safetensors "
                              f"header length.{hint} Download the file again.")
    n = int.from_bytes(head[:8], "little")
    if n > size - 8 or n > SAFETENSORS_MAX_HEADER:
        raise CheckpointError(f"'{p}' is truncated or not a safetensors file: its header length field says "
                              f"{n} bytes but only {size - 8} bytes follow it.{hint} Download the file again.")
    with open(p, "rb") as f:
        f.seek(8)
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"'{p}' has a corrupt safetensors header (not valid JSON: {e}); "
                              f"{redownload}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"'{p}' has a corrupt safetensors header (a JSON {type(header).__name__}, not "
                              f"an object); {redownload}")
    data_len, end = size - 8 - n, 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise CheckpointError(f"'{p}' has a corrupt safetensors header: the entry for {key!r} has no valid "
                                  f"data_offsets; {redownload}")
        end = max(end, offsets[1])
    if end > data_len:
        raise CheckpointError(f"'{p}' is truncated: its header lists {end} bytes of tensor data but only "
                              f"{data_len} are present ({end - data_len} missing); {redownload}")
    return header


def _read_safetensors(p: Path, size: int) -> dict[str, torch.Tensor]:
    _safetensors_header(p, size)
    try:
        sd = safetensors.torch.load_file(str(p), device="cpu")
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"'{p}' could not be read as safetensors ({type(e).__name__}: {e}); the file is "
                              "damaged: download it again.") from e
    if not sd:
        raise CheckpointError(f"'{p}' is a valid safetensors file but holds no tensors; pick the model file "
                              "itself.")
    return sd


class _LightningModelCheckpoint:
    """Inert stand-in for pytorch_lightning's ModelCheckpoint callback state in training .ckpt files."""


def _extra_safe_globals() -> list[Any]:
    """Data-only globals that Lightning training checkpoints carry besides tensors (ComfyUI allows the same
    in comfy/utils.py). None of them runs code from the file: the callback becomes an inert stub."""
    allowed: list[Any] = [
        (_LightningModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
        (_LightningModelCheckpoint, "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint"),
    ]
    try:
        import numpy as np
        import numpy.dtypes as npd
    except ImportError:
        return allowed
    # numpy's scalar reconstructor, found without importing the deprecated numpy.core (numpy 2 renamed it)
    scalar = np.float64(0.0).__reduce__()[0]
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    for name in dir(npd):  # the numeric dtype classes only (bool, ints, floats, complex)
        cls = getattr(npd, name)
        if (name.endswith("DType") and isinstance(cls, type) and cls not in allowed
                and np.dtype(cls.type).kind in "biufc"):
            allowed.append(cls)
    return allowed


_UNSAFE_GLOBAL = re.compile(r"GLOBAL (\S+)")
# torch/_weights_only_unpickler.py refusals that mean "this pickle wants to import or call something"
_NEEDS_CODE = re.compile(r"Unsupported global|Unsupported class|unrecognized function|Can only create new "
                         r"object|is blocked|must be imported")


def _weights_only_detail(text: str) -> str:
    """The unpickler's own reason inside torch's long 'Weights only load failed' message."""
    after = text.split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in after.splitlines() if line.strip()]
    return lines[0] if lines else text.splitlines()[0]


def _read_torch(p: Path, is_zip: bool) -> dict[str, torch.Tensor]:
    redownload = "the file is damaged or the download was interrupted: download it again."
    if is_zip and not zipfile.is_zipfile(p):
        raise CheckpointError(f"'{p}' is a truncated or damaged zip checkpoint (its zip directory at the end "
                              f"is missing); {redownload}")
    try:
        with torch.serialization.safe_globals(_extra_safe_globals()):
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "Weights only load failed" not in text:
            raise CheckpointError(f"'{p}' is not a readable PyTorch checkpoint ({text.splitlines()[0]}); "
                                  f"{redownload}") from e
        detail = _weights_only_detail(text)
        if not _NEEDS_CODE.search(detail):  # e.g. "Unsupported operand": garbage, or an exotic pickle
            raise CheckpointError(f"'{p}' is damaged or not a plain weights checkpoint (torch.load: {detail}); "
                                  "download it again, or convert it to .safetensors where you trust the "
                                  "file.") from e
        found = _UNSAFE_GLOBAL.search(detail)
        what = f" (it asks for {found.group(1)})" if found else ""
        raise CheckpointError(f"'{p}' contains pickled code{what}, which we refuse to run. Convert it to "
                              ".safetensors where you trust the file (load it with torch.load and save the "
                              "state dict with safetensors.torch.save_file), or download the .safetensors "
                              "version.") from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, AttributeError, KeyError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else "unexpected end of file"
        raise CheckpointError(f"'{p}' could not be read by torch.load ({type(e).__name__}: {reason}); "
                              f"{redownload}") from e
    return _tensor_dict(_unwrap(obj), p)


def _unwrap(obj: Any) -> Any:
    """Go down 'state_dict' (SUPIR/util.py get_state_dict), 'model' or 'module' until a tensor dict."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in ("state_dict", "model", "module") if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            return obj
        obj = inner
    return obj


def _tensor_dict(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"'{p}' holds a {type(obj).__name__}, not a state dict; pick a model checkpoint "
                              "(.safetensors or a .ckpt with a state_dict).")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        keys = describe_missing(sorted(map(str, obj.keys())))
        raise CheckpointError(f"'{p}' holds no tensors (top-level keys: {keys}); pick a model checkpoint.")
    if len(sd) < len(obj):
        logger.debug("'%s': ignored %d non-tensor entries", p, len(obj) - len(sd))
    return sd


# --- recognising -----------------------------------------------------------------------------------------
def _shape(v: Any) -> tuple[int, ...] | None:
    """Shape of a tensor (meta included), or of a plain list of ints as in supir_v0_layout.json."""
    if hasattr(v, "shape"):
        return tuple(v.shape)
    if isinstance(v, (list, tuple)) and all(isinstance(i, int) for i in v):
        return tuple(v)
    return None


def _has_prefix(keys: Iterable[str], prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def _unet_structure_kind(sd: Mapping[str, Any]) -> str | None:
    """SDXL: label_emb and input_blocks 0..8; SD1/SD2: no label_emb and input_blocks 0..11, told apart by
    the transformers' proj_in (a 1x1 conv in SD1, linear in SD2, as comfy/model_detection.py reads
    use_linear_in_transformer). None when the structure says nothing."""
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"model\.diffusion_model\.input_blocks\.(\d+)\.", k))}
    if not blocks:
        return None
    has_label = f"{UNET_PREFIX}label_emb.0.0.weight" in sd
    if has_label and max(blocks) == 8:
        return "sdxl"
    if not has_label and max(blocks) == 11:
        shape = _shape(sd.get(f"{UNET_PREFIX}input_blocks.1.1.proj_in.weight"))
        if shape is not None:
            return "sd2" if len(shape) == 2 else "sd1"
    return None


def _context_width_kind(sd: Mapping[str, Any]) -> str | None:
    """The full-size kind a cross-attention context width names (768/1024/2048), else None."""
    for block in (4, 1):  # SDXL's first attention is in input block 4, SD1/SD2's in block 1
        shape = _shape(sd.get(f"{UNET_PREFIX}input_blocks.{block}.1.transformer_blocks.0.attn2.to_k.weight"))
        if shape is not None and len(shape) == 2:
            return CONTEXT_WIDTH_KIND.get(shape[1])
    return None


def classify_state_dict(sd: Mapping[str, Any]) -> str:
    """One of 'supir_full', 'supir_pruned', 'sdxl', 'sd1', 'sd2', 'unet_only', 'unknown'.

    The ladder (telltale keys as in diffusers' single_file_utils and comfy/model_detection.py; structure
    first because tests use tiny models with the real key layout but tiny widths):
      1. any SUPIR key: 'supir_full' if SDXL UNet keys (model.diffusion_model.*, not project_modules) are
         there too, else 'supir_pruned' (the fp16 files most users have; the official .ckpt holds these too).
      2. no UNet under model.diffusion_model.: 'unet_only' for a bare UNet (ldm input_blocks.0.0.weight or
         diffusers conv_in + time_embedding at top level), else 'unknown'.
      3. text-encoder family: conditioner.embedders.1.model. -> sdxl; cond_stage_model.model. -> sd2;
         cond_stage_model.transformer. -> sd1; the SDXL refiner (bigG only, at index 0) -> unknown.
      4. UNet structure (_unet_structure_kind); must agree with 3 when both speak.
      5. context width 768/1024/2048: decides when 3 and 4 are silent, vetoes ('unknown') when it disagrees.
    """
    keys = list(sd.keys())
    if any(k.startswith(SUPIR_PREFIXES) for k in keys):
        full = any(k.startswith(UNET_PREFIX) and not k.startswith(CONNECTOR_PREFIX) for k in keys)
        return "supir_full" if full else "supir_pruned"
    if not _has_prefix(keys, UNET_PREFIX):
        bare_ldm = "input_blocks.0.0.weight" in sd
        bare_diffusers = "conv_in.weight" in sd and "time_embedding.linear_1.weight" in sd
        return "unet_only" if bare_ldm or bare_diffusers else "unknown"
    if _has_prefix(keys, SDXL_REFINER_TE_PREFIX) and not _has_prefix(keys, SDXL_BIGG_PREFIX):
        return "unknown"
    text_kind = ("sdxl" if _has_prefix(keys, SDXL_BIGG_PREFIX) else "sd2" if _has_prefix(keys, SD2_TE_PREFIX)
                 else "sd1" if _has_prefix(keys, SD1_TE_PREFIX) else None)
    unet_kind, width_kind = _unet_structure_kind(sd), _context_width_kind(sd)
    votes = {v for v in (text_kind, unet_kind, width_kind) if v is not None}
    if len(votes) == 1:
        return votes.pop()
    if votes:
        logger.warning("checkpoint tells disagree (text encoders: %s, UNet structure: %s, context width: %s); "
                       "treating it as unknown", text_kind, unet_kind, width_kind)
    return "unknown"


# --- splitting and checking ------------------------------------------------------------------------------
def describe_missing(keys: Iterable[str], limit: int = 5) -> str:
    """'a, b, c, d, e ...and 3 more' (the first `limit` names, in the order given)."""
    keys = list(keys)
    if not keys:
        return "none"
    shown = ", ".join(keys[:max(limit, 0)])
    rest = len(keys) - min(len(keys), max(limit, 0))
    return f"{shown} ...and {rest} more" if rest else shown


def _strip(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _missing_required(control: Mapping[str, Any], connectors: Mapping[str, Any],
                      denoise: Mapping[str, Any]) -> list[str]:
    missing: list[str] = []
    for group, prefix in ((control, CONTROL_PREFIX), (connectors, CONNECTOR_PREFIX), (denoise, DENOISE_PREFIX)):
        if not group:
            missing.append(f"{prefix}* (the whole group)")
    if control:
        for name in REQUIRED_CONTROL:
            found = _has_prefix(control, name[:-1]) if name.endswith("*") else name in control
            if not found:
                missing.append(CONTROL_PREFIX + name)
    if connectors:
        missing += [f"{CONNECTOR_PREFIX}{i}.*" for i in range(NUM_CONNECTORS) if not _has_prefix(connectors, f"{i}.")]
    if denoise:
        missing += [DENOISE_PREFIX + name for name in REQUIRED_DENOISE if name not in denoise]
    return missing


def split_supir_state_dict(sd: Mapping[str, torch.Tensor], path: str | os.PathLike | None) -> SupirStateDicts:
    """Split a SUPIR file into control / connectors / denoise encoder, or say why it is not one."""
    kind = classify_state_dict(sd)
    if kind in KIND_NAMES:
        raise CheckpointError(f"'{path}' is {KIND_NAMES[kind]}, not a SUPIR model; pick it as the SDXL "
                              "checkpoint and choose SUPIR-v0Q or SUPIR-v0F as the SUPIR file."
                              if kind == "sdxl" else
                              f"'{path}' is {KIND_NAMES[kind]}, not a SUPIR model; choose SUPIR-v0Q or "
                              "SUPIR-v0F as the SUPIR file (and an SDXL checkpoint as the base model).")
    if kind not in ("supir_full", "supir_pruned"):
        raise CheckpointError(f"'{path}' holds no SUPIR weights (no keys under {', '.join(SUPIR_PREFIXES)}); "
                              "choose SUPIR-v0Q or SUPIR-v0F as the SUPIR file.")
    control = _strip(sd, CONTROL_PREFIX)
    has_mask_lq = control.pop(MASK_LQ_KEY, None) is not None
    connectors, denoise = _strip(sd, CONNECTOR_PREFIX), _strip(sd, DENOISE_PREFIX)
    missing = _missing_required(control, connectors, denoise)
    if missing:
        raise CheckpointError(f"'{path}' is an incomplete SUPIR file; missing {describe_missing(missing)}. "
                              "Download SUPIR-v0Q or SUPIR-v0F again (the whole file or the pruned fp16 "
                              "safetensors).")
    other = len(sd) - len(control) - len(connectors) - len(denoise) - int(has_mask_lq)
    logger.info("'%s': SUPIR %s with %d control, %d connector and %d denoise-encoder tensors%s", path, kind,
                len(control), len(connectors), len(denoise), f", {other} other keys left" if other else "")
    return SupirStateDicts(control=control, connectors=connectors, denoise_encoder=denoise, kind=kind,
                           path=str(path), has_mask_lq=has_mask_lq, other_keys=other)


def _missing_sdxl_parts(sd: Mapping[str, Any]) -> list[str]:
    keys = list(sd.keys())
    parts = [("UNet (model.diffusion_model.*)", f"{UNET_PREFIX}input_blocks."),
             ("CLIP-L text encoder (conditioner.embedders.0.transformer.*)", SDXL_CLIP_L_PREFIX),
             ("OpenCLIP bigG text encoder (conditioner.embedders.1.model.*)", SDXL_BIGG_PREFIX),
             ("VAE (first_stage_model.encoder/decoder.*)", f"{VAE_PREFIX}decoder.")]
    return [name for name, prefix in parts if not _has_prefix(keys, prefix)]


def require_sdxl(sd: Mapping[str, Any], path: str | os.PathLike | None) -> None:
    """Raise CheckpointError unless `sd` can serve as SUPIR's SDXL base (an SDXL or full SUPIR file)."""
    kind = classify_state_dict(sd)
    if kind in ("sdxl", "supir_full"):
        if missing := _missing_sdxl_parts(sd):
            logger.warning("'%s' (%s) lacks %s; those parts must come from elsewhere", path, kind,
                           describe_missing(missing))
        return
    use_model_node = ('or load the model with ComfyUI\'s own loaders and use the "SUPIR Loader (from MODEL)" '
                      "node.")
    if kind in ("sd1", "sd2"):
        version = "1.x" if kind == "sd1" else "2.x"
        msg = (f"'{path}' is a Stable Diffusion {version} checkpoint; SUPIR needs an SDXL base model such as "
               "sd_xl_base_1.0 or an SDXL fine-tune.")
    elif kind == "supir_pruned":
        msg = (f"'{path}' holds only SUPIR weights; choose it as the SUPIR model and pick an SDXL checkpoint "
               "here.")
    elif kind == "unet_only":
        msg = (f"'{path}' is a bare diffusion model (UNet only, no text encoders or VAE); pick an SDXL "
               f"checkpoint with UNet, both text encoders and VAE, {use_model_node}")
    elif _has_prefix(sd.keys(), SDXL_REFINER_TE_PREFIX):
        msg = (f"'{path}' looks like the SDXL refiner, which SUPIR cannot use; pick an SDXL base checkpoint "
               "such as sd_xl_base_1.0 or an SDXL fine-tune.")
    else:
        msg = (f"'{path}' is not a recognisable SDXL checkpoint (missing {describe_missing(_missing_sdxl_parts(sd))});"
               f" pick an SDXL checkpoint with UNet, both text encoders and VAE, {use_model_node}")
    raise CheckpointError(msg)
