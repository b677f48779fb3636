"""Speed and memory of the pack's real code paths on full-size SUPIR + SDXL with random weights.

    .venv/bin/python benchmarks/bench_supir.py [--resolutions 1024 2048 4096t] [--dtypes fp16 bf16 fp8_e4m3fn]
        [--steps 50] [--cuda-graph auto off] [--tile-batch 1] [--vram-budget GIB] [--cold]
        [--json benchmarks/results.json]

Builds SDXL's UNet (ComfyUI's own model), the SUPIR adaptor and the VAEs in the official shapes
(../shared/fixtures/supir_v0_layout.json) with random weights (nothing is downloaded), then runs what the nodes
run: Encode (`pipeline.run_stage1`), Sampler (`pipeline.sample`, restore_edm with the Fidelity preset, CFG as a
batch of 2) and Tiled Decode (`pipeline.decode` + `pipeline.finish`, Wavelet colour fix). "4096t" means tiled
sampling (tile 1024 px, stride 512) and tiled VAE. One row per weight dtype x resolution x --cuda-graph value.

Timing: model building is excluded. Each row first does an untimed warm-up run of the same case
(--warmup-steps, default 2) so one-time process costs (CUDA context, cuBLAS/cuDNN set-up, lazy kernel loading)
are not counted; the timed run then starts with the models where ComfyUI's memory manager left them, as a
second run of a workflow does (--cold: all models offloaded to system RAM first). Every `load_models_gpu` call
of the timed run, and whatever loading or offloading it decides, is inside the stage times. The device is
synchronised only at the start and end of each stage and at the first step callback; ms/step is
(end of sampling - end of step 1) / (steps - 1), so it leaves out the first step (model loading, CUDA graph
capture and its check against eager) and keeps everything after it. Decode includes the colour fix, which
runs on the CPU as in the node. FLOPs of one sampler step
are counted with torch.utils.flop_counter (tiled: one whole tiled step, every window). Not included: CLIP text
encoding (random conditioning), LLaVA, ComfyUI's preview images, image loading and saving.

--vram-budget GIB simulates a card with GIB of memory: ComfyUI's reserve is raised by (total - GIB), as
`--reserve-vram` does, so its memory manager plans for GIB (on ComfyUI without that setting its free-memory
query is reduced instead), and `torch.cuda.set_per_process_memory_fraction` makes any allocation past GIB fail.
The table then says whether the SDXL UNet and the adaptor were fully or partially loaded for sampling.

`--tiny` runs the same code on the tests' tiny models (a CPU smoke test of this script, not a benchmark).
Prints a Markdown table and writes JSON (--json; with --tiny only when given).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK = "fsupir_bench"
GIB = 2 ** 30
DEFAULT_JSON = REPO / "benchmarks" / "results.json"
CUDA_GRAPH_CHOICES = ("auto", "off")
logger = logging.getLogger("bench")


# --- runtime and models --------------------------------------------------------------------------------------
def import_runtime(comfy_root: Path, cpu: bool) -> None:
    """Puts the ComfyUI copy at `comfy_root` first on sys.path (CPU-only if `cpu`) and imports the pack's
    `supir_modules` as the package `fsupir_bench` (without the node layer)."""
    if not (comfy_root / "comfy" / "cli_args.py").is_file():
        raise SystemExit(f"no ComfyUI at {comfy_root}: run scripts/setup_env.sh, or pass --comfy-root")
    sys.path.insert(0, str(comfy_root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    spec = importlib.util.spec_from_file_location(PACK, REPO / "supir_modules" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "supir_modules")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)


def mod(name: str):
    """The pack's `supir_modules.<name>` (after import_runtime)."""
    return importlib.import_module(f"{PACK}.{name}")


