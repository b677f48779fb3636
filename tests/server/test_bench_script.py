"""benchmarks/bench_supir.py and benchmarks/check_fast_paths.py run with --tiny as subprocesses (as a developer
runs them) against each ComfyUI runtime: the JSON rows hold every field with consistent values, the Markdown
table lists every row, the fast-path check passes and compares every tile_batch variant, and bad arguments fail
with a message. The scripts' pure helpers are checked in-process."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import pytest

from .conftest import REPO, _runtimes_dir, _selected_runtimes

BENCH = REPO / "benchmarks" / "bench_supir.py"
CHECK = REPO / "benchmarks" / "check_fast_paths.py"
SCRIPT_TIMEOUT_S = 540
STEPS = 2
TILE_BATCH = 2

ROW_FIELDS = {
    "dtype", "compute_dtype", "resolution", "tiled", "windows", "steps", "cuda_graph", "cuda_graph_outcome",
    "tile_batch", "ms_per_step", "encode_s", "sample_s", "decode_s", "end_to_end_s", "peak_vram_gib",
    "peak_vram_encode_gib", "peak_vram_sample_gib", "peak_vram_decode_gib", "sampling_load", "tflop_per_step",
    "achieved_tflops", "case",
}


def _runtime_root(runtime: str):
    root = _runtimes_dir() / runtime
    if not (root / "comfy" / "cli_args.py").is_file():
        pytest.skip(f"no ComfyUI runtime at {root}: run scripts/setup_env.sh {runtime} to test the benchmark "
                    "scripts against it")
    return root


def _run(script, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=SCRIPT_TIMEOUT_S)


def _cuda_in_subprocess() -> bool:
    import torch

    return torch.cuda.is_available()


# Every case on the default runtime; on the other one, only what differs between ComfyUI versions (how the load
# state is read, the version string) on one tiled case, to keep the tier quick.
BENCH_CASES = {"comfy-0.3.75": ([(128, False), (128, True)], ["auto", "off"], 1)}
LIGHT_CASES = ([(128, True)], ["off"], 0)


@pytest.fixture(scope="module", params=[pytest.param(r, id=r) for r in _selected_runtimes()])
def bench_run(request, tmp_path_factory):
    root = _runtime_root(request.param)
    resolutions, graphs, warmup = BENCH_CASES.get(request.param, LIGHT_CASES)
    out = tmp_path_factory.mktemp(f"bench-{request.param}") / "results.json"
    specs = [f"{px}{'t' if tiled else ''}" for px, tiled in resolutions]
    done = _run(BENCH, "--tiny", "--steps", STEPS, "--resolutions", *specs, "--cuda-graph", *graphs,
                "--tile-batch", TILE_BATCH, "--warmup-steps", warmup, "--json", out, "--comfy-root", root)
    assert done.returncode == 0, f"bench_supir.py --tiny failed:\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
    assert out.is_file(), f"bench_supir.py did not write {out}:\n{done.stderr[-3000:]}"
    expected = [(px, t, g) for px, t in resolutions for g in graphs]
    return request.param, json.loads(out.read_text()), done.stdout, expected


@pytest.fixture(scope="module")
def check_run(tmp_path_factory):
    """The fast-path check on the default runtime only: it has no code that depends on ComfyUI's version."""
    root = _runtime_root("comfy-0.3.75")
    out = tmp_path_factory.mktemp("check") / "check.json"
    done = _run(CHECK, "--tiny", "--steps", STEPS, "--json", out, "--comfy-root", root)
    return done, (json.loads(out.read_text()) if out.is_file() else None)


