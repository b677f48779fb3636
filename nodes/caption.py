"""LLaVA Caption: the stage-1 image -> SUPIR's caption(s), as the official app asks LLaVA (see
supir_modules/caption.py). Models are transformers folders under models/LLM (or models/llava)."""
from __future__ import annotations

import logging
import os

import folder_paths

import comfy.utils

from ..supir_modules import caption as cap
from .common import CATEGORY, register_model_folder, tile_inputs

logger = logging.getLogger(__name__)

MODEL_FOLDERS = ("LLM", "llava")  # models/LLM (shared with other LLM packs), models/llava
NO_MODEL = "(no model in models/LLM)"

# Loaded models by (folder, dtype, quantization). One at a time: a 13B LLaVA holds ~26 GB of RAM in fp16.
_CACHE: dict[tuple[str, str, str], cap.VisionLanguageModel] = {}


def _search_paths() -> list[str]:
    paths: list[str] = []
    for name in MODEL_FOLDERS:
        for p in folder_paths.get_folder_paths(name) if name in folder_paths.folder_names_and_paths else []:
            if p not in paths:
                paths.append(p)
    return paths


def _model_folders() -> dict[str, str]:
    """name -> folder for every folder holding a config.json, one or two levels down (`<name>` or
    `<org>/<name>`), first registered path first."""
    found: dict[str, str] = {}
    for base in _search_paths():
        if not os.path.isdir(base):
            continue
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            if not entry.is_dir():
                continue
            if os.path.isfile(os.path.join(entry.path, "config.json")):
                found.setdefault(entry.name, entry.path)
                continue
            for sub in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if sub.is_dir() and os.path.isfile(os.path.join(sub.path, "config.json")):
                    found.setdefault(f"{entry.name}/{sub.name}", sub.path)
    return found


def model_list() -> list[str]:
    return sorted(_model_folders()) or [NO_MODEL]


def resolve_model(name: str) -> str:
    folders = _model_folders()
    if name in folders:
        return folders[name]
    where = ", ".join(_search_paths()) or "models/LLM"
    if not folders:
        raise ValueError(f"no captioning model found in {where}: download a LLaVA folder in the llava-hf layout, "
                         f"e.g. {cap.MODEL_EXAMPLE} (whole folder: config.json, *.safetensors, tokenizer and "
                         "processor files) into models/LLM/<name>, then refresh the page")
    raise ValueError(f"captioning model {name!r} not found in {where} (found: {', '.join(sorted(folders))}); put "
                     "its folder into models/LLM/<name> and refresh the page")


def get_model(path: str, dtype: str, quantization: str) -> cap.VisionLanguageModel:
    """The cached model, or a fresh load after dropping any other (one VLM in memory at a time)."""
    key = (os.path.realpath(path), dtype, quantization)
    if key in _CACHE:
        return _CACHE[key]
    drop_cached()
    _CACHE[key] = cap.load_vision_language_model(path, dtype, quantization)
    return _CACHE[key]


def drop_cached() -> None:
    for vlm in _CACHE.values():
        cap.unload(vlm)
    _CACHE.clear()


def release(vlm: cap.VisionLanguageModel) -> None:
    """keep_loaded off: unload from the GPU; bitsandbytes weights cannot leave it, so they are dropped."""
    cap.unload(vlm)
    if vlm.quantization != "none":
        drop_cached()


class FSUPIRLLaVACaption:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The stage-1 image (from SUPIR Degradation-Robust Encode); a batch gives "
                                           "one caption per image."}),
            "model": (model_list(), {"tooltip": "A LLaVA folder in the llava-hf layout (llava-1.5-13b-hf is the "
                                                "official one, 7b for smaller GPUs; LLaVA-NeXT works) from "
                                                "models/LLM or models/llava."}),
            "question": ("STRING", {"multiline": True, "default": cap.OFFICIAL_QUESTION,
                                    "tooltip": "What LLaVA is asked (the official question by default)."}),
            "append_realistic": ("BOOLEAN", {"default": False,
                                             "tooltip": f"Append the official app's \"{cap.REALISTIC_SENTENCE}\""}),
            "dtype": (list(cap.DTYPES), {"default": "auto",
                                         "tooltip": "auto: fp16 on GPUs that run it well (as the official agent), "
                                                    "else fp32."}),
            "quantization": (list(cap.QUANTIZATIONS), {"default": "none",
                                                       "tooltip": "8-bit/4-bit weights for smaller GPUs; needs "
                                                                  "bitsandbytes (pip install bitsandbytes, CUDA)."}),
            "temperature": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 2.0, "step": 0.05,
                                      "tooltip": "Sampling temperature (official 0.2); 0 picks the likeliest "
                                                 "words (greedy)."}),
            "top_p": ("FLOAT", {"default": 0.7, "min": 0.0, "max": 1.0, "step": 0.05,
                                "tooltip": "Nucleus sampling (official 0.7)."}),
            "max_new_tokens": ("INT", {"default": 512, "min": 1, "max": 4096,
                                       "tooltip": "Longest caption in tokens (official 512)."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff,
                             "tooltip": "Same seed, same image, same caption."}),
            "keep_loaded": ("BOOLEAN", {"default": False,
                                        "tooltip": "Keep LLaVA on the GPU after captioning (ComfyUI still unloads it "
                                                   "when the sampler needs the room)."}),
            "per_tile": ("BOOLEAN", {"default": False,
                                     "tooltip": "Caption each of the sampler's tiles of one image (for the "
                                                "Conditioner's 'one per tile'); set tile_size/stride as on the "
                                                "sampler."}),
            **tile_inputs("The sampler's tile_size in pixels.", "The sampler's tile_stride in pixels."),
        }}

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("caption",)
    OUTPUT_IS_LIST = (True,)
    OUTPUT_TOOLTIPS = ("One caption per image (or per tile), for the SUPIR Conditioner's caption input.",)
    FUNCTION = "caption"
    CATEGORY = CATEGORY
    DESCRIPTION = "Captions the stage-1 image with LLaVA the way the official SUPIR app does."

    def caption(self, image, model: str, question: str, append_realistic: bool, dtype: str, quantization: str,
                temperature: float, top_p: float, max_new_tokens: int, seed: int, keep_loaded: bool = False,
                per_tile: bool = False, tile_size: int = 1024, tile_stride: int = 512):
        path = resolve_model(model)
        images = cap.caption_inputs(image, per_tile, tile_size, tile_stride)
        q = cap.question_text(question, append_realistic)
        settings = cap.GenerationSettings(temperature, top_p, max_new_tokens)
        vlm = get_model(path, dtype, quantization)
        prompt = cap.build_prompt(vlm.processor, q)
        progress = comfy.utils.ProgressBar(len(images))
        cap.load_to_device(vlm, max_new_tokens)
        try:
            captions = cap.caption_images(vlm, images, prompt, settings, seed,
                                          callback=lambda done, total: progress.update_absolute(done, total))
        finally:
            if not keep_loaded:
                release(vlm)
        for i, c in enumerate(captions):
            logger.info("caption %d/%d: %s", i + 1, len(captions), c)
        # The UI part lets the frontend show the text on the node (js/); the result feeds the Conditioner.
        return {"ui": {"text": captions}, "result": (captions,)}


for _name in MODEL_FOLDERS:  # models/LLM and models/llava (folders of files, no extension filter)
    register_model_folder(_name, set())

NODE_CLASS_MAPPINGS = {"FSUPIR_LLaVACaption": FSUPIRLLaVACaption}
NODE_DISPLAY_NAME_MAPPINGS = {"FSUPIR_LLaVACaption": "SUPIR LLaVA Caption"}
