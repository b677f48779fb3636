"""The pack imports as a plain package without ComfyUI (tools and tests rely on it) and under any name."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

LOAD_WITHOUT_COMFY = """
import importlib.util, sys
assert importlib.util.find_spec("comfy") is None, "comfy is importable; this check needs it absent"
spec = importlib.util.spec_from_file_location(
    "some_other_name", sys.argv[1] + "/__init__.py", submodule_search_locations=[sys.argv[1]])
pack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pack
spec.loader.exec_module(pack)
assert pack.NODE_CLASS_MAPPINGS == {} and pack.NODE_DISPLAY_NAME_MAPPINGS == {}, pack.NODE_CLASS_MAPPINGS
assert pack.WEB_DIRECTORY == "./js"
"""


def test_imports_without_comfyui():
    # -I: no PYTHONPATH, no cwd on sys.path, so ComfyUI is out of reach.
    result = subprocess.run([sys.executable, "-I", "-c", LOAD_WITHOUT_COMFY, str(REPO)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_pack_fixture_uses_a_foreign_name(pack):
    assert pack.__name__ == "fsupir_under_test"
    assert Path(pack.__file__).resolve() == REPO / "__init__.py"