def require_acceleration():
    """pipeline.Acceleration and sample(..., accel=...), or SystemExit saying what is missing."""
    pipeline = mod("pipeline")
    missing = []
    if not hasattr(pipeline, "Acceleration"):
        missing.append("supir_modules/pipeline.py has no `Acceleration` class")
    if "accel" not in inspect.signature(pipeline.sample).parameters:
        missing.append("pipeline.sample() takes no `accel` argument")
    if missing:
        raise SystemExit("this benchmark needs the sampler's fast-path API (pipeline.Acceleration(cuda_graph=..., "
                         "tile_batch=...) passed as pipeline.sample(..., accel=...)), but "
                         + " and ".join(missing) + ": update the checkout to a version that has it")
    return pipeline.Acceleration


def load_shapes(layout: Path, tiny: bool) -> dict:
    """{key: shape} of a SUPIR-v0 + SDXL checkpoint: the official layout file, or the tests' tiny models."""
    if tiny:
        sys.path.insert(0, str(REPO / "tests"))
        import tiny_models

        sdxl = tiny_models.tiny_sdxl_state_dict(0)
        return {k: tuple(v.shape) for k, v in {**sdxl, **tiny_models.tiny_supir_state_dict(sdxl, 0)}.items()}
    if not layout.is_file():
        raise SystemExit(f"no checkpoint layout at {layout}: pass --layout (the shared fixtures' "
                         "supir_v0_layout.json) or use --tiny")
    return {k: tuple(v) for k, v in json.loads(layout.read_text())["shapes"].items()}


def _random_like(shapes: dict, prefix: str, dtype, strip: bool = True, drop: tuple = ()) -> dict:
    """A state dict of N(0, 0.02) weights (norm weights 1) in the system RAM, as a loaded file would be. Drawn on the
    GPU where there is one (fast), one tensor at a time, so it needs no more device memory than the largest."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {}
    g = torch.Generator(device=device).manual_seed(0)
    for k, shape in shapes.items():
        if not k.startswith(prefix) or any(d in k for d in drop):
            continue
        t = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 0.02
        if k.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "norm_out.weight")):
            t = torch.ones(shape, device=device)
        out[k[len(prefix):] if strip else k] = t.to(dtype).cpu()
    return out


def build_models(shapes: dict, device, weight_dtype, num_head_channels: int = 64):
    """SupirModel + ComfyUI VAE with random weights of the given shapes, stored in `weight_dtype`.

    Built in system RAM, as ComfyUI's checkpoint loader does whenever the RAM has more free room than the GPU;
    each stage's `load_models_gpu` then brings what it needs to the GPU.
    """
    import torch

    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models

    config, model_mod = mod("config"), mod("model")
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    usd = {k: v for k, v in meta.items() if k.startswith("model.diffusion_model.") and ".project_modules." not in k}
    unet_config = comfy.model_detection.detect_unet_config(usd, "model.diffusion_model.")
    model_config = comfy.supported_models.SDXL(unet_config)
    model_config.unet_config["num_head_channels"] = num_head_channels
    compute = torch.float16 if weight_dtype == torch.float8_e4m3fn else weight_dtype
    model_config.set_inference_dtype(weight_dtype, None if compute == weight_dtype else compute)
    model = model_config.get_model({}, "", device=torch.device("cpu"))
    model.load_model_weights(_random_like(shapes, "model.diffusion_model.", weight_dtype, strip=False,
                                          drop=(".project_modules.",)), "model.diffusion_model.")
    sdxl = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())

    vae_sd = _random_like(shapes, "first_stage_model.", torch.float32, drop=("denoise_encoder",))
    ddconfig = config.decoder_config_from_state_dict(vae_sd)
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"embed_dim": ddconfig["z_channels"], "ddconfig": ddconfig}})
    control = _random_like(shapes, "model.control_model.", weight_dtype, drop=("mask_LQ",))
    connectors = _random_like(shapes, "model.diffusion_model.project_modules.", weight_dtype)
    encoder = _random_like(shapes, "first_stage_model.denoise_encoder.", torch.float32)
    choice = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(weight_dtype, "fp8_e4m3fn")
    supir = model_mod.make_supir_model(sdxl, vae, control, connectors, encoder, "random weights", choice,
                                       num_head_channels=num_head_channels)
    return supir, vae


def conditioning(supir, seed: int = 1):
    """Random positive and negative CONDITIONING of the SDXL model's widths (one 77-token chunk each)."""
    import torch

    unet = supir.sdxl.model.diffusion_model
    ctx = mod("unet").context_dim(unet)
    pooled = unet.label_emb[0][0].in_features - 6 * 256
    g = torch.Generator().manual_seed(seed)

    def entry():
        return [torch.randn(1, 77, ctx, generator=g), {"pooled_output": torch.randn(1, pooled, generator=g)}]

    return [entry()], [entry()]


