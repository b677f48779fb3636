"""``python -m fsupir_cli metrics``: PSNR / SSIM (/ LPIPS) of restored images against references, paired by file
stem (``restored/cat.png`` with ``reference/cat.jpg``); a Markdown table on stdout, optionally JSON."""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
from PIL import Image

try:
    from ..supir_modules import metrics
except ImportError:  # `python -m fsupir_cli` from the pack's folder: supir_modules is a top-level package
    from supir_modules import metrics

from .image_files import image_files

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--restored", required=True, type=Path, help="restored image, or a folder of them")
    parser.add_argument("--reference", required=True, type=Path, help="reference image, or a folder (same stems)")
    parser.add_argument("--crop-border", type=int, default=0,
                        help="pixels dropped on every side; the usual convention is the scale factor (default 0)")
    space = parser.add_mutually_exclusive_group()
    space.add_argument("--y", dest="color_space", action="store_const", const="Y",
                       help="score the BT.601 Y channel (default)")
    space.add_argument("--rgb", dest="color_space", action="store_const", const="RGB", help="score RGB")
    parser.set_defaults(color_space="Y")
    parser.add_argument("--lpips", action="store_true",
                        help="add LPIPS (AlexNet) if its weights are on this machine; never downloads")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")


def load_image(path: Path) -> np.ndarray:
    """[H, W, 3] float in [0, 1] (alpha dropped, grey expanded)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _images(path: Path) -> dict[str, Path]:
    if path.is_file():
        return {path.stem: path}
    if path.is_dir():
        return {p.stem: p for p in image_files(path)}
    raise ValueError(f"{path} does not exist: give an image file or a folder of images")


def pair_images(restored: Path, reference: Path) -> list[tuple[str, Path, Path]]:
    """(stem, restored, reference) by file stem; a single file on both sides pairs whatever the names."""
    if restored.is_file() and reference.is_file():
        return [(restored.stem, restored, reference)]
    res, ref = _images(restored), _images(reference)
    pairs = [(stem, res[stem], ref[stem]) for stem in res if stem in ref]
    missing = sorted(set(res) - set(ref))
    if missing:
        logger.warning("no reference for %d restored image(s): %s", len(missing), ", ".join(missing[:10]))
    if not pairs:
        raise ValueError(f"no image in {restored} has a reference of the same file stem in {reference}")
    return pairs


def lpips_scorer_or_none(wanted: bool) -> metrics.LpipsScorer | None:
    if not wanted:
        return None
    try:
        return metrics.LpipsScorer()
    except RuntimeError as error:
        logger.warning("%s", error)
        return None


def lpips_note(wanted: bool, scorer: metrics.LpipsScorer | None) -> str | None:
    """Why LPIPS is missing from the scores when it was asked for, for the JSON report; None otherwise."""
    return f"LPIPS unavailable: {metrics.lpips_status()[1]}" if wanted and scorer is None else None


def json_number(value: float | None) -> float | None:
    """JSON has no infinity: identical images (PSNR inf) are written as null."""
    return None if value is None or math.isinf(value) else round(float(value), 6)


def score_json(score: metrics.Score | None) -> dict | None:
    """{"psnr", "ssim", "lpips"} of a score as JSON numbers (None for a missing score or value)."""
    if score is None:
        return None
    return {"psnr": json_number(score.psnr), "ssim": json_number(score.ssim), "lpips": json_number(score.lpips)}


def markdown_table(scores: list[metrics.Score], mean: metrics.Score) -> str:
    """| image | PSNR | SSIM | (LPIPS) | rows, then the mean in bold."""
    with_lpips = mean.lpips is not None
    head = "| image | PSNR (dB) | SSIM |" + (" LPIPS |" if with_lpips else "")
    rows = [head, "|" + "---|" * (3 + with_lpips)]
    for s in [*scores, mean]:
        cells = [s.name, metrics.format_number(s.psnr, 2), metrics.format_number(s.ssim, 4)]
        cells += [metrics.format_number(s.lpips, 4)] if with_lpips else []
        if s is mean:
            cells = [f"**{c}**" for c in cells]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main(args: argparse.Namespace) -> int:
    try:
        pairs = pair_images(args.restored, args.reference)
        scorer = lpips_scorer_or_none(args.lpips)
        scores = [metrics.score(stem, load_image(a), load_image(b), args.crop_border, args.color_space, scorer)
                  for stem, a, b in pairs]
    except ValueError as error:
        logger.error("%s", error)
        return 2
    mean = metrics.mean_score(scores)
    sys.stdout.write(f"{len(scores)} image(s), {args.color_space}, crop border {args.crop_border}\n\n")
    sys.stdout.write(markdown_table(scores, mean))
    if args.json:
        payload = {"color_space": args.color_space, "crop_border": args.crop_border,
                   "lpips_note": lpips_note(args.lpips, scorer),
                   "images": [{"image": s.name, **score_json(s)} for s in scores], "mean": score_json(mean)}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        logger.info("wrote %s", args.json)
    return 0
