"""``python -m fsupir_cli run``: run an API-format workflow on a running ComfyUI, for one image or a folder.

    python -m fsupir_cli run --server http://127.0.0.1:8188 --workflow workflows/api/basic_restore.json \\
        --image photo.png --out restored/ [--seed N] [--preset NAME] [--prompt TEXT] [--set NODE.INPUT=VALUE ...]

Overrides (applied to a copy of the workflow; nodes are found by their class_type):
  --image PATH     uploaded to ComfyUI's input/fsupir_cli/, set as the image of the workflow's Load Image node
                   (the workflow must have exactly one).
  --image-dir DIR  the same for every image in DIR, one run each: a batch. Each input writes OUT/<stem>.png;
                   inputs whose OUT/<stem>.png exists are skipped, so an interrupted batch resumes where it stopped
                   (--overwrite runs them again).
  --seed N         the seed of every FSUPIR_Sampler, FSUPIR_Encode and FSUPIR_LLaVACaption.
  --preset NAME    the preset of every FSUPIR_Sampler (Fidelity, Quality, Lightning, Custom).
  --prompt TEXT    the caption of every FSUPIR_Conditioner (what the image shows), replacing a connected captioner
                   (which then does not run). The quality prompts stay: change them with --set.
  --set N.I=V      input I of node N, where N is a node id or a class_type (every node of it); V is read as JSON
                   when it parses (numbers, true/false, lists) and as text otherwise. Repeatable; applied last.
                   The sampler's own values (steps, cfg_scale...) are used with --preset Custom only.
Outputs: the images the workflow saves (type "output") are downloaded into --out: the restored image (the one
saved from SUPIR Tiled Decode, or the only saved image) as <stem>.png, others as <stem>_<save prefix>.png; <stem>
is the input's name (the workflow's without --image). The exit status is 0 when every run succeeded, 1 when a
run failed (ComfyUI's error is printed), 2 for a bad command line or workflow file.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import aiohttp

from .client import TIMEOUT, ComfyClient, ComfyError, Event
from .image_files import IMAGE_SUFFIXES, image_files

logger = logging.getLogger(__name__)

DEFAULT_SERVER = os.environ.get("COMFYUI_URL", "http://127.0.0.1:8188")
UPLOAD_SUBFOLDER = "fsupir_cli"
SEEDED = ("FSUPIR_Sampler", "FSUPIR_Encode", "FSUPIR_LLaVACaption")
RESTORED_FROM = "FSUPIR_TiledDecode"


class UsageError(Exception):
    """A problem with the command line or the workflow file (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Run an API-format workflow on a running ComfyUI, for one image or a folder of images."
    parser.epilog = __doc__.split("\n\n", 2)[2]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--server", default=DEFAULT_SERVER, help="ComfyUI's address (default %(default)s; "
                                                                 "env COMFYUI_URL)")
    parser.add_argument("--workflow", required=True, type=Path, help="an API-format workflow (workflows/api/*.json, "
                                                                     "or ComfyUI's Export (API))")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", type=Path, help="the input image")
    source.add_argument("--image-dir", type=Path, help="a folder of input images: a resumable batch")
    parser.add_argument("--out", type=Path, default=Path("output"), help="folder for the results (default %(default)s)")
    parser.add_argument("--seed", type=int, help="seed of the SUPIR sampler, encoder and captioner")
    parser.add_argument("--preset", help="SUPIR sampler preset: Fidelity, Quality, Lightning or Custom")
    parser.add_argument("--prompt", help="the caption (what the image shows), instead of the LLaVA captioner")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                        help="set any input; NODE is a node id or class_type")
    parser.add_argument("--overwrite", action="store_true", help="batch: run inputs whose output already exists")
    parser.add_argument("--keep-going", action="store_true", help="batch: go on after a failed input")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per run (default: no limit)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


