"""``python -m fsupir_cli <command>``: each command lives in its own module with ``add_arguments(parser)`` and
``main(args) -> int``; modules are imported only when their command runs."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "run": ("fsupir_cli.run", "queue an API workflow on a running ComfyUI, follow it, download the outputs"),
    "metrics": ("fsupir_cli.metrics_cmd", "PSNR / SSIM (/ LPIPS) of restored images against references"),
    "benchmark": ("fsupir_cli.benchmark", "degrade clean images, restore them on ComfyUI, write a score table"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # Only the chosen command's module is imported (`run` needs aiohttp, not torch); the command is the first
    # word that names one, since only -v/--verbose may come before it.
    chosen = next((a for a in argv if a in COMMANDS), None)
    parser = argparse.ArgumentParser(prog="python -m fsupir_cli", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(_module=module_name)
        if name != chosen:
            continue
        try:
            importlib.import_module(module_name).add_arguments(p)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            p.set_defaults(_missing=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if getattr(args, "_missing", False):
        parser.error(f"the {args.command!r} command is not available in this version")
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
