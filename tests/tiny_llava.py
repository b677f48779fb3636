"""A tiny random LLaVA checkpoint folder in the llava-hf layout, built offline (no test functions here).

`write_tiny_llava(folder)` saves what `llava-hf/llava-1.5-*-hf` holds (config.json, safetensors weights,
tokenizer, image processor, processor config) for a `LlavaForConditionalGeneration` of a few thousand parameters:
a CLIP vision tower on 32x32 images (16 patches), a 2-layer Llama, and a word-level tokenizer built with the
`tokenizers` package over a small word list (`<image>` a special token), so nothing is downloaded.

`chat_template=True` also gives the tokenizer llava-hf's llava-1.5 chat template, so both prompt paths of the
caption node (the model's own template / the built-in vicuna_v1 template) can be tested. Needs transformers with
LLaVA (4.45+; the notes in shared/docs/testing-notes.md were checked on 5.x).
"""
from __future__ import annotations

from pathlib import Path

import torch

# transformers' LlavaProcessor test fixture: llava-hf/llava-1.5-7b-hf's chat template.
LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
WORDS = ("a chat between curious user and an artificial intelligence assistant . the gives helpful , detailed "
         "polite answers to user's questions USER : ASSISTANT describe this image its style in very manner is "
         "realistic photography not art painting cat dog photo of red blue green sky tree house street man woman "
         "sharp blurry light dark old new small large").split()
IMAGE_SIZE = 32
PATCH_SIZE = 8


def _tokenizer(chat_template: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(SPECIAL_TOKENS + WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if chat_template:
        fast.chat_template = LLAVA_15_CHAT_TEMPLATE
    return fast


def tiny_llava_parts(chat_template: bool = False, seed: int = 0):
    """(model, processor): a random `LlavaForConditionalGeneration` and its `LlavaProcessor`."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = _tokenizer(chat_template)
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=16)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                         vision_feature_select_strategy="default", vision_feature_layer=-2,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    return model, processor


def write_tiny_llava(folder: Path, chat_template: bool = False, seed: int = 0) -> Path:
    """Save a tiny LLaVA into `folder` (e.g. models/LLM/tiny-llava) as llava-hf folders are laid out."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, processor = tiny_llava_parts(chat_template=chat_template, seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
