"""SUPIR's prompts: the official defaults and how the positive prompt is put together
(SUPIR/models/SUPIR_model.py `batchify_sample`: positive = caption + a_prompt with no separator;
negative = n_prompt; test.py and gradio_demo.py for the default texts)."""
from __future__ import annotations

import re

DEFAULT_POSITIVE = (
    "Cinematic, High Contrast, highly detailed, taken using a Canon EOS R camera, hyper detailed photo - realistic "
    "maximum detail, 32k, Color Grading, ultra HD, extreme meticulous detailing, skin pore detailing, hyper "
    "sharpness, perfect without deformations."
)
DEFAULT_NEGATIVE = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, "
    "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, "
    "jpeg artifacts, deformed, lowres, over-smooth"
)
# SDXL size conditioning exactly as the official code feeds it (SUPIR_model.py): always 1024 x 1024, no crop.
SIZE_CONDITIONING = {"width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0,
                     "target_width": 1024, "target_height": 1024}


def escape_weights(text: str) -> str:
    """Escape ComfyUI's prompt-weight syntax so machine captions are read literally, as the official
    tokenizer reads them: "(a cat)" stays text, not a weight of 1.1."""
    return re.sub(r"([()\\])", r"\\\1", text)


def positive_prompt(caption: str, quality_prompt: str, restoration_instruction: str = "") -> str:
    """caption + quality prompt joined without a separator, as `''.join([caption, a_prompt])` does; an
    optional restoration instruction (SPIRE) goes first, followed by a space."""
    text = "".join([escape_weights(caption.strip()), quality_prompt])
    instruction = restoration_instruction.strip()
    return f"{instruction} {text}" if instruction else text
