"""The sampler's fast paths inside a real ComfyUI on tiny weights: CUDA-graph bookkeeping (driven on the CPU by a
capture that recomputes from its static buffers), batched tile windows, the Sampler node's options, and the
real `pipeline.sample` step loop on an accelerator stand-in (meta device) without host-device waits."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from fsupir_under_test.supir_modules import pipeline
from fsupir_under_test.supir_modules.cuda_graphs import RecomputingCapture
from fsupir_under_test.supir_modules.presets import SamplerSettings

from ..fast_path_probes import DeviceTraffic
from ..node_chain import image
from ..unit.parity_helpers import rel_err

SETTINGS = SamplerSettings("restore_edm", 4, 4.0, 1.0, True, 0.9, 0.5, True, 4.0, 0.05, 5.0, 1.01, 1.0)


def _run(chain, latents, pos, neg, accel, tiles=pipeline.TileOptions(), settings=SETTINGS):
    return pipeline.sample(chain.supir, latents, pos, neg, settings, seed=3, tiles=tiles, accel=accel)


@pytest.mark.parametrize("sampler", ["restore_edm", "dpmpp_2m"])
def test_graphed_sampling_equals_eager(chain, sampler):
    latents, _ = chain.encode(image())
    pos, neg = chain.condition()
    settings = dataclasses.replace(SETTINGS, sampler=sampler)
    plain = _run(chain, latents, pos, neg, pipeline.Acceleration(cuda_graph="off"), settings=settings)
    backend = RecomputingCapture()
    fast = _run(chain, latents, pos, neg, pipeline.Acceleration(capture_backend=backend), settings=settings)
    assert backend.captures == 1 and backend.replays == settings.steps
    assert rel_err(fast, plain) < 1e-5
    # "auto" on a machine without CUDA is the eager path itself.
    assert torch.equal(_run(chain, latents, pos, neg, pipeline.Acceleration(), settings=settings), plain)


@pytest.mark.parametrize("sampler", ["restore_edm", "dpmpp_2m"])
def test_batched_tiles_and_graphs_equal_one_tile_at_a_time(chain, sampler):
    latents, _ = chain.encode(image(h=64, w=256, seed=2), min_size=64)  # latent 8 x 32
    pos, neg = chain.condition()
    tiles = pipeline.TileOptions(enabled=True, size=8, stride=4)  # 7 windows
    settings = dataclasses.replace(SETTINGS, sampler=sampler)
    plain = _run(chain, latents, pos, neg, pipeline.Acceleration(cuda_graph="off"), tiles, settings)
    for tile_batch in (2, 3, 7):
        out = _run(chain, latents, pos, neg, pipeline.Acceleration("off", tile_batch), tiles, settings)
        assert rel_err(out, plain) < 1e-5, tile_batch
    backend = RecomputingCapture()
    out = _run(chain, latents, pos, neg, pipeline.Acceleration(tile_batch=3, capture_backend=backend), tiles, settings)
    assert backend.captures == 2  # groups of 3, 3 and 1 windows: two shapes
    assert backend.replays == settings.steps * 3
    assert rel_err(out, plain) < 1e-5


def test_per_tile_captions_stay_with_their_tiles_when_batched(chain):
    latents, _ = chain.encode(image(h=64, w=192, seed=3), min_size=64)  # latent 8 x 24, windows at 0, 8, 16
    pos, neg = chain.condition(["left", "middle", "right"], captions_are=["one per tile"])
    tiles = pipeline.TileOptions(enabled=True, size=8, stride=8)
    one = _run(chain, latents, pos, neg, pipeline.Acceleration("off", 1), tiles)
    batched = _run(chain, latents, pos, neg, pipeline.Acceleration("off", 2), tiles)
    assert rel_err(batched, one) < 1e-5
    # ... and the captions matter: swapping two of them changes the result (on these tiny random weights by
    # far more than the batching tolerance above).
    swapped, _ = chain.condition(["middle", "left", "right"], captions_are=["one per tile"])
    assert rel_err(_run(chain, latents, swapped, neg, pipeline.Acceleration("off", 2), tiles), one) > 1e-4


def test_sampler_node_options(chain):
    latents, _ = chain.encode(image())
    pos, neg = chain.condition()
    old_style = chain.sample(latents, pos, neg)["samples"]  # a workflow saved before the options existed
    assert torch.equal(chain.sample(latents, pos, neg, cuda_graph="off", tile_batch=4)["samples"], old_style)
    tiled = dict(tiled=True, tile_size=64, tile_stride=32)
    assert rel_err(chain.sample(latents, pos, neg, tile_batch=3, **tiled)["samples"],
               chain.sample(latents, pos, neg, **tiled)["samples"]) < 1e-5
    with pytest.raises(ValueError, match="cuda_graph must be one of .*got 'always'"):
        chain.sample(latents, pos, neg, cuda_graph="always")
    with pytest.raises(ValueError, match="tile_batch must be a whole number of at least 1, got 0"):
        chain.sample(latents, pos, neg, tile_batch=0)


class _StopAtLastStep(Exception):
    pass


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_pipeline_step_loop_never_waits_on_the_device(chain, monkeypatch, sdpa_attention, tiled):
    """`pipeline.sample` itself, with the meta device standing in for the GPU (every op runs for shapes only):
    between the first and the last step nothing is copied to or from the device except the asynchronous noise
    uploads, and no device scalar is read."""
    import comfy.model_management as mm

    latents, _ = chain.encode(image(h=64, w=128), min_size=64)
    pos, neg = chain.condition()
    monkeypatch.setattr(mm, "get_torch_device", lambda: torch.device("meta"))
    monkeypatch.setattr(mm, "load_models_gpu", lambda *a, **k: None)
    chain.supir.sdxl.model.diffusion_model.to("meta")
    chain.supir.adaptor.model.to("meta")
    traffic = DeviceTraffic()
    steps = 5

    def callback(i, n, x, denoised):
        if i == 0:
            traffic.__enter__()
        elif i == n - 1:
            traffic.__exit__(None, None, None)
            raise _StopAtLastStep  # the result would be copied back to the host from here on
    tiles = pipeline.TileOptions(enabled=tiled, size=8, stride=4)
    settings = dataclasses.replace(SETTINGS, steps=steps)
    with pytest.raises(_StopAtLastStep):
        pipeline.sample(chain.supir, latents, pos, neg, settings, seed=1, tiles=tiles, callback=callback,
                        accel=pipeline.Acceleration(tile_batch=2))
    assert traffic.blocking == []
    assert traffic.async_uploads == steps - 1  # steps 1-4 each upload their noise draw
