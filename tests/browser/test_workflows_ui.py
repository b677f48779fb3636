"""The shipped UI workflows and the pack's frontend extensions in ComfyUI's own frontend (headless Chromium), on
each runtime:
- each workflow loads with no missing node type, every widget keeps its saved value and is accepted by its widget
  (in the list, inside min/max), the frontend's own API export equals workflows/api/<stem>.json, and the server
  validates that export; a screenshot per workflow and runtime goes to test-artifacts/screenshots/;
- after a run, the caption node shows the caption(s) it wrote, and the sampler what its run took;
- the sampler node shows the effective settings of its preset (from /fsupir/presets) and follows the preset widget;
- hovering an input shows its Python tooltip (the new frontend natively, the 2024 frontend through js/).
"""
from __future__ import annotations

import json
import time
import urllib.error

import pytest

from ..server.workflow_server import queue
from ..workflow_tools import is_link, load_api, load_ui, stems

LOAD_JS = """async (wf) => {
  const missing = [...new Set(wf.nodes.map((n) => n.type).filter((t) => !LiteGraph.registered_node_types[t]))];
  await app.loadGraphData(structuredClone(wf));
  if (wf.extra?.ds) {  // the saved view, also where a frontend does not restore it (2024-03 by default)
    app.canvas.ds.scale = wf.extra.ds.scale;
    app.canvas.ds.offset = [...wf.extra.ds.offset];
    app.canvas.setDirty(true, true);
  }
  await new Promise((r) => setTimeout(r, 300));
  const problems = [];
  for (const node of app.graph._nodes) {
    if (node.has_errors) problems.push(`node ${node.id} (${node.type}) is marked as having errors`);
    for (const w of node.widgets ?? []) {
      if (w.name?.startsWith("fsupir_")) continue;  // the pack's display widgets
      const o = w.options ?? {};
      const where = `node ${node.id} (${node.type}).${w.name}`;
      if (w.type === "combo") {
        const values = typeof o.values === "function" ? o.values(w, node) : o.values;
        if (Array.isArray(values) && !values.includes(w.value)) problems.push(`${where}: ${JSON.stringify(w.value)} not in its list`);
      } else if (typeof w.value === "number") {
        if (o.min != null && w.value < o.min) problems.push(`${where}: ${w.value} < min ${o.min}`);
        if (o.max != null && w.value > o.max) problems.push(`${where}: ${w.value} > max ${o.max}`);
      }
    }
  }
  const saved = JSON.parse(JSON.stringify(app.graph.serialize()));
  const prompt = await app.graphToPrompt();
  return {missing, problems, saved: saved.nodes.map((n) => [n.id, n.widgets_values ?? []]),
          output: JSON.parse(JSON.stringify(prompt.output))};
}"""

NODE_JS = "(type) => app.graph._nodes.find((n) => n.type === type)"
CAPTION_SEED = 4242  # marks the caption test's run in /history


def _api_core(api: dict, object_info: dict) -> dict:
    """class_type and inputs of each node, without what the 2024 frontend adds and the server ignores: values
    of inputs the node does not declare (Load Image's upload button) and literals on socket-only (forceInput)
    inputs."""
    out = {}
    for node_id, node in api.items():
        spec = object_info[node["class_type"]]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}
        inputs = {}
        for name, value in node["inputs"].items():
            options = declared.get(name, [None, {}])
            options = options[1] if len(options) > 1 and isinstance(options[1], dict) else {}
            if name in declared and (is_link(value) or not options.get("forceInput")):
                inputs[name] = value
        out[node_id] = {"class_type": node["class_type"], "inputs": inputs}
    return out


def _post(server, route: str, body: dict) -> None:
    try:
        server.post_json(route, body)
    except (urllib.error.HTTPError, json.JSONDecodeError):
        pass  # these routes answer with an empty body


def _validate_then_cancel(server, prompt: dict, timeout: float = 60) -> None:
    """Posts `prompt` (the server validates it first: the test fails with its node_errors), then takes it off
    the queue and interrupts it until the server is idle again (0.3.75 clears an interrupt that comes before the
    prompt starts, hence the repeats), and drops it from the history (no "job failed" in later screenshots)."""
    prompt_id = queue(server, prompt)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _post(server, "/queue", {"delete": [prompt_id]})
        _post(server, "/interrupt", {"prompt_id": prompt_id})
        q = server.get_json("/queue")
        if not q["queue_running"] and not q["queue_pending"]:
            _post(server, "/history", {"delete": [prompt_id]})
            return
        time.sleep(0.3)
    pytest.fail(f"{server.runtime} still busy {timeout:.0f} s after the interrupt:\n{server.log_tail()}")


