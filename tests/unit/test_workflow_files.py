"""workflows/*.json (UI format, listed by ComfyUI's template browser) and their API twins in workflows/api/: the
files alone, without ComfyUI. Widget values against each node's inputs are checked in the server tier
(tests/server/test_workflows_run.py), loading in the frontends in the browser tier."""
from __future__ import annotations

import pytest

from ..workflow_tools import API_DIR, VIRTUAL_NODES, WORKFLOWS, is_link, load_api, load_ui, stems

EXPECTED = {"basic_restore", "large_image", "checkpoint_lora", "lightning", "degrade_restore"}


def test_every_ui_workflow_has_an_api_twin():
    ui = set(stems())
    api = {p.stem for p in API_DIR.glob("*.json")}
    assert ui == api, f"UI without API twin: {sorted(ui - api)}; API without UI: {sorted(api - ui)}"
    assert EXPECTED <= ui, f"missing workflows: {sorted(EXPECTED - ui)}"
    assert not [p.name for p in WORKFLOWS.iterdir() if p.is_file() and p.suffix != ".json"]


@pytest.mark.parametrize("stem", stems())
def test_ui_workflow_is_readable(stem):
    """Saved by ComfyUI's frontend (format 0.4), grouped, titled, with one note."""
    ui = load_ui(stem)
    assert ui.get("version") == 0.4 and "links" in ui and "nodes" in ui
    notes = [n for n in ui["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1 and notes[0]["widgets_values"][0].strip(), f"{stem}: expected one Note with text"
    assert ui["groups"] and all(g.get("title") for g in ui["groups"]), f"{stem}: untitled or no groups"

    def inside(node, group) -> bool:
        gx, gy, gw, gh = group["bounding"]
        x, y = node["pos"]
        w, h = node["size"]
        return gx <= x and gy <= y and x + w <= gx + gw and y + h <= gy + gh

    loose = [f"{n['id']} ({n['type']})" for n in ui["nodes"]
             if n["type"] != "Note" and not any(inside(n, g) for g in ui["groups"])]
    assert not loose, f"{stem}: nodes outside every group: {loose}"
    untitled = [n["id"] for n in ui["nodes"] if n["type"].startswith("FSUPIR_") and not n.get("title")]
    assert not untitled, f"{stem}: FSUPIR nodes without a title: {untitled}"


@pytest.mark.parametrize("stem", stems())
def test_ui_and_api_have_the_same_nodes_and_links(stem):
    ui, api = load_ui(stem), load_api(stem)
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in VIRTUAL_NODES}
    assert set(nodes) == set(api), f"{stem}: UI nodes {sorted(nodes)}, API nodes {sorted(api)}"
    links = {link[0]: link for link in ui["links"]}
    for node_id, node in nodes.items():
        assert api[node_id]["class_type"] == node["type"], f"{stem} node {node_id}"
        linked = {}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, origin, origin_slot, target, _, _ = links[slot["link"]]
                assert target == node["id"], f"{stem}: link {slot['link']} does not end at node {node_id}"
                linked[slot["name"]] = [str(origin), origin_slot]
        api_links = {k: v for k, v in api[node_id]["inputs"].items() if is_link(v)}
        assert api_links == linked, f"{stem} node {node_id} ({node['type']}): API links {api_links}, UI {linked}"


@pytest.mark.parametrize("stem", stems())
def test_api_workflow_suits_the_command_line_client(stem):
    """One Load Image (--image), one image saved from SUPIR Tiled Decode (<stem>.png), fixed seeds."""
    api = load_api(stem)
    assert sum(n["class_type"] == "LoadImage" for n in api.values()) == 1
    saves = [n for n in api.values() if n["class_type"] == "SaveImage"
             and api[n["inputs"]["images"][0]]["class_type"] == "FSUPIR_TiledDecode"]
    assert len(saves) == 1, f"{stem}: {len(saves)} images saved from FSUPIR_TiledDecode"
    assert any(n["class_type"] == "FSUPIR_LLaVACaption" for n in api.values()), f"{stem}: no captioner"


@pytest.mark.parametrize("stem", stems())
def test_ui_workflow_lists_only_connected_widget_inputs(stem):
    """The form ComfyUI's frontend embeds in saved images and sends with each prompt (graphToPrompt's `workflow`):
    0.3.75 loads it as is, and the 2024 frontend then shows every widget (it hides the widgets listed as inputs,
    which 0.3.75's Save lists all of)."""
    ui = load_ui(stem)
    unlinked = [f"{n['id']}.{i['name']}" for n in ui["nodes"] for i in n.get("inputs", [])
                if i.get("widget") and i.get("link") is None]
    assert not unlinked, (
        f"{stem}: unconnected widget inputs {unlinked}; after editing in ComfyUI, export the workflow with "
        "`copy(JSON.stringify((await app.graphToPrompt()).workflow, null, 2))` in the browser console")
