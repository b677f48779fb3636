"""The shipped workflows (workflows/*.json, UI format; workflows/api/*.json, API format) for tests: reading them,
the model files they name, tiny models (and a tiny LoRA) under those names, and their widget values checked
against a node's /object_info entry. No test functions here; nothing here imports ComfyUI (the tiny model
writers do, when called).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / "workflows"
API_DIR = WORKFLOWS / "api"
TESTS = Path(__file__).resolve().parent

# (class_type, input) -> model folder, for the combo inputs that name model files or folders.
MODEL_INPUTS = {
    ("FSUPIR_Loader", "supir_model"): "SUPIR",
    ("FSUPIR_Loader", "sdxl_model"): "checkpoints",
    ("FSUPIR_LoaderFromModel", "supir_model"): "SUPIR",
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("FSUPIR_LLaVACaption", "model"): "LLM",
}
# Frontend-only node types: in UI workflows, never in API ones.
VIRTUAL_NODES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SEED_NAMES = ("seed", "noise_seed")  # INT inputs that get a control_after_generate widget in both frontends
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def stems() -> list[str]:
    """Names of the UI workflows (workflows/<stem>.json), sorted."""
    return sorted(p.stem for p in WORKFLOWS.glob("*.json"))


def load_ui(stem: str) -> dict:
    return json.loads((WORKFLOWS / f"{stem}.json").read_text())


def load_api(stem: str) -> dict:
    return json.loads((API_DIR / f"{stem}.json").read_text())


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def model_references(api: dict) -> dict[str, set[str]]:
    """{model folder: file or folder names} that `api` picks in its model inputs."""
    refs: dict[str, set[str]] = {}
    for node in api.values():
        for name, value in node["inputs"].items():
            folder = MODEL_INPUTS.get((node["class_type"], name))
            if folder and isinstance(value, str):
                refs.setdefault(folder, set()).add(value)
    return refs


def input_images(api: dict) -> set[str]:
    return {n["inputs"]["image"] for n in api.values() if n["class_type"] == "LoadImage"
            and isinstance(n["inputs"].get("image"), str)}


def all_model_references() -> dict[str, set[str]]:
    refs: dict[str, set[str]] = {}
    for stem in stems():
        for folder, names in model_references(load_api(stem)).items():
            refs.setdefault(folder, set()).update(names)
    return refs


def write_tiny_models(root: Path, refs: dict[str, set[str]], cache: Path) -> Path:
    """Tiny random models under the names in `refs` (tests/tiny_models.py, tests/tiny_llava.py, a tiny LoRA):
    each kind written once into `cache`, then hard-linked (LLaVA folders copied) under every name."""
    from .tiny_llava import write_tiny_llava
    from .tiny_models import tiny_sdxl_state_dict, write_sdxl, write_supir_pruned

    cache.mkdir(parents=True, exist_ok=True)
    makers = {
        "SUPIR": lambda p: write_supir_pruned(p),
        "checkpoints": lambda p: write_sdxl(p),
        "loras": lambda p: write_tiny_lora(p, tiny_sdxl_state_dict()),
        "LLM": lambda p: write_tiny_llava(p),
    }
    for folder, names in refs.items():
        source = cache / f"tiny-{folder}"
        if not source.exists():
            makers[folder](source)
        for name in names:
            target = root / folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                os.link(source, target)
    return root


# --- a tiny LoRA -----------------------------------------------------------------------------------------------
LORA_RANK = 4
LORA_TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q", "ff.net.2")


def lora_keys_for(sdxl_sd: dict) -> dict[str, tuple[int, int]]:
    """Kohya-style LoRA names -> (out, in) for the linear layers LORA_TARGETS of the tiny UNet's transformer blocks.

    ComfyUI maps `lora_unet_<ldm key with . as _>` to `diffusion_model.<ldm key>.weight` (comfy/lora.py,
    model_lora_keys_unet)."""
    from .tiny_models import UNET_PREFIX

    out = {}
    for key, value in sdxl_sd.items():
        if key.startswith(UNET_PREFIX) and key.endswith(".weight") and value.ndim == 2 \
                and any(key.endswith(f"transformer_blocks.0.{t}.weight") for t in LORA_TARGETS):
            name = "lora_unet_" + key[len(UNET_PREFIX):-len(".weight")].replace(".", "_")
            out[name] = tuple(value.shape)
    return out


def write_tiny_lora(path: Path, sdxl_sd: dict, seed: int = 0, scale: float = 0.5) -> Path:
    """A rank-4 LoRA for the tiny SDXL UNet (`lora_unet_*.lora_up/lora_down.weight` and `.alpha`), fp32."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, (n_out, n_in) in sorted(lora_keys_for(sdxl_sd).items()):
        sd[f"{name}.lora_down.weight"] = torch.randn(LORA_RANK, n_in, generator=g) * scale
        sd[f"{name}.lora_up.weight"] = torch.randn(n_out, LORA_RANK, generator=g) * scale
        sd[f"{name}.alpha"] = torch.tensor(float(LORA_RANK))
    if not sd:
        raise ValueError("the tiny UNet has none of the LoRA target layers " + ", ".join(LORA_TARGETS))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))
    return path


# --- widget values against /object_info ------------------------------------------------------------------------
def widget_inputs(spec: dict) -> list[tuple[str, str, dict]]:
    """(name, type, options) of a node's widget inputs in widget order (required, then optional), from its
    /object_info entry; COMBO for lists. forceInput inputs are sockets, not widgets."""
    out = []
    for group in ("required", "optional"):
        for name, value in spec["input"].get(group, {}).items():
            kind, options = value[0], (value[1] if len(value) > 1 and isinstance(value[1], dict) else {})
            kind = "COMBO" if isinstance(kind, list) else kind
            if kind == "COMBO" and not isinstance(value[0], list):
                options = {**options, "values": options.get("options", [])}
            elif kind == "COMBO":
                options = {**options, "values": value[0]}
            if kind in WIDGET_TYPES and not options.get("forceInput"):
                out.append((name, kind, options))
    return out


def ui_widget_values(ui_node: dict, spec: dict) -> dict:
    """{input name: value} of a UI node's widgets_values, skipping the frontend's own extra widgets
    (control_after_generate after a seed, the image upload button)."""
    values = list(ui_node.get("widgets_values") or [])
    named, i = {}, 0
    for name, kind, options in widget_inputs(spec):
        if i >= len(values):
            break
        named[name] = values[i]
        i += 1
        if kind == "INT" and (name in SEED_NAMES or options.get("control_after_generate")):
            i += 1
    return named


def value_problem(kind: str, options: dict, value) -> str | None:
    """Why `value` is not accepted by an input of `kind` with `options`, or None."""
    if kind == "COMBO":
        return None if value in options["values"] else f"{value!r} is not one of {options['values'][:8]}"
    if kind == "BOOLEAN":
        return None if isinstance(value, bool) else f"{value!r} is not a boolean"
    if kind == "STRING":
        return None if isinstance(value, str) else f"{value!r} is not a string"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number"
    if kind == "INT" and value != int(value):
        return f"{value!r} is not an integer"
    lo, hi = options.get("min"), options.get("max")
    if lo is not None and value < lo:
        return f"{value} is below the minimum {lo}"
    if hi is not None and value > hi:
        return f"{value} is above the maximum {hi}"
    return None
