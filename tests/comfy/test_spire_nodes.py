"""SUPIR Degrade Image and SUPIR Image Quality inside a real ComfyUI (the copy SUPIR_COMFY_ROOT names): the fixed
interface, batches, RGBA, determinism, and the Degrade prompt wired into the Conditioner on tiny weights."""
from __future__ import annotations

import importlib

import pytest
import torch

DEGRADE, QUALITY = "FSUPIR_DegradeImage", "FSUPIR_ImageQuality"
SPEC_PROMPT = "Deblur with sigma 3.0; Upsample to 4.0x; Denoise with sigma 0.10; Dejpeg with quality 40"
CONDITIONER_ARGS = dict(captions_are=["one per image"], prompt_length=["official (first 77 tokens)"])


@pytest.fixture(scope="module")
def nodes(comfy_pack):
    """The two node classes of the pack ComfyUI loaded (imported from its nodes/ when not registered yet)."""
    found = {}
    for node_id, module in ((DEGRADE, "degrade"), (QUALITY, "quality")):
        cls = comfy_pack.node_class_mappings.get(node_id)
        if cls is None:
            cls = importlib.import_module(f"{comfy_pack.module_name}.nodes.{module}").NODE_CLASS_MAPPINGS[node_id]
        found[node_id] = cls
    return found


def image(b=1, h=64, w=48, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


def degrade(nodes, img, **kw):
    args = dict(mode="parameterised", random=False, seed=0, blur_sigma=0.0, downsample=1.0, noise_sigma=0.0,
                jpeg_quality=0)
    args.update(kw)
    return nodes[DEGRADE]().degrade(img, **args)


def test_registered_with_the_fixed_interface(node_mappings, comfy_pack):
    for node_id in (DEGRADE, QUALITY):
        assert node_id in node_mappings, f"{node_id} is not in NODE_CLASS_MAPPINGS (nodes/__init__.py)"
    assert comfy_pack.display_name_mappings[DEGRADE] == "SUPIR Degrade Image"
    assert comfy_pack.display_name_mappings[QUALITY] == "SUPIR Image Quality"


def test_interfaces(nodes):
    d = nodes[DEGRADE]
    req = d.INPUT_TYPES()["required"]
    assert list(req) == ["image", "mode", "random", "seed", "blur_sigma", "downsample", "noise_sigma",
                         "jpeg_quality"]
    assert req["mode"][0] == ["parameterised", "Real-ESRGAN"]
    assert (req["random"][1]["default"], req["blur_sigma"][1]["default"], req["downsample"][1]["default"],
            req["noise_sigma"][1]["default"], req["jpeg_quality"][1]["default"]) == (False, 0.0, 1.0, 0.0, 0)
    assert (req["jpeg_quality"][1]["min"], req["jpeg_quality"][1]["max"]) == (0, 100)
    assert "probability 0.5" in req["random"][1]["tooltip"]
    assert (d.RETURN_TYPES, d.RETURN_NAMES) == (("IMAGE", "STRING"), ("image", "restoration_prompt"))
    q = nodes[QUALITY]
    req = q.INPUT_TYPES()["required"]
    assert list(req) == ["restored", "reference", "crop_border", "color_space"]
    assert req["color_space"][0] == ["Y", "RGB"] and req["crop_border"][1]["default"] == 0
    assert (q.RETURN_TYPES, q.RETURN_NAMES) == (("STRING", "FLOAT", "FLOAT"), ("report", "psnr", "ssim"))
    assert q.OUTPUT_NODE is True


def test_degrade_batch_prompt_and_size(nodes):
    img = image(b=2, h=64, w=48)
    out, prompt = degrade(nodes, img, blur_sigma=3.0, downsample=4.0, noise_sigma=0.1, jpeg_quality=40)
    assert prompt == SPEC_PROMPT
    assert out.shape == (2, 16, 12, 3) and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out[0], out[1])
    same, _ = degrade(nodes, img)
    assert torch.equal(same, img), "every stage off: the image passes unchanged"


