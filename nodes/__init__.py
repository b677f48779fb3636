"""ComfyUI nodes of the pack: thin wrappers over ``supir_modules``, one file per stage.

Node IDs and custom types carry the prefix ``FSUPIR`` (kijai's pack uses ``SUPIR_``, ComfyUI's own node is
``SUPIRApply``). IDs and input names are permanent: saved workflows depend on them, and UI workflows store
widget values by position, so a new widget only ever goes after the existing ones.
"""
from . import caption, conditioner, decode, degrade, encode, loader, quality, routes, sampler  # noqa: F401

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (loader, encode, caption, conditioner, sampler, decode, degrade, quality):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
