"""Captioning as SUPIR does it: LLaVA describes the stage-1 image, the caption becomes the SDXL prompt.

Follows the official llava/llava_agent.py (`LLavaAgent.gen_image_caption`): the vicuna_v1 conversation, the
question "Describe this image and its style in a very detailed manner.", temperature 0.2, top_p 0.7, one beam,
512 new tokens, the stop string `</s>` cut and newlines turned into spaces. The image is the stage-1 output at a
short side of 512 (gradio_demo.py `fix_resize(LQ, 512)`); per-tile captions follow gradio_demo_tiled.py
`llave_process` (the sampler's windows cut from the stage-1 image, each captioned as it is).

The model is any transformers image-text-to-text checkpoint folder (llava-hf layout), loaded with the Auto
classes and held by a ComfyUI `ModelPatcher`, so `load_models_gpu` frees room for it and ComfyUI can unload it.
"""
from __future__ import annotations

import importlib.util
import inspect
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

import comfy.model_management as mm
import comfy.model_patcher

from .tiled_sampling import sliding_windows

logger = logging.getLogger(__name__)

# llava/conversation.py `conv_vicuna_v1` (SeparatorStyle.TWO, sep " ", sep2 "</s>"), as llava_agent.py uses it.
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
VICUNA_ROLES = ("USER", "ASSISTANT")
STOP_STRING = "</s>"  # conv.sep2, cut from the end of every answer
IMAGE_TOKEN = "<image>"  # DEFAULT_IMAGE_TOKEN (mm_use_im_start_end is False for LLaVA-1.5)
OFFICIAL_QUESTION = "Describe this image and its style in a very detailed manner."  # LLavaAgent.qs
REALISTIC_SENTENCE = "The image is a realistic photography, not an art painting."  # the gradio Question default
CAPTION_SHORT_SIDE = 512  # gradio_demo.py: fix_resize(LQ, 512) before stage 1 and LLaVA
RESIZE_UNIT = 64  # fix_resize's unit_resolution
TOP_K = 50  # transformers' default top_k, which the official generate sampled with

DTYPES: dict[str, torch.dtype | None] = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16,
                                         "fp32": torch.float32}
QUANTIZATIONS = ("none", "8-bit", "4-bit")
MODEL_EXAMPLE = "llava-hf/llava-1.5-13b-hf (the official SUPIR captioner) or llava-hf/llava-1.5-7b-hf"


class CaptionModelError(ValueError):
    """A folder that cannot be used as a captioning model; the message names the folder and the fix."""


@dataclass(frozen=True)
class GenerationSettings:
    temperature: float = 0.2
    top_p: float = 0.7
    max_new_tokens: int = 512

    def generate_kwargs(self) -> dict:
        """llava_agent.py: do_sample only when temperature > 0; num_beams 1; use_cache."""
        kw = {"max_new_tokens": int(self.max_new_tokens), "num_beams": 1, "use_cache": True}
        if self.temperature > 0:
            kw.update(do_sample=True, temperature=float(self.temperature), top_p=float(self.top_p), top_k=TOP_K)
        else:
            kw.update(do_sample=False)
        return kw


# ----------------------------------------------------------------------------------------------------- prompts
def question_text(question: str, append_realistic: bool = False) -> str:
    """The question; with `append_realistic`, the gradio default's second sentence after a space."""
    q = question.strip()
    if not q:
        raise ValueError(f"the question is empty: ask what the caption should say, e.g. the official "
                         f"{OFFICIAL_QUESTION!r}")
    return f"{q} {REALISTIC_SENTENCE}" if append_realistic else q


def vicuna_v1_prompt(question: str) -> str:
    """`conv_vicuna_v1.get_prompt()` after appending (USER, "<image>\\n" + q) and (ASSISTANT, None):
    system + sep, then "ROLE: message" + sep for the user, then "ROLE:" for the empty assistant turn."""
    user, assistant = VICUNA_ROLES
    return f"{VICUNA_SYSTEM} {user}: {IMAGE_TOKEN}\n{question} {assistant}:"


