"""A real ComfyUI server of each supported version imports the pack and lists its nodes in /object_info."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PREFIX = "FSUPIR_"
# IDs that must exist once their file does (IDs are permanent: saved workflows use them).
PLANNED = {"nodes/loader.py": {"FSUPIR_Loader", "FSUPIR_LoaderFromModel"}}


def _pack_link(server) -> str:
    links = [p.name for p in (server.root / "custom_nodes").iterdir() if p.resolve() == REPO]
    assert len(links) == 1, f"expected one link to {REPO} in {server.root / 'custom_nodes'}, found {links}"
    return links[0]


def _fsupir_nodes(server) -> dict:
    info = server.get_json("/object_info")
    return {name: spec for name, spec in info.items() if name.startswith(PREFIX)}


def test_log_shows_pack_imported(comfy_server):
    link = _pack_link(comfy_server)
    where = f"/custom_nodes/{link}"
    lines = comfy_server.log().splitlines()
    ours = [line for line in lines if line.rstrip().endswith(where) and "seconds" in line]
    assert ours, f"no import-time line for {where} in the log:\n{comfy_server.log_tail()}"
    failed = [line for line in ours if "IMPORT FAILED" in line]
    failed += [line for line in lines if line.startswith("Cannot import") and f"{where} module" in line]
    assert not failed, f"ComfyUI failed to import the pack:\n{comfy_server.log_tail(80)}"


def test_object_info_lists_pack_nodes(comfy_server):
    nodes = _fsupir_nodes(comfy_server)
    assert nodes, f"no {PREFIX}* node in /object_info of {comfy_server.runtime}:\n{comfy_server.log_tail()}"
    for path, ids in PLANNED.items():
        if (REPO / path).is_file():
            assert ids <= nodes.keys(), f"{path} exists but /object_info lacks {sorted(ids - nodes.keys())}"


def test_pack_nodes_metadata(comfy_server):
    link = _pack_link(comfy_server)
    info = comfy_server.get_json("/object_info")
    nodes = {name: spec for name, spec in info.items() if name.startswith(PREFIX)}
    assert nodes, f"no {PREFIX}* node in /object_info of {comfy_server.runtime}"
    top_categories = {spec["category"].split("/")[0] for spec in nodes.values()}
    for name, spec in nodes.items():
        assert spec["name"] == name
        assert spec["display_name"], f"{name} has no display name"
        assert "supir" in spec["category"].lower(), f"{name}: category {spec['category']!r} does not name SUPIR"
        if "python_module" in spec:  # 0.3.75+; 2024-03's /object_info has no such field
            assert spec["python_module"] == f"custom_nodes.{link}", f"{name}: python_module {spec['python_module']!r}"
    assert len(top_categories) == 1, f"pack nodes spread over top-level categories {sorted(top_categories)}"
    if "python_module" in next(iter(info.values())):
        # Every node that ComfyUI attributes to this pack carries the prefix.
        ours = {name for name, spec in info.items() if spec.get("python_module") == f"custom_nodes.{link}"}
        assert ours == set(nodes), f"pack nodes without the {PREFIX} prefix: {sorted(ours - set(nodes))}"