def test_degrade_rgba_carries_alpha(nodes):
    img = image(h=64, w=64, c=4)
    img[..., 3] = torch.linspace(0, 1, 64)
    out, _ = degrade(nodes, img, downsample=2.0, noise_sigma=0.05, jpeg_quality=70)
    assert out.shape == (1, 32, 32, 4)
    assert torch.allclose(out[..., 3], torch.linspace(0, 1, 32).expand(1, 32, 32), atol=0.02)
    esr, prompt = degrade(nodes, img, mode="Real-ESRGAN", downsample=4.0, seed=3)
    assert prompt == "Remove all degradation" and esr.shape == (1, 16, 16, 4)


def test_degrade_determinism(nodes):
    img = image(h=80, w=80)
    for kw in (dict(noise_sigma=0.1), dict(random=True), dict(mode="Real-ESRGAN", downsample=2.0)):
        a = degrade(nodes, img, seed=11, **kw)  # random: seeds 11 and 12 draw different stages
        b = degrade(nodes, img, seed=11, **kw)
        c = degrade(nodes, img, seed=12, **kw)
        assert torch.equal(a[0], b[0]) and a[1] == b[1], kw
        assert a[0].shape != c[0].shape or not torch.equal(a[0], c[0]), kw


def test_degrade_bad_values(nodes):
    with pytest.raises(ValueError, match="jpeg_quality"):
        degrade(nodes, image(), jpeg_quality=120)
    with pytest.raises(ValueError, match="mode"):
        degrade(nodes, image(), mode="bicubic")
    with pytest.raises(ValueError, match="no image"):
        degrade(nodes, None)


def test_quality_report_values_and_ui(nodes):
    ref = 0.25 + 0.5 * image(b=2, h=64, w=64, seed=1)  # values 5 sigma away from clipping
    restored, _ = degrade(nodes, ref, noise_sigma=0.05, seed=2)
    out = nodes[QUALITY]().measure(restored, ref, crop_border=4, color_space="Y")
    report, psnr, ssim = out["result"]
    assert out["ui"]["text"] == [report]
    lines = report.splitlines()
    assert len(lines) == 3 and lines[0].startswith("image 1: PSNR ") and lines[2].startswith("mean of 2 (Y, crop ")
    # Independent noise of sigma 0.05 per channel gives Y noise of 0.05 |(65.481, 128.553, 24.966)| = 7.32 (of 255):
    # PSNR 20 log10(255 / 7.32) = 30.84 dB; on RGB 20 log10(1 / 0.05) = 26.02 dB.
    assert psnr == pytest.approx(30.84, abs=0.15) and 0 < ssim < 1
    rgb = nodes[QUALITY]().measure(restored, ref, 0, "RGB")["result"]
    assert rgb[1] == pytest.approx(26.02, abs=0.15)
    one_ref = nodes[QUALITY]().measure(restored, ref[:1], 0, "RGB")["result"]
    assert one_ref[1] != rgb[1], "a single reference is compared with every restored image"


def test_quality_mismatches_are_clear(nodes):
    with pytest.raises(ValueError, match="same upscale|reference size"):
        nodes[QUALITY]().measure(image(h=64, w=64), image(h=32, w=32), 0, "Y")
    with pytest.raises(ValueError, match="one per restored image"):
        nodes[QUALITY]().measure(image(b=3), image(b=2), 0, "Y")


# --- the Degrade prompt wired into the Conditioner --------------------------------------------------------
def test_degrade_prompt_changes_the_conditioning(nodes, node_mappings, tiny_supir):
    _, clip, _ = tiny_supir  # the SUPIR Loader node's CLIP on the tiny files (comfy/conftest.py)
    _, prompt = degrade(nodes, image(), blur_sigma=3.0, downsample=4.0, noise_sigma=0.1, jpeg_quality=40)
    conditioner = node_mappings["FSUPIR_Conditioner"]()

    def positive(instruction=None):
        extra = {} if instruction is None else {"restoration_instruction": [instruction]}
        pos, _ = conditioner.condition([clip], ["a photo of a cat"], ["high quality"], ["blurry"],
                                       **CONDITIONER_ARGS, **extra)
        return pos[0][0], pos[0][1]["pooled_output"]

    plain, plain_pooled = positive()
    wired, wired_pooled = positive(prompt)
    assert not torch.allclose(plain, wired) and not torch.allclose(plain_pooled, wired_pooled)
    assert torch.equal(positive("")[0], plain), "an empty instruction adds nothing"
    assert torch.equal(positive(prompt)[0], wired)
    other = positive("Remove all degradation")[0]
    assert not torch.allclose(other, wired)
