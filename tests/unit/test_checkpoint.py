"""supir_modules/checkpoint.py: reading every file format, refusing pickled code, classification, splitting."""
from __future__ import annotations

import json
import logging
import pickle
import random
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fsupir_under_test.supir_modules.checkpoint import (
    SUPIR_PREFIXES,
    CheckpointError,
    classify_state_dict,
    describe_missing,
    read_state_dict,
    require_sdxl,
    split_supir_state_dict,
)


# --- tiny state dicts in the real key layouts ------------------------------------------------------------
def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + sum(shape)))


def tiny_supir(mask_lq: bool = True) -> dict[str, torch.Tensor]:
    """Only the SUPIR keys (like the pruned fp16 files), with the names split_supir_state_dict requires."""
    sd = {
        "model.control_model.input_hint_block.0.weight": _rand(8, 4, 3, 3),
        "model.control_model.input_hint_block.0.bias": _rand(8),
        "model.control_model.time_embed.0.weight": _rand(16, 8),
        "model.control_model.label_emb.0.0.weight": _rand(16, 12),
        "model.control_model.input_blocks.0.0.weight": _rand(8, 4, 3, 3),
        "model.control_model.middle_block.0.in_layers.0.weight": _rand(16),
        "first_stage_model.denoise_encoder.conv_in.weight": _rand(8, 3, 3, 3),
        "first_stage_model.denoise_encoder.conv_out.weight": _rand(8, 8, 3, 3),
    }
    for i in range(12):
        sd[f"model.diffusion_model.project_modules.{i}.zero_conv.weight"] = _rand(8, 8, 1, 1, seed=i)
        sd[f"model.diffusion_model.project_modules.{i}.zero_conv.bias"] = _rand(8, seed=i)
    if mask_lq:
        sd["model.control_model.mask_LQ"] = _rand(1, 4, 8, 8)
    return sd


def tiny_unet(blocks: int, label_emb: bool, linear_proj: bool, context: int = 16,
              prefix: str = "model.diffusion_model.") -> dict[str, torch.Tensor]:
    sd = {f"{prefix}input_blocks.{i}.0.in_layers.2.weight": _rand(8, 8, 3, 3) for i in range(1, blocks)}
    sd[f"{prefix}input_blocks.0.0.weight"] = _rand(8, 4, 3, 3)
    sd[f"{prefix}time_embed.0.weight"] = _rand(32, 8)
    sd[f"{prefix}middle_block.0.in_layers.2.weight"] = _rand(8, 8, 3, 3)
    sd[f"{prefix}out.2.weight"] = _rand(4, 8, 3, 3)
    attn = 4 if blocks == 9 else 1  # first attention: SDXL input block 4, SD1/SD2 input block 1
    sd[f"{prefix}input_blocks.{attn}.1.proj_in.weight"] = _rand(8, 8) if linear_proj else _rand(8, 8, 1, 1)
    sd[f"{prefix}input_blocks.{attn}.1.transformer_blocks.0.attn2.to_k.weight"] = _rand(8, context)
    if label_emb:
        sd[f"{prefix}label_emb.0.0.weight"] = _rand(32, 12)
    return sd


def tiny_vae() -> dict[str, torch.Tensor]:
    return {"first_stage_model.encoder.conv_in.weight": _rand(8, 3, 3, 3),
            "first_stage_model.decoder.conv_in.weight": _rand(8, 4, 3, 3)}


def tiny_sdxl() -> dict[str, torch.Tensor]:
    return {**tiny_unet(9, label_emb=True, linear_proj=True), **tiny_vae(),
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": _rand(10, 8),
            "conditioner.embedders.1.model.token_embedding.weight": _rand(10, 8)}


