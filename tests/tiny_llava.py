"""A tiny random LLaVA checkpoint folder in the llava-hf layout, built offline (no test functions here).

`write_tiny_llava(folder)` saves what `llava-hf/llava-1.5-*-hf` holds (config.json, safetensors weights,
tokenizer, image processor, processor config) for a `LlavaForConditionalGeneration` of ~34k parameters: a CLIP
vision tower on 32x32 images (16 patches), a 2-layer Llama, and a word-level tokenizer built with the `tokenizers`
package over a small word list (`<image>` a special token), so nothing is downloaded. Weights are seeded per
parameter name, large enough that different images give different words.

`chat_template=True` also gives the tokenizer llava-hf's llava-1.5 chat template, so both prompt paths of the
caption node (the model's own template / the built-in vicuna_v1 template) can be tested. Checked with
transformers 5.23 (ComfyUI 0.3.75's) and, by hand, 4.57, 4.45 and 4.40.
"""
from __future__ import annotations

import inspect
import zlib
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
STD = 0.2


def _tokenizer(chat_template: bool):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlavaProcessor, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(SPECIAL_TOKENS + WORDS))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    cls = PreTrainedTokenizerFast
    if "LlamaTokenizerFast" in str(getattr(LlavaProcessor, "tokenizer_class", "")):  # transformers < 4.45 insists
        from transformers import LlamaTokenizerFast as cls
    fast = cls(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    if chat_template:
        fast.chat_template = LLAVA_15_CHAT_TEMPLATE
    return fast


def _fill(model: torch.nn.Module, seed: int, std: float = STD) -> None:
    """Deterministic weights per (seed, name), the same under every transformers version (their random inits
    differ): norms weight 1 / bias 0, everything else N(0, std), large enough that the image changes the words."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            else:
                g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
                p.copy_(torch.randn(p.shape, generator=g) * std)


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
                         image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,  # transformers 4.4x checks it
                         pad_token_id=tokenizer.pad_token_id)
    model = LlavaForConditionalGeneration(config).eval()
    _fill(model, seed)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                                         crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    # patch_size etc. make the processor expand <image> (transformers 4.45+; earlier the model did it).
    # Without num_additional_image_tokens=1 it emits one image token too few (testing-notes.md).
    expand = dict(patch_size=PATCH_SIZE, vision_feature_select_strategy="default", num_additional_image_tokens=1)
    accepted = inspect.signature(LlavaProcessor.__init__).parameters
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               **{k: v for k, v in expand.items() if k in accepted})
    return model, processor


def write_tiny_llava(folder: Path, chat_template: bool = False, seed: int = 0) -> Path:
    """Save a tiny LLaVA into `folder` (e.g. models/LLM/tiny-llava) as llava-hf folders are laid out."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model, processor = tiny_llava_parts(chat_template=chat_template, seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
