"""Restoration-Guided EDM Sampler: the official RestoreEDMSampler (and DPM++ 2M) with presets and tiling."""
from __future__ import annotations

import logging

import latent_preview

from ..supir_modules.restore_sampler import CUDA_GRAPH_CHOICES, Acceleration, TileOptions, sample
from ..supir_modules.presets import CUSTOM, PRESETS, SAMPLERS, SamplerSettings, resolve_settings
from ..supir_modules.stage_report import StageMeter, ui_output
from .common import (CATEGORY, SUPIR_LATENTS_TYPE, SUPIR_MODEL_TYPE, check_supir_latents, check_supir_model,
                     tile_inputs)

logger = logging.getLogger(__name__)
_D = SamplerSettings()  # widget defaults = the Fidelity preset


def _f(default: float, lo: float, hi: float, step: float, tip: str) -> tuple:
    return ("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, "tooltip": tip})


class FSUPIRSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "supir_model": (SUPIR_MODEL_TYPE, {"tooltip": "From a SUPIR Loader."}),
            "supir_latents": (SUPIR_LATENTS_TYPE, {"tooltip": "From SUPIR Degradation-Robust Encode."}),
            "positive": ("CONDITIONING", {"tooltip": "From the SUPIR Conditioner."}),
            "negative": ("CONDITIONING", {"tooltip": "From the SUPIR Conditioner."}),
            "seed": ("INT", {"default": 1234, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                             "tooltip": "Same seed, same result."}),
            "preset": ([CUSTOM, *PRESETS], {"default": "Fidelity",
                                            "tooltip": "Fidelity: official CLI defaults. Quality: official gradio "
                                                       "defaults. Lightning: DPM++ 2M, 8 steps, for Lightning SDXL. "
                                                       "Custom: the values below."}),
            "sampler": (list(SAMPLERS), {"default": _D.sampler, "tooltip": "Used with preset Custom."}),
            "steps": ("INT", {"default": _D.steps, "min": 1, "max": 500, "tooltip": "Sampling steps."}),
            "cfg_scale": _f(_D.cfg_scale, 0.0, 30.0, 0.1, "Classifier-free guidance at the end of sampling."),
            "cfg_scale_start": _f(_D.cfg_scale_start, 0.0, 30.0, 0.1, "CFG at the start when linear_cfg is on."),
            "linear_cfg": ("BOOLEAN", {"default": _D.linear_cfg, "tooltip": "Ramp CFG from start to cfg_scale."}),
            "control_scale": _f(_D.control_scale, 0.0, 2.0, 0.01, "Strength of SUPIR's control (official s_stage2)."),
            "control_scale_start": _f(_D.control_scale_start, 0.0, 2.0, 0.01, "Control at the start when ramped."),
            "linear_control_scale": ("BOOLEAN", {"default": _D.linear_control_scale,
                                                 "tooltip": "Ramp control from start to control_scale."}),
            "restore_cfg": _f(_D.restore_cfg, -1.0, 20.0, 0.1, "Restoration guidance toward the stage-1 latent "
                                                               "(official s_stage1); -1 turns it off."),
            "restore_cfg_s_tmin": _f(_D.restore_cfg_s_tmin, 0.0, 15.0, 0.01, "Guidance stops below this sigma."),
            "s_churn": _f(_D.s_churn, 0.0, 100.0, 0.1, "EDM churn (restore_edm only)."),
            "s_noise": _f(_D.s_noise, 0.0, 2.0, 0.001, "Noise scale of churn / SDE noise."),
            "eta": _f(_D.eta, 0.0, 1.0, 0.01, "DPM++ 2M's SDE noise (dpmpp_2m only)."),
            "tiled": ("BOOLEAN", {"default": False, "tooltip": "Sample in overlapping tiles (large images)."}),
            **tile_inputs("Tile size in pixels (official 1024).",
                          "Distance between tiles in pixels (official 512); at most the tile."),
        }, "optional": {
            # Optional so that workflows saved before these existed keep loading and running unchanged.
            "cuda_graph": (list(CUDA_GRAPH_CHOICES), {
                "default": "auto", "tooltip": "auto: on an NVIDIA GPU with the models fully loaded, replay each step "
                                              "from a CUDA graph (much less launch overhead; checked against the "
                                              "plain step once, falls back by itself). off: plain PyTorch."}),
            "tile_batch": ("INT", {"default": 1, "min": 1, "max": 64,
                                   "tooltip": "Tiled sampling: tiles per network call. Same result (up to float rounding); more is faster "
                                              "on big GPUs and needs proportionally more memory."}),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("samples",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY
    DESCRIPTION = "SUPIR's restoration-guided EDM sampler (Yu et al., CVPR 2024)."

    def sample(self, supir_model, supir_latents, positive, negative, seed, preset, sampler, steps, cfg_scale,
               cfg_scale_start, linear_cfg, control_scale, control_scale_start, linear_control_scale, restore_cfg,
               restore_cfg_s_tmin, s_churn, s_noise, eta, tiled, tile_size, tile_stride, cuda_graph="auto",
               tile_batch=1):
        check_supir_model(supir_model)
        check_supir_latents(supir_latents)
        custom = SamplerSettings(sampler, steps, cfg_scale, cfg_scale_start, linear_cfg, control_scale,
                                 control_scale_start, linear_control_scale, restore_cfg, restore_cfg_s_tmin, s_churn,
                                 s_noise, eta)
        settings = resolve_settings(preset, custom)
        if tile_stride > tile_size:
            raise ValueError(f"tile_stride {tile_stride} is larger than tile_size {tile_size}: parts of the image "
                             "would never be sampled; use a stride at most the tile size (half is usual)")
        tiles = TileOptions(enabled=bool(tiled), size=tile_size // 8, stride=tile_stride // 8)
        preview = latent_preview.prepare_callback(supir_model.sdxl, settings.steps)

        accel = Acceleration(cuda_graph=cuda_graph, tile_batch=int(tile_batch))
        with StageMeter("sample") as meter:
            def callback(i, steps_total, x, denoised):
                meter.step_done()
                preview(i, denoised, x, steps_total)

            samples = sample(supir_model, supir_latents, positive, negative, settings, seed, tiles, callback,
                             accel=accel)
        out = {"samples": samples, "fsupir_out_size": supir_latents.out_size}
        if supir_latents.alpha is not None:
            out["fsupir_alpha"] = supir_latents.alpha
        return {"ui": ui_output(meter.report), "result": (out,)}


NODE_CLASS_MAPPINGS = {"FSUPIR_Sampler": FSUPIRSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"FSUPIR_Sampler": "SUPIR Restoration-Guided EDM Sampler"}
