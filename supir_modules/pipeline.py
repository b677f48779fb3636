"""The restoration stages on ComfyUI's model management: stage-1 encode, sampling, decode.

Models are brought to the GPU with `comfy.model_management.load_models_gpu` for their stage only, so ComfyUI may
offload the rest; interrupts are honoured between steps and tiles. The official order of operations is
SUPIR/models/SUPIR_model.py `batchify_sample`. Stage 1 and decode are here; the sampler stage is
restore_sampler.py, the VAE's memory handling vae_stage.py.
"""
from __future__ import annotations

import torch

import comfy.model_management as mm

from . import colorfix, images, tiled_vae
from . import vae as vae_ops
from .latents import SupirLatents
from .model import SupirModel
from .restore_sampler import CUDA_GRAPH_CHOICES, Acceleration, TileOptions, sample
from .vae import Stage1Result
from .vae_stage import latent_scale, load_vae_stage, park_device, runners, vae_pass

__all__ = ["Acceleration", "CUDA_GRAPH_CHOICES", "SupirLatents", "TileOptions", "decode", "finish", "run_stage1",
           "sample"]


# --- stage 1 -----------------------------------------------------------------------------------------------
def _vae_parts(vae):
    """ComfyUI's VAE object -> (patcher, AutoencoderKL, device, dtype)."""
    return vae.patcher, vae.first_stage_model, vae.device, vae.vae_dtype


@torch.no_grad()
def run_stage1(supir: SupirModel, vae, x: torch.Tensor, seed: int, tiled: bool, encoder_tile: int,
               decoder_tile: int, official_tile_norm: bool = False) -> Stage1Result:
    """Official steps 2-4 for x in [-1, 1] NCHW, one image at a time (memory), on the VAE's device/dtype.

    ComfyUI is asked for the largest of the three passes' memory (encode, decode of the stage-1 image, encode
    again): of the whole image, or tiled of one padded tile. Tiled VAE: `official_tile_norm` combines GroupNorm
    statistics as the official tilevae.py does; by default they are pooled over each tile's own region, which
    reproduces the untiled VAE (the official default) far more closely (see tiled_vae.py).
    """
    patcher, ae, device, dtype = _vae_parts(vae)
    encoder = supir.denoise_encoder.model
    size = tuple(x.shape[2:])
    latent = (size[0] // latent_scale(ae.encoder), size[1] // latent_scale(ae.encoder))
    enc_tile, dec_tile = (encoder_tile, decoder_tile) if tiled else (None, None)
    encodes = [vae_pass(vae, "encode", net, size, dtype, enc_tile) for net in (encoder.denoise_encoder, ae.encoder)]
    enc = max(encodes, key=lambda p: (p.working, p.parked))
    dec = vae_pass(vae, "decode", ae.decoder, latent, dtype, dec_tile)
    working = load_vae_stage(vae, [patcher, supir.denoise_encoder], [enc, dec])
    encode, decode_net = runners(tiled, encoder_tile, decoder_tile, official_tile_norm,
                                 park_device(vae, device, working, enc.parked),
                                 park_device(vae, device, working, dec.parked))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    outs: list[Stage1Result] = []
    for i in range(x.shape[0]):
        mm.throw_exception_if_processing_interrupted()
        r = vae_ops.run_stage1(encoder, ae, x[i:i + 1].to(device, dtype), generator=gen,
                               encode=encode, decode=decode_net)
        outs.append(Stage1Result(r.control_latent.float().cpu(), r.stage1.float().cpu(),
                                 r.center_latent.float().cpu()))
    return Stage1Result(torch.cat([o.control_latent for o in outs]), torch.cat([o.stage1 for o in outs]),
                        torch.cat([o.center_latent for o in outs]))


# --- decode ------------------------------------------------------------------------------------------------
@torch.no_grad()
def decode(vae, samples: torch.Tensor, tiled: bool, decoder_tile: int, official_tile_norm: bool = False) -> torch.Tensor:
    """Scaled latent -> [-1, 1] NCHW image, unclamped (official decode_first_stage), one image at a time; ComfyUI
    is asked for the decoder's memory on the whole latent, or tiled on one padded tile."""
    patcher, ae, device, dtype = _vae_parts(vae)
    dec = vae_pass(vae, "decode", ae.decoder, tuple(samples.shape[2:]), dtype, decoder_tile if tiled else None)
    working = load_vae_stage(vae, [patcher], [dec])
    _, decode_net = runners(tiled, tiled_vae.ENCODER_TILE_SIZE, decoder_tile, official_tile_norm,
                            park_decode=park_device(vae, device, working, dec.parked))
    outs = []
    for i in range(samples.shape[0]):
        mm.throw_exception_if_processing_interrupted()
        outs.append(vae_ops.decode_latent(ae, samples[i:i + 1].to(device, dtype), run=decode_net).float().cpu())
    return torch.cat(outs)


def finish(decoded: torch.Tensor, reference: torch.Tensor | None, color_fix: str, out_size: tuple[int, int] | None,
           alpha: torch.Tensor | None) -> torch.Tensor:
    """Colour fix against the stage-1 image (at the work size), resize back, attach alpha -> ComfyUI IMAGE."""
    x = decoded
    if reference is not None and colorfix.normalize_mode(color_fix) != "None":
        ref = reference
        if ref.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"the colour reference has {ref.shape[0]} images for {x.shape[0]} samples: connect the "
                             "stage-1 image of the same Encode node")
        if ref.shape[-2:] != x.shape[-2:]:
            (rh, rw), (xh, xw) = ref.shape[-2:], x.shape[-2:]
            if abs(rh / rw - xh / xw) > 0.01 * (xh / xw):
                raise ValueError(f"the colour reference is {rw}x{rh} but the samples decode to {xw}x{xh}: it comes from "
                                 "another image; connect the stage-1 image of the Encode node these samples came from")
            ref = images.restore_size(ref, xh, xw)
        x = colorfix.apply_color_fix(x, ref.expand(x.shape[0], -1, -1, -1), color_fix)
    if out_size is not None:
        x = images.restore_size(x, *out_size)
    image = images.to_comfy_image(x)
    if alpha is not None:
        a = images.resize_alpha(alpha, image.shape[1], image.shape[2])
        if a.shape[0] != image.shape[0]:
            a = a[:1].expand(image.shape[0], -1, -1)
        image = torch.cat([image, a.unsqueeze(-1)], dim=-1)
    return image
