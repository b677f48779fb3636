"""Speed and memory of the pack's real code paths on full-size SUPIR + SDXL with random weights.

    .venv/bin/python benchmarks/bench_supir.py [--resolutions 1024 2048 4096t] [--dtypes fp16 bf16 fp8_e4m3fn]
                                               [--steps 50] [--json benchmarks/results.json]

Builds SDXL's UNet (ComfyUI's own model), the SUPIR adaptor and the VAEs in the official shapes
(../shared/fixtures/supir_v0_layout.json) with random weights on the device (nothing is downloaded), then runs
the nodes' stage functions: `pipeline.run_stage1`, `pipeline.sample` (restore_edm, CFG batched) and
`pipeline.decode`. "4096t" means tiled sampling (tile 1024 px, stride 512) and tiled VAE. FLOPs of one sampler
step are counted with torch.utils.flop_counter. Prints a Markdown table and writes JSON.
`--tiny` runs the same code on the tests' tiny models (a CPU smoke test of this script, not a benchmark).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK = "fsupir_bench"
logger = logging.getLogger("bench")


def _import_runtime(comfy_root: Path, cpu: bool):
    sys.path.insert(0, str(comfy_root))
    import comfy.cli_args

    comfy.cli_args.args.cpu = cpu
    spec = importlib.util.spec_from_file_location(PACK, REPO / "supir_modules" / "__init__.py",
                                                  submodule_search_locations=[str(REPO / "supir_modules")])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)


def _mod(name: str):
    return importlib.import_module(f"{PACK}.{name}")


def _random_like(shapes: dict, prefix: str, device, dtype, strip: bool = True, drop: tuple = ()) -> dict:
    import torch

    out = {}
    g = torch.Generator(device=device).manual_seed(0)
    for k, shape in shapes.items():
        if not k.startswith(prefix) or any(d in k for d in drop):
            continue
        t = torch.randn(shape, generator=g, device=device, dtype=torch.float32) * 0.02
        if k.endswith(("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight", "norm_out.weight")):
            t = torch.ones(shape, device=device)
        out[k[len(prefix):] if strip else k] = t.to(dtype)
    return out


def build_models(shapes: dict, device, weight_dtype, num_head_channels: int = 64):
    """SupirModel + ComfyUI VAE with random weights of the given shapes, stored in `weight_dtype`."""
    import torch

    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.supported_models

    config, model_mod = _mod("config"), _mod("model")
    meta = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    usd = {k: v for k, v in meta.items() if k.startswith("model.diffusion_model.") and ".project_modules." not in k}
    unet_config = comfy.model_detection.detect_unet_config(usd, "model.diffusion_model.")
    model_config = comfy.supported_models.SDXL(unet_config)
    model_config.unet_config["num_head_channels"] = num_head_channels
    compute = torch.float16 if weight_dtype == torch.float8_e4m3fn else weight_dtype
    model_config.set_inference_dtype(weight_dtype, None if compute == weight_dtype else compute)
    model = model_config.get_model({}, "", device=device)
    model.load_model_weights(_random_like(shapes, "model.diffusion_model.", device, weight_dtype, strip=False,
                                          drop=(".project_modules.",)), "model.diffusion_model.")
    sdxl = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=mm.unet_offload_device())

    vae_sd = _random_like(shapes, "first_stage_model.", device, torch.float32, drop=("denoise_encoder",))
    ddconfig = config.decoder_config_from_state_dict(vae_sd)
    vae = comfy.sd.VAE(sd={k: v.cpu() for k, v in vae_sd.items()},
                       config={"params": {"embed_dim": ddconfig["z_channels"], "ddconfig": ddconfig}})
    control = _random_like(shapes, "model.control_model.", device, weight_dtype, drop=("mask_LQ",))
    connectors = _random_like(shapes, "model.diffusion_model.project_modules.", device, weight_dtype)
    encoder = _random_like(shapes, "first_stage_model.denoise_encoder.", "cpu", torch.float32)
    choice = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(weight_dtype, "fp8_e4m3fn")
    supir = model_mod.make_supir_model(sdxl, vae, control, connectors, encoder, "random weights", choice,
                                       num_head_channels=num_head_channels)
    return supir, vae


def _conditioning(supir):
    import torch

    unet = supir.sdxl.model.diffusion_model
    ctx = _mod("unet").context_dim(unet)
    pooled = unet.label_emb[0][0].in_features - 6 * 256
    g = torch.Generator().manual_seed(1)
    entry = [torch.randn(1, 77, ctx, generator=g), {"pooled_output": torch.randn(1, pooled, generator=g)}]
    return [entry], [[torch.randn(1, 77, ctx, generator=g), {"pooled_output": torch.randn(1, pooled, generator=g)}]]


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_case(supir, vae, px: int, tiled: bool, steps: int) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    pipeline, presets, images = _mod("pipeline"), _mod("presets"), _mod("images")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    x = torch.rand(1, px, px, 3)
    size = images.plan_size(px, px, 1.0, min(px, 1024))
    lq = images.prepare_batch(x, size)
    t0 = time.perf_counter()
    r = pipeline.run_stage1(supir, vae, lq, seed=0, tiled=tiled, encoder_tile=512, decoder_tile=64)
    _sync()
    t1 = time.perf_counter()
    latents = pipeline.SupirLatents(r.control_latent, r.center_latent, (px, px), supir.source)
    pos, neg = _conditioning(supir)
    settings = presets.PRESETS["Fidelity"]
    settings = presets.SamplerSettings(**{**settings.as_dict(), "steps": steps})
    tiles = pipeline.TileOptions(enabled=tiled, size=128, stride=64)
    stamps = []

    def on_step(i, n, xx, den):
        _sync()
        stamps.append(time.perf_counter())

    pipeline.sample(supir, latents, pos, neg, settings, seed=0, tiles=tiles, callback=on_step)
    t2 = time.perf_counter()
    out = pipeline.decode(vae, torch.zeros(1, 4, px // 8, px // 8), tiled, 64)
    _sync()
    t3 = time.perf_counter()
    assert out.shape[-1] == px
    # Steady-state step time: skip the first step (warm-up, model loading).
    per_step = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    flops = None
    if not tiled:
        flop_steps = presets.SamplerSettings(**{**settings.as_dict(), "steps": 1})
        with FlopCounterMode(display=False) as fc:
            pipeline.sample(supir, latents, pos, neg, flop_steps, seed=0, tiles=tiles)
        flops = fc.get_total_flops()
    return {
        "resolution": px, "tiled": tiled, "steps": steps, "encode_s": t1 - t0, "sample_s": t2 - t1,
        "decode_s": t3 - t2, "end_to_end_s": t3 - t0, "ms_per_step": per_step * 1000,
        "peak_vram_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else None,
        "tflop_per_step": flops / 1e12 if flops else None,
        "achieved_tflops": flops / 1e12 / per_step if flops else None,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy-root", type=Path, default=REPO / ".runtime" / "comfy-0.3.75")
    ap.add_argument("--layout", type=Path, default=REPO.parent / "shared" / "fixtures" / "supir_v0_layout.json")
    ap.add_argument("--resolutions", nargs="+", default=["1024", "2048", "4096t"])
    ap.add_argument("--dtypes", nargs="+", default=["fp16", "bf16", "fp8_e4m3fn"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results.json")
    ap.add_argument("--tiny", action="store_true", help="smoke-test this script on the tests' tiny models (CPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    _import_runtime(args.comfy_root, cpu=not torch.cuda.is_available())
    import comfy.model_management as mm

    device = mm.get_torch_device()
    if args.tiny:
        sys.path.insert(0, str(REPO / "tests"))
        import tiny_models

        sdxl = tiny_models.tiny_sdxl_state_dict(0)
        shapes = {k: tuple(v.shape) for k, v in {**sdxl, **tiny_models.tiny_supir_state_dict(sdxl, 0)}.items()}
    else:
        shapes = {k: tuple(v) for k, v in json.loads(args.layout.read_text())["shapes"].items()}
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp8_e4m3fn": torch.float8_e4m3fn}
    rows = []
    for name in args.dtypes:
        supir, vae = build_models(shapes, device, dtypes[name])
        for res in args.resolutions:
            tiled = res.endswith("t")
            px = int(res.rstrip("t"))
            logger.info("running %s px%s, %s ...", px, " tiled" if tiled else "", name)
            rows.append({"dtype": name, **run_case(supir, vae, px, tiled, args.steps)})
        del supir, vae
        mm.unload_all_models()
        mm.soft_empty_cache()
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "CPU"
    header = ("| resolution | dtype | ms/step | end-to-end s | peak VRAM GiB | TFLOP/step | TFLOP/s |\n"
              "|---|---|---|---|---|---|---|")
    lines = [f"Device: {device_name}; torch {torch.__version__}; {args.steps} steps, CFG (batch 2)", "", header]
    for r in rows:
        fmt = lambda v, f: (f % v) if v is not None else "-"  # noqa: E731
        lines.append(f"| {r['resolution']}{' tiled' if r['tiled'] else ''} | {r['dtype']} | {r['ms_per_step']:.1f} | "
                     f"{r['end_to_end_s']:.2f} | {fmt(r['peak_vram_gib'], '%.2f')} | {fmt(r['tflop_per_step'], '%.2f')}"
                     f" | {fmt(r['achieved_tflops'], '%.0f')} |")
    sys.stdout.write("\n".join(lines) + "\n")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"device": device_name, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