DTYPE_NAMES = ("fp16", "bf16", "fp32", "fp8_e4m3fn")


def torch_dtype(name: str):
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32,
            "fp8_e4m3fn": torch.float8_e4m3fn}[name]


def parse_resolution(spec: str) -> tuple[int, bool]:
    """"1024" -> (1024, False); "4096t" -> (4096, True)."""
    tiled = spec.endswith("t")
    try:
        px = int(spec[:-1] if tiled else spec)
    except ValueError:
        raise argparse.ArgumentTypeError(f"resolution {spec!r}: give pixels, with a trailing t for tiled "
                                         "(e.g. 1024 or 4096t)") from None
    if px % 64:
        raise argparse.ArgumentTypeError(f"resolution {px} is not a multiple of 64 (SUPIR's work sizes are)")
    return px, tiled


# --- device helpers --------------------------------------------------------------------------------------------
def apply_vram_budget(budget_gib: float) -> dict:
    """Makes ComfyUI's memory manager and PyTorch's allocator behave as on a card with `budget_gib` GiB."""
    import torch

    import comfy.model_management as mm

    if not torch.cuda.is_available():
        raise SystemExit("--vram-budget needs a CUDA GPU (on the CPU there is no device memory to limit)")
    device = mm.get_torch_device()
    total = torch.cuda.mem_get_info(device)[1]
    budget = int(budget_gib * GIB)
    if not 0 < budget < total:
        raise SystemExit(f"--vram-budget {budget_gib} GiB must be above 0 and below this GPU's "
                         f"{total / GIB:.1f} GiB")
    hidden = total - budget
    torch.cuda.set_per_process_memory_fraction(budget / total, device)
    info = {"budget_gib": budget_gib, "device_total_gib": total / GIB}
    if hasattr(mm, "EXTRA_RESERVED_VRAM"):  # ComfyUI with --reserve-vram: the same setting, raised by `hidden`
        mm.EXTRA_RESERVED_VRAM += hidden
        info.update(method="reserve_vram", reserve_vram_gib=mm.EXTRA_RESERVED_VRAM / GIB)
    else:  # older ComfyUI: its free-memory query is the one place it learns how much it may use
        original = mm.get_free_memory

        def get_free_memory(dev=None, torch_free_too=False):
            out = original(dev, torch_free_too)
            if dev is not None and getattr(dev, "type", None) != "cuda":
                return out
            if torch_free_too:
                return max(0, out[0] - hidden), out[1]
            return max(0, out - hidden)

        mm.get_free_memory = get_free_memory
        info.update(method="get_free_memory minus the hidden memory")
    logger.info("simulating a %.1f GiB card on this %.1f GiB one (%s)", budget_gib, total / GIB, info["method"])
    return info


def load_state(patcher) -> dict:
    """How much of a ModelPatcher's model is on its load device, as ComfyUI's bookkeeping says."""
    size = patcher.model_size()
    lowvram = bool(getattr(patcher.model, "model_lowvram", getattr(patcher, "model_lowvram", False)))
    if hasattr(patcher, "loaded_size"):
        loaded = patcher.loaded_size()
    else:  # ComfyUI 2024.03 keeps no count: add up what sits on the load device
        loaded = sum(t.numel() * t.element_size() for t in [*patcher.model.parameters(), *patcher.model.buffers()]
                     if t.device == patcher.load_device or str(t.device) == str(patcher.load_device))
    return {"full": not lowvram and loaded >= 0.999 * size, "lowvram": lowvram, "loaded_gib": loaded / GIB,
            "size_gib": size / GIB}


