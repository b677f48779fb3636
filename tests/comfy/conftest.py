"""Fixtures of the comfy tier: ComfyUI imported in-process (the copy named by SUPIR_COMFY_ROOT, on the CPU).

``comfy_pack`` loads the pack exactly as ComfyUI's startup does, through ComfyUI's own
``nodes.load_custom_node`` on ``<runtime>/custom_nodes/<link>`` (the link ``scripts/setup_env.sh`` made).
Differences between the supported ComfyUI versions that matter here:
- 2024-03: ``load_custom_node`` is a plain function; the package's sys.modules name is the folder name.
- 0.3.75: it is a coroutine; the sys.modules name is the folder's full path with '.' replaced by "_x_", and
  every node class gets ``RELATIVE_PYTHON_MODULE = "custom_nodes.<folder name>"``.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

MODEL_FOLDERS = ("checkpoints", "SUPIR")


@dataclass(frozen=True)
class LoadedPack:
    module: ModuleType  # the pack's root package as ComfyUI imported it
    module_name: str  # its key in sys.modules
    path: Path  # <runtime>/custom_nodes/<link>
    node_class_mappings: dict = field(repr=False)
    display_name_mappings: dict = field(repr=False)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


def _pack_link(comfy_root: Path, repo: Path) -> Path:
    """The entry of ``custom_nodes`` that points at this checkout."""
    custom_nodes = comfy_root / "custom_nodes"
    links = [p for p in sorted(custom_nodes.iterdir()) if p.is_dir() and p.resolve() == repo.resolve()]
    if len(links) != 1:
        pytest.fail(f"expected exactly one link to {repo} in {custom_nodes}, found {links}: "
                    "run scripts/setup_env.sh for this runtime")
    return links[0]


@pytest.fixture(scope="session")
def comfy_nodes(comfy_root):
    """ComfyUI's ``nodes`` module, imported in-process (core nodes only; comfy_extras are not loaded)."""
    import nodes

    assert Path(nodes.__file__).resolve().parent == comfy_root, f"imported {nodes.__file__}, not {comfy_root}"
    return nodes


@pytest.fixture(scope="session")
def comfy_pack(comfy_nodes, comfy_root, repo_root) -> LoadedPack:
    """The pack loaded by ComfyUI's own ``load_custom_node``; fails with ComfyUI's traceback if that fails."""
    path = _pack_link(comfy_root, repo_root)
    handler = _Collect()
    logging.getLogger().addHandler(handler)
    try:
        loaded = comfy_nodes.load_custom_node(str(path))
        if inspect.isawaitable(loaded):  # 0.3.75+: async def
            loaded = asyncio.run(loaded)
    finally:
        logging.getLogger().removeHandler(handler)
    if not loaded:
        log = "\n".join(handler.lines[-40:])
        pytest.fail(f"ComfyUI could not import the pack from {path}:\n{log}")
    candidates = (str(path).replace(".", "_x_"), path.name)  # 0.3.75, 2024-03
    name = next((n for n in candidates if n in sys.modules), None)
    assert name is not None, f"none of {candidates} in sys.modules after load_custom_node"
    module = sys.modules[name]
    return LoadedPack(
        module=module,
        module_name=name,
        path=path,
        node_class_mappings=dict(module.NODE_CLASS_MAPPINGS),
        display_name_mappings=dict(getattr(module, "NODE_DISPLAY_NAME_MAPPINGS", None) or {}),
    )


@pytest.fixture(scope="session")
def node_mappings(comfy_pack) -> dict:
    """NODE_CLASS_MAPPINGS of the pack as ComfyUI loaded it (node ID -> class)."""
    return comfy_pack.node_class_mappings


def _clear_filename_cache(folder_paths):
    cache = getattr(folder_paths, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.clear()


@pytest.fixture
def models_dir(tmp_path, comfy_pack):
    """A temporary models folder with ``checkpoints/`` and ``SUPIR/``, searched first by ``folder_paths``.

    Put files in ``models_dir / "SUPIR"`` etc.; the paths are removed from ``folder_paths`` afterwards.
    Depends on ``comfy_pack`` because the pack registers the ``SUPIR`` folder name when it is imported.
    """
    import folder_paths

    root = tmp_path / "models"
    added = []
    for name in MODEL_FOLDERS:
        path = root / name
        path.mkdir(parents=True)
        entry = folder_paths.folder_names_and_paths.get(name)
        if entry is None:
            folder_paths.folder_names_and_paths[name] = ([str(path)], set(folder_paths.supported_pt_extensions))
        elif "is_default" in inspect.signature(folder_paths.add_model_folder_path).parameters:
            folder_paths.add_model_folder_path(name, str(path), is_default=True)  # 0.3.75: goes first
        else:
            entry[0].insert(0, str(path))  # 2024-03's add_model_folder_path can only append
        added.append((name, str(path)))
    _clear_filename_cache(folder_paths)
    yield root
    for name, path in added:
        paths = folder_paths.folder_names_and_paths.get(name, ([], None))[0]
        if path in paths:
            paths.remove(path)
    _clear_filename_cache(folder_paths)


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> dict:
    """A tiny SDXL checkpoint and a pruned SUPIR file in the official key layout, written once per session
    (models_dir-relative path -> file)."""
    from ..tiny_models import write_sdxl, write_supir_pruned

    root = tmp_path_factory.mktemp("tiny_files")
    return {"checkpoints/tiny_sdxl.safetensors": write_sdxl(root / "tiny_sdxl.safetensors"),
            "SUPIR/SUPIR-tiny.safetensors": write_supir_pruned(root / "SUPIR-tiny.safetensors")}


@pytest.fixture
def tiny_supir(models_dir, tiny_files, node_mappings):
    """(SUPIR model, CLIP, VAE) from the SUPIR Loader node on the tiny files, in fp32; ComfyUI's loaded models
    are unloaded afterwards."""
    import os

    import comfy.model_management as mm

    for rel, src in tiny_files.items():
        os.link(src, models_dir / rel)
    yield node_mappings["FSUPIR_Loader"]().load("SUPIR-tiny.safetensors", "tiny_sdxl.safetensors", "fp32")
    mm.unload_all_models()


@pytest.fixture
def chain(node_mappings, tiny_supir):
    """The restoration nodes on the tiny SUPIR model (tests/node_chain.py)."""
    from ..node_chain import Chain

    return Chain(node_mappings, tiny_supir)