# --- the workflow ----------------------------------------------------------------------------------------------
def load_workflow(path: Path) -> dict:
    """The API-format workflow in `path` (also as the ``{"prompt": ...}`` body of a POST /prompt); UsageError
    for a missing file, a UI workflow or anything else."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"workflow {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"workflow {path} is not JSON: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data["prompt"]:
        data = data["prompt"]
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        api_twin = path.parent / "api" / path.name
        hint = f" (its API twin is {api_twin})" if api_twin.is_file() else ""
        raise UsageError(f"{path} is a UI workflow; this command needs the API format: in ComfyUI use "
                         f"Workflow > Export (API){hint}")
    if not isinstance(data, dict) or not data or not all(
            isinstance(n, dict) and "class_type" in n and isinstance(n.get("inputs"), dict) for n in data.values()):
        raise UsageError(f"{path} is not an API-format workflow ({{node id: {{class_type, inputs}}}})")
    return data


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_set(item: str) -> tuple[str, str, object]:
    match = re.fullmatch(r"([^.=]+)\.([^=]+)=(.*)", item, flags=re.DOTALL)
    if not match:
        raise UsageError(f"--set {item!r}: write NODE.INPUT=VALUE, e.g. --set FSUPIR_Sampler.steps=30 or "
                         "--set 7.cfg_scale=5")
    node, name, value = match.groups()
    return node.strip(), name.strip(), parse_value(value)


def _nodes_of(prompt: dict, class_types, what: str, required: bool = True) -> list[dict]:
    types = (class_types,) if isinstance(class_types, str) else tuple(class_types)
    nodes = [n for n in prompt.values() if n["class_type"] in types]
    if required and not nodes:
        raise UsageError(f"{what}: the workflow has no {' / '.join(types)} node")
    return nodes


def apply_overrides(workflow: dict, image: str | None = None, seed: int | None = None, preset: str | None = None,
                    caption: str | None = None, sets: list[str] = ()) -> dict:
    """A copy of `workflow` with the command line's values (see the module docstring)."""
    prompt = copy.deepcopy(workflow)
    if image is not None:
        loaders = _nodes_of(prompt, "LoadImage", "--image")
        if len(loaders) > 1:
            ids = [i for i, n in prompt.items() if n["class_type"] == "LoadImage"]
            raise UsageError(f"--image: the workflow has {len(loaders)} Load Image nodes ({', '.join(ids)}); "
                             "keep one, or set each with --set ID.image=NAME (files in ComfyUI's input folder)")
        loaders[0]["inputs"]["image"] = image
    if seed is not None:
        for node in _nodes_of(prompt, SEEDED, "--seed"):
            if "seed" in node["inputs"]:
                node["inputs"]["seed"] = seed
    if preset is not None:
        for node in _nodes_of(prompt, "FSUPIR_Sampler", "--preset"):
            node["inputs"]["preset"] = preset
    if caption is not None:
        for node in _nodes_of(prompt, "FSUPIR_Conditioner", "--prompt"):
            node["inputs"]["caption"] = caption
    for item in sets:
        target, name, value = parse_set(item)
        nodes = [prompt[target]] if target in prompt else _nodes_of(prompt, target, f"--set {item}", required=False)
        if not nodes:
            raise UsageError(f"--set {item}: no node with id or class_type {target!r}; the workflow has "
                             + ", ".join(f"{i} ({n['class_type']})" for i, n in prompt.items()))
        for node in nodes:
            if name not in node["inputs"]:
                logger.warning("--set %s: %s has no input %r in this workflow; setting it anyway", item,
                               node["class_type"], name)
            node["inputs"][name] = value
    return prompt


# --- outputs ---------------------------------------------------------------------------------------------------
def _label(prompt: dict, node_id: str) -> str:
    prefix = str(prompt.get(node_id, {}).get("inputs", {}).get("filename_prefix", "") or "")
    label = re.sub(r"[^A-Za-z0-9_-]+", "_", prefix.rsplit("/", 1)[-1]).strip("_")
    return label or f"node{node_id}"


def restored_node(prompt: dict, outputs: dict) -> str:
    """The output node holding the restored image: fed by SUPIR Tiled Decode, else the only one with images."""
    with_images = [i for i, o in outputs.items() if any(r.get("type") == "output" for r in o.get("images", []))]
    from_decode = [i for i in with_images if any(
        isinstance(v, list) and len(v) == 2 and prompt.get(str(v[0]), {}).get("class_type") == RESTORED_FROM
        for v in prompt.get(i, {}).get("inputs", {}).values())]
    if len(from_decode) == 1:
        return from_decode[0]
    if not with_images:
        raise ComfyError("the run saved no image (does the workflow end in a Save Image node?)")
    return sorted(with_images, key=lambda i: (len(i), i))[0]


def output_files(prompt: dict, outputs: dict, stem: str) -> list[tuple[dict, str]]:
    """(image reference, file name) for every saved image; the restored image's names come last."""
    main = restored_node(prompt, outputs)
    others, mine = [], []
    for node_id, out in outputs.items():
        refs = [r for r in out.get("images", []) if r.get("type") == "output"]
        for k, ref in enumerate(refs):
            ext = Path(ref["filename"]).suffix or ".png"
            base = stem if node_id == main else f"{stem}_{_label(prompt, node_id)}"
            name = f"{base}{'' if k == 0 else f'_{k + 1}'}{ext}"
            (mine if node_id == main else others).append((ref, name))
    return others + mine