@pytest.mark.timeout(SCRIPT_TIMEOUT_S + 60)
def test_bench_json_rows(bench_run):
    runtime, result, _, expected = bench_run
    assert result["tiny"] is True and result["steps"] == STEPS and result["vram_budget"] is None
    assert result["comfy"] == ("0.3.75" if runtime == "comfy-0.3.75" else runtime)
    rows = result["rows"]
    assert [(r["resolution"], r["tiled"], r["cuda_graph"]) for r in rows] == expected  # --tiny: fp32 only
    cuda = _cuda_in_subprocess()
    for r in rows:
        where = f"row {r['resolution']}{' tiled' if r['tiled'] else ''} {r['cuda_graph']}"
        assert ROW_FIELDS <= set(r), f"{where} lacks {sorted(ROW_FIELDS - set(r))}"
        assert r["dtype"] == "fp32" and r["compute_dtype"] == "float32", where
        assert r["steps"] == STEPS and r["tile_batch"] == TILE_BATCH, where
        assert r["windows"] == (9 if r["tiled"] else 1), f"{where}: 128 px with tile 64 / stride 32 is 3x3 windows"
        for stage in ("encode_s", "sample_s", "decode_s", "ms_per_step", "tflop_per_step", "achieved_tflops"):
            assert isinstance(r[stage], float) and r[stage] > 0 and math.isfinite(r[stage]), f"{where}: {stage}"
        stages = r["encode_s"] + r["sample_s"] + r["decode_s"]
        assert stages <= r["end_to_end_s"] <= stages + 1.0, f"{where}: end to end is not the sum of the stages"
        # ms/step leaves out the first step, so (steps - 1) of them fit inside the sampling stage
        assert r["ms_per_step"] * (STEPS - 1) / 1000 < r["sample_s"], where
        assert r["achieved_tflops"] == pytest.approx(r["tflop_per_step"] / (r["ms_per_step"] / 1000), rel=1e-9)
        assert r["cuda_graph_outcome"] == ("off" if r["cuda_graph"] == "off" else ("graph" if cuda else "eager"))
        for name in ("sdxl", "adaptor"):
            state = r["sampling_load"][name]
            assert state["full"] is True and state["lowvram"] is False, f"{where}: {name} {state}"
            assert state["size_gib"] > 0, where
        for key in ("peak_vram_gib", "peak_vram_encode_gib", "peak_vram_sample_gib", "peak_vram_decode_gib"):
            assert (r[key] is not None and r[key] > 0) if cuda else r[key] is None, f"{where}: {key} {r[key]}"
    if len(rows) == 4:
        untiled, tiled = rows[0], rows[2]
        # overlapping windows: a tiled step does more work than the untiled step of the same image
        assert tiled["tflop_per_step"] > 1.5 * untiled["tflop_per_step"]
        assert untiled["tflop_per_step"] == rows[1]["tflop_per_step"], "FLOPs do not depend on the graph setting"


@pytest.mark.timeout(SCRIPT_TIMEOUT_S + 60)
def test_bench_prints_table(bench_run):
    _, result, stdout, expected = bench_run
    lines = stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("| resolution | weights |")]
    assert len(header) == 1, stdout
    body = lines[header[0] + 2:]
    assert [line.split(" | ")[0] for line in body] == [f"| {px} tiled (9 windows)" if t else f"| {px}"
                                                       for px, t, _ in expected], stdout
    assert all(line.count("|") == lines[header[0]].count("|") for line in body), stdout
    assert "ms/step" in lines[header[0]] and "TFLOP/s" in lines[header[0]]
    first = body[0].split(" | ")
    assert first[4] == f"{result['rows'][0]['ms_per_step']:.1f}", body[0]
    assert lines[0].startswith("Device: ") and f"{STEPS} steps" in lines[0]


@pytest.mark.timeout(SCRIPT_TIMEOUT_S + 60)
def test_check_fast_paths_tiny(check_run):
    done, result = check_run
    assert done.returncode == 0, f"check_fast_paths.py --tiny failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    rows = result["rows"]
    assert all(r["passed"] for r in rows) and f"{len(rows)} passed, 0 failed" in done.stdout
    tiled = [r for r in rows if "tiled" in r["case"]]
    assert {1, 2, 4} <= {r["tile_batch"] for r in tiled}, "every tile_batch variant is compared"
    assert {"auto", "off"} <= {r["cuda_graph"] for r in tiled}
    assert any(r["cuda_graph"] == "auto" for r in rows if "tiled" not in r["case"])
    for r in rows:
        assert math.isfinite(r["max_abs"]) and 0 <= r["max_rel"] <= r["tolerance"], r
        assert r["ref_max_abs"] > 0, "the reference latents are not all zero"
    floor = [r for r in rows if r["variant"].startswith("plain, again")]
    assert len(floor) == 2 and all(r["max_abs"] == 0.0 for r in floor), "the plain path is deterministic on CPU"
    stand_in = [r for r in rows if "stand-in" in r["variant"]]
    if not _cuda_in_subprocess():
        assert all(r["ran"] == "stand-in" for r in stand_in), stand_in
    for line in ("| case | weights | variant |", "tile_batch 4", "cuda_graph auto + tile_batch 2"):
        assert line in done.stdout


