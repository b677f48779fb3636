"""Command-line tools of the pack (no ComfyUI import): run workflows on a running ComfyUI, measure images,
benchmark restorations. Run from the pack's folder: ``python -m fsupir_cli <command> --help``."""
