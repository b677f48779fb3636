"""The four restoration nodes called in a row, as a workflow wires them (Encode -> Conditioner -> Sampler ->
Tiled Decode), with small defaults for the tiny models; the comfy tier's `chain` fixture hands one out."""
from __future__ import annotations

import torch


SAMPLER_DEFAULTS = dict(preset="Custom", sampler="restore_edm", steps=3, cfg_scale=4.0, cfg_scale_start=1.0,
                        linear_cfg=True, control_scale=0.9, control_scale_start=0.5, linear_control_scale=True,
                        restore_cfg=4.0, restore_cfg_s_tmin=0.05, s_churn=5.0, s_noise=1.01, eta=1.0, tiled=False,
                        tile_size=1024, tile_stride=512)
CONDITIONER_DEFAULTS = dict(captions_are=["one per image"], prompt_length=["official (first 77 tokens)"])


def image(b=1, h=80, w=72, c=3, seed=0):
    return torch.rand(b, h, w, c, generator=torch.Generator().manual_seed(seed))


class Chain:
    def __init__(self, nodes, loaded):
        self.n = nodes
        self.supir, self.clip, self.vae = loaded
        self.reports: list[dict] = []  # the stage nodes' UI reports (time, peak VRAM), in call order

    def _result(self, out: dict) -> tuple:
        self.reports.extend(out["ui"]["fsupir_report"])
        return out["result"]

    def encode(self, img, **kw):
        args = dict(upscale=1.0, min_size=128, seed=1, tiled_vae=False, encoder_tile_size=512, decoder_tile_size=64)
        args.update(kw)
        return self._result(self.n["FSUPIR_Encode"]().encode(self.supir, self.vae, img, **args))

    def condition(self, captions=("a photo of a cat",), **kw):
        args = dict(CONDITIONER_DEFAULTS)
        args.update(kw)
        return self.n["FSUPIR_Conditioner"]().condition([self.clip], list(captions), ["high quality"], ["blurry"],
                                                       **args)

    def sample(self, latents, pos, neg, seed=7, **kw):
        args = dict(SAMPLER_DEFAULTS)
        args.update(kw)
        return self._result(self.n["FSUPIR_Sampler"]().sample(self.supir, latents, pos, neg, seed, **args))[0]

    def decode(self, samples, stage1, color_fix="Wavelet", **kw):
        return self._result(self.n["FSUPIR_TiledDecode"]().decode(self.vae, samples, color_fix, stage1_image=stage1,
                                                                  **kw))[0]

    def run(self, img, seed=7, **sampler_kw):
        latents, stage1 = self.encode(img)
        pos, neg = self.condition()
        samples = self.sample(latents, pos, neg, seed=seed, **sampler_kw)
        return self.decode(samples, stage1), samples