def _chat_template(processor) -> str | None:
    """The model's own chat template: the processor's, else its tokenizer's (a dict of named ones: 'default')."""
    template = getattr(processor, "chat_template", None)
    if not template:
        template = getattr(getattr(processor, "tokenizer", None), "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def _render_template(processor, template: str, messages: list[dict]) -> str:
    kw = dict(chat_template=template, add_generation_prompt=True, tokenize=False)
    if hasattr(processor, "apply_chat_template"):
        return processor.apply_chat_template(messages, **kw)
    return processor.tokenizer.apply_chat_template(messages, **kw)  # transformers < 4.42: no processor templates


def build_prompt(processor, question: str) -> str:
    """The text the model receives: the model's chat template where it has one, with the vicuna_v1 system
    message (llava-hf's LLaVA-1.5 template then gives exactly the official prompt), else vicuna_v1 itself."""
    template = _chat_template(processor)
    if template is None:
        return vicuna_v1_prompt(question)
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}
    system = {"role": "system", "content": [{"type": "text", "text": VICUNA_SYSTEM}]}
    try:
        prompt = _render_template(processor, template, [system, user])
    except Exception as first:  # templates that refuse a system turn (e.g. "roles must alternate")
        logger.debug("chat template refused the vicuna system message (%s); asking without it", first)
        try:
            prompt = _render_template(processor, template, [user])
        except Exception as e:  # e.g. a template with {% generation %} under transformers < 4.43
            logger.warning("the model's chat template cannot be rendered here (%s); using the official vicuna_v1 "
                           "prompt instead", e)
            return vicuna_v1_prompt(question)
    image_token = getattr(processor, "image_token", IMAGE_TOKEN)
    if isinstance(image_token, str) and image_token not in prompt:
        logger.warning("the model's chat template put no %r into the prompt %r", image_token, prompt)
    return prompt


def clean_caption(text: str) -> str:
    """llava_agent.py: strip, cut a trailing stop string, strip, newlines (\\n, \\r) -> spaces."""
    text = text.strip()
    if text.endswith(STOP_STRING):
        text = text[:-len(STOP_STRING)]
    return text.strip().replace("\n", " ").replace("\r", " ")


# ------------------------------------------------------------------------------------------------------ images
def image_to_pil(image: torch.Tensor) -> Image.Image:
    """One ComfyUI image [H, W, C] in 0..1 -> RGB PIL; grey is repeated, alpha composited over white (HWC3)."""
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected one image of shape [H, W, 1|3|4], got {tuple(image.shape)}")
    x = image.detach().to("cpu", torch.float32).clamp(0, 1).numpy()
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 4:
        x = x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:])
    return Image.fromarray((x * 255.0).round().astype(np.uint8), "RGB")


