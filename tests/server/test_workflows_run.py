"""The shipped workflows in real ComfyUI servers (each runtime), on tiny models written under the file names the
workflows pick (given to the server through --extra-model-paths-config):
- every API workflow runs end to end; its images have the expected size and finite, non-constant values;
- the checkpoint + LoRA workflow runs on ComfyUI's own Load Checkpoint and Load LoRA (a test-only custom node
  registers the tiny SDXL's size), and the LoRA changes the result;
- UI and API twins have the same widget values, each accepted by its input in /object_info (in the list, inside
  min/max; nodes and links: tests/unit/test_workflow_files.py), and every FSUPIR input has a tooltip;
- GET /fsupir/presets serves the sampler's presets;
- ComfyUI 0.3.75 lists the UI workflows as this pack's templates and serves them.
Only image and tile sizes and the caption length are made small for the tests (SMALL, Case.overrides); everything
else runs as shipped.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import pytest

from ..workflow_tools import (TESTS, VIRTUAL_NODES, input_images, is_link, load_api, load_ui, stems, ui_widget_values,
                              value_problem, widget_inputs)
from .conftest import _selected_runtimes, serving
from .workflow_server import TINY_SDXL_NODE, check_image, output_images, put_input_image, run

# Small images and short captions: the tiny models run in seconds at a short side of 64 px (the tiny random
# LLaVA never stops before max_new_tokens).
SMALL = {("FSUPIR_Encode", "min_size"): 64, ("FSUPIR_LLaVACaption", "max_new_tokens"): 48}
TILES = {("FSUPIR_Encode", "encoder_tile_size"): 256, ("FSUPIR_Encode", "decoder_tile_size"): 32,
         ("FSUPIR_TiledDecode", "decoder_tile_size"): 32, ("FSUPIR_LLaVACaption", "tile_size"): 256,
         ("FSUPIR_LLaVACaption", "tile_stride"): 128, ("FSUPIR_Sampler", "tile_size"): 256,
         ("FSUPIR_Sampler", "tile_stride"): 128}


@dataclass(frozen=True)
class Case:
    size: tuple[int, int] = (64, 48)  # input image, w x h
    overrides: dict = field(default_factory=dict)
    tiles: int = 0  # per-tile captions expected (0: one per image)


CASES = {
    "basic_restore": Case(),
    "lightning": Case(),
    "large_image": Case(size=(80, 48), overrides=TILES, tiles=2),  # x4 -> 320x192: two 256 px tiles
    "degrade_restore": Case(size=(96, 64)),  # /4 then x4
    "checkpoint_lora": Case(),
}
INPUT_NAME = "fsupir_test_input.png"


def prepared(stem: str, case: Case, extra: dict | None = None) -> dict:
    """The API workflow with the test's input image, SMALL, the case's and `extra` overrides."""
    prompt = copy.deepcopy(load_api(stem))
    overrides = {**SMALL, **case.overrides, **(extra or {})}
    for node in prompt.values():
        for (class_type, name), value in overrides.items():
            if node["class_type"] == class_type:
                assert name in node["inputs"], f"{stem}: {class_type} has no input {name}"
                node["inputs"][name] = value
        if node["class_type"] == "LoadImage":
            node["inputs"]["image"] = INPUT_NAME
    return prompt


def _find(prompt: dict, class_type: str) -> tuple[str, dict]:
    found = [(i, n) for i, n in prompt.items() if n["class_type"] == class_type]
    assert len(found) == 1, f"expected one {class_type}, found {len(found)}"
    return found[0]


def expected_sizes(prompt: dict, size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """{SaveImage node id: (w, h)}: the input, / a Degrade node's downsample, x Encode's upscale when decoded."""
    w, h = size
    out = {}
    degraded = size
    for node in prompt.values():
        if node["class_type"] == "FSUPIR_DegradeImage":
            d = node["inputs"]["downsample"]
            degraded = (math.floor(w / d), math.floor(h / d))
    _, encode = _find(prompt, "FSUPIR_Encode")
    source = encode["inputs"]["image"][0]
    base = degraded if prompt[source]["class_type"] == "FSUPIR_DegradeImage" else size
    u = encode["inputs"]["upscale"]
    for node_id, node in prompt.items():
        if node["class_type"] == "SaveImage":
            origin = prompt[node["inputs"]["images"][0]]["class_type"]
            out[node_id] = (round(base[0] * u), round(base[1] * u)) if origin == "FSUPIR_TiledDecode" else degraded
    return out


def check_run(server, stem: str, case: Case, entry: dict) -> dict:
    prompt = prepared(stem, case)
    images = output_images(server, entry)
    sizes = expected_sizes(prompt, case.size)
    assert set(images) == set(sizes), f"{stem}: images from nodes {sorted(images)}, expected {sorted(sizes)}"
    for node_id, size in sizes.items():
        assert len(images[node_id]) == 1, f"{stem}: node {node_id} saved {len(images[node_id])} images"
        check_image(images[node_id][0], size, f"{server.runtime} {stem} node {node_id}")
    caption_id, _ = _find(prompt, "FSUPIR_LLaVACaption")
    captions = entry["outputs"].get(caption_id, {}).get("text")
    assert captions and all(isinstance(c, str) for c in captions), \
        f"{stem}: the caption node returned no ui text: {entry['outputs'].get(caption_id)}"
    assert len(captions) == (case.tiles or 1), f"{stem}: {len(captions)} captions, expected {case.tiles or 1}"
    check_stage_reports(server, stem, prompt, entry)
    return images


REPORTING = {"FSUPIR_Encode": "encode", "FSUPIR_Sampler": "sample", "FSUPIR_TiledDecode": "decode"}


def check_stage_reports(server, stem: str, prompt: dict, entry: dict) -> None:
    """Each stage node's UI output in /history holds its time (and peak VRAM, none on the CPU); the sampler's
    counts the steps its preset (or its own widget, with preset Custom) asks for."""
    presets = server.get_json("/fsupir/presets")
    for node_id, node in prompt.items():
        stage = REPORTING.get(node["class_type"])
        if stage is None:
            continue
        reports = entry["outputs"].get(node_id, {}).get("fsupir_report")
        assert reports and len(reports) == 1, f"{stem}: node {node_id} reported {entry['outputs'].get(node_id)}"
        report = reports[0]
        assert report["stage"] == stage and report["seconds"] > 0 and report["device"] == "cpu", report
        assert report["peak_vram_gib"] is None and report["summary"].startswith(f"{stage}: "), report
        if stage == "sample":
            inputs = node["inputs"]
            preset = presets["presets"].get(inputs["preset"], inputs)
            assert report["steps"] == preset["steps"], f"{stem}: {report} for {inputs['preset']}"
            assert report["ms_per_step"] > 0, report
        else:
            assert report["steps"] is None and report["ms_per_step"] is None, report


# --- servers ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=[pytest.param(r, id=r) for r in _selected_runtimes()])
def server(request, tmp_path_factory, models_root):
    """A server per runtime with the tiny models and a small image under the workflows' input image names."""
    with serving(request.param, tmp_path_factory, models_root) as server:
        for name in set().union(*(input_images(load_api(s)) for s in stems())):
            put_input_image(server, name, 64, 48)
        yield server