class GraphLog(logging.Handler):
    """Collects what the sampler logs about CUDA graphs during a run, to tell whether it replayed graphs."""

    LOGGERS = ("cuda_graphs", "pipeline")

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "graph" in message.lower():
            self.messages.append(message)

    def __enter__(self):
        for name in self.LOGGERS:
            logging.getLogger(f"{PACK}.{name}").addHandler(self)
        return self

    def __exit__(self, *exc):
        for name in self.LOGGERS:
            logging.getLogger(f"{PACK}.{name}").removeHandler(self)
        return False

    def outcome(self, setting: str) -> str:
        """"off", "graph" (captured and replayed) or "eager" (fell back, partial load, or no CUDA)."""
        if setting == "off":
            return "off"
        text = " ".join(self.messages).lower()
        if "captured" in text and "eagerly" not in text:  # "... sampling eagerly: <why>" marks a fallback
            return "graph"
        return "eager"


class Stage:
    """One stage measured as the nodes measure it (supir_modules/stage_report.py: device synchronised at its start
    and end, peak statistics reset at its start), into `record`."""

    def __init__(self, name: str, record: dict):
        self.name, self.record = name, record
        self.meter = mod("stage_report").StageMeter(name)

    def __enter__(self):
        self.record["stage"] = self.name  # where an out-of-memory error happened
        self.meter.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.meter.__exit__(exc_type, exc, tb)
        if exc_type is not None:
            return False
        report = self.meter.report
        self.record[f"{self.name}_s"] = report.seconds
        self.record[f"peak_vram_{self.name}_gib"] = report.peak_vram_gib
        self.record[f"peak_reserved_{self.name}_gib"] = report.peak_reserved_gib
        return False


# --- one case --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    px: int
    tiled: bool
    steps: int
    cuda_graph: str = "auto"
    tile_batch: int = 1
    tile_px: int = 1024  # sampler tile and stride in pixels (the node's widgets; latent = px // 8)
    stride_px: int = 512
    encoder_tile: int = 512  # tiled VAE: encoder tile in pixels, decoder tile in latent pixels (node defaults)
    decoder_tile: int = 64

    @property
    def label(self) -> str:
        return f"{self.px}{' tiled' if self.tiled else ''}"


def settings_for(steps: int):
    presets = mod("presets")
    return presets.SamplerSettings(**{**presets.PRESETS["Fidelity"].as_dict(), "steps": steps})


