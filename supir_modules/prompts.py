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


def truncate_like_official(chunks: list[list[tuple]], start: int | None, end: int, pad: int,
                           length: int = 77) -> list[list[tuple]]:
    """ComfyUI's 77-token chunks of one text encoder -> the single sequence the official encoders see.

    The official FrozenCLIPEmbedder/OpenCLIP tokenizers truncate the whole text at 77 tokens (start + 75 + end,
    then padding). ComfyUI splits long text into chunks at word boundaries, so its first chunk may stop a few
    tokens early; joining the chunks' bodies and cutting at 75 gives exactly the official tokens. Entries keep
    ComfyUI's form, (id, weight) or (id, weight, word_id).
    """
    if not chunks or not chunks[0]:
        return chunks
    body: list[tuple] = []
    for chunk in chunks:
        toks = list(chunk)
        if start is not None and toks and toks[0][0] == start:
            toks = toks[1:]
        for i, t in enumerate(toks):
            if t[0] == end:  # the end token; only padding follows
                toks = toks[:i]
                break
        body.extend(toks)
    first = chunks[0][0]

    def entry(token: int) -> tuple:
        return (token, 1.0) + ((0,) if len(first) > 2 else ())

    head = [entry(start)] if start is not None else []
    body = body[: length - len(head) - 1]
    seq = head + body + [entry(end)]
    return [seq + [entry(pad)] * (length - len(seq))]