def stage_reports(prompt: dict, outputs: dict) -> list[str]:
    """'<node title>: <summary>' for each SUPIR stage node that reported what it took (time, ms/step, peak VRAM)."""
    lines = []
    for node_id, out in outputs.items():
        for report in out.get("fsupir_report", []):
            if isinstance(report, dict) and report.get("summary"):
                title = prompt.get(node_id, {}).get("_meta", {}).get("title") or f"node {node_id}"
                lines.append(f"{title}: {report['summary']}")
    return lines


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- progress --------------------------------------------------------------------------------------------------
class ProgressBar:
    """One line on stderr: the run, the node running, and a bar of its steps; plain lines when not a terminal."""

    def __init__(self, prompt: dict, label: str, enabled: bool = True, stream=sys.stderr):
        self.prompt, self.label, self.stream = prompt, label, stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.total = len(prompt)
        self.done: set[str] = set()
        self.node: str | None = None
        self.start = time.monotonic()

    def _title(self, node_id: str | None) -> str:
        node = self.prompt.get(str(node_id), {})
        return node.get("_meta", {}).get("title") or node.get("class_type") or str(node_id)

    def _write(self, text: str, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def __call__(self, event: Event) -> None:
        if not self.enabled:
            return
        if event.kind == "cached":
            self.done.update(event.nodes)
        elif event.kind == "node":
            if self.node is not None:
                self.done.add(self.node)
            self.node = event.node
            self._write(f"{self.label} [{len(self.done) + 1}/{self.total}] {self._title(event.node)}")
        elif event.kind == "progress" and self.tty and event.max > 0:
            width = 24
            filled = int(width * event.value / event.max)
            bar = "#" * filled + "-" * (width - filled)
            self._write(f"{self.label} [{len(self.done) + 1}/{self.total}] {self._title(self.node)} "
                        f"|{bar}| {event.value}/{event.max}")
        elif event.kind == "done":
            self._write(f"{self.label} done in {time.monotonic() - self.start:.1f} s", final=True)


# --- running ---------------------------------------------------------------------------------------------------
def batch_inputs(args) -> list[Path | None]:
    if args.image is not None:
        if not args.image.is_file():
            raise UsageError(f"--image {args.image}: no such file")
        return [args.image]
    if args.image_dir is None:
        return [None]
    if not args.image_dir.is_dir():
        raise UsageError(f"--image-dir {args.image_dir}: no such folder")
    images = image_files(args.image_dir)
    if not images:
        raise UsageError(f"--image-dir {args.image_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    stems: dict[str, Path] = {}
    for p in images:
        if p.stem in stems:
            raise UsageError(f"{stems[p.stem].name} and {p.name} would both write {p.stem}.png; rename one")
        stems[p.stem] = p
    return images


async def run_one(client: ComfyClient, workflow: dict, image: Path | None, stem: str, args, label: str) -> list[Path]:
    uploaded = await client.upload_image(image, UPLOAD_SUBFOLDER) if image is not None else None
    prompt = apply_overrides(workflow, uploaded, args.seed, args.preset, args.prompt, args.sets)
    progress = ProgressBar(prompt, label, enabled=not args.no_progress)
    entry = await asyncio.wait_for(client.run(prompt, progress), args.timeout)
    outputs = entry.get("outputs", {})
    for line in stage_reports(prompt, outputs):
        logger.info("%s: %s", label, line)
    written = []
    for ref, name in output_files(prompt, outputs, stem):
        path = args.out / name
        write_atomic(path, await client.download(ref))
        written.append(path)
    return written


async def run_all(args) -> int:
    workflow = load_workflow(args.workflow)
    apply_overrides(workflow, "check.png" if args.image or args.image_dir else None, args.seed, args.preset,
                    args.prompt, args.sets)  # usage errors before anything runs
    inputs = batch_inputs(args)
    args.out.mkdir(parents=True, exist_ok=True)
    done = failed = skipped = 0
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        client = ComfyClient(args.server, session)
        await client.check()
        for n, image in enumerate(inputs, 1):
            stem = image.stem if image is not None else args.workflow.stem
            label = f"[{n}/{len(inputs)}] {image.name if image else args.workflow.name}"
            if args.image_dir is not None and not args.overwrite and (args.out / f"{stem}.png").exists():
                logger.info("%s: skipped, %s exists", label, args.out / f"{stem}.png")
                skipped += 1
                continue
            try:
                written = await run_one(client, workflow, image, stem, args, label)
            except asyncio.TimeoutError:
                error = f"the run took longer than --timeout {args.timeout:g} s"
            except ComfyError as e:
                error = str(e)
            else:
                logger.info("%s: wrote %s", label, ", ".join(str(p) for p in written))
                done += 1
                continue
            failed += 1
            logger.error("%s: %s", label, error)
            if not args.keep_going:
                break
    if len(inputs) > 1:
        logger.info("%d inputs: %d done, %d skipped, %d failed", len(inputs), done, skipped, failed)
    return 1 if failed else 0


def main(args) -> int:
    try:
        return asyncio.run(run_all(args))
    except UsageError as e:
        logger.error("error: %s", e)
        return 2
    except ComfyError as e:
        logger.error("%s", e)
        return 1