def fix_resize(image: Image.Image, size: int = CAPTION_SHORT_SIDE, unit: int = RESIZE_UNIT) -> Image.Image:
    """SUPIR/util.py `fix_resize`: short side to `size`, both sides rounded to multiples of `unit`;
    Lanczos when enlarging, area (box) when shrinking."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = int(np.round(w * scale / unit)) * unit, int(np.round(h * scale / unit)) * unit
    resample = Image.Resampling.LANCZOS if scale > 1 else Image.Resampling.BOX
    return image.resize((max(nw, unit), max(nh, unit)), resample)


def tile_windows(height: int, width: int, tile_size: int, tile_stride: int) -> list[tuple[int, int, int, int]]:
    """The sampler's tiles in pixels: `sliding_windows` on the latent grid (1/8 of the image), times 8."""
    if height < 8 or width < 8:
        raise ValueError(f"the image is {width}x{height}: per-tile captions need at least 8x8 pixels")
    windows = sliding_windows(height // 8, width // 8, tile_size // 8, tile_stride // 8)
    return [(h0 * 8, h1 * 8, w0 * 8, w1 * 8) for h0, h1, w0, w1 in windows]


def caption_inputs(images: torch.Tensor, per_tile: bool = False, tile_size: int = 1024,
                   tile_stride: int = 512) -> list[Image.Image]:
    """The PIL images LLaVA sees: each image at a short side of 512, or (per_tile) the tiles of one image."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"no image to caption (batch of shape {tuple(images.shape)}): connect the stage-1 IMAGE "
                         "of SUPIR Degradation-Robust Encode, or any non-empty IMAGE")
    if not per_tile:
        return [fix_resize(image_to_pil(img)) for img in images]
    if images.shape[0] != 1:
        raise ValueError(f"per_tile captions one image's tiles, got a batch of {images.shape[0]} images: caption "
                         "the batch without per_tile, or split it (e.g. Image From Batch) and caption each image")
    img = images[0]
    return [image_to_pil(img[h0:h1, w0:w1]) for h0, h1, w0, w1 in tile_windows(img.shape[0], img.shape[1],
                                                                                 tile_size, tile_stride)]


# ------------------------------------------------------------------------------------------------------ models
class VisionLanguageHolder(nn.Module):
    """What the ModelPatcher holds: the transformers model under `vlm` (ComfyUI sets `.device` on what it holds,
    which transformers models do not allow) and the dtype ComfyUI asks for."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.vlm = model
        self.weight_dtype = dtype

    def get_dtype(self) -> torch.dtype:  # ModelPatcher.model_dtype() asks for this
        return self.weight_dtype


@dataclass
class VisionLanguageModel:
    patcher: "comfy.model_patcher.ModelPatcher"
    processor: object
    path: str
    dtype: torch.dtype
    quantization: str = "none"

    @property
    def model(self) -> nn.Module:
        return self.patcher.model.vlm

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)


def _auto_model_class():
    import transformers

    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):  # the latter before transformers 4.46
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise ImportError(f"transformers {transformers.__version__} has no image-text-to-text Auto class; update "
                      "transformers (pip install -U transformers)")


def _vision_language_types() -> set[str]:
    from transformers.models.auto import modeling_auto

    types: set[str] = set()
    for name in ("MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES", "MODEL_FOR_VISION_2_SEQ_MAPPING_NAMES"):
        types.update(getattr(modeling_auto, name, {}).keys())
    return types


def _not_a_vlm(path: str, what: str) -> CaptionModelError:
    return CaptionModelError(f"{path} is not a vision-language model folder ({what}): put a LLaVA checkpoint folder "
                             f"in the llava-hf layout, e.g. {MODEL_EXAMPLE}, with its config.json, *.safetensors, "
                             "tokenizer and processor files, into models/LLM/<name>")


def read_vision_language_config(path: str):
    """The folder's transformers config; CaptionModelError unless it describes an image-text-to-text model."""
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise _not_a_vlm(path, "no config.json")
    try:
        config = AutoConfig.from_pretrained(path)
    except (ValueError, KeyError, OSError) as e:
        raise _not_a_vlm(path, f"transformers cannot read its config.json: {e}") from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in _vision_language_types() and getattr(config, "vision_config", None) is None:
        raise _not_a_vlm(path, f"its config.json describes a {model_type!r} model, which does not read images")
    return config


def resolve_dtype(choice: str, load_device: torch.device) -> torch.dtype:
    """fp16/bf16/fp32 as chosen; auto: fp16 where the device runs it well (the official agent runs fp16), else
    fp32."""
    if choice not in DTYPES:
        raise ValueError(f"unknown dtype {choice!r}; choose one of {list(DTYPES)}")
    if DTYPES[choice] is not None:
        return DTYPES[choice]
    return torch.float16 if mm.should_use_fp16(load_device) else torch.float32


