"""fsupir_cli/run.py without a server: reading workflows, the command line's overrides, output names, messages.
(Runs against real servers: tests/server/test_cli_run.py.)"""
from __future__ import annotations

import json

import pytest

from fsupir_under_test.fsupir_cli import client, run
from fsupir_under_test.fsupir_cli.image_files import image_files

from ..workflow_tools import API_DIR, WORKFLOWS, load_api


def test_ui_workflow_is_refused_with_the_twin_named(tmp_path):
    with pytest.raises(run.UsageError, match="UI workflow.*Export \\(API\\).*api/basic_restore.json"):
        run.load_workflow(WORKFLOWS / "basic_restore.json")
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(run.UsageError, match="not an API-format workflow"):
        run.load_workflow(tmp_path / "x.json")
    with pytest.raises(run.UsageError, match="not found"):
        run.load_workflow(tmp_path / "missing.json")


def test_overrides_find_nodes_by_class_type():
    api = load_api("large_image")
    out = run.apply_overrides(api, image="fsupir_cli/a.png", seed=9, preset="Quality", caption="a red car",
                              sets=["FSUPIR_Sampler.steps=20", "4.upscale=2.5", "FSUPIR_Conditioner.negative_prompt=x"])
    by_type = {n["class_type"]: n["inputs"] for n in out.values()}
    assert by_type["LoadImage"]["image"] == "fsupir_cli/a.png"
    assert by_type["FSUPIR_Sampler"]["seed"] == by_type["FSUPIR_Encode"]["seed"] == 9
    assert by_type["FSUPIR_LLaVACaption"]["seed"] == 9
    assert by_type["FSUPIR_Sampler"]["preset"] == "Quality" and by_type["FSUPIR_Sampler"]["steps"] == 20
    assert by_type["FSUPIR_Conditioner"]["caption"] == "a red car"  # the captioner's link is replaced
    assert out["4"]["inputs"]["upscale"] == 2.5 and by_type["FSUPIR_Conditioner"]["negative_prompt"] == "x"
    assert api == load_api("large_image"), "the workflow itself is left alone"


@pytest.mark.parametrize("item, value", [("a.b=1", 1), ("a.b=true", True), ("a.b=[\"3\", 0]", ["3", 0]),
                                         ("a.b=hello world", "hello world"), ("a.b=", ""), ("a.b=1.5e2", 150.0)])
def test_set_values_are_json_or_text(item, value):
    assert run.parse_set(item) == ("a", "b", value)


@pytest.mark.parametrize("item", ["steps=3", "FSUPIR_Sampler.steps", ".steps=3"])
def test_bad_set_is_a_usage_error(item):
    with pytest.raises(run.UsageError, match="NODE.INPUT=VALUE"):
        run.parse_set(item)


def test_overrides_without_their_node_are_usage_errors():
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "x.png"}}}
    with pytest.raises(run.UsageError, match="--preset: the workflow has no FSUPIR_Sampler"):
        run.apply_overrides(api, preset="Quality")
    with pytest.raises(run.UsageError, match="no node with id or class_type 'Nope'.*1 \\(LoadImage\\)"):
        run.apply_overrides(api, sets=["Nope.x=1"])
    two = {**api, "2": {"class_type": "LoadImage", "inputs": {"image": "y.png"}}}
    with pytest.raises(run.UsageError, match="2 Load Image nodes"):
        run.apply_overrides(two, image="z.png")


def test_output_names_put_the_restored_image_last():
    api = load_api("degrade_restore")
    save_lq = next(i for i, n in api.items() if n["inputs"].get("filename_prefix") == "FSUPIR/degraded")
    save = next(i for i, n in api.items() if n["inputs"].get("filename_prefix") == "FSUPIR/restored")
    outputs = {save: {"images": [{"filename": "restored_00001_.png", "subfolder": "FSUPIR", "type": "output"}]},
               save_lq: {"images": [{"filename": "degraded_00001_.png", "subfolder": "FSUPIR", "type": "output"}]}}
    names = [name for _, name in run.output_files(api, outputs, "photo")]
    assert names == ["photo_degraded.png", "photo.png"]


def test_comfyui_messages_are_readable():
    prompt = json.loads((API_DIR / "basic_restore.json").read_text())
    sampler = next(i for i, n in prompt.items() if n["class_type"] == "FSUPIR_Sampler")
    body = {"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation",
                      "details": ""},
            "node_errors": {sampler: {"errors": [{"message": "Value not in list", "details": "preset: 'X' not in [...]"}],
                                      "class_type": "FSUPIR_Sampler"}}}
    text = client.format_rejection(body, prompt)
    assert text.splitlines() == [
        "ComfyUI rejected the workflow: Prompt outputs failed validation",
        f"  node {sampler} (Restore (SUPIR sampler), FSUPIR_Sampler): Value not in list (preset: 'X' not in [...])"]
    error = {"node_id": sampler, "exception_type": "ValueError", "exception_message": "bad size\n"}
    assert client.format_execution_error(error, prompt) == \
        f"ComfyUI failed in node {sampler} (Restore (SUPIR sampler), FSUPIR_Sampler): ValueError: bad size"
    assert client.websocket_url("https://host:1/comfy/", "abc") == "wss://host:1/comfy/ws?clientId=abc"


def test_post_prompt_body_is_read_as_its_workflow(tmp_path):
    api = load_api("basic_restore")
    (tmp_path / "body.json").write_text(json.dumps({"prompt": api, "client_id": "abc"}))
    assert run.load_workflow(tmp_path / "body.json") == api


def test_server_url_needs_a_scheme():
    with pytest.raises(client.ComfyError, match="'127.0.0.1:8188' needs a scheme, e.g. http://"):
        client.ComfyClient("127.0.0.1:8188", session=None)


def test_image_files_are_files_with_an_image_suffix(tmp_path):
    for name in ("b.PNG", "a.jpg", "notes.txt", "c.webp"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    assert [p.name for p in image_files(tmp_path)] == ["a.jpg", "b.PNG", "c.webp"]


def test_stage_reports_name_each_reporting_node():
    prompt = {"6": {"class_type": "FSUPIR_Sampler", "_meta": {"title": "Restore"}},
              "7": {"class_type": "FSUPIR_TiledDecode"}}
    outputs = {"6": {"fsupir_report": [{"stage": "sample", "summary": "sample: 1.00 s, 8 steps, 90.0 ms/step"}]},
               "7": {"fsupir_report": [{"stage": "decode", "summary": "decode: 0.20 s, on cpu"}]},
               "9": {"images": [{"filename": "a.png"}]},
               "8": {"fsupir_report": ["not a report", {"stage": "encode"}]}}  # nothing to print
    assert run.stage_reports(prompt, outputs) == ["Restore: sample: 1.00 s, 8 steps, 90.0 ms/step",
                                                  "node 7: decode: 0.20 s, on cpu"]