def tiny_sd1() -> dict[str, torch.Tensor]:
    return {**tiny_unet(12, label_emb=False, linear_proj=False), **tiny_vae(),
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": _rand(10, 8)}


def tiny_sd2() -> dict[str, torch.Tensor]:
    return {**tiny_unet(12, label_emb=False, linear_proj=True), **tiny_vae(),
            "cond_stage_model.model.token_embedding.weight": _rand(10, 8)}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def raises_with(fn, *parts: str) -> str:
    with pytest.raises(CheckpointError) as info:
        fn()
    msg = str(info.value)
    for part in parts:
        assert part.lower() in msg.lower(), f"{part!r} not in {msg!r}"
    return msg


def _write_marker(path: str) -> None:
    """Stands for arbitrary code a malicious pickle would run."""
    Path(path).write_text("pickled code ran")


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (str(self.marker),))


# --- reading ---------------------------------------------------------------------------------------------
def test_official_style_ckpt_unwraps_state_dict(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sd = tiny_supir()
    path = tmp_path / "SUPIR-v0Q.ckpt"
    torch.save({"state_dict": sd, "global_step": 1000, "epoch": 3}, path)
    with caplog.at_level(logging.INFO, logger="fsupir_under_test.supir_modules.checkpoint"):
        got = read_state_dict(path)
    assert_same(got, sd)
    assert classify_state_dict(got) == "supir_pruned"
    assert "SUPIR-v0Q.ckpt" in caplog.text and "supir_pruned" in caplog.text and "float32" in caplog.text


@pytest.mark.parametrize("wrapper", ["model", "module"])
def test_ckpt_unwraps_model_and_module(tmp_path: Path, wrapper: str) -> None:
    sd = tiny_sdxl()
    path = tmp_path / "x.pth"
    torch.save({wrapper: sd, "meta": {"note": "not a tensor"}}, path)
    assert_same(read_state_dict(path), sd)


def test_non_tensor_values_are_dropped(tmp_path: Path) -> None:
    sd = tiny_sd1()
    path = tmp_path / "x.pt"
    torch.save({**sd, "step": 5, "name": "sd1"}, path)
    assert_same(read_state_dict(path), sd)


def test_legacy_torch_pickle_reads(tmp_path: Path) -> None:
    sd = tiny_supir()
    path = tmp_path / "legacy.pt"
    torch.save({"state_dict": sd}, path, _use_new_zipfile_serialization=False)
    assert_same(read_state_dict(path), sd)


def test_safetensors_full_and_pruned_fp16(tmp_path: Path) -> None:
    full = {**tiny_supir(), **tiny_sdxl()}
    save_file(full, tmp_path / "full.safetensors")
    got = read_state_dict(tmp_path / "full.safetensors")
    assert_same(got, full)
    assert classify_state_dict(got) == "supir_full"

    pruned = {k: v.half() for k, v in full.items() if k.startswith(SUPIR_PREFIXES)}
    save_file(pruned, tmp_path / "SUPIR-v0Q_fp16.safetensors")
    got = read_state_dict(tmp_path / "SUPIR-v0Q_fp16.safetensors")
    assert_same(got, pruned)
    assert {t.dtype for t in got.values()} == {torch.float16}
    assert classify_state_dict(got) == "supir_pruned"


@pytest.mark.parametrize("name", ["renamed.ckpt", "no_extension", "weights.model"])
def test_safetensors_content_under_other_names(tmp_path: Path, name: str) -> None:
    sd = tiny_sd2()
    save_file(sd, tmp_path / name)
    assert_same(read_state_dict(tmp_path / name), sd)


def test_torch_zip_with_unknown_extension_is_sniffed(tmp_path: Path) -> None:
    sd = tiny_sd1()
    torch.save(sd, tmp_path / "weights.data")
    assert_same(read_state_dict(tmp_path / "weights.data"), sd)


def test_missing_empty_and_folder(tmp_path: Path) -> None:
    raises_with(lambda: read_state_dict(tmp_path / "nope.safetensors"), "nope.safetensors", "not found",
                "check the path")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    raises_with(lambda: read_state_dict(tmp_path / "empty.ckpt"), "empty.ckpt", "empty", "download")
    (tmp_path / "folder.safetensors").mkdir()
    raises_with(lambda: read_state_dict(tmp_path / "folder.safetensors"), "folder.safetensors", "folder",
                "pick the .safetensors or .ckpt file")


def test_truncated_safetensors(tmp_path: Path) -> None:
    src = tmp_path / "whole.safetensors"
    save_file(tiny_supir(), src)
    data = src.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    cuts = {
        4: "shorter than the 8-byte",
        8 + header_len // 2: "header length field says",
        8 + header_len + 100: "bytes of tensor data but only 100 are present",
        len(data) - 1: "(1 missing)",
    }
    for cut, expected in cuts.items():
        path = tmp_path / f"cut_{cut}.safetensors"
        path.write_bytes(data[:cut])
        raises_with(lambda: read_state_dict(path), f"cut_{cut}.safetensors", expected, "download the file again")


def test_safetensors_bad_json_header(tmp_path: Path) -> None:
    body = b"{this is not json}"
    path = tmp_path / "badjson.safetensors"
    path.write_bytes(len(body).to_bytes(8, "little") + body + b"\0" * 16)
    raises_with(lambda: read_state_dict(path), "badjson.safetensors", "not valid JSON", "download the file again")


def test_safetensors_damaged_entry_caught_from_library(tmp_path: Path) -> None:
    # framing consistent, but the tensor's byte count does not match its shape: the library rejects it
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 8]}}).encode()
    path = tmp_path / "inconsistent.safetensors"
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 8)
    raises_with(lambda: read_state_dict(path), "inconsistent.safetensors", "could not be read as safetensors",
                "download it again")


