"""HTTP routes of the pack, for its frontend extensions (js/).

``GET /fsupir/presets`` (and ``/api/fsupir/presets`` on ComfyUI versions with the ``/api`` prefix) returns the
sampler presets of ``supir_modules.presets``, the single source of truth the sampler node's "effective settings"
display (js/fsupir_sampler.js) reads. Imported by ``nodes/__init__.py``; registering needs ComfyUI's running
``server.PromptServer``, so importing this module without one (tests, tools) registers nothing.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import fields

from ..supir_modules.presets import CUSTOM, PRESETS, SAMPLERS, SamplerSettings

logger = logging.getLogger(__name__)

PRESETS_ROUTE = "/fsupir/presets"
DEFAULT_PRESET = "Fidelity"


def presets_payload() -> dict:
    """The presets as JSON: ``{"custom": "Custom", "default": ..., "samplers": [...], "fields": [...],
    "presets": {name: {...}}}``; ``fields`` names the settings (the sampler's widgets of the same names give them
    with preset "Custom")."""
    return {
        "custom": CUSTOM,
        "default": DEFAULT_PRESET,
        "samplers": list(SAMPLERS),
        "fields": [f.name for f in fields(SamplerSettings)],
        "presets": {name: settings.as_dict() for name, settings in PRESETS.items()},
    }


def register_routes() -> bool:
    """Adds the routes to ComfyUI's running server; False (and nothing added) when there is none.

    ComfyUI's main.py imports its ``server`` module and creates the server before loading custom nodes; the
    module is looked up, not imported, so importing this file elsewhere (tests, tools) starts nothing."""
    server = sys.modules.get("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    if instance is None or not hasattr(instance, "routes"):
        return False
    from aiohttp import web

    async def get_presets(request):
        return web.json_response(presets_payload())

    instance.routes.get(PRESETS_ROUTE)(get_presets)
    logger.debug("FSUPIR: registered GET %s", PRESETS_ROUTE)
    return True


register_routes()
