"""Helpers of the server tier's workflow tests (no test functions here): tiny models under the names the shipped
workflows use (for conftest.serving's models_root), small input images, and running an API prompt to its end over
HTTP."""
from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from ..workflow_tools import all_model_references, write_tiny_models
from .conftest import ComfyServer

RUN_TIMEOUT_S = 300

# The test-only custom node of the LoRA workflow test, written into that server's custom_nodes folder for one run:
# it registers the tiny SDXL's size in ComfyUI's model table with tests/tiny_models.py's classes (as
# tests/comfy/test_sdxl_loader.py does in-process, per test), so ComfyUI's own Load Checkpoint recognises it. Never
# part of the pack.
TINY_SDXL_NODE = '''"""TEST ONLY: lets ComfyUI's CheckpointLoaderSimple load tests/tiny_models.py's tiny SDXL."""
import sys

sys.path.insert(0, {tests!r})

import comfy.sd
import comfy.supported_models

import tiny_models as tm

comfy.supported_models.models.insert(0, tm.tiny_supported_model(tm.tiny_sdxl_clip_target(), name="TinySDXL"))
comfy.sd.VAE = tm.tiny_config_vae()
NODE_CLASS_MAPPINGS = {{}}
'''


class RunFailed(AssertionError):
    pass


def tiny_models_root(tmp_path_factory) -> Path:
    """A models folder with tiny models under every name the shipped workflows pick."""
    root = tmp_path_factory.mktemp("tiny-models")
    return write_tiny_models(root / "models", all_model_references(), root / "cache")


def input_dir(server: ComfyServer) -> Path:
    return server.log_path.parent / "input"


def make_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth random colour image (not constant, compresses like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, size=(max(2, height // 8), max(2, width // 8), 3)).astype(np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def put_input_image(server: ComfyServer, name: str, width: int, height: int, seed: int = 0) -> Path:
    path = input_dir(server) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image(width, height, seed).save(path)
    return path


def queue(server: ComfyServer, prompt: dict) -> str:
    """Posts `prompt`; its prompt_id, or RunFailed with ComfyUI's validation errors."""
    try:
        return server.post_json("/prompt", {"prompt": prompt, "client_id": "fsupir-tests"})["prompt_id"]
    except urllib.error.HTTPError as e:
        raise RunFailed(f"{server.runtime} rejected the prompt: {e.read().decode(errors='replace')}") from None


def wait(server: ComfyServer, prompt_id: str, timeout: float = RUN_TIMEOUT_S) -> dict:
    """The prompt's /history entry once it has finished; RunFailed if it failed or took too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
        if entry is not None:
            status = entry.get("status") or {}
            if status.get("status_str", "success") != "success":
                messages = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                raise RunFailed(f"{server.runtime}: the prompt failed: {json.dumps(messages)[:3000]}\n"
                                f"{server.log_tail(40)}")
            return entry
        if server.process.poll() is not None:
            raise RunFailed(f"{server.runtime} exited while running:\n{server.log_tail()}")
        time.sleep(0.25)
    raise RunFailed(f"{server.runtime}: the prompt did not finish in {timeout:.0f} s:\n{server.log_tail()}")


def run(server: ComfyServer, prompt: dict) -> dict:
    return wait(server, queue(server, prompt))


def output_images(server: ComfyServer, entry: dict) -> dict[str, list[np.ndarray]]:
    """{output node id: [HxWxC uint8 arrays]} of a finished prompt, downloaded through /view."""
    out = {}
    for node_id, outputs in entry["outputs"].items():
        for ref in outputs.get("images", []):
            query = urllib.parse.urlencode({k: ref[k] for k in ("filename", "subfolder", "type")})
            with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=30) as response:
                out.setdefault(node_id, []).append(np.asarray(Image.open(io.BytesIO(response.read()))))
    return out


def check_image(image: np.ndarray, size: tuple[int, int], what: str) -> None:
    """`image` is `size` (w, h), finite and not constant."""
    h, w = image.shape[:2]
    assert (w, h) == size, f"{what}: {w}x{h} px, expected {size[0]}x{size[1]}"
    values = image.astype(np.float64)
    assert np.isfinite(values).all(), f"{what}: non-finite values"
    assert values.std() > 0.5, f"{what}: constant image (std {values.std():.3f})"