def test_truncated_zip_ckpt(tmp_path: Path) -> None:
    src = tmp_path / "whole.ckpt"
    torch.save({"state_dict": tiny_supir()}, src)
    data = src.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut_{cut}.ckpt"
        path.write_bytes(data[:cut])
        raises_with(lambda: read_state_dict(path), f"cut_{cut}.ckpt", "truncated or damaged zip", "download it again")


def test_truncated_legacy_pickle(tmp_path: Path) -> None:
    src = tmp_path / "whole.pt"
    torch.save({"state_dict": tiny_supir()}, src, _use_new_zipfile_serialization=False)
    data = src.read_bytes()
    for cut in (5, len(data) // 3, len(data) - 3):
        path = tmp_path / f"cut_{cut}.pt"
        path.write_bytes(data[:cut])
        raises_with(lambda: read_state_dict(path), f"cut_{cut}.pt", "download it again")


@pytest.mark.parametrize("name, expected", [
    ("random.ckpt", "neither a zip archive nor a pickle"),
    ("random.bin", "neither a zip archive nor a pickle"),
    ("random.safetensors", "header length field says"),
    ("random.xyz", "unknown extension '.xyz'"),
])
def test_random_bytes(tmp_path: Path, name: str, expected: str) -> None:
    rng = random.Random(0)
    path = tmp_path / name
    path.write_bytes(b"\x13\x37" + bytes(rng.randrange(256) for _ in range(4096)))
    raises_with(lambda: read_state_dict(path), name, expected)


def test_random_bytes_after_pickle_magic(tmp_path: Path) -> None:
    rng = random.Random(1)
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"\x80\x02" + bytes(rng.randrange(256) for _ in range(4096)))
    raises_with(lambda: read_state_dict(path), "garbage.bin", "damaged or not a plain weights checkpoint",
                "Unsupported operand", "download it again")


def test_broken_download_hints(tmp_path: Path) -> None:
    lfs = tmp_path / "SUPIR-v0Q.safetensors"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 2660000000\n")
    raises_with(lambda: read_state_dict(lfs), "SUPIR-v0Q.safetensors", "Git LFS pointer")
    html = tmp_path / "SUPIR-v0F.ckpt"
    html.write_text("<!DOCTYPE html><html><body>Sign in</body></html>")
    raises_with(lambda: read_state_dict(html), "SUPIR-v0F.ckpt", "web page")


def test_zip_named_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "fake.safetensors"
    torch.save(tiny_supir(), path)
    raises_with(lambda: read_state_dict(path), "fake.safetensors", "rename it to .ckpt")


