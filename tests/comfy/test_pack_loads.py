"""ComfyUI, imported in-process, loads the pack through its own loader and sees well-formed V1 nodes."""
from __future__ import annotations

PREFIX = "FSUPIR_"


def test_pack_registers_prefixed_nodes(comfy_pack, comfy_nodes):
    assert comfy_pack.node_class_mappings, "the pack exports no nodes"
    for name, cls in comfy_pack.node_class_mappings.items():
        assert name.startswith(PREFIX), f"node ID {name!r} lacks the {PREFIX} prefix"
        assert comfy_nodes.NODE_CLASS_MAPPINGS[name] is cls, f"{name} not registered with ComfyUI"
    assert set(comfy_pack.display_name_mappings) <= set(comfy_pack.node_class_mappings)


def test_nodes_follow_the_v1_api(node_mappings):
    for name, cls in node_mappings.items():
        inputs = cls.INPUT_TYPES()
        assert set(inputs) <= {"required", "optional", "hidden"}, f"{name}: INPUT_TYPES keys {sorted(inputs)}"
        assert callable(getattr(cls, cls.FUNCTION)), f"{name}: FUNCTION {cls.FUNCTION!r} is not a method"
        assert isinstance(cls.RETURN_TYPES, tuple), f"{name}: RETURN_TYPES must be a tuple"
        assert isinstance(cls.CATEGORY, str) and cls.CATEGORY, f"{name}: no CATEGORY"


def test_models_dir_is_searched_first(models_dir):
    import folder_paths

    (models_dir / "SUPIR" / "tiny.safetensors").write_bytes(b"")
    assert folder_paths.get_folder_paths("SUPIR")[0] == str(models_dir / "SUPIR")
    assert "tiny.safetensors" in folder_paths.get_filename_list("SUPIR")
