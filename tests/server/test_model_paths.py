"""Model files given through --extra-model-paths-config (as users' extra_model_paths.yaml) reach the loader."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _choices(spec: dict) -> set[str]:
    """Every option of every combo input of a node's /object_info entry."""
    out = set()
    for group in ("required", "optional"):
        for value in spec["input"].get(group, {}).values():
            if isinstance(value, (list, tuple)) and value and isinstance(value[0], list):
                out.update(value[0])
    return out


def test_extra_model_paths_reach_the_loader(start_comfy_server, runtime, tmp_path):
    if not (REPO / "nodes" / "loader.py").is_file():
        pytest.skip("nodes/loader.py not written yet")
    models = tmp_path / "models"
    for folder, name in (("SUPIR", "tiny-supir.safetensors"), ("checkpoints", "tiny-sdxl.safetensors")):
        (models / folder).mkdir(parents=True)
        (models / folder / name).write_bytes(b"")  # only listed, never loaded
    server = start_comfy_server(runtime, models_root=models)
    spec = server.get_json("/object_info/FSUPIR_Loader")["FSUPIR_Loader"]
    missing = {"tiny-supir.safetensors", "tiny-sdxl.safetensors"} - _choices(spec)
    assert not missing, f"{runtime}: FSUPIR_Loader does not offer {sorted(missing)}:\n{server.log_tail()}"
