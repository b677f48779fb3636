"""benchmarks/gpu_session.sh, the recipe for a lent GPU machine (bare python3 + PyTorch, no ../shared, no .venv,
a 64 MiB limit on what travels): its bundle holds a ComfyUI that the benchmark runs from, and nothing that would not
travel; a part's benchmark commands append to one JSON file; misuse fails with a message. Run here on the CPU with
the tiny models (--tiny), as the GPU run would be made there."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO, _runtimes_dir

SCRIPT = REPO / "benchmarks" / "gpu_session.sh"
CARRY_LIMIT_BYTES = 64 * 2 ** 20
RUNTIME = "comfy-0.3.75"
TINY_SPEED_ARGS = "--tiny --dtypes fp32 --resolutions 128 --steps 2 --warmup-steps 0"


def _session(part: str, bundle, out, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "BUNDLE": str(bundle), "OUT": str(out), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT), part], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=540)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, layout_json):
    comfy = _runtimes_dir() / RUNTIME
    if not (comfy / "comfy" / "cli_args.py").is_file():
        pytest.skip(f"no ComfyUI runtime at {comfy}: run scripts/setup_env.sh {RUNTIME}")
    path = tmp_path_factory.mktemp("gpu-session") / "bundle"
    done = _session("bundle", path, path.parent / "unused", SUPIR_COMFY_ROOT=str(comfy),
                    SUPIR_LAYOUT_JSON=str(layout_json))
    assert done.returncode == 0, done.stderr
    return path


def test_bundle_travels_whole(bundle, layout_json):
    files = list(bundle.rglob("*"))
    assert (bundle / "supir_v0_layout.json").read_bytes() == layout_json.read_bytes()
    assert (bundle / "comfy" / "comfy" / "model_management.py").is_file()
    assert not [p for p in files if p.is_symlink()], "links do not travel to the device machine"
    assert not [p for p in files if p.name == "__pycache__"], "caches of this machine's Python were copied"
    assert not (bundle / "comfy" / "custom_nodes").exists()
    assert sum(p.stat().st_size for p in files if p.is_file()) < CARRY_LIMIT_BYTES - 8 * 2 ** 20, \
        "the bundle leaves too little of the device tool's 64 MiB for the repository"
    assert not bundle.with_name("bundle.partial").exists()


@pytest.mark.timeout(600)
def test_speed_part_runs_from_the_bundle_and_appends(bundle, tmp_path):
    done = _session("speed", bundle, tmp_path, BENCH_ARGS=TINY_SPEED_ARGS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "speed.json").read_text())
    # The part's two commands: fp16 with graphs auto + off, then bf16/fp8 with auto; the tiny override keeps fp32.
    assert [(r["dtype"], r["case"]["cuda_graph"]) for r in result["rows"]] == [
        ("fp32", "auto"), ("fp32", "off"), ("fp32", "auto")]
    assert result["comfy"] == "0.3.75"
    log = (tmp_path / "speed.log").read_text()
    assert log.count(f"--comfy-root {bundle}/comfy") == 2
    assert log.count("--append") == 1, "only the part's second command appends"


def test_misuse_fails_with_a_message(tmp_path):
    done = _session("speed", tmp_path / "missing", tmp_path)
    assert done.returncode == 2 and "run" in done.stderr and "bundle" in done.stderr
    done = _session("everything", tmp_path / "missing", tmp_path)
    assert done.returncode == 2 and "usage" in done.stderr
    done = _session("bundle", tmp_path / "b", tmp_path, SUPIR_COMFY_ROOT=str(tmp_path),
                    SUPIR_LAYOUT_JSON=str(tmp_path / "nope.json"))
    assert done.returncode == 2 and "setup_env.sh" in done.stderr
    if (_runtimes_dir() / RUNTIME / "comfy").is_dir():
        done = _session("bundle", tmp_path / "b", tmp_path, SUPIR_COMFY_ROOT=str(_runtimes_dir() / RUNTIME),
                        SUPIR_LAYOUT_JSON=str(tmp_path / "nope.json"))
        assert done.returncode == 2 and "nope.json" in done.stderr
    assert not (tmp_path / "b").exists()