@pytest.fixture(scope="module")
def object_info(server) -> dict:
    return server.get_json("/object_info")


@pytest.fixture(scope="module", params=[pytest.param(r, id=r) for r in _selected_runtimes()])
def lora_server(request, tmp_path_factory, models_root):
    """A server per runtime whose extra custom_nodes folder (in the temporary models folder, through
    extra_model_paths) holds the test-only tiny-SDXL node."""
    root = tmp_path_factory.mktemp("lora-models") / "models"
    shutil.copytree(models_root, root, copy_function=os.link)
    (root / "custom_nodes").mkdir()
    (root / "custom_nodes" / "fsupir_test_tiny_sdxl.py").write_text(TINY_SDXL_NODE.format(tests=str(TESTS)))
    with serving(request.param, tmp_path_factory, root) as server:
        yield server


# --- runs ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", [s for s in CASES if s != "checkpoint_lora"])
def test_api_workflow_runs(server, stem):
    case = CASES[stem]
    put_input_image(server, INPUT_NAME, *case.size)
    check_run(server, stem, case, run(server, prepared(stem, case)))


def test_checkpoint_lora_workflow_runs_and_the_lora_acts(lora_server):
    stem, case = "checkpoint_lora", CASES["checkpoint_lora"]
    put_input_image(lora_server, INPUT_NAME, *case.size)
    with_lora = check_run(lora_server, stem, case, run(lora_server, prepared(stem, case)))
    off = {("LoraLoader", "strength_model"): 0.0, ("LoraLoader", "strength_clip"): 0.0}
    without = output_images(lora_server, run(lora_server, prepared(stem, case, off)))
    save_id = next(iter(with_lora))
    a, b = with_lora[save_id][0].astype(np.float64), without[save_id][0].astype(np.float64)
    assert np.abs(a - b).mean() > 0.5, f"{lora_server.runtime}: the LoRA changed nothing ({np.abs(a - b).mean()})"
    log = lora_server.log()
    imported = [line for line in log.splitlines() if line.rstrip().endswith("fsupir_test_tiny_sdxl.py")]
    assert imported and not any("IMPORT FAILED" in line for line in imported), lora_server.log_tail()
    assert "lora key not loaded" not in log, f"ComfyUI ignored LoRA keys:\n{lora_server.log_tail()}"
    assert "ERROR lora" not in log, lora_server.log_tail()