def _quantization_config(quantization: str, dtype: torch.dtype, load_device: torch.device):
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; choose one of {list(QUANTIZATIONS)}")
    if quantization == "none":
        return None
    missing = [p for p in ("bitsandbytes", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        raise ValueError(f"{quantization} loading needs {' and '.join(missing)}, not installed here: pip install "
                         f"{' '.join(missing)} (into ComfyUI's Python); bitsandbytes needs an NVIDIA GPU (CUDA). "
                         "Or set quantization to none")
    if load_device.type != "cuda":
        raise ValueError(f"{quantization} loading (bitsandbytes) needs an NVIDIA GPU (CUDA), ComfyUI runs on "
                         f"{load_device}: set quantization to none")
    from transformers import BitsAndBytesConfig

    if quantization == "8-bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _dtype_keyword() -> str:
    """transformers 4.56+ names the load dtype `dtype`; older versions `torch_dtype`."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_vision_language_model(path: str, dtype_choice: str = "auto", quantization: str = "none"
                               ) -> VisionLanguageModel:
    """Processor + model from a local folder (never the network), wrapped in a ModelPatcher on ComfyUI's devices.
    Unquantized weights wait on the offload device until `load_to_device`; bitsandbytes weights are made on the
    GPU and stay there (they cannot move), so their patcher's offload device is the GPU too."""
    from transformers import AutoProcessor

    read_vision_language_config(path)
    load_device = mm.get_torch_device()
    dtype = resolve_dtype(dtype_choice, load_device)
    quant = _quantization_config(quantization, dtype, load_device)
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise _not_a_vlm(path, f"its processor/tokenizer files cannot be read: {e}") from None
    if getattr(processor, "image_processor", None) is None:
        raise _not_a_vlm(path, "it has a tokenizer but no image processor (preprocessor_config.json)")
    kwargs = {_dtype_keyword(): dtype, "local_files_only": True}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": load_device})
    model = _auto_model_class().from_pretrained(path, **kwargs).eval().requires_grad_(False)
    offload_device = load_device if quant is not None else mm.text_encoder_offload_device()
    if quant is None:
        model.to(offload_device)
    holder = VisionLanguageHolder(model, dtype)
    patcher = comfy.model_patcher.ModelPatcher(holder, load_device=load_device, offload_device=offload_device)
    logger.info("caption model %s: %s, %.2fB parameters, %s%s", path, type(model).__name__,
                sum(p.numel() for p in model.parameters()) / 1e9, dtype,
                "" if quant is None else f", {quantization} (bitsandbytes)")
    return VisionLanguageModel(patcher=patcher, processor=processor, path=path, dtype=dtype, quantization=quantization)


# ------------------------------------------------------------------------------------------------------ memory
def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _inference_memory(vlm: VisionLanguageModel, max_new_tokens: int) -> int:
    """A rough KV-cache + activation budget for one answer (image tokens + prompt + new tokens)."""
    text = getattr(vlm.model.config, "text_config", vlm.model.config)
    layers = getattr(text, "num_hidden_layers", 32)
    hidden = getattr(text, "hidden_size", 4096)
    tokens = 2048 + int(max_new_tokens)
    return int(2 * layers * hidden * tokens * torch.finfo(vlm.dtype).bits // 8 * 1.5)


def load_to_device(vlm: VisionLanguageModel, max_new_tokens: int = 512) -> None:
    """`load_models_gpu`: ComfyUI unloads other models to make room, then moves every weight over (transformers
    layers cannot run partially loaded, so the load is a full one where ComfyUI offers the choice)."""
    kw = {"force_full_load": True} if _accepts(mm.load_models_gpu, "force_full_load") else {}
    mm.load_models_gpu([vlm.patcher], memory_required=_inference_memory(vlm, max_new_tokens), **kw)
    device = vlm.patcher.load_device
    stray = [n for n, p in vlm.model.named_parameters() if p.device.type != torch.device(device).type]
    if stray and vlm.quantization == "none":  # ComfyUI 2024-03's low-VRAM path moves only modules with .weight
        logger.info("moving %d weights ComfyUI left behind (e.g. %s) to %s", len(stray), stray[0], device)
        vlm.model.to(device)


def is_loaded(vlm: VisionLanguageModel) -> bool:
    """Whether ComfyUI lists the model among its loaded models."""
    return any(lm.model is vlm.patcher for lm in mm.current_loaded_models)


def unload(vlm: VisionLanguageModel) -> None:
    """Take the model out of ComfyUI's loaded models and back to its offload device (both ComfyUI versions:
    `LoadedModel.model_unload()` exists in 2024-03 and 0.3.75; neither has a public call for one model)."""
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if loaded.model is vlm.patcher:
            mm.current_loaded_models.pop(i)
            loaded.model_unload()
    mm.soft_empty_cache()


# ------------------------------------------------------------------------------------------------- generation
def interrupt_stopper():
    """A StoppingCriteria that ends generation at the next token once ComfyUI's Cancel was pressed."""
    from transformers import StoppingCriteria

    class StopOnInterrupt(StoppingCriteria):
        def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
            stop = bool(mm.processing_interrupted())
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return StopOnInterrupt()


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _model_inputs(vlm: VisionLanguageModel, image: Image.Image, prompt: str, device: torch.device) -> dict:
    bos = getattr(vlm.tokenizer, "bos_token", None)
    extra = {"add_special_tokens": False} if bos and prompt.startswith(bos) else {}  # the template wrote BOS
    inputs = dict(vlm.processor(images=image, text=prompt, return_tensors="pt", **extra))
    if "token_type_ids" in inputs and not _accepts(vlm.model.forward, "token_type_ids"):
        del inputs["token_type_ids"]  # some tokenizers add them; LLaVA's generate refuses unused inputs
    return {k: (v.to(device, vlm.dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
            for k, v in inputs.items()}


def generate_caption(vlm: VisionLanguageModel, image: Image.Image, prompt: str, settings: GenerationSettings,
                     seed: int) -> str:
    """One answer, reproducible per seed: the RNG is forked and seeded around `generate` (ComfyUI's own RNG
    state is left as it was). Cancel stops generation at the next token and raises ComfyUI's interrupt."""
    from transformers import StoppingCriteriaList

    device = torch.device(vlm.patcher.load_device)
    inputs = _model_inputs(vlm, image, prompt, device)
    kw = settings.generate_kwargs()
    tok = vlm.tokenizer
    if getattr(tok, "pad_token_id", None) is None and getattr(tok, "eos_token_id", None) is not None:
        kw["pad_token_id"] = tok.eos_token_id
    with torch.inference_mode(), torch.random.fork_rng(devices=_rng_devices(device)):
        torch.manual_seed(int(seed))
        out = vlm.model.generate(**inputs, stopping_criteria=StoppingCriteriaList([interrupt_stopper()]), **kw)
    mm.throw_exception_if_processing_interrupted()
    new_tokens = out[:, inputs["input_ids"].shape[1]:]
    return clean_caption(tok.batch_decode(new_tokens, skip_special_tokens=True)[0])


def caption_images(vlm: VisionLanguageModel, images: list[Image.Image], prompt: str, settings: GenerationSettings,
                   seed: int, callback: Callable[[int, int], None] | None = None) -> list[str]:
    """One caption per image, in order; every image is seeded with `seed`, so a caption does not depend on the
    other images of the batch. `callback(done, total)` after each; Cancel is honoured between images."""
    if not math.isfinite(settings.temperature) or settings.temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {settings.temperature}")
    captions = []
    for i, image in enumerate(images):
        mm.throw_exception_if_processing_interrupted()
        captions.append(generate_caption(vlm, image, prompt, settings, seed))
        if callback is not None:
            callback(i + 1, len(images))
    return captions