@pytest.mark.parametrize("stem", stems())
def test_ui_workflow_loads_cleanly(frontend, screenshots_dir, stem):
    wf = load_ui(stem)
    result = frontend.js(LOAD_JS, wf)
    frontend.screenshot(screenshots_dir / f"{frontend.server.runtime}-{stem}.png")
    assert not result["missing"], f"{stem}: missing node types {result['missing']}"
    assert not result["problems"], f"{stem}: " + "\n".join(result["problems"])
    loaded = dict((node_id, values) for node_id, values in result["saved"])
    for node in wf["nodes"]:
        saved = node.get("widgets_values") or []
        assert loaded[node["id"]][:len(saved)] == saved, \
            f"{stem} node {node['id']} ({node['type']}): the frontend changed {saved} to {loaded[node['id']]}"
    object_info = frontend.server.get_json("/object_info")
    assert _api_core(result["output"], object_info) == _api_core(load_api(stem), object_info), \
        f"{stem}: the frontend's API export differs from workflows/api/{stem}.json"
    _validate_then_cancel(frontend.server, result["output"])
    assert not frontend.ours(), frontend.ours()


def test_workflow_saved_before_the_speed_options_keeps_every_value(frontend):
    """A UI workflow saved before the Sampler had `cuda_graph` and `tile_batch` (its widgets_values end at
    tile_stride) loads with every saved value on its own widget and the two new ones at their defaults: no
    widget shift (a known complaint about other packs after updates)."""
    wf = load_ui("basic_restore")
    sampler = next(n for n in wf["nodes"] if n["type"] == "FSUPIR_Sampler")
    assert sampler["widgets_values"][-2:] == ["auto", 1], "the shipped workflow should hold the new widgets last"
    sampler["widgets_values"] = sampler["widgets_values"][:-2]
    result = frontend.js(LOAD_JS, wf)
    assert not result["missing"] and not result["problems"], result["problems"]
    object_info = frontend.server.get_json("/object_info")
    node_id = str(sampler["id"])
    exported = _api_core(result["output"], object_info)[node_id]["inputs"]
    shipped = _api_core(load_api("basic_restore"), object_info)[node_id]["inputs"]
    assert exported == shipped  # every older value where it was, cuda_graph "auto" and tile_batch 1 by default
    assert exported["tile_stride"] == 512 and exported["cuda_graph"] == "auto" and exported["tile_batch"] == 1


def test_caption_and_sampler_nodes_show_what_their_run_reported(frontend, screenshots_dir):
    """basic_restore run from the frontend (small: min_size 64, short captions); the caption node's text box then
    holds the captions the server reported for it, and the sampler's display ends with the run's report."""
    frontend.js(LOAD_JS, load_ui("basic_restore"))
    frontend.js("""() => {
      const set = (type, name, value) => { app.graph._nodes.find((n) => n.type === type).widgets
                                             .find((w) => w.name === name).value = value; };
      set("FSUPIR_Encode", "min_size", 64);
      set("FSUPIR_LLaVACaption", "max_new_tokens", 24);
      set("FSUPIR_LLaVACaption", "seed", %d);
      set("FSUPIR_LLaVACaption", "control_after_generate", "fixed");
    }""" % CAPTION_SEED)
    frontend.js("() => app.queuePrompt(0, 1)")
    frontend.page.wait_for_function(f"() => ({NODE_JS})('FSUPIR_LLaVACaption').fsupirCaptions?.length > 0",
                                    timeout=240_000)
    shown = frontend.js(f"""() => {{
      const node = ({NODE_JS})("FSUPIR_LLaVACaption");
      const w = node.widgets.find((w) => w.name === "fsupir_caption_text");
      return {{text: w?.inputEl?.value ?? null, captions: node.fsupirCaptions, id: String(node.id)}};
    }}""")
    frontend.screenshot(screenshots_dir / f"{frontend.server.runtime}-caption-shown.png")
    reported = _reported(frontend.server, shown["id"], shown["id"], "text")  # while the rest still runs
    assert shown["captions"] == reported
    assert shown["text"] == reported[0] and shown["text"].strip(), shown
    inputs = frontend.js(f"""async () => (await app.graphToPrompt()).output[{json.dumps(shown["id"])}].inputs""")
    assert "fsupir_caption_text" not in inputs, "the caption display must not be sent to the server"

    # The sampler then shows what its run took, as the server reported it.
    frontend.page.wait_for_function(f"() => ({NODE_JS})('FSUPIR_Sampler').fsupirLastRun != null", timeout=240_000)
    sampler = frontend.js(f"""() => {{
      const node = ({NODE_JS})("FSUPIR_Sampler");
      return {{id: String(node.id), shown: node.fsupirEffectiveSettings()}};
    }}""")
    report = _reported(frontend.server, shown["id"], sampler["id"], "fsupir_report")[0]
    assert sampler["shown"]["lastRun"] == report and report["stage"] == "sample", sampler
    assert sampler["shown"]["lines"][-1] == f"Last run: {report['summary']}", sampler["shown"]["lines"]
    frontend.screenshot(screenshots_dir / f"{frontend.server.runtime}-sampler-last-run.png")
    assert not frontend.ours(), frontend.ours()