@pytest.mark.parametrize("zip_format", [True, False])
def test_pickled_code_is_refused_and_never_runs(tmp_path: Path, zip_format: bool) -> None:
    marker = tmp_path / "marker.txt"
    # control: unpickling these bytes for real would run the code
    pickle.loads(pickle.dumps(Evil(tmp_path / "control.txt")))
    assert (tmp_path / "control.txt").exists()

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": tiny_supir(), "payload": Evil(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    raises_with(lambda: read_state_dict(path), "evil.ckpt", "pickled code", "refuse to run", "_write_marker",
                ".safetensors")
    assert not marker.exists()


def test_plain_pickle_with_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": {"w": torch.zeros(2)}, "x": Evil(marker)}, protocol=2))
    raises_with(lambda: read_state_dict(path), "evil.pt", "pickled code", "refuse to run")
    assert not marker.exists()


def test_lightning_checkpoint_callback_state_loads_inert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Training .ckpt files carry a ModelCheckpoint callback and numpy scalars: read them, run none of it."""
    np = pytest.importorskip("numpy")
    marker = tmp_path / "setstate_ran.txt"

    class ModelCheckpoint:
        def __setstate__(self, state):
            _write_marker(str(marker))

    mod_name = "pytorch_lightning.callbacks.model_checkpoint"
    ModelCheckpoint.__module__, ModelCheckpoint.__qualname__ = mod_name, "ModelCheckpoint"
    for name in ("pytorch_lightning", "pytorch_lightning.callbacks", mod_name):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules[mod_name].ModelCheckpoint = ModelCheckpoint
    callback = ModelCheckpoint()
    callback.best_model_score = np.float64(0.25)
    sd = tiny_supir()
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": sd, "callbacks": {"ModelCheckpoint": callback}, "global_step": 7}, path)
    monkeypatch.delitem(sys.modules, mod_name)  # the loader must not need (or import) Lightning

    assert_same(read_state_dict(path), sd)
    assert not marker.exists()


def test_file_without_tensors(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    raises_with(lambda: read_state_dict(path), "notes.pt", "holds no tensors", "epoch, lr")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    raises_with(lambda: read_state_dict(path), "list.pt", "holds a list, not a state dict")


# --- classification --------------------------------------------------------------------------------------
def test_classify_tiny_kinds() -> None:
    assert classify_state_dict(tiny_sdxl()) == "sdxl"
    assert classify_state_dict(tiny_sd1()) == "sd1"
    assert classify_state_dict(tiny_sd2()) == "sd2"
    assert classify_state_dict(tiny_supir()) == "supir_pruned"
    assert classify_state_dict({**tiny_supir(), **tiny_sdxl()}) == "supir_full"
    assert classify_state_dict(tiny_unet(9, True, True, prefix="")) == "unet_only"
    diffusers_unet = {"conv_in.weight": _rand(8, 4, 3, 3), "time_embedding.linear_1.weight": _rand(8, 8)}
    assert classify_state_dict(diffusers_unet) == "unet_only"
    assert classify_state_dict({"encoder.conv_in.weight": _rand(2)}) == "unknown"
    assert classify_state_dict({}) == "unknown"


def test_classify_by_structure_without_text_encoders() -> None:
    assert classify_state_dict(tiny_unet(9, label_emb=True, linear_proj=True)) == "sdxl"
    assert classify_state_dict(tiny_unet(12, label_emb=False, linear_proj=False)) == "sd1"
    assert classify_state_dict(tiny_unet(12, label_emb=False, linear_proj=True)) == "sd2"


def test_classify_by_width_when_structure_is_silent() -> None:
    for context, kind in ((768, "sd1"), (1024, "sd2"), (2048, "sdxl")):
        sd = {"model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": [640, context]}
        assert classify_state_dict(sd) == kind


def test_classify_disagreeing_tells_is_unknown() -> None:
    # SDXL structure with an SD1-sized context, or SD1 text encoder on an SDXL-shaped UNet
    assert classify_state_dict(tiny_unet(9, label_emb=True, linear_proj=True, context=768)) == "unknown"
    sd = {**tiny_unet(9, True, True), "cond_stage_model.transformer.text_model.x.weight": _rand(2)}
    assert classify_state_dict(sd) == "unknown"


def test_classify_sdxl_refiner_is_unknown_and_named() -> None:
    sd = {**tiny_unet(12, label_emb=True, linear_proj=True), **tiny_vae(),
          "conditioner.embedders.0.model.token_embedding.weight": _rand(10, 8)}
    assert classify_state_dict(sd) == "unknown"
    raises_with(lambda: require_sdxl(sd, "refiner.safetensors"), "refiner.safetensors", "SDXL refiner",
                "sd_xl_base_1.0")


def test_full_size_layout_by_names_and_meta(layout_json: Path) -> None:
    layout = json.loads(layout_json.read_text())
    assert len(layout["supir_keys"]) == 1035
    assert classify_state_dict(dict.fromkeys(layout["supir_keys"])) == "supir_pruned"
    assert classify_state_dict(layout["shapes"]) == "supir_full"
    sdxl_only = {k: v for k, v in layout["shapes"].items() if not k.startswith(SUPIR_PREFIXES)}
    assert classify_state_dict(sdxl_only) == "sdxl"
    assert classify_state_dict(dict.fromkeys(sdxl_only)) == "sdxl"  # names alone: label_emb + 9 input blocks

    meta = {k: torch.empty(layout["shapes"][k], device="meta") for k in layout["supir_keys"]}
    parts = split_supir_state_dict(meta, "SUPIR-v0Q.ckpt")
    assert (len(parts.control), len(parts.connectors), len(parts.denoise_encoder)) == (810, 118, 106)
    assert parts.has_mask_lq and "mask_LQ" not in parts.control
    assert parts.kind == "supir_pruned" and parts.other_keys == 0
    assert {k.split(".")[0] for k in parts.connectors} == {str(i) for i in range(12)}


def test_parity_fixture(parity_dir: Path, tmp_path: Path) -> None:
    """The fixture's weights read through read_state_dict itself (not the shared `parity` fixture)."""
    weights_file = parity_dir / "tiny_supir.safetensors"
    sd = read_state_dict(weights_file)
    assert classify_state_dict(sd) == "supir_full"
    require_sdxl(sd, weights_file)  # a full SUPIR file holds the SDXL UNet and VAE
    parts = split_supir_state_dict(sd, weights_file)
    assert parts.kind == "supir_full" and parts.path == str(weights_file)
    for name, group, prefix in (("control", parts.control, SUPIR_PREFIXES[0]),
                                ("connectors", parts.connectors, SUPIR_PREFIXES[1]),
                                ("denoise", parts.denoise_encoder, SUPIR_PREFIXES[2])):
        assert group and all(torch.equal(v, sd[prefix + k]) for k, v in group.items()), name

    # the official .ckpt wrapping of the same tensors reads back identical
    path = tmp_path / "tiny_supir.ckpt"
    torch.save({"state_dict": sd}, path)
    assert_same(read_state_dict(path), sd)


