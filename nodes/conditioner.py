"""Conditioner: caption(s) + quality prompts -> SDXL positive/negative CONDITIONING as the official code
builds them (see supir_modules/prompts.py)."""
from __future__ import annotations

from ..supir_modules import prompts
from ..supir_modules.prompts import DEFAULT_NEGATIVE, DEFAULT_POSITIVE, SIZE_CONDITIONING
from .common import CATEGORY

LENGTH_OFFICIAL = "official (first 77 tokens)"
LENGTH_FULL = "full (77-token chunks)"
KIND_IMAGE = "one per image"
KIND_TILE = "one per tile"


def _first(v, default=None):
    """INPUT_IS_LIST gives every input as a list; scalar inputs take their first value."""
    if isinstance(v, list):
        return v[0] if v else default
    return v if v is not None else default


def _official_tokens(clip, key: str, chunks):
    """One encoder's chunks truncated the official way; the tokenizer's own special tokens are used."""
    tok = getattr(getattr(clip, "tokenizer", None), f"clip_{key}", None)
    if tok is None or not isinstance(chunks, list):
        return chunks[:1] if isinstance(chunks, list) else chunks
    pad = getattr(tok, "pad_token", None)
    if pad is None:  # ComfyUI 2024-03 derives it on the fly
        pad = tok.end_token if tok.pad_with_end else 0
    return prompts.truncate_like_official(chunks, tok.start_token, tok.end_token, pad, tok.max_length)


def encode_prompt(clip, text: str, length: str) -> tuple:
    """(crossattn, pooled) of `text`. The official text encoders truncate at 77 tokens; ComfyUI would encode
    every 77-token chunk, so "official" keeps only the first chunk."""
    tokens = clip.tokenize(text)
    if length == LENGTH_OFFICIAL:
        tokens = {k: _official_tokens(clip, k, v) for k, v in tokens.items()}
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    return cond, pooled


class FSUPIRConditioner:
    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": "The SDXL CLIP from the SUPIR Loader (or ComfyUI's loader)."}),
                "caption": ("STRING", {"multiline": True, "default": "",
                                       "tooltip": "What the image shows (e.g. from LLaVA Caption). A list gives one "
                                                  "caption per image or per tile."}),
                "positive_prompt": ("STRING", {"multiline": True, "default": DEFAULT_POSITIVE,
                                               "tooltip": "Quality prompt appended to the caption (official a_prompt)."}),
                "negative_prompt": ("STRING", {"multiline": True, "default": DEFAULT_NEGATIVE,
                                               "tooltip": "Negative quality prompt (official n_prompt)."}),
                "captions_are": ([KIND_IMAGE, KIND_TILE], {"default": KIND_IMAGE,
                                                           "tooltip": "How a list of captions is used by the sampler."}),
                "prompt_length": ([LENGTH_OFFICIAL, LENGTH_FULL], {"default": LENGTH_OFFICIAL,
                                                                   "tooltip": "The official encoders read 77 tokens."}),
            },
            "optional": {
                "restoration_instruction": ("STRING", {"forceInput": True,
                                                       "tooltip": "SPIRE-style instruction, e.g. from Degrade Image."}),
            },
        }

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")
    FUNCTION = "condition"
    CATEGORY = CATEGORY
    DESCRIPTION = "SDXL conditioning as the official SUPIR: caption + quality prompt, negative prompt, 1024x1024."

    def condition(self, clip, caption, positive_prompt, negative_prompt, captions_are, prompt_length,
                  restoration_instruction=None):
        clip = _first(clip)
        if clip is None:
            raise ValueError("no CLIP connected: connect the clip output of the SUPIR Loader")
        captions = (list(caption) if isinstance(caption, list) else [caption]) or [""]
        quality, negative = _first(positive_prompt, ""), _first(negative_prompt, "")
        kind = "tile" if _first(captions_are) == KIND_TILE else "batch"
        length = _first(prompt_length, LENGTH_OFFICIAL)
        instruction = _first(restoration_instruction, "") or ""
        positive = []
        for cap in captions:
            cond, pooled = encode_prompt(clip, prompts.positive_prompt(cap or "", quality, instruction), length)
            positive.append([cond, {"pooled_output": pooled, **SIZE_CONDITIONING, "fsupir_caption_kind": kind}])
        cond, pooled = encode_prompt(clip, negative, length)
        return (positive, [[cond, {"pooled_output": pooled, **SIZE_CONDITIONING}]])


NODE_CLASS_MAPPINGS = {"FSUPIR_Conditioner": FSUPIRConditioner}
NODE_DISPLAY_NAME_MAPPINGS = {"FSUPIR_Conditioner": "SUPIR Conditioner"}
