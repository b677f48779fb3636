"""The image files the commands read from a folder (standard library only, so every command can import it)."""
from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def image_files(folder: Path) -> list[Path]:
    """The files in `folder` (not its subfolders) with an image suffix, any case, sorted by path."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