# --- splitting and require_sdxl ------------------------------------------------------------------------
def test_split_strips_prefixes_and_mask() -> None:
    sd = tiny_supir()
    parts = split_supir_state_dict(sd, "SUPIR-v0F.safetensors")
    assert parts.has_mask_lq and "mask_LQ" not in parts.control
    assert "input_hint_block.0.weight" in parts.control
    assert "0.zero_conv.weight" in parts.connectors and "11.zero_conv.bias" in parts.connectors
    assert set(parts.denoise_encoder) == {"conv_in.weight", "conv_out.weight"}
    assert parts.kind == "supir_pruned"
    assert not split_supir_state_dict(tiny_supir(mask_lq=False), "x").has_mask_lq
    with pytest.raises(AttributeError):
        parts.kind = "sdxl"  # frozen


def test_split_rejects_base_models() -> None:
    raises_with(lambda: split_supir_state_dict(tiny_sdxl(), "/models/sd_xl_base_1.0.safetensors"),
                "sd_xl_base_1.0.safetensors", "is an SDXL checkpoint, not a SUPIR model",
                "pick it as the SDXL checkpoint", "SUPIR-v0Q or SUPIR-v0F")
    raises_with(lambda: split_supir_state_dict(tiny_sd1(), "v1-5.ckpt"), "v1-5.ckpt",
                "Stable Diffusion 1.x checkpoint, not a SUPIR model", "SUPIR-v0Q")
    raises_with(lambda: split_supir_state_dict(tiny_sd2(), "v2-1.ckpt"), "v2-1.ckpt", "2.x", "SUPIR-v0F")
    raises_with(lambda: split_supir_state_dict(tiny_unet(9, True, True, prefix=""), "unet.safetensors"),
                "unet.safetensors", "holds no SUPIR weights", "SUPIR-v0Q")


