"""`python -m fsupir_cli benchmark` end to end against real ComfyUI servers (both runtimes) on tiny models: two
clean images, both protocols, a caption-free API workflow written here, results.json and results.md checked."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ..tiny_models import write_sdxl, write_supir_pruned

REPO = Path(__file__).resolve().parents[2]
SEED = 1  # image 0 -> seed 1 (SPIRE draw: x3.8 downsample + noise), image 1 -> seed 2 (blur + JPEG, same size)
FIRST_SPIRE_PROMPT = "Upsample to 3.8x; Denoise with sigma 0.06"

# LoadImage -> FSUPIR_Loader -> FSUPIR_Encode -> FSUPIR_Conditioner (fixed caption) -> FSUPIR_Sampler (2 steps)
# -> FSUPIR_TiledDecode -> SaveImage; the benchmark fills in the image, Encode's upscale and the instruction.
WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
    "2": {"class_type": "FSUPIR_Loader", "inputs": {"supir_model": "SUPIR-tiny.safetensors",
                                                   "sdxl_model": "tiny_sdxl.safetensors", "weight_dtype": "fp32"}},
    "3": {"class_type": "FSUPIR_Encode", "inputs": {
        "supir_model": ["2", 0], "vae": ["2", 2], "image": ["1", 0], "upscale": 1.0, "min_size": 64, "seed": 1,
        "tiled_vae": False, "encoder_tile_size": 512, "decoder_tile_size": 64, "tile_norm": "whole image"}},
    "4": {"class_type": "FSUPIR_Conditioner", "inputs": {
        "clip": ["2", 1], "caption": "a photo", "positive_prompt": "high quality", "negative_prompt": "blurry",
        "captions_are": "one per image", "prompt_length": "official (first 77 tokens)"}},
    "5": {"class_type": "FSUPIR_Sampler", "inputs": {
        "supir_model": ["2", 0], "supir_latents": ["3", 0], "positive": ["4", 0], "negative": ["4", 1], "seed": 7,
        "preset": "Custom", "sampler": "restore_edm", "steps": 2, "cfg_scale": 4.0, "cfg_scale_start": 1.0,
        "linear_cfg": True, "control_scale": 0.9, "control_scale_start": 0.5, "linear_control_scale": True,
        "restore_cfg": 4.0, "restore_cfg_s_tmin": 0.05, "s_churn": 5.0, "s_noise": 1.01, "eta": 1.0,
        "tiled": False, "tile_size": 1024, "tile_stride": 512}},
    "6": {"class_type": "FSUPIR_TiledDecode", "inputs": {
        "vae": ["2", 2], "samples": ["5", 0], "color_fix": "Wavelet", "tiled_vae": False, "decoder_tile_size": 64,
        "tile_norm": "whole image", "stage1_image": ["3", 1]}},
    "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "bench"}},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench_models")
    (root / "checkpoints").mkdir()
    (root / "SUPIR").mkdir()
    write_sdxl(root / "checkpoints" / "tiny_sdxl.safetensors")
    write_supir_pruned(root / "SUPIR" / "SUPIR-tiny.safetensors")
    return root


@pytest.fixture(scope="module")
def clean_dir(tmp_path_factory) -> Path:
    """Two real photos (scikit-image's), 96 x 80 crops."""
    data = pytest.importorskip("skimage.data")
    root = tmp_path_factory.mktemp("clean")
    Image.fromarray(data.astronaut()[40:120, 200:296]).save(root / "astronaut.png")
    Image.fromarray(data.coffee()[100:180, 250:346]).save(root / "coffee.png")
    return root


def test_benchmark_end_to_end(start_comfy_server, runtime, models, clean_dir, tmp_path):
    server = start_comfy_server(runtime, models_root=models)
    workflow = tmp_path / "restore_api.json"
    workflow.write_text(json.dumps(WORKFLOW))
    out = tmp_path / "bench"
    done = subprocess.run([sys.executable, "-m", "fsupir_cli", "benchmark", "--server", server.url, "--clean",
                           str(clean_dir), "--workflow", str(workflow), "--out", str(out), "--seed", str(SEED),
                           "--lpips"], cwd=REPO, capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, f"{done.stderr}\n--- server log ---\n{server.log_tail()}"

    results = json.loads((out / "results.json").read_text())
    assert set(results["protocols"]) == {"spire", "realesrgan"}
    for name, protocol in results["protocols"].items():
        rows = protocol["images"]
        assert [r["image"] for r in rows] == ["astronaut", "coffee"] and [r["seed"] for r in rows] == [1, 2]
        for r in rows:
            assert r["error"] is None
            assert 5 < r["restored"]["psnr"] < 60 and 0 < r["restored"]["ssim"] <= 1, r
            assert 5 < r["bicubic"]["psnr"] < 60, r
            w, h = r["size"]
            restored = Image.open(out / name / "restored" / f"{r['image']}.png")
            assert restored.size == (w, h) == Image.open(out / name / "clean" / f"{r['image']}.png").size
            assert Image.open(out / name / "lq" / f"{r['image']}.png").size == tuple(r["lq_size"])
        mean = protocol["mean"]["restored"]
        assert mean["psnr"] == pytest.approx(np.mean([r["restored"]["psnr"] for r in rows]), abs=1e-4)
        assert mean["ssim"] == pytest.approx(np.mean([r["restored"]["ssim"] for r in rows]), abs=1e-4)

    spire, esr = results["protocols"]["spire"]["images"], results["protocols"]["realesrgan"]["images"]
    assert spire[0]["degradation"] == FIRST_SPIRE_PROMPT and spire[0]["upscale"] == 3.8
    assert spire[0]["size"] == [95, 80] and spire[0]["lq_size"] == [25, 21] and spire[0]["crop_border"] == 4
    assert spire[1]["upscale"] == 1.0 and spire[1]["crop_border"] == 0 and spire[1]["size"] == [96, 80]
    assert all(r["degradation"] == "Remove all degradation" and r["lq_size"] == [24, 20] and r["crop_border"] == 4
               for r in esr)
    lpips = results["scores"]["lpips"]
    assert lpips == "AlexNet v0.1" or lpips.startswith("LPIPS unavailable: ")

    table = (out / "results.md").read_text()
    assert "## spire" in table and "## realesrgan" in table and table.count("| **mean** |") == 2
    assert f"| astronaut | {FIRST_SPIRE_PROMPT} |" in table
    assert table in done.stdout

    # The server ran the workflow with the benchmark's image, upscale and restoration instruction.
    history = server.get_json("/history")
    prompts = [entry["prompt"][2] for entry in history.values()]
    assert len(prompts) == 4
    instructions = sorted(p["4"]["inputs"].get("restoration_instruction") for p in prompts)
    assert FIRST_SPIRE_PROMPT in instructions and instructions.count("Remove all degradation") == 2
    assert sorted(p["3"]["inputs"]["upscale"] for p in prompts) == [1.0, 3.8, 4.0, 4.0]
    assert all(p["1"]["inputs"]["image"].startswith("fsupir_bench_") for p in prompts)
    assert not math.isnan(results["protocols"]["spire"]["mean"]["bicubic"]["psnr"])


def test_benchmark_refuses_bad_workflows(tmp_path, clean_dir):
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps({"nodes": [], "links": []}))
    done = subprocess.run([sys.executable, "-m", "fsupir_cli", "benchmark", "--server", "http://127.0.0.1:9",
                           "--clean", str(clean_dir), "--workflow", str(ui), "--out", str(tmp_path / "o")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Export (API)" in done.stderr
