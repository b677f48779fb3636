"""``python -m fsupir_cli benchmark``: degrade clean images with a fixed protocol, restore them with an API workflow
on a running ComfyUI, score them against the clean images and write ``results.json`` and ``results.md``.

Protocols (image i of the sorted folder gets seed S + i, so every run degrades identically):
- spire: SPIRE's parameterised synthesis (supir_modules/degrade.py, the Degrade Image node with random on): each of
  blur / downsample / noise / JPEG kept with probability 0.5, parameters uniform in degrade.SPIRE_RANGES.
- realesrgan: Real-ESRGAN's second-order degradation with the x4plus settings, LQ = clean / 4.
Each clean image is first cropped (top-left) to the largest size that the protocol's scale factor maps back onto
itself (degrade.crop_for_factor), and the workflow restores to that size: the benchmark sets every FSUPIR_Encode's
``upscale`` to the factor. The LoadImage node gets the degraded image and, unless --no-instruction, every
FSUPIR_Conditioner gets the degradation's restoration prompt as ``restoration_instruction``. Scores: PSNR / SSIM on
Y with crop border = ceil(factor) (0 without downscaling), LPIPS with --lpips when its weights are local; the
bicubic upscale of the LQ image is scored too, as a baseline.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import torch
from PIL import Image

from .client import TIMEOUT, ComfyClient, ComfyError
from .image_files import IMAGE_SUFFIXES, image_files
from .metrics_cmd import lpips_note, lpips_scorer_or_none, score_json
from .run import UsageError, load_workflow

try:
    from ..supir_modules import degrade, metrics
except ImportError:  # `python -m fsupir_cli` from the pack's folder: supir_modules is a top-level package
    from supir_modules import degrade, metrics

logger = logging.getLogger(__name__)
PROTOCOLS = {
    "spire": "SPIRE parameterised (random per image from seed + index: each of blur / downsample / noise / JPEG "
             "kept with probability 0.5, ranges in supir_modules/degrade.py SPIRE_RANGES)",
    "realesrgan": "Real-ESRGAN second-order degradation, x4plus settings, LQ = clean / 4 (seed + index)",
}
REALESRGAN_SCALE = 4.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", required=True, help="ComfyUI base URL, e.g. http://127.0.0.1:8188")
    parser.add_argument("--clean", required=True, type=Path, help="folder of clean images")
    parser.add_argument("--workflow", required=True, type=Path,
                        help="API-format workflow (LoadImage -> ... -> SaveImage), "
                             "e.g. workflows/api/basic_restore.json")
    parser.add_argument("--out", required=True, type=Path, help="folder for results.json, results.md and images")
    parser.add_argument("--protocol", choices=["spire", "realesrgan", "both"], default="both")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0 = all)")
    parser.add_argument("--seed", type=int, default=0, help="image i is degraded with seed + i (default 0)")
    parser.add_argument("--no-instruction", action="store_true",
                        help="do not give the restoration prompt to the Conditioner")
    parser.add_argument("--lpips", action="store_true", help="add LPIPS if its weights are local (never downloads)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per restoration")


@dataclass
class Row:
    image: str
    seed: int
    degradation: str
    params: dict
    upscale: float
    crop_border: int
    size: tuple  # clean (cropped) width, height
    lq_size: tuple
    restored: metrics.Score | None = None
    bicubic: metrics.Score | None = None
    seconds: float = 0.0
    error: str | None = None

    def as_json(self) -> dict:
        return {"image": self.image, "seed": self.seed, "degradation": self.degradation, "params": self.params,
                "upscale": self.upscale, "crop_border": self.crop_border, "size": list(self.size),
                "lq_size": list(self.lq_size), "restored": score_json(self.restored),
                "bicubic": score_json(self.bicubic), "seconds": round(self.seconds, 2), "error": self.error}


@dataclass
class ProtocolResult:
    name: str
    rows: list[Row] = field(default_factory=list)

    def means(self) -> dict:
        ok = [r for r in self.rows if r.restored is not None]
        if not ok:
            return {}
        return {"restored": metrics.mean_score([r.restored for r in ok]),
                "bicubic": metrics.mean_score([r.bicubic for r in ok])}


# ------------------------------------------------------------------------------------------- workflow ------
def benchmark_workflow(path: Path) -> dict:
    """The API workflow in `path` (run.load_workflow) if the benchmark can drive it: one LoadImage for the degraded
    image, no degradation of its own; UsageError or ValueError otherwise."""
    data = load_workflow(path)
    loaders = [k for k, v in data.items() if v["class_type"] == "LoadImage"]
    if len(loaders) != 1:
        raise ValueError(f"{path} has {len(loaders)} LoadImage nodes: the benchmark needs exactly one, for the "
                         "degraded image")
    if any(v["class_type"] == "FSUPIR_DegradeImage" for v in data.values()):
        raise ValueError(f"{path} degrades again (FSUPIR_DegradeImage): remove that node, the benchmark degrades")
    if not any(v["class_type"] == "FSUPIR_Encode" for v in data.values()):
        logger.warning("%s has no FSUPIR_Encode: it must restore to the clean size by itself", path)
    return data


def patch_workflow(workflow: dict, image_name: str, upscale: float, instruction: str | None) -> dict:
    """A copy with the degraded image, Encode's upscale and (optionally) the Conditioner's instruction set."""
    wf = copy.deepcopy(workflow)
    for node in wf.values():
        inputs = node.setdefault("inputs", {})
        if node["class_type"] == "LoadImage":
            inputs["image"] = image_name
        elif node["class_type"] == "FSUPIR_Encode":
            inputs["upscale"] = upscale
        elif node["class_type"] == "FSUPIR_Conditioner" and instruction is not None:
            inputs["restoration_instruction"] = instruction
    return wf


# ------------------------------------------------------------------------------------------- images --------
def to_image(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).float().div(255).unsqueeze(0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image[0, ..., :3].double().numpy() * 255).round().clip(0, 255).astype(np.uint8)


def degrade_for(protocol: str, clean: torch.Tensor, seed: int):
    """(cropped clean, degraded result, factor) for one image under `protocol`."""
    if protocol == "spire":
        factor = degrade.sample_spire_params(np.random.default_rng(seed)).rounded().downsample
    else:
        factor = REALESRGAN_SCALE
    h, w = degrade.crop_for_factor(clean.shape[1], clean.shape[2], factor)
    clean = clean[:, :h, :w].contiguous()
    if protocol == "spire":  # the same draws as the Degrade Image node with random on and this seed
        result = degrade.degrade_parameterised(clean, seed=seed, random=True)
    else:
        result = degrade.degrade_realesrgan(clean, seed=seed, scale=factor)
    return clean, result, factor


def bicubic_up(lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    x = torch.nn.functional.interpolate(lq.permute(0, 3, 1, 2), size=size, mode="bicubic", align_corners=False)
    return x.clamp(0, 1).permute(0, 2, 3, 1)


def saved_images(entry: dict, prefer_nodes: list[str]) -> list[dict]:
    """Image records of a /history entry: those of `prefer_nodes` (e.g. the SaveImage nodes) first."""
    outputs = entry.get("outputs", {})
    order = [n for n in prefer_nodes if n in outputs] + [n for n in outputs if n not in prefer_nodes]
    return [img for n in order for img in outputs[n].get("images", [])]


# ------------------------------------------------------------------------------------------- run -----------
async def restore(client: ComfyClient, lq: Path, upload_name: str, workflow: dict, save_nodes: list[str],
                  factor: float, instruction: str | None, timeout: float) -> Image.Image:
    """Runs the workflow on ComfyUI for the degraded image `lq`; the first saved image. ComfyError on failure."""
    name = await client.upload_image(lq, name=upload_name)
    prompt = patch_workflow(workflow, name, factor, instruction)
    try:
        entry = await asyncio.wait_for(client.run(prompt), timeout)
    except asyncio.TimeoutError:
        raise ComfyError(f"the restoration did not finish within {timeout:.0f} s") from None
    images = saved_images(entry, save_nodes)
    if not images:
        raise ComfyError("the workflow produced no image: end it with a SaveImage node")
    return Image.open(io.BytesIO(await client.download(images[0]))).convert("RGB")


async def run_protocol(protocol: str, files: list[Path], args, client: ComfyClient, workflow: dict,
                       scorer) -> ProtocolResult:
    result = ProtocolResult(protocol)
    folders = {k: args.out / protocol / k for k in ("clean", "lq", "restored")}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    save_nodes = [k for k, v in workflow.items() if v["class_type"] == "SaveImage"]
    for i, path in enumerate(files):
        seed = args.seed + i
        with Image.open(path) as im:
            clean, deg, factor = degrade_for(protocol, to_image(np.asarray(im.convert("RGB"))), seed)
        lq8 = to_uint8(deg.image)
        h, w = clean.shape[1:3]
        crop = math.ceil(factor) if factor > 1 else 0
        row = Row(path.stem, seed, deg.prompt, deg.params, factor, crop, (w, h), (lq8.shape[1], lq8.shape[0]))
        Image.fromarray(to_uint8(clean)).save(folders["clean"] / f"{path.stem}.png")
        Image.fromarray(lq8).save(folders["lq"] / f"{path.stem}.png")
        logger.info("%s %d/%d %s: %s (%dx%d -> %dx%d)", protocol, i + 1, len(files), path.stem,
                    deg.prompt or "no degradation", w, h, *row.lq_size)
        start = time.monotonic()
        try:
            restored = await restore(client, folders["lq"] / f"{path.stem}.png",
                                     f"fsupir_bench_{protocol}_{path.stem}.png", workflow, save_nodes, factor,
                                     None if args.no_instruction else deg.prompt, args.timeout)
            restored.save(folders["restored"] / f"{path.stem}.png")
            ref = clean[0].double().numpy()
            row.restored = metrics.score(path.stem, np.asarray(restored, dtype=np.float64) / 255.0, ref, crop,
                                         "Y", scorer)
            row.bicubic = metrics.score(path.stem, bicubic_up(to_image(lq8), (h, w))[0], ref, crop, "Y", scorer)
        except (ComfyError, ValueError) as error:
            row.error = str(error)
            logger.error("%s %s: %s", protocol, path.stem, error)
        row.seconds = time.monotonic() - start
        if row.restored is not None:
            logger.info("  %s (bicubic %s) in %.1f s", metrics.format_line(row.restored).split(": ", 1)[1],
                        metrics.format_line(row.bicubic).split(": ", 1)[1], row.seconds)
        result.rows.append(row)
    return result


def markdown(results: list[ProtocolResult], args) -> str:
    with_lpips = any(r.restored is not None and r.restored.lpips is not None for p in results for r in p.rows)
    fmt = metrics.format_number
    lines = ["# FSUPIR benchmark", "", f"- server: {args.server}", f"- workflow: `{args.workflow}`",
             f"- clean images: `{args.clean}`, seed {args.seed} (+ image index)",
             "- scores: PSNR (dB) / SSIM on Y (BT.601), crop border = ceil(scale factor)"
             + (", LPIPS (AlexNet)" if with_lpips else ""), ""]
    for p in results:
        head = ["image", "degradation", "PSNR", "SSIM"] + (["LPIPS"] if with_lpips else []) + \
            ["bicubic PSNR", "bicubic SSIM", "s"]
        lines += [f"## {p.name}", "", PROTOCOLS[p.name], "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        for r in p.rows:
            if r.restored is None:
                lines.append(f"| {r.image} | {r.degradation or '-'} | failed: {r.error} |")
                continue
            cells = [r.image, r.degradation or "-", fmt(r.restored.psnr, 2), fmt(r.restored.ssim, 4)]
            cells += [fmt(r.restored.lpips, 4)] if with_lpips else []
            cells += [fmt(r.bicubic.psnr, 2), fmt(r.bicubic.ssim, 4), f"{r.seconds:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        means = p.means()
        if means:
            m, b = means["restored"], means["bicubic"]
            cells = ["mean", f"{sum(r.restored is not None for r in p.rows)} images", fmt(m.psnr, 2),
                     fmt(m.ssim, 4)] + ([fmt(m.lpips, 4)] if with_lpips else []) + [fmt(b.psnr, 2), fmt(b.ssim, 4),
                                                                                     ""]
            lines.append("| " + " | ".join(f"**{c}**" if c else c for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


def to_json(results: list[ProtocolResult], args, note: str | None) -> dict:
    return {"server": args.server, "workflow": str(args.workflow), "clean": str(args.clean), "seed": args.seed,
            "instruction": not args.no_instruction,
            "scores": {"color_space": "Y", "crop_border": "ceil(scale factor), 0 without downscaling",
                       "ssim": "11x11 Gaussian window, sigma 1.5, valid region (BasicSR / MATLAB)",
                       "lpips": note or ("AlexNet v0.1" if args.lpips else "not requested")},
            "protocols": {p.name: {"description": PROTOCOLS[p.name], "images": [r.as_json() for r in p.rows],
                                   "mean": {k: score_json(v) for k, v in p.means().items()}} for p in results}}


def main(args: argparse.Namespace) -> int:
    try:
        workflow = benchmark_workflow(args.workflow)
        if not args.clean.is_dir():
            raise ValueError(f"--clean {args.clean} is not a folder of images")
        files = image_files(args.clean)
        files = files[:args.limit] if args.limit > 0 else files
        if not files:
            raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {args.clean}")
    except (UsageError, ValueError, OSError) as error:
        logger.error("%s", error)
        return 2
    return asyncio.run(run_benchmark(args, workflow, files))


async def run_benchmark(args: argparse.Namespace, workflow: dict, files: list[Path]) -> int:
    """Every protocol on every file, one restoration at a time; writes results.json and results.md."""
    # A new connection per request: the degradation and scoring between requests hold the event loop (seconds
    # on large images), so a pooled keep-alive connection that the server closed meanwhile would only be found
    # closed when the next upload reuses it.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
        try:
            client = ComfyClient(args.server, session)
            await client.check()  # fail early when the server is not there
        except ComfyError as error:
            logger.error("%s", error)
            return 2
        scorer = lpips_scorer_or_none(args.lpips)
        names = ["spire", "realesrgan"] if args.protocol == "both" else [args.protocol]
        results = [await run_protocol(name, files, args, client, workflow, scorer) for name in names]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(to_json(results, args, lpips_note(args.lpips, scorer)), indent=2) + "\n")
    table = markdown(results, args)
    (args.out / "results.md").write_text(table)
    sys.stdout.write(table)
    logger.info("wrote %s and %s", args.out / "results.json", args.out / "results.md")
    failed = sum(r.error is not None for p in results for r in p.rows)
    if failed:
        logger.error("%d restoration(s) failed; see results.md", failed)
    return 1 if failed else 0