# --- twins and ranges ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stem", stems())
def test_ui_and_api_widget_values_agree_and_are_in_range(object_info, stem):
    """Node structure and links: tests/unit/test_workflow_files.py; here the values, read with /object_info."""
    ui, api = load_ui(stem), load_api(stem)
    for node in ui["nodes"]:
        if node["type"] in VIRTUAL_NODES:
            continue
        node_id, a = str(node["id"]), api[str(node["id"])]
        spec = object_info.get(node["type"])
        assert spec is not None, f"{stem}: node type {node['type']} missing from /object_info"
        title = node.get("title") or spec["display_name"]  # the frontend saves only titles it did not make
        assert a.get("_meta", {}).get("title") == title, f"{stem} node {node_id}: title {title!r} vs {a.get('_meta')}"
        linked = {slot["name"] for slot in node.get("inputs", []) if slot.get("link") is not None}
        ui_values = {k: v for k, v in ui_widget_values(node, spec).items() if k not in linked}
        literals = {k: v for k, v in a["inputs"].items() if not is_link(v)}
        assert ui_values == literals, f"{stem} node {node_id} ({node['type']}): UI {ui_values} vs API {literals}"
        kinds = {name: (kind, options) for name, kind, options in widget_inputs(spec)}
        for name, value in literals.items():
            assert name in kinds, f"{stem} node {node_id}: {node['type']} has no widget input {name}"
            problem = value_problem(*kinds[name], value)
            assert problem is None, f"{stem} node {node_id} ({node['type']}).{name}: {problem}"


def test_every_fsupir_input_has_a_tooltip(object_info):
    missing = [f"{name}.{inp}" for name, spec in object_info.items() if name.startswith("FSUPIR_")
               for group in ("required", "optional") for inp, value in spec["input"].get(group, {}).items()
               if not (len(value) > 1 and isinstance(value[1], dict) and value[1].get("tooltip"))]
    assert not missing, f"inputs without a tooltip: {missing}"


def test_presets_route_serves_the_sampler_presets(server, object_info):
    try:
        presets = server.get_json("/fsupir/presets")
    except urllib.error.HTTPError as e:
        pytest.fail(f"GET /fsupir/presets answered {e.code}: is nodes/routes.py imported by nodes/__init__.py?")
    preset_choices = object_info["FSUPIR_Sampler"]["input"]["required"]["preset"][0]
    assert [presets["custom"], *presets["presets"]] == preset_choices
    fidelity = presets["presets"]["Fidelity"]
    assert fidelity["steps"] == 50 and fidelity["sampler"] == "restore_edm"
    # The frontend reads a Custom preset's values from the widgets named in "fields": each must be a widget.
    assert all(list(settings) == presets["fields"] for settings in presets["presets"].values())
    sampler_inputs = object_info["FSUPIR_Sampler"]["input"]["required"]
    assert [f for f in presets["fields"] if f not in sampler_inputs] == []


def test_templates_are_listed_and_served(server):
    """0.3.75's template browser lists custom nodes' workflows from <pack>/workflows (or example_workflows)."""
    if server.runtime == "comfy-2024.03":
        pytest.skip("ComfyUI 2024-03 has no custom-node workflow templates")
    listing = server.get_json("/workflow_templates")
    link = next(p.name for p in (server.root / "custom_nodes").iterdir() if p.resolve() == TESTS.parent)
    assert sorted(listing.get(link, [])) == stems(), f"/workflow_templates: {json.dumps(listing)}"
    assert " " not in link, (f"the pack's folder in custom_nodes is {link!r}: aiohttp serves no static files (the "
                             "templates, the pack's JavaScript) under a name with a space; use one without spaces "
                             "(SUPIR_PACK_LINK)")
    for stem in stems():
        url = f"{server.url}/api/workflow_templates/{urllib.parse.quote(link)}/{stem}.json"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert json.load(response) == load_ui(stem), f"{url} serves another file"