def test_bad_arguments_fail_with_a_message():
    done = _run(BENCH, "--tiny", "--steps", 1)
    assert done.returncode == 2 and "--steps must be at least 2" in done.stderr
    done = _run(BENCH, "--tiny", "--resolutions", "1000")
    assert done.returncode == 2 and "not a multiple of 64" in done.stderr
    done = _run(BENCH, "--tiny", "--comfy-root", REPO / "no-such-comfy")
    assert done.returncode != 0 and "no ComfyUI at" in done.stderr


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_helpers_in_process():
    import torch

    bench = _load(BENCH, "bench_supir_under_test")
    check = _load(CHECK, "check_fast_paths_under_test")
    assert bench.parse_resolution("4096t") == (4096, True) and bench.parse_resolution("1024") == (1024, False)
    log = bench.GraphLog()
    assert log.outcome("auto") == "eager" and log.outcome("off") == "off"
    log.messages.append("SUPIR network captured in a CUDA graph for input (2, 4, 128, 128) "
                        "(replay matches eager to 0.0e+00)")
    assert log.outcome("auto") == "graph"
    log.messages.append("SUPIR CUDA graph off for this run, sampling eagerly: capture failed")
    assert log.outcome("auto") == "eager"
    ref = torch.tensor([[1.0, -4.0], [2.0, 0.5]])
    got = check.compare(ref + torch.tensor([[0.0, 0.02], [0.0, 0.0]]), ref)
    assert got["max_abs"] == pytest.approx(0.02) and got["max_rel"] == pytest.approx(0.005) and got["finite"]
    assert check.compare(ref * float("nan"), ref)["finite"] is False
    row = {"resolution": 4096, "tiled": True, "windows": 49, "dtype": "fp8_e4m3fn", "cuda_graph": "auto",
           "cuda_graph_outcome": "eager", "tile_batch": 1, "ms_per_step": 50.0, "encode_s": 1.0, "sample_s": 2.0,
           "decode_s": 0.5, "end_to_end_s": 3.5, "peak_vram_encode_gib": 1.0, "peak_vram_sample_gib": 4.0,
           "peak_vram_decode_gib": 2.0, "peak_vram_gib": 4.0, "tflop_per_step": 20.28, "achieved_tflops": 405.6,
           "sampling_load": {"sdxl": {"full": False, "loaded_gib": 2.0, "size_gib": 2.4},
                             "adaptor": {"full": True, "loaded_gib": 1.0, "size_gib": 1.0}}}
    table = bench.format_table({"device": "X", "torch": "t", "comfy": "c", "steps": 50, "cold": False,
                                "vram_budget": {"budget_gib": 8}, "rows": [row]})
    assert "VRAM budget 8 GiB" in table
    assert ("| 4096 tiled (49 windows) | fp8_e4m3fn | auto -> eager | 1 | 50.0 | 1.00 | 2.00 | 0.50 | 3.50 | "
            "1.00/4.00/2.00 | 4.00 | partial 2.0/2.4 GiB / full | 20.28 | 406 |") in table


OOM_DRIVER = """
import importlib.util, json, sys
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("bench", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
sys.modules["bench"] = bench
spec.loader.exec_module(bench)
bench.import_runtime(Path(sys.argv[2]), cpu=True)


def run_once(supir, vae, case, steps, record):
    with bench.Stage("encode", record):
        pass
    with bench.Stage("sample", record):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


bench.run_once = run_once
print(json.dumps(bench.run_case(None, None, bench.Case(1024, False, 50), warmup_steps=0, cold=False,
                                flop_cache={})))
"""


def test_out_of_memory_becomes_a_row(tmp_path):
    """Under --vram-budget, running out of memory is a result: the row names the stage and the run goes on.
    (A process of its own: the benchmark's stages measure with the pack's StageMeter, which needs ComfyUI.)"""
    driver = tmp_path / "oom_driver.py"
    driver.write_text(OOM_DRIVER)
    done = _run(driver, BENCH, _runtime_root("comfy-0.3.75"))
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["error"] == "out of memory (sample)"
    assert row["encode_s"] is not None and row["sample_s"] is None and row["ms_per_step"] is None
    assert row["tflop_per_step"] is None and "stage" not in row
    bench = _load(BENCH, "bench_supir_oom_under_test")
    table = bench.format_table({"device": "X", "torch": "t", "comfy": "c", "steps": 50, "cold": False,
                                "vram_budget": None, "rows": [{**row, "dtype": "fp16"}]})
    assert "| 1024 | fp16 | auto -> - | 1 | - | 0.00 | - | - | - | -/-/- | out of memory (sample) | - / - | - | - |" \
        in table, table
