"""SDXL's two text encoders as a ComfyUI CLIP whose widths come from the checkpoint: follows comfy/sdxl_clip.py
(`SDXLClipModel`, `SDXLClipG`), which reads fixed full-size JSON configs instead.

Only models that ComfyUI's own table does not recognise come here (the tiny test models: SDXL's key layout, small
widths). Everything else is ComfyUI's: the tokenizer (`SDXLTokenizer`), the text model (`comfy.clip_model`), the
layer choice (CLIP-L hidden layer -2 without the final norm; bigG penultimate, pooled output projected) and the
SDXL concat of both. Shapes cannot tell the head count nor the activation, so they follow the real encoders:
64-wide heads for both, quick_gelu for CLIP-L (OpenAI) and gelu for bigG (open_clip).
"""
from __future__ import annotations

import inspect
import json
import os
import re
import tempfile
from typing import Mapping

import torch

import comfy.supported_models_base
from comfy import sd1_clip, sdxl_clip

# Prefixes after `comfy.supported_models.SDXL.process_clip_state_dict` (HF layout for both encoders).
CLIP_L_PREFIX = "clip_l.transformer."
CLIP_G_PREFIX = "clip_g.transformer."
CLIP_HEAD_CHANNELS = 64  # CLIP-L: 768 = 12 x 64, bigG: 1280 = 20 x 64
SPECIAL_TOKENS_G = {"start": 49406, "end": 49407, "pad": 0}  # as SDXLClipG: bigG pads with 0, CLIP-L with end

# 2024-03's SDClipModel has no model_options; 0.3.75 names each encoder through it ("clip_l", "clip_g").
_TAKES_MODEL_OPTIONS = "model_options" in inspect.signature(sd1_clip.SDClipModel.__init__).parameters


def text_config_from_state_dict(sd: Mapping[str, torch.Tensor], prefix: str, hidden_act: str) -> dict:
    """An HF CLIPTextConfig-style dict (what comfy.clip_model reads) from one encoder's ComfyUI-layout keys."""
    p = f"{prefix}text_model."
    try:
        vocab_size, width = sd[f"{p}embeddings.token_embedding.weight"].shape
        positions = sd[f"{p}embeddings.position_embedding.weight"].shape[0]
        intermediate = sd[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as e:
        raise ValueError(f"text encoder weights lack {e.args[0]!r}") from None
    rx = re.compile(rf"{re.escape(p)}encoder\.layers\.(\d+)\.")
    layers = len({m.group(1) for k in sd for m in [rx.match(k)] if m})
    heads = width // CLIP_HEAD_CHANNELS if width % CLIP_HEAD_CHANNELS == 0 else 1
    return {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "hidden_act": hidden_act,
        "hidden_size": width, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "max_position_embeddings": positions, "vocab_size": vocab_size,
        "projection_dim": width,  # ComfyUI's text_projection is square (width x width), as bigG's 1280 x 1280
        "bos_token_id": 0, "eos_token_id": 49407, "pad_token_id": 1, "layer_norm_eps": 1e-05,
        "attention_dropout": 0.0, "dropout": 0.0, "initializer_factor": 1.0, "initializer_range": 0.02,
        "torch_dtype": "float32",
    }


def _text_model(config: dict, name: str, model_options: dict, **kwargs) -> sd1_clip.SDClipModel:
    """`SDClipModel` on `config`; 2024-03 only opens a JSON path (0.3.75 also takes a dict), so write one."""
    if _TAKES_MODEL_OPTIONS:
        kwargs["model_options"] = {**model_options, "model_name": name}
    with tempfile.TemporaryDirectory(prefix="fsupir_clip_") as tmp:
        path = os.path.join(tmp, f"{name}_config.json")
        with open(path, "w") as f:
            json.dump(config, f)
        return sd1_clip.SDClipModel(textmodel_json_config=path, **kwargs)


class ShapedSDXLClipModel(sdxl_clip.SDXLClipModel):
    """`SDXLClipModel` with both text models sized by `clip_l_config` / `clip_g_config` (ClipTarget params).

    Inherits ComfyUI's encode_token_weights (concat [CLIP-L, bigG], pooled from bigG) and clip options; only the
    construction differs, so the parent's __init__ (which builds the full-size models) is skipped.
    """

    def __init__(self, clip_l_config: dict, clip_g_config: dict, device="cpu", dtype=None, model_options=None):
        torch.nn.Module.__init__(self)
        opts = model_options or {}
        self.clip_l = _text_model(clip_l_config, "clip_l", opts, layer="hidden", layer_idx=-2, device=device,
                                  dtype=dtype, layer_norm_hidden_state=False)
        self.clip_g = _text_model(clip_g_config, "clip_g", opts, layer="hidden", layer_idx=-2, device=device,
                                  dtype=dtype, special_tokens=SPECIAL_TOKENS_G, layer_norm_hidden_state=False,
                                  return_projected_pooled=True)
        self.dtypes = {dtype}  # 0.3.75's CLIP checks each dtype against the load device
        self._g_width = clip_g_config["hidden_size"]

    def load_sd(self, sd):
        """A single encoder's weights (CLIP.load_sd without full_model), told apart by width, not by layer 30."""
        width = next((v.shape[-1] for k, v in sd.items() if k.endswith("token_embedding.weight")), None)
        return (self.clip_g if width == self._g_width else self.clip_l).load_sd(sd)


def shaped_clip_target(clip_sd: Mapping[str, torch.Tensor]) -> comfy.supported_models_base.ClipTarget:
    """ClipTarget for `comfy.sd.CLIP` from a ComfyUI-layout SDXL text-encoder state dict (clip_l.*, clip_g.*)."""
    target = comfy.supported_models_base.ClipTarget(sdxl_clip.SDXLTokenizer, ShapedSDXLClipModel)
    target.params = {
        "clip_l_config": text_config_from_state_dict(clip_sd, CLIP_L_PREFIX, "quick_gelu"),
        "clip_g_config": text_config_from_state_dict(clip_sd, CLIP_G_PREFIX, "gelu"),
    }
    return target