def tiles_for(case: Case):
    return mod("pipeline").TileOptions(enabled=case.tiled, size=case.tile_px // 8, stride=case.stride_px // 8)


def window_count(case: Case) -> int:
    if not case.tiled:
        return 1
    n = case.px // 8
    return len(mod("tiled_sampling").sliding_windows(n, n, case.tile_px // 8, case.stride_px // 8))


def count_step_flops(supir, latents, pos, neg, case: Case) -> int:
    """FLOPs of one sampler step (every window of a tiled step), counted on an eager 1-step run."""
    from torch.utils.flop_counter import FlopCounterMode

    pipeline = mod("pipeline")
    accel = pipeline.Acceleration(cuda_graph="off", tile_batch=1)
    with FlopCounterMode(display=False) as counter:
        pipeline.sample(supir, latents, pos, neg, settings_for(1), seed=0, tiles=tiles_for(case), accel=accel)
    return counter.get_total_flops()


def run_once(supir, vae, case: Case, steps: int, record: dict) -> tuple[object, object]:
    """Encode -> sample -> decode + colour fix of one random image, as the nodes do, measured into `record`;
    -> (restored IMAGE, the SUPIR latents)."""
    import torch

    pipeline, images = mod("pipeline"), mod("images")
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, case.px, case.px, 3, generator=g)  # ComfyUI IMAGE: [B, H, W, C] in [0, 1]
    size = images.plan_size(case.px, case.px, 1.0, min(case.px, 1024))
    pos, neg = conditioning(supir)
    accel = pipeline.Acceleration(cuda_graph=case.cuda_graph, tile_batch=case.tile_batch)
    sampling = Stage("sample", record)

    def on_step(i, n, x, denoised):
        sampling.meter.step_done()  # the only sync inside sampling: when step 1 has finished
        if record["sampling_load"] is None:
            record["sampling_load"] = {"sdxl": load_state(supir.sdxl), "adaptor": load_state(supir.adaptor)}

    t_start = time.perf_counter()
    with Stage("encode", record):
        x = images.prepare_batch(image, size)
        r = pipeline.run_stage1(supir, vae, x, seed=0, tiled=case.tiled, encoder_tile=case.encoder_tile,
                                decoder_tile=case.decoder_tile)
        latents = pipeline.SupirLatents(r.control_latent, r.center_latent, (size.out_h, size.out_w), supir.source)
    with sampling, GraphLog() as graph_log:
        samples = pipeline.sample(supir, latents, pos, neg, settings_for(steps), seed=0, tiles=tiles_for(case),
                                  callback=on_step, accel=accel)
    record["cuda_graph_outcome"] = graph_log.outcome(case.cuda_graph)
    record["cuda_graph_log"] = graph_log.messages
    with Stage("decode", record):
        decoded = pipeline.decode(vae, samples, case.tiled, case.decoder_tile)
        # the colour reference as Decode gets it: Encode's stage-1 IMAGE output
        reference = images.from_comfy_image(images.to_comfy_image(r.stage1))
        restored = pipeline.finish(decoded, reference, "Wavelet", (size.out_h, size.out_w), None)
    record["end_to_end_s"] = time.perf_counter() - t_start
    record["ms_per_step"] = sampling.meter.report.ms_per_step
    del record["stage"]
    return restored, latents


STAGES = ("encode", "sample", "decode")


def _empty_record() -> dict:
    record: dict = {"encode_s": None, "sample_s": None, "decode_s": None, "end_to_end_s": None, "ms_per_step": None,
                    "sampling_load": None, "cuda_graph_outcome": None, "cuda_graph_log": [], "error": None}
    for s in STAGES:
        record[f"peak_vram_{s}_gib"] = record[f"peak_reserved_{s}_gib"] = None
    return record


def _free_after_oom() -> None:
    import gc

    import comfy.model_management as mm

    gc.collect()
    mm.unload_all_models()
    mm.soft_empty_cache()


def run_case(supir, vae, case: Case, warmup_steps: int, cold: bool, flop_cache: dict) -> dict:
    """One row: warm-up, timed run, FLOPs of a step. Running out of device memory (under --vram-budget) is a
    result too: the row says in which stage, and the benchmark goes on."""
    import torch

    import comfy.model_management as mm

    row = {"resolution": case.px, "tiled": case.tiled, "windows": window_count(case), "steps": case.steps,
           "cuda_graph": case.cuda_graph, "tile_batch": case.tile_batch}
    record = _empty_record()
    try:
        if warmup_steps > 0:
            run_once(supir, vae, case, warmup_steps, _empty_record())
        if cold:
            mm.unload_all_models()
            mm.soft_empty_cache()
        restored, latents = run_once(supir, vae, case, case.steps, record)
    except torch.OutOfMemoryError as e:
        stage = record.pop("stage", "?")
        logger.warning("out of device memory in the %s stage: %s", stage, str(e).splitlines()[0])
        record["error"] = f"out of memory ({stage})"
        _free_after_oom()
        return {**row, **record, "peak_vram_gib": None, "peak_reserved_gib": None, "tflop_per_step": None,
                "achieved_tflops": None}
    if tuple(restored.shape) != (1, case.px, case.px, 3):
        raise RuntimeError(f"the restored image is {tuple(restored.shape)}, expected (1, {case.px}, {case.px}, 3)")
    key = (case.px, case.tiled)
    if key not in flop_cache:
        pos, neg = conditioning(supir)
        flop_cache[key] = count_step_flops(supir, latents, pos, neg, case)
    flops = flop_cache[key]
    per_step = record["ms_per_step"]
    peaks = [record[f"peak_vram_{s}_gib"] for s in STAGES]
    reserved = [record[f"peak_reserved_{s}_gib"] for s in STAGES]
    return {
        **row, **record,
        "peak_vram_gib": max(peaks) if None not in peaks else None,
        "peak_reserved_gib": max(reserved) if None not in reserved else None,
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / 1e12 / (per_step / 1000) if per_step else None,
    }


# --- report ----------------------------------------------------------------------------------------------------
def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _loaded(state: dict | None) -> str:
    if not state:
        return "-"
    if state["full"]:
        return "full"
    return f"partial {state['loaded_gib']:.1f}/{state['size_gib']:.1f} GiB"


COLUMNS = ("resolution", "weights", "CUDA graph: setting -> ran", "tile batch", "ms/step", "encode s", "sample s",
           "decode s", "end-to-end s", "peak GiB encode/sample/decode", "peak GiB",
           "loaded for sampling: SDXL / adaptor", "TFLOP/step", "TFLOP/s")


def format_table(result: dict) -> str:
    budget = result.get("vram_budget")
    head = (f"Device: {result['device']}; torch {result['torch']}; ComfyUI {result['comfy']}; "
            f"{result['steps']} steps, restore_edm (Fidelity), CFG as a batch of 2; "
            f"{'cold start (models offloaded first)' if result['cold'] else 'warm start (after a warm-up run)'}"
            + (f"; VRAM budget {budget['budget_gib']:g} GiB" if budget else ""))
    lines = [head, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in result["rows"]:
        windows = f" ({r['windows']} windows)" if r["tiled"] else ""
        peaks = "/".join(_f(r[f"peak_vram_{s}_gib"], ".2f") for s in STAGES)
        load = r.get("sampling_load") or {}
        graph = r["cuda_graph"]
        if graph != "off":
            graph += f" -> {r['cuda_graph_outcome'] or '-'}"
        cells = [f"{r['resolution']}{' tiled' if r['tiled'] else ''}{windows}", r["dtype"], graph,
                 str(r["tile_batch"]), _f(r["ms_per_step"], ".1f"), _f(r["encode_s"], ".2f"),
                 _f(r["sample_s"], ".2f"), _f(r["decode_s"], ".2f"), _f(r["end_to_end_s"], ".2f"), peaks,
                 r.get("error") or _f(r["peak_vram_gib"], ".2f"),
                 f"{_loaded(load.get('sdxl'))} / {_loaded(load.get('adaptor'))}",
                 _f(r["tflop_per_step"], ".4g"), _f(r["achieved_tflops"], ".3g")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.processor() or platform.machine()})"


def comfy_version(comfy_root: Path) -> str:
    """ComfyUI's version string where the copy has one (0.3.x), else the folder's name."""
    version_file = comfy_root / "comfyui_version.py"
    if version_file.is_file():
        for line in version_file.read_text().splitlines():
            if line.startswith("__version__"):
                return line.split("=", 1)[1].strip().strip("\"'")
    return comfy_root.name


def previous_rows(path: Path | None, result: dict) -> list:
    """The rows of an earlier run in `path` when it was measured the same way as `result` (--append)."""
    if path is None or not path.is_file():
        raise SystemExit(f"--append: there is no earlier results file{f' at {path}' if path else ''} (pass --json)")
    earlier = json.loads(path.read_text())
    differ = [k for k in result if k != "rows" and earlier.get(k) != result[k]]
    if differ:
        what = ", ".join(f"{k}: {earlier.get(k)!r} there, {result[k]!r} here" for k in differ)
        raise SystemExit(f"--append: {path} was measured differently ({what}); write to another --json file")
    return earlier["rows"]


# --- command line ----------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy-root", type=Path, default=REPO / ".runtime" / "comfy-0.3.75")
    ap.add_argument("--layout", type=Path, default=REPO.parent / "shared" / "fixtures" / "supir_v0_layout.json")
    ap.add_argument("--resolutions", nargs="+", type=parse_resolution, default=None,
                    help="square sizes in pixels, t = tiled sampling + tiled VAE (default 1024 2048 4096t; "
                         "--tiny: 128 128t)")
    ap.add_argument("--dtypes", nargs="+", choices=DTYPE_NAMES, default=None,
                    help="weight storage dtypes (default fp16 bf16 fp8_e4m3fn; --tiny: fp32)")
    ap.add_argument("--steps", type=int, default=50, help="sampler steps (at least 2)")
    ap.add_argument("--cuda-graph", nargs="+", choices=CUDA_GRAPH_CHOICES, default=["auto"],
                    help="the sampler's CUDA-graph setting; one row per value (default auto)")
    ap.add_argument("--tile-batch", type=int, default=1, help="windows per network call in tiled sampling")
    ap.add_argument("--tile", type=int, default=None, help="sampler tile in pixels (default 1024; --tiny: 64)")
    ap.add_argument("--tile-stride", type=int, default=None, help="sampler tile stride in pixels (default 512; "
                    "--tiny: 32)")
    ap.add_argument("--vae-tiles", type=int, nargs=2, default=None, metavar=("ENCODER_PX", "DECODER_LATENT"),
                    help="tiled VAE tile sizes (default 512 64, the nodes' defaults; --tiny: 64 8)")
    ap.add_argument("--vram-budget", type=float, default=None, metavar="GIB",
                    help="simulate a card with GIB of memory (ComfyUI's reserve + a hard allocator limit)")
    ap.add_argument("--warmup-steps", type=int, default=2, help="steps of the untimed warm-up run before each row "
                    "(0: none)")
    ap.add_argument("--cold", action="store_true", help="offload all models before each timed run")
    ap.add_argument("--json", type=Path, default=None, help=f"results file (default {DEFAULT_JSON.relative_to(REPO)};"
                    " with --tiny none)")
    ap.add_argument("--append", action="store_true", help="add the rows to those already in the --json file (same "
                    "device, versions and settings), and print them all: split a long run into several commands")
    ap.add_argument("--tiny", action="store_true", help="smoke-test this script on the tests' tiny models (CPU)")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.steps < 2:
        ap.error("--steps must be at least 2 (ms/step leaves out the first step)")
    if args.tile_batch < 1:
        ap.error("--tile-batch must be at least 1")
    tiny = args.tiny
    resolutions = args.resolutions or ([(128, False), (128, True)] if tiny else
                                       [(1024, False), (2048, False), (4096, True)])
    dtypes = args.dtypes or (["fp32"] if tiny else ["fp16", "bf16", "fp8_e4m3fn"])
    tile_px = args.tile or (64 if tiny else 1024)
    stride_px = args.tile_stride or (32 if tiny else 512)
    encoder_tile, decoder_tile = args.vae_tiles or ((64, 8) if tiny else (512, 64))
    json_path = args.json or (None if tiny else DEFAULT_JSON)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    import_runtime(args.comfy_root, cpu=not torch.cuda.is_available())
    require_acceleration()
    import comfy.model_management as mm

    budget = apply_vram_budget(args.vram_budget) if args.vram_budget is not None else None
    result = {"device": device_name(), "torch": torch.__version__, "comfy": comfy_version(args.comfy_root),
              "tiny": tiny, "steps": args.steps, "cold": args.cold, "warmup_steps": args.warmup_steps,
              "vram_budget": budget, "rows": []}
    if args.append:
        result["rows"] = previous_rows(json_path, result)
    device = mm.get_torch_device()
    shapes = load_shapes(args.layout, tiny)
    rows = result["rows"]
    for name in dtypes:
        supir, vae = build_models(shapes, device, torch_dtype(name))
        flop_cache: dict = {}
        for px, tiled in resolutions:
            for graph in args.cuda_graph:
                case = Case(px, tiled, args.steps, graph, args.tile_batch, tile_px, stride_px, encoder_tile,
                            decoder_tile)
                logger.info("running %s, %s weights, CUDA graph %s, tile batch %d ...", case.label, name, graph,
                            args.tile_batch)
                row = run_case(supir, vae, case, args.warmup_steps, args.cold, flop_cache)
                rows.append({"dtype": name, "compute_dtype": str(supir.compute_dtype).replace("torch.", ""), **row,
                             "case": asdict(case)})
        del supir, vae
        mm.unload_all_models()
        mm.soft_empty_cache()
    sys.stdout.write(format_table(result))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=1) + "\n")
        logger.info("wrote %s", json_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
