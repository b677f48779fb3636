"""The VAE stages (pipeline.run_stage1 and pipeline.decode) tell ComfyUI's memory manager what they need, so it
offloads the SDXL UNet and the adaptor to make room (tiny models, ComfyUI on the CPU).

What they ask for is ComfyUI's own VAE estimate (`VAE.memory_used_encode/decode`) of the whole image, or tiled
of the largest padded tile. With `--cpu` ComfyUI never offloads (it skips the CPU in `free_memory`), so the
offloading test gives the models a second CPU device, `cpu:0`, which ComfyUI manages like a GPU, with a simulated
free-memory gauge: ComfyUI's real `load_models_gpu`/`free_memory` decide what to unload. Real VRAM is not measured.
"""
from __future__ import annotations


import pytest
import torch

from fsupir_under_test.supir_modules import pipeline, tiled_vae, vae_stage


MiB = 2**20


@pytest.fixture
def loaded(tiny_supir):
    supir, _, vae = tiny_supir
    return supir, vae


@pytest.fixture
def requests(monkeypatch):
    """Every `load_models_gpu` call as (models, memory_required), still loading through ComfyUI."""
    import comfy.model_management as mm

    calls = []
    real = mm.load_models_gpu

    def spy(models, memory_required=0, **kw):
        calls.append((list(models), memory_required))
        return real(models, memory_required=memory_required, **kw)

    monkeypatch.setattr(mm, "load_models_gpu", spy)
    return calls


def _image(size: int) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1


def _latent(size: int) -> torch.Tensor:
    return torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(size))


def _stage1(supir, vae, size: int, tiled: bool = False, encoder_tile: int = 64, decoder_tile: int = 8):
    return pipeline.run_stage1(supir, vae, _image(size), seed=0, tiled=tiled, encoder_tile=encoder_tile,
                               decoder_tile=decoder_tile)


def _enc(vae, h: int, w: int) -> int:
    return vae.memory_used_encode((1, 3, h, w), vae.vae_dtype)


def _dec(vae, h: int, w: int) -> int:
    return vae.memory_used_decode((1, 4, h, w), vae.vae_dtype)


