"""SUPIR LLaVA Caption inside a real ComfyUI (the copy SUPIR_COMFY_ROOT names), on tiny random LLaVA folders
written at test time (tests/tiny_llava.py): nothing is downloaded."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from ..tiny_llava import write_tiny_llava

NODE_ID = "FSUPIR_LLaVACaption"
# llava/conversation.py conv_vicuna_v1 + llava_agent.py's question, written out by hand (not from the pack).
OFFICIAL_PROMPT = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                   "helpful, detailed, and polite answers to the user's questions. USER: <image>\nDescribe this "
                   "image and its style in a very detailed manner. ASSISTANT:")
GRADIO_PROMPT = OFFICIAL_PROMPT.replace(
    "manner. ASSISTANT:", "manner. The image is a realistic photography, not an art painting. ASSISTANT:")
PLAIN = "tiny-llava"  # no chat template: the built-in vicuna_v1 prompt
CHAT = "tiny-llava-chat"  # llava-hf's LLaVA-1.5 chat template on its tokenizer
FAST = dict(question="Describe this image and its style in a very detailed manner.", append_realistic=False,
            dtype="fp32", quantization="none", temperature=1.0, top_p=1.0, max_new_tokens=6, seed=1,
            keep_loaded=False, per_tile=False, tile_size=1024, tile_stride=512)


@pytest.fixture(scope="module")
def llm_root(tmp_path_factory):
    """models/LLM with two tiny LLaVAs and a text-only model, models/llava with one more LLaVA."""
    from transformers import LlamaConfig

    root = tmp_path_factory.mktemp("caption_models")
    write_tiny_llava(root / "LLM" / PLAIN, chat_template=False)
    write_tiny_llava(root / "llava" / CHAT, chat_template=True)
    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(root / "LLM" / "not-a-vlm")
    (root / "LLM" / "notes").mkdir()  # a folder without config.json is not listed
    nested = root / "LLM" / "llava-hf" / "nested"  # <org>/<name>, as hub downloads are often kept
    nested.mkdir(parents=True)
    (nested / "config.json").write_bytes((root / "LLM" / PLAIN / "config.json").read_bytes())
    return root


@pytest.fixture(scope="module")
def caption_node_module(comfy_pack):
    module = importlib.import_module(f"{comfy_pack.module_name}.nodes.caption")
    yield module
    module.drop_cached()


@pytest.fixture(scope="module")
def cap(comfy_pack):
    return importlib.import_module(f"{comfy_pack.module_name}.supir_modules.caption")


def _use_folders(monkeypatch, llm: str, llava: str) -> None:
    import folder_paths

    monkeypatch.setitem(folder_paths.folder_names_and_paths, "LLM", ([llm], set()))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "llava", ([llava], set()))


@pytest.fixture
def llm_folders(monkeypatch, llm_root, caption_node_module):
    _use_folders(monkeypatch, str(llm_root / "LLM"), str(llm_root / "llava"))
    return llm_root


@pytest.fixture
def node(node_mappings, caption_node_module, llm_folders):
    cls = node_mappings.get(NODE_ID) or caption_node_module.NODE_CLASS_MAPPINGS[NODE_ID]
    return cls()


@pytest.fixture
def seen(monkeypatch, caption_node_module, llm_folders):
    """Records (text, image) of every call of the processors the node uses."""
    from transformers import LlavaProcessor

    calls: list[tuple[str, object]] = []
    real = LlavaProcessor.__call__

    def spy(self, images=None, text=None, *a, **k):
        calls.append((text, images))
        return real(self, images=images, text=text, *a, **k)

    monkeypatch.setattr(LlavaProcessor, "__call__", spy)
    return calls


def images(b=3, h=64, w=96, c=3, seed=0):
    """Smooth random images (4x4 colours, upsampled): they stay distinct at the tiny model's 32x32 input."""
    coarse = torch.rand(b, c, 4, 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear").permute(0, 2, 3, 1).contiguous()


def run(node, img, model=PLAIN, **kw):
    args = dict(FAST)
    args.update(kw)
    out = node.caption(img, model, **args)
    assert out["ui"]["text"] == out["result"][0]  # the frontend shows what the Conditioner gets
    out = out["result"]
    assert isinstance(out, tuple) and len(out) == 1
    return out[0]


def test_node_interface(node, node_mappings, caption_node_module, cap, comfy_pack):
    import folder_paths

    cls = type(node)
    required = cls.INPUT_TYPES()["required"]
    assert list(required) == ["image", "model", "question", "append_realistic", "dtype", "quantization",
                              "temperature", "top_p", "max_new_tokens", "seed", "keep_loaded", "per_tile",
                              "tile_size", "tile_stride"]
    assert required["image"][0] == "IMAGE"
    # folders with a config.json, one or two levels down, from models/LLM and models/llava
    assert required["model"][0] == ["llava-hf/nested", "not-a-vlm", PLAIN, CHAT]
    assert required["question"][1]["default"] == "Describe this image and its style in a very detailed manner."
    assert required["question"][1]["multiline"] is True
    assert required["append_realistic"][1]["default"] is False
    assert required["dtype"][0] == ["auto", "fp16", "bf16", "fp32"]
    assert required["quantization"][0] == ["none", "8-bit", "4-bit"]
    assert (required["temperature"][1]["default"], required["top_p"][1]["default"]) == (0.2, 0.7)
    assert required["max_new_tokens"][1]["default"] == 512
    assert required["keep_loaded"][1]["default"] is False and required["per_tile"][1]["default"] is False
    assert (required["tile_size"][1]["default"], required["tile_size"][1]["step"]) == (1024, 64)
    assert required["tile_stride"][1]["default"] == 512
    assert cls.RETURN_TYPES == ("STRING",) and cls.RETURN_NAMES == ("caption",) and cls.OUTPUT_IS_LIST == (True,)
    common = importlib.import_module(f"{comfy_pack.module_name}.nodes.common")
    assert cls.CATEGORY == common.CATEGORY
    assert caption_node_module.NODE_DISPLAY_NAME_MAPPINGS[NODE_ID] == "SUPIR LLaVA Caption"
    if NODE_ID in node_mappings:
        assert comfy_pack.display_name_mappings[NODE_ID] == "SUPIR LLaVA Caption"
    for name in ("LLM", "llava"):
        assert name in folder_paths.folder_names_and_paths


def test_model_folders_registered_with_comfy(caption_node_module):
    import os

    import folder_paths

    for name in ("LLM", "llava"):
        assert os.path.join(folder_paths.models_dir, name) in folder_paths.get_folder_paths(name)


def test_batch_captions_deterministic_per_seed(node, seen):
    img = images(3)
    first = run(node, img, seed=1)
    assert isinstance(first, list) and len(first) == 3 and all(isinstance(c, str) for c in first)
    assert len(seen) == 3
    assert run(node, img, seed=1) == first
    assert run(node, img, seed=2) != first


def test_captions_follow_the_batch_order(node):
    img = images(3, seed=5)
    batch = run(node, img, temperature=0.0)
    alone = [run(node, img[i:i + 1], temperature=0.0)[0] for i in range(3)]
    assert batch == alone
    assert len(set(batch)) > 1, "the tiny model should answer differently for different images"


@pytest.mark.parametrize("model", [PLAIN, CHAT])
def test_prompt_is_the_official_vicuna_v1_byte_for_byte(node, seen, cap, caption_node_module, model):
    run(node, images(1), model=model, max_new_tokens=1)
    assert seen[-1][0] == OFFICIAL_PROMPT
    run(node, images(1), model=model, max_new_tokens=1, append_realistic=True)
    assert seen[-1][0] == GRADIO_PROMPT
    # the two folders take the two paths: the model's own chat template, and the built-in vicuna_v1 template
    vlm = next(iter(caption_node_module._CACHE.values()))
    assert (cap._chat_template(vlm.processor) is not None) == (model == CHAT)


@pytest.mark.parametrize("h,w", [(64, 96), (1024, 768), (600, 600), (200, 1000)])
def test_image_reaching_the_processor_has_short_side_512(node, seen, h, w):
    run(node, images(1, h, w), max_new_tokens=1)
    size = seen[-1][1].size  # PIL (width, height)
    assert min(size) == 512
    assert size[0] % 64 == 0 and size[1] % 64 == 0  # fix_resize's multiples of 64
    assert (size[0] >= size[1]) == (w >= h)


def test_per_tile_gives_one_caption_per_sampler_window(node, seen, comfy_pack):
    tiled = importlib.import_module(f"{comfy_pack.module_name}.supir_modules.tiled_sampling")
    h, w, tile, stride = 320, 448, 256, 128
    captions = run(node, images(1, h, w), per_tile=True, tile_size=tile, tile_stride=stride, max_new_tokens=2)
    windows = tiled.sliding_windows(h // 8, w // 8, tile // 8, stride // 8)  # what the tiled sampler walks
    assert len(windows) == 6
    assert len(captions) == len(windows) == len(seen)
    assert [im.size for _, im in seen] == [((w1 - w0) * 8, (h1 - h0) * 8) for h0, h1, w0, w1 in windows]


def test_tiles_are_cut_where_the_sampler_puts_them(cap):
    img = images(1, 80, 72)[0]
    pils = cap.caption_inputs(img.unsqueeze(0), per_tile=True, tile_size=64, tile_stride=32)
    windows = cap.tile_windows(80, 72, 64, 32)
    assert windows == [(0, 64, 0, 64), (0, 64, 8, 72), (16, 80, 0, 64), (16, 80, 8, 72)]
    h0, h1, w0, w1 = windows[3]
    expected = (img[h0:h1, w0:w1].clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(torch.from_numpy(np.array(pils[3])), expected)


def test_newlines_and_stop_string_are_cleaned(node, cap, monkeypatch, llm_folders):
    assert cap.clean_caption("  a cat\non a\r\nmat </s>  ") == "a cat on a  mat"
    assert cap.clean_caption("a </s> b") == "a </s> b"  # as llava_agent.py: only a trailing stop string
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setattr(PreTrainedTokenizerFast, "batch_decode",
                        lambda self, ids, **k: ["  A red house\nby the sea.\n</s>"] * len(ids))
    assert run(node, images(2), max_new_tokens=1) == ["A red house by the sea."] * 2


def test_empty_models_folder_says_where_to_put_llava(node, monkeypatch, tmp_path, caption_node_module):
    (tmp_path / "LLM").mkdir()
    (tmp_path / "llava").mkdir()
    _use_folders(monkeypatch, str(tmp_path / "LLM"), str(tmp_path / "llava"))
    choices = type(node).INPUT_TYPES()["required"]["model"][0]
    assert choices == [caption_node_module.NO_MODEL]
    with pytest.raises(ValueError) as err:
        run(node, images(1), model=choices[0])
    msg = str(err.value)
    assert "models/LLM" in msg and "llava-1.5" in msg and "config.json" in msg


def test_a_text_only_model_is_refused(node):
    with pytest.raises(ValueError) as err:
        run(node, images(1), model="not-a-vlm")
    msg = str(err.value)
    assert "not a vision-language model" in msg and "'llama'" in msg and "models/LLM" in msg


def test_unknown_model_name(node):
    with pytest.raises(ValueError, match="not found.*models/LLM"):
        run(node, images(1), model="llava-1.5-13b-hf")


def test_zero_images_and_per_tile_batches_are_refused(node):
    with pytest.raises(ValueError, match="no image to caption"):
        run(node, torch.zeros(0, 64, 64, 3))
    with pytest.raises(ValueError, match="batch of 2 images"):
        run(node, images(2), per_tile=True)
    with pytest.raises(ValueError, match="stride"):
        run(node, images(1), per_tile=True, tile_size=256, tile_stride=512)
    with pytest.raises(ValueError, match="question is empty"):
        run(node, images(1), question="  ")


def test_quantization_without_bitsandbytes_says_how_to_install(node):
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None and importlib.util.find_spec("accelerate") is not None:
        pytest.skip("bitsandbytes is installed")
    for q in ("8-bit", "4-bit"):
        with pytest.raises(ValueError, match="pip install .*bitsandbytes.*CUDA"):
            run(node, images(1), quantization=q)


def test_models_are_cached_and_keep_loaded_decides_what_comfy_keeps(node, caption_node_module, cap):
    import comfy.model_management as mm

    run(node, images(1), max_new_tokens=1, keep_loaded=False)
    vlm = caption_node_module._CACHE[next(iter(caption_node_module._CACHE))]
    assert not cap.is_loaded(vlm), "keep_loaded off: unloaded from ComfyUI's current_loaded_models"
    assert all(p.device == torch.device(vlm.patcher.offload_device) for p in vlm.model.parameters())

    run(node, images(1), max_new_tokens=1, keep_loaded=True)
    assert caption_node_module._CACHE[next(iter(caption_node_module._CACHE))] is vlm, "not read from disk again"
    assert cap.is_loaded(vlm) and vlm.patcher in [lm.model for lm in mm.current_loaded_models]
    assert vlm.patcher.model_size() > 0

    run(node, images(1), max_new_tokens=1, keep_loaded=False)
    assert not cap.is_loaded(vlm)


def test_switching_models_drops_the_previous_one(node, caption_node_module, cap):
    run(node, images(1), max_new_tokens=1, keep_loaded=True)
    first = next(iter(caption_node_module._CACHE.values()))
    run(node, images(1), model=CHAT, max_new_tokens=1, keep_loaded=True)
    assert len(caption_node_module._CACHE) == 1 and first not in caption_node_module._CACHE.values()
    assert not cap.is_loaded(first)
    caption_node_module.drop_cached()


def test_cancel_between_images(node, seen):
    import comfy.model_management as mm
    import comfy.utils

    def cancel_after_first(value, total, *a, **k):
        if value == 1:
            mm.interrupt_current_processing(True)

    comfy.utils.set_progress_bar_global_hook(cancel_after_first)
    try:
        with pytest.raises(BaseException) as err:
            run(node, images(3))
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert type(err.value).__name__ == "InterruptProcessingException"
    assert len(seen) == 1, "stopped before the second image"
    assert not mm.processing_interrupted()
    assert len(run(node, images(2), max_new_tokens=1)) == 2, "usable again after Cancel"


def test_cancel_stops_generation_between_tokens(node, caption_node_module, monkeypatch, llm_folders):
    import comfy.model_management as mm
    from transformers import LlavaProcessor

    run(node, images(1), max_new_tokens=1, keep_loaded=True)  # load, so generate can be wrapped
    vlm = next(iter(caption_node_module._CACHE.values()))
    lengths = []
    real_generate = vlm.model.generate

    def generate(**kw):
        out = real_generate(**kw)
        lengths.append(out.shape[1] - kw["input_ids"].shape[1])
        return out

    real_call = LlavaProcessor.__call__

    def cancel_now(self, *a, **k):
        mm.interrupt_current_processing(True)  # Cancel pressed while the prompt is prepared
        return real_call(self, *a, **k)

    monkeypatch.setattr(vlm.model, "generate", generate)
    monkeypatch.setattr(LlavaProcessor, "__call__", cancel_now)
    with pytest.raises(BaseException) as err:
        run(node, images(2), max_new_tokens=200)
    assert type(err.value).__name__ == "InterruptProcessingException"
    assert lengths == [1], "generation ended at the first token after Cancel"
    assert not mm.processing_interrupted()
