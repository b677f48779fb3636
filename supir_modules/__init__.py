"""SUPIR model and algorithm code (no ComfyUI node layer).

May import torch, einops and ComfyUI's model building blocks (``comfy.ldm``, ``comfy.ops``,
``comfy.model_management``); never ``nodes``, ``server`` or ``folder_paths``.
"""