def test_split_lists_missing_connectors(tmp_path: Path) -> None:
    sd = {k: v for k, v in tiny_supir().items()
          if not any(k.startswith(f"model.diffusion_model.project_modules.{i}.") for i in range(3, 10))}
    path = tmp_path / "broken.safetensors"
    save_file(sd, path)
    msg = raises_with(lambda: split_supir_state_dict(read_state_dict(path), path), "broken.safetensors",
                      "incomplete SUPIR file", "project_modules.3.*", "project_modules.7.*", "...and 2 more",
                      "Download SUPIR-v0Q or SUPIR-v0F again")
    assert "project_modules.8.*" not in msg and "project_modules.10" not in msg


def test_split_names_missing_groups_and_control_keys() -> None:
    sd = {k: v for k, v in tiny_supir().items()
          if not k.startswith(("first_stage_model.denoise_encoder.", "model.control_model.middle_block.",
                               "model.control_model.label_emb."))}
    raises_with(lambda: split_supir_state_dict(sd, "partial.safetensors"), "partial.safetensors",
                "first_stage_model.denoise_encoder.* (the whole group)",
                "model.control_model.label_emb.0.0.weight", "model.control_model.middle_block.*")
    sd = {k: v for k, v in tiny_supir().items() if k != "first_stage_model.denoise_encoder.conv_out.weight"}
    raises_with(lambda: split_supir_state_dict(sd, "p2.safetensors"), "p2.safetensors",
                "first_stage_model.denoise_encoder.conv_out.weight")


def test_require_sdxl_accepts_sdxl_and_full_supir() -> None:
    require_sdxl(tiny_sdxl(), "sd_xl_base_1.0.safetensors")
    require_sdxl({**tiny_supir(), **tiny_sdxl()}, "SUPIR-full.ckpt")


def test_require_sdxl_rejections() -> None:
    raises_with(lambda: require_sdxl(tiny_sd1(), "v1-5-pruned.safetensors"), "v1-5-pruned.safetensors",
                "Stable Diffusion 1.x checkpoint", "SDXL base model such as sd_xl_base_1.0")
    raises_with(lambda: require_sdxl(tiny_sd2(), "v2-1_768.safetensors"), "v2-1_768.safetensors",
                "Stable Diffusion 2.x checkpoint", "sd_xl_base_1.0")
    raises_with(lambda: require_sdxl(tiny_supir(), "SUPIR-v0Q_fp16.safetensors"), "SUPIR-v0Q_fp16.safetensors",
                "holds only SUPIR weights", "choose it as the SUPIR model and pick an SDXL checkpoint here")
    raises_with(lambda: require_sdxl(tiny_unet(9, True, True, prefix=""), "unet.safetensors"), "unet.safetensors",
                "UNet only", "both text encoders and VAE", "SUPIR Loader (from MODEL)")
    raises_with(lambda: require_sdxl({"foo.weight": _rand(2)}, "odd.safetensors"), "odd.safetensors",
                "not a recognisable SDXL checkpoint", "UNet (model.diffusion_model.*)",
                "SUPIR Loader (from MODEL)")


def test_describe_missing() -> None:
    assert describe_missing([]) == "none"
    assert describe_missing(["a", "b"]) == "a, b"
    assert describe_missing([f"k{i}" for i in range(5)]) == "k0, k1, k2, k3, k4"
    assert describe_missing([f"k{i}" for i in range(8)]) == "k0, k1, k2, k3, k4 ...and 3 more"
    assert describe_missing(iter(["x", "y", "z"]), limit=1) == "x ...and 2 more"