def test_stage1_untiled_asks_for_the_largest_pass_of_the_whole_image(loaded, requests):
    supir, vae = loaded
    asked = []
    for size in (64, 128):
        _stage1(supir, vae, size)
        models, memory = requests[-1]
        assert vae.patcher in models and supir.denoise_encoder in models  # the encoder patcher loads with the VAE
        assert memory == max(_enc(vae, size, size), _dec(vae, size // 8, size // 8)) > 0
        asked.append(memory)
    assert asked[1] == 4 * asked[0]  # the estimates are per pixel


def test_decode_untiled_asks_for_the_whole_latent(loaded, requests):
    _, vae = loaded
    asked = []
    for size in (8, 16):
        pipeline.decode(vae, _latent(size), tiled=False, decoder_tile=64)
        models, memory = requests[-1]
        assert models == [vae.patcher]
        assert memory == _dec(vae, size, size) > 0
        asked.append(memory)
    assert asked[1] > asked[0]


def test_tiled_requests_are_bounded_by_the_tile(loaded, requests):
    """Tiled, the request is ComfyUI's estimate of one padded tile (tile + 2 * pad per side), whatever the image
    size; untiled it grows with the image."""
    supir, vae = loaded
    enc_tile, dec_tile = 192, 16
    enc_side, dec_side = enc_tile + 2 * tiled_vae.ENCODER_PAD, dec_tile + 2 * tiled_vae.DECODER_PAD
    tile_budget = max(_enc(vae, enc_side, enc_side), _dec(vae, dec_side, dec_side))
    for size in (320, 448):  # 2x2 encoder tiles; 2x2 and 3x3 decoder tiles
        _stage1(supir, vae, size, tiled=True, encoder_tile=enc_tile, decoder_tile=dec_tile)
        assert requests[-1][1] == tile_budget
        pipeline.decode(vae, _latent(size // 8), tiled=True, decoder_tile=dec_tile)
        assert requests[-1][1] == _dec(vae, dec_side, dec_side)
    _stage1(supir, vae, 448)
    assert requests[-1][1] > 2 * tile_budget
    _stage1(supir, vae, 64, tiled=True, encoder_tile=enc_tile, decoder_tile=dec_tile)  # smaller than one tile
    assert 0 < requests[-1][1] == max(_enc(vae, 64, 64), _dec(vae, 8, 8)) < tile_budget


def test_a_vae_without_estimates_gets_comfys_autoencoder_kl_rule(loaded, requests):
    """Other VAE objects (no memory_used_* lambdas) are asked for with ComfyUI's AutoencoderKL constants."""
    _, vae = loaded

    class Bare:
        patcher, first_stage_model, device, vae_dtype = vae.patcher, vae.first_stage_model, vae.device, vae.vae_dtype

    pipeline.decode(Bare(), _latent(8), tiled=False, decoder_tile=64)
    assert requests[-1][1] == _dec(vae, 8, 8)


def test_waiting_tiles_go_to_the_offload_device_when_vram_is_short(loaded, monkeypatch):
    """Tiles paused at a GroupNorm stay on the GPU while they fit in its free memory beside one tile, else they
    wait on the VAE's offload device (the official tilevae.py's choice) so VRAM stays bounded by the tile."""
    import comfy.model_management as mm

    _, vae = loaded
    small = vae_stage.vae_pass(vae, "decode", vae.first_stage_model.decoder, (32, 32), torch.float16, 8)
    big = vae_stage.vae_pass(vae, "decode", vae.first_stage_model.decoder, (64, 64), torch.float16, 8)
    assert small.working == big.working and 0 < small.parked < big.parked
    assert vae_stage.vae_pass(vae, "decode", vae.first_stage_model.decoder, (16, 16), torch.float16, 8).parked == 0
    gpu = torch.device("cuda", 0)  # only compared, never used
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: big.working + small.parked)
    assert vae_stage.park_device(vae, gpu, big.working, small.parked) is None
    assert vae_stage.park_device(vae, gpu, big.working, big.parked) == vae.patcher.offload_device
    assert vae_stage.park_device(vae, torch.device("cpu"), big.working, big.parked) is None


# --- ComfyUI offloads the sampling models to make room -----------------------------------------------------
SIM = torch.device("cpu", 0)  # not equal to torch.device("cpu"): ComfyUI manages it like a GPU


@pytest.fixture
def small_gpu(loaded, monkeypatch):
    """The models on SIM, whose free memory is BUDGET minus what ComfyUI has loaded there."""
    import comfy.model_management as mm

    supir, vae = loaded
    mm.unload_all_models()
    patchers = [supir.sdxl, supir.adaptor, supir.denoise_encoder, vae.patcher]
    for p in patchers:
        p.load_device = SIM
    weights = sum(p.model_size() for p in patchers)
    budget = weights + 1536 * MiB
    real = mm.get_free_memory

    def gauge(dev=None, torch_free_too=False):
        if dev != SIM:
            return real(dev, torch_free_too)
        used = sum(getattr(m.model, "loaded_size", m.model.model_size)() for m in mm.current_loaded_models
                   if m.device == SIM)
        free = budget - used
        return (free, free) if torch_free_too else free

    monkeypatch.setattr(mm, "get_free_memory", gauge)
    yield supir, vae
    mm.free_memory(1e30, SIM)  # unload everything from SIM while the gauge is in place


def _on_sim() -> list:
    import comfy.model_management as mm

    return [m.model for m in mm.current_loaded_models if m.device == SIM]


def test_comfy_offloads_unet_and_adaptor_for_a_large_vae_stage(small_gpu, requests):
    import comfy.model_management as mm

    supir, vae = small_gpu
    mm.load_models_gpu(supir.patchers_for_sampling())
    assert {id(supir.sdxl), id(supir.adaptor)} <= {id(m) for m in _on_sim()}

    pipeline.decode(vae, _latent(8), tiled=False, decoder_tile=64)  # a small request: everything fits
    assert {id(supir.sdxl), id(supir.adaptor), id(vae.patcher)} <= {id(m) for m in _on_sim()}

    pipeline.decode(vae, _latent(64), tiled=True, decoder_tile=16)  # tiled: one tile's memory, still fits
    assert requests[-1][1] < 1024 * MiB
    assert {id(supir.sdxl), id(supir.adaptor)} <= {id(m) for m in _on_sim()}

    pipeline.decode(vae, _latent(64), tiled=False, decoder_tile=64)  # the whole 512x512 px decode: ~2.1 GiB
    assert requests[-1][1] > 1536 * MiB
    loaded = {id(m) for m in _on_sim()}
    assert id(vae.patcher) in loaded
    assert id(supir.sdxl) not in loaded and id(supir.adaptor) not in loaded, "ComfyUI kept the UNet/adaptor"


def test_stage1_offloads_too_and_keeps_the_encoder_with_the_vae(small_gpu):
    import comfy.model_management as mm

    supir, vae = small_gpu
    mm.load_models_gpu(supir.patchers_for_sampling())
    _stage1(supir, vae, 512)
    loaded = {id(m) for m in _on_sim()}
    assert {id(vae.patcher), id(supir.denoise_encoder)} <= loaded
    assert id(supir.sdxl) not in loaded and id(supir.adaptor) not in loaded
