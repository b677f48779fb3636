"""Checks that the sampler's fast paths compute what the plain path computes, on full-size random weights.

    .venv/bin/python benchmarks/check_fast_paths.py [--dtypes fp16] [--steps 10] [--tol REL] [--json out.json]
    .venv/bin/python benchmarks/check_fast_paths.py --tiny        # CPU smoke test on the tests' tiny models

Builds the models as benchmarks/bench_supir.py does (official shapes, random weights), then runs `steps` steps of
`pipeline.sample` (restore_edm, Fidelity preset, CFG) on the same random SUPIR latents, seed and conditioning:
- 1024 px untiled: cuda_graph off (the plain path, the reference) against cuda_graph auto;
- 2048 px tiled (tile 1024, stride 512: 9 windows): the plain path against every combination of
  cuda_graph auto/off and tile_batch 1/2/4 (4 leaves a last, short batch).
The plain path is also run twice, to show the run-to-run noise floor. For each variant it prints the largest
absolute difference of the final latents, that difference relative to the largest |value| of the reference,
and pass/fail against the weight dtype's tolerance (--tol overrides it). On CUDA a cuda_graph=auto variant
that did not replay graphs (capture failed, its check against eager failed, or a partial load) fails too,
since then nothing was checked (--allow-eager accepts it). Exits 1 if anything failed.

--tiny: CPU, fp32, 128 px (tiled: tile 64, stride 32, 9 windows). Graphs are CUDA-only, so cuda_graph=auto
runs eagerly there; where `Acceleration` takes a capture backend, an extra variant drives the graph
bookkeeping (static buffers, copies, the check against eager) with a CPU stand-in that recomputes on replay.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_supir as bench  # noqa: E402

logger = logging.getLogger("check_fast_paths")

# Largest |fast - plain| / max|plain| of the final latents after the run. Graph replays normally agree bit for
# bit; batching windows changes matrix shapes and so kernel choice and summation order, and the difference
# is carried through every later step. fp8 weights compute in fp16.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "fp8_e4m3fn": 1e-2, "bf16": 5e-2}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    cuda_graph: str
    tile_batch: int = 1
    stand_in: bool = False  # capture with cuda_graphs.RecomputingCapture (CPU runs)

    def accel(self, Acceleration):
        extra = {"capture_backend": bench.mod("cuda_graphs").RecomputingCapture()} if self.stand_in else {}
        return Acceleration(cuda_graph=self.cuda_graph, tile_batch=self.tile_batch, **extra)


PLAIN = Variant("plain (cuda_graph off, tile_batch 1)", "off")


def variants(tiled: bool, stand_in: bool) -> list[Variant]:
    out = [Variant("plain, again (noise floor)", "off"), Variant("cuda_graph auto", "auto")]
    if stand_in:
        out.append(Variant("graph bookkeeping, CPU stand-in capture", "auto", stand_in=True))
    if tiled:
        for tb in (2, 4):
            out.append(Variant(f"tile_batch {tb}", "off", tb))
        for tb in (2, 4):
            out.append(Variant(f"cuda_graph auto + tile_batch {tb}", "auto", tb))
        if stand_in:
            out.append(Variant("stand-in capture + tile_batch 4", "auto", 4, stand_in=True))
    return out


def compare(out, ref) -> dict:
    import torch

    diff = (out.float() - ref.float()).abs()
    scale = float(ref.abs().max())
    max_abs = float(diff.max())
    finite = bool(torch.isfinite(out).all())
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else float("inf"), "finite": finite,
            "ref_max_abs": scale}


def run_variant(supir, latents, case: bench.Case, variant: Variant, Acceleration):
    pipeline = bench.mod("pipeline")
    pos, neg = bench.conditioning(supir)
    with bench.GraphLog() as log:
        out = pipeline.sample(supir, latents, pos, neg, bench.settings_for(case.steps), seed=0,
                              tiles=bench.tiles_for(case), accel=variant.accel(Acceleration))
    ran = log.outcome(variant.cuda_graph)
    if variant.stand_in and ran == "graph":
        ran = "stand-in"
    return out, ran, log.messages


def random_latents(case: bench.Case, source: str):
    import torch

    pipeline = bench.mod("pipeline")
    g = torch.Generator().manual_seed(3)
    n = case.px // 8
    control, center = torch.randn(2, 1, 4, n, n, generator=g)
    return pipeline.SupirLatents(control, center, (case.px, case.px), source)


def format_table(rows: list[dict]) -> str:
    lines = ["| case | weights | variant | ran | max abs diff | max rel diff | tolerance | result |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['dtype']} | {r['variant']} | {r['ran']} | {r['max_abs']:.3e} | "
                     f"{r['max_rel']:.3e} | {r['tolerance']:.0e} | {'pass' if r['passed'] else 'FAIL: ' + r['why']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfy-root", type=Path, default=bench.REPO / ".runtime" / "comfy-0.3.75")
    ap.add_argument("--layout", type=Path, default=bench.REPO.parent / "shared" / "fixtures" / "supir_v0_layout.json")
    ap.add_argument("--dtypes", nargs="+", choices=bench.DTYPE_NAMES, default=None,
                    help="weight storage dtypes (default fp16; --tiny: fp32)")
    ap.add_argument("--steps", type=int, default=10, help="sampler steps per run")
    ap.add_argument("--tol", type=float, default=None, help="relative tolerance for every dtype (default: "
                    + ", ".join(f"{k} {v:g}" for k, v in TOLERANCE.items()) + ")")
    ap.add_argument("--allow-eager", action="store_true", help="on CUDA, accept cuda_graph=auto running eagerly")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke test on the tests' tiny models")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    bench.import_runtime(args.comfy_root, cpu=not torch.cuda.is_available())
    Acceleration = bench.require_acceleration()
    import comfy.model_management as mm

    on_cuda = torch.cuda.is_available()
    stand_in = not on_cuda and "capture_backend" in {f.name for f in dataclasses.fields(Acceleration)}
    if args.tiny:
        cases = [bench.Case(128, False, args.steps, tile_px=64, stride_px=32),
                 bench.Case(128, True, args.steps, tile_px=64, stride_px=32)]
    else:
        cases = [bench.Case(1024, False, args.steps), bench.Case(2048, True, args.steps)]
    dtypes = args.dtypes or (["fp32"] if args.tiny else ["fp16"])
    device = mm.get_torch_device()
    shapes = bench.load_shapes(args.layout, args.tiny)
    rows = []
    for name in dtypes:
        tol = args.tol if args.tol is not None else TOLERANCE[name]
        supir, vae = bench.build_models(shapes, device, bench.torch_dtype(name))
        for case in cases:
            latents = random_latents(case, supir.source)
            label = f"{case.label} ({bench.window_count(case)} windows)" if case.tiled else case.label
            logger.info("%s, %s weights: plain path ...", label, name)
            ref, _, _ = run_variant(supir, latents, case, PLAIN, Acceleration)
            for v in variants(case.tiled, stand_in):
                logger.info("%s, %s weights: %s ...", label, name, v.name)
                out, ran, messages = run_variant(supir, latents, case, v, Acceleration)
                if out.shape != ref.shape:
                    raise RuntimeError(f"{v.name} returned latents of shape {tuple(out.shape)}, the plain path "
                                       f"{tuple(ref.shape)}")
                row = {"case": label, "dtype": name, "variant": v.name, "cuda_graph": v.cuda_graph,
                       "tile_batch": v.tile_batch, "ran": ran, "tolerance": tol, "log": messages,
                       **compare(out, ref)}
                why = []
                if not row["finite"]:
                    why.append("non-finite values")
                if not row["max_rel"] <= tol:
                    why.append(f"differs by {row['max_rel']:.2e} > {tol:.0e}")
                if on_cuda and v.cuda_graph == "auto" and ran != "graph" and not args.allow_eager:
                    why.append("ran eagerly, so the graph path was not checked: " + ("; ".join(messages) or "?"))
                if v.stand_in and ran != "stand-in":
                    why.append("the stand-in capture was not used: " + ("; ".join(messages) or "?"))
                row.update(passed=not why, why="; ".join(why))
                rows.append(row)
        del supir, vae
        mm.unload_all_models()
        mm.soft_empty_cache()
    sys.stdout.write(f"Device: {bench.device_name()}; torch {torch.__version__}; ComfyUI "
                     f"{bench.comfy_version(args.comfy_root)}; {args.steps} steps\n\n" + format_table(rows))
    failed = [r for r in rows if not r["passed"]]
    sys.stdout.write(f"\n{len(rows) - len(failed)} passed, {len(failed)} failed\n")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": bench.device_name(), "torch": torch.__version__,
                                         "steps": args.steps, "rows": rows}, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