def _reported(server, marker_id: str, node_id: str, key: str, timeout: float = 240) -> list:
    """Output `key` of node `node_id` in /history, from the run whose node `marker_id` has seed CAPTION_SEED."""
    deadline = time.monotonic() + timeout
    while True:
        history = server.get_json("/history")
        found = [e["outputs"][node_id][key] for e in history.values()
                 if e["prompt"][2].get(marker_id, {}).get("inputs", {}).get("seed") == CAPTION_SEED
                 and key in e.get("outputs", {}).get(node_id, {})]
        if found:
            return found[-1]
        if time.monotonic() > deadline:
            pytest.fail(f"the server reported no {key} for node {node_id}: {json.dumps(history)[:2000]}")
        time.sleep(0.5)


def test_sampler_shows_the_effective_settings_of_its_preset(frontend):
    frontend.js(LOAD_JS, load_ui("basic_restore"))
    presets = frontend.server.get_json("/fsupir/presets")

    def show(preset: str | None = None, **values) -> dict:
        return frontend.js(f"""([preset, values]) => {{
          const node = ({NODE_JS})("FSUPIR_Sampler");
          const w = (name) => node.widgets.find((w) => w.name === name);
          if (preset !== null) {{ w("preset").value = preset; w("preset").callback?.(preset); }}
          for (const [k, v] of Object.entries(values)) w(k).value = v;
          return node.fsupirEffectiveSettings();
        }}""", [preset, values])

    fidelity = show()
    assert fidelity["source"] == "preset" and fidelity["values"] == presets["presets"]["Fidelity"], fidelity
    assert fidelity["lines"][:2] == ["Effective: Fidelity preset", "restore_edm, 50 steps"], fidelity["lines"]
    lightning = show("Lightning")
    assert lightning["values"] == presets["presets"]["Lightning"]
    assert "dpmpp_2m, 8 steps" in lightning["lines"] and "CFG 2, control 1" in lightning["lines"], lightning["lines"]
    custom = show("Custom", steps=12, restore_cfg=4.0, sampler="restore_edm")
    assert custom["source"] == "custom" and custom["values"]["steps"] == 12
    assert list(custom["values"]) == presets["fields"] and None not in custom["values"].values(), custom["values"]
    assert "restore_edm, 12 steps" in custom["lines"], custom["lines"]
    assert any(line.startswith("restoration guidance 4") for line in custom["lines"]), custom["lines"]
    # Display only: not in the saved workflow, not in the prompt.
    out = frontend.js("""async () => {
      const p = await app.graphToPrompt();
      const node = app.graph._nodes.find((n) => n.type === "FSUPIR_Sampler");
      return {inputs: Object.keys(p.output[String(node.id)].inputs),
              values: p.workflow.nodes.find((n) => n.id === node.id).widgets_values};
    }""")
    assert "fsupir_effective_settings" not in out["inputs"]
    assert not any(isinstance(v, str) and v.startswith("Effective") for v in out["values"]), out["values"]


def test_hovering_an_input_shows_its_tooltip(frontend, ui_server):
    frontend.js(LOAD_JS, load_ui("basic_restore"))
    tooltip = ui_server.get_json("/object_info/FSUPIR_Sampler")["FSUPIR_Sampler"]["input"]["required"]["steps"][1][
        "tooltip"]
    pos = frontend.js(f"""() => {{
      const node = ({NODE_JS})("FSUPIR_Sampler");
      app.canvas.ds.scale = 1;
      app.canvas.ds.offset = [-node.pos[0] + 300, -node.pos[1] + 150];
      app.canvas.setDirty(true, true);
      const w = node.widgets.find((w) => w.name === "steps");
      const rect = app.canvasEl.getBoundingClientRect();
      const [x, y] = app.canvas.ds.convertOffsetToCanvas(
        [node.pos[0] + node.size[0] / 2, node.pos[1] + (w.last_y ?? w.y) + 10]);
      return {{x: rect.left + x, y: rect.top + y}};
    }}""")
    frontend.page.wait_for_timeout(200)
    frontend.page.mouse.move(pos["x"] - 8, pos["y"] - 4)
    frontend.page.mouse.move(pos["x"], pos["y"], steps=4)
    selector = ".node-tooltip" if frontend.server.runtime != "comfy-2024.03" else ".fsupir-tooltip"
    frontend.page.wait_for_selector(f"{selector}:visible", timeout=10_000)
    assert frontend.page.inner_text(selector).strip() == tooltip
    frontend.page.mouse.move(5, 500)
