"""ComfyUI nodes of the pack: thin wrappers over ``supir_modules``, one file per stage.

Node IDs and custom types carry the prefix ``FSUPIR`` (kijai's pack uses ``SUPIR_``, ComfyUI's own node is
``SUPIRApply``). IDs and input names are permanent: saved workflows depend on them.
"""
from .loader import NODE_CLASS_MAPPINGS as _loader, NODE_DISPLAY_NAME_MAPPINGS as _loader_names

NODE_CLASS_MAPPINGS = {**_loader}
NODE_DISPLAY_NAME_MAPPINGS = {**_loader_names}
