"""FSUPIR: a faithful, memory-aware SUPIR (Yu et al., CVPR 2024) for ComfyUI.

ComfyUI imports this file as a package from ``custom_nodes/<any folder name>/``; every import below is
relative so the folder name never matters. The model code (``supir_modules``) imports without ComfyUI's
node layer, so tools and tests can use it on their own.
"""
import logging

logger = logging.getLogger(__name__)

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
WEB_DIRECTORY = "./js"

try:
    import comfy  # noqa: F401  (present only inside ComfyUI)
except ImportError:  # imported as a plain package (tests, tools): no nodes to register
    comfy = None

if comfy is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
