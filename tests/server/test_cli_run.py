"""``python -m fsupir_cli run`` (run from the pack's folder, as users do) against real ComfyUI servers with tiny
models: a run with every override, a rejected and a failing workflow with ComfyUI's message, a resumed batch."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO, _selected_runtimes, serving
from .workflow_server import make_image

WORKFLOW = REPO / "workflows" / "api" / "basic_restore.json"
# Small and quick on the tiny models: a short side of 64 px, 8 steps, no captioner (--prompt replaces it).
FAST = ["--preset", "Lightning", "--prompt", "a photo of a cat", "--set", "FSUPIR_Encode.min_size=64"]
CLI_TIMEOUT_S = 300


@pytest.fixture(scope="module", params=[pytest.param(r, id=r) for r in _selected_runtimes()])
def server(request, tmp_path_factory, models_root):
    with serving(request.param, tmp_path_factory, models_root) as server:
        yield server


def cli(server, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fsupir_cli", "run", "--server", server.url, "--workflow", str(WORKFLOW), *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def image_file(path, width=64, height=48, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    make_image(width, height, seed).save(path)
    return path


def test_run_with_overrides_downloads_the_result(server, tmp_path):
    src = image_file(tmp_path / "in" / "photo.png")
    out = tmp_path / "out"
    result = cli(server, "--image", str(src), "--out", str(out), "--seed", "77", *FAST)
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stderr}\n{server.log_tail()}"
    restored = np.asarray(Image.open(out / "photo.png"))
    assert restored.shape == (96, 128, 3), restored.shape  # basic_restore upscales 2x
    assert restored.std() > 0.5
    assert "done in" in result.stderr and "Restore (SUPIR sampler)" in result.stderr, result.stderr
    # What each stage took, as the nodes reported it (8 Lightning steps; no VRAM figure on the CPU).
    assert "Restore (SUPIR sampler): sample: " in result.stderr and ", 8 steps, " in result.stderr, result.stderr
    assert "encode: " in result.stderr and "decode: " in result.stderr, result.stderr
    # The server ran the overridden prompt.
    history = server.get_json("/history")
    prompts = [entry["prompt"][2] for entry in history.values()]
    ran = [p for p in prompts if any(n["inputs"].get("caption") == "a photo of a cat" for n in p.values())]
    assert len(ran) == 1, f"{len(ran)} prompts with the CLI's caption"
    by_type = {n["class_type"]: n["inputs"] for n in ran[0].values()}
    assert by_type["LoadImage"]["image"] == "fsupir_cli/photo.png"
    assert by_type["FSUPIR_Sampler"]["seed"] == 77 and by_type["FSUPIR_Encode"]["seed"] == 77
    assert by_type["FSUPIR_Sampler"]["preset"] == "Lightning"
    assert by_type["FSUPIR_Encode"]["min_size"] == 64


def test_rejected_workflow_shows_comfyuis_validation_error(server, tmp_path):
    src = image_file(tmp_path / "photo.png")
    result = cli(server, "--image", str(src), "--out", str(tmp_path / "out"), *FAST, "--preset", "Sharpest")
    assert result.returncode == 1, result.stderr
    assert "ComfyUI rejected the workflow" in result.stderr, result.stderr
    assert "FSUPIR_Sampler" in result.stderr and "Sharpest" in result.stderr, result.stderr
    assert not (tmp_path / "out" / "photo.png").exists()


def test_failing_run_shows_comfyuis_error(server, tmp_path):
    src = image_file(tmp_path / "tiny.png", 40, 24)  # under 64 px at upscale 2: Encode refuses it
    result = cli(server, "--image", str(src), "--out", str(tmp_path / "out"), *FAST)
    assert result.returncode == 1, result.stderr
    assert "ComfyUI failed in node" in result.stderr and "FSUPIR_Encode" in result.stderr, result.stderr
    assert "SUPIR needs at least 64" in result.stderr, result.stderr


def test_batch_resumes_and_skips_done_inputs(server, tmp_path):
    inputs, out = tmp_path / "inputs", tmp_path / "out"
    image_file(inputs / "a.png", seed=1)
    image_file(inputs / "b.jpg", seed=2)
    image_file(inputs / "c.png", 40, 24, seed=3)  # fails (too small)
    out.mkdir()
    (out / "b.png").write_bytes(b"done before")  # an earlier, interrupted batch finished b

    first = cli(server, "--image-dir", str(inputs), "--out", str(out), "--keep-going", *FAST)
    assert first.returncode == 1, first.stderr
    assert (out / "a.png").is_file() and not (out / "c.png").exists()
    assert (out / "b.png").read_bytes() == b"done before"
    assert "b.jpg: skipped" in first.stderr and "1 done, 1 skipped, 1 failed" in first.stderr, first.stderr
    a_mtime = (out / "a.png").stat().st_mtime_ns

    image_file(inputs / "c.png", seed=3)  # fixed: the next run does c only
    second = cli(server, "--image-dir", str(inputs), "--out", str(out), *FAST)
    assert second.returncode == 0, second.stderr
    assert "1 done, 2 skipped, 0 failed" in second.stderr, second.stderr
    assert np.asarray(Image.open(out / "c.png")).shape == (96, 128, 3)
    assert (out / "a.png").stat().st_mtime_ns == a_mtime
    assert not list(out.glob(".*.part")), "partial files left behind"
