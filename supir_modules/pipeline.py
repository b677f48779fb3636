"""The restoration stages on ComfyUI's model management: stage-1 encode, sampling, decode.

Models are brought to the GPU with `comfy.model_management.load_models_gpu` for their stage only, so ComfyUI may
offload the rest; interrupts are honoured between steps and tiles. The official order of operations is
SUPIR/models/SUPIR_model.py `batchify_sample`.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import comfy.model_management as mm

from . import colorfix, images, tiled_sampling, tiled_vae
from .denoiser import legacy_ddpm_sigmas, make_denoise
from .cuda_graphs import CaptureBackend, CudaGraphBackend, GraphedNetwork, all_on_device
from .guidance import CFGSchedule, Conditioning, ControlSchedule, cfg_denoise, cfg_inputs
from .model import SupirModel
from .presets import SamplerSettings
from .prompts import SIZE_CONDITIONING
from .sampling import (
    Churn,
    RestorationGuidance,
    brownian_noise_sampler,
    generator_noise_sampler,
    initial_latent,
    karras_sigmas_for,
    sample_restore_dpmpp_2m,
    sample_restore_edm,
)
from . import vae as vae_ops
from .unet import context_dim
from .vae import Stage1Result

logger = logging.getLogger(__name__)

StepCallback = Optional[Callable[[int, int, torch.Tensor, torch.Tensor], None]]  # (step, steps, x, denoised)


@dataclass
class SupirLatents:
    """What the Encode node hands to the Sampler: both latents, sizes and where they came from."""

    control: torch.Tensor  # [B, 4, h, w], scaled: GLVControl's hint
    center: torch.Tensor  # [B, 4, h, w], scaled: restoration-guidance target
    out_size: tuple[int, int]  # (H, W) the restored image is returned at
    source: str  # the SUPIR file that encoded them
    alpha: torch.Tensor | None = None  # [B, H, W] alpha of an RGBA/LA input, at the input's size
    info: dict = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.control.shape[0]


# --- stage 1 -----------------------------------------------------------------------------------------------
def _interrupt() -> None:
    mm.throw_exception_if_processing_interrupted()


def _vae_parts(vae):
    """ComfyUI's VAE object -> (patcher, AutoencoderKL, device, dtype)."""
    return vae.patcher, vae.first_stage_model, vae.device, vae.vae_dtype


# ComfyUI's AutoencoderKL estimates (comfy/sd.py VAE.__init__), for a VAE object without memory_used_* lambdas.
_KL_ENCODE_BYTES_PER_PIXEL = 1767
_KL_DECODE_BYTES_PER_LATENT_PIXEL = 2178 * 64


@dataclass(frozen=True)
class _VaePass:
    """Memory of one VAE network pass over one image, in bytes."""

    working: int  # what ComfyUI budgets for the network on its input: the whole image, or one padded tile
    parked: int = 0  # tiled: the other tiles' activations while they wait at a GroupNorm (0 when untiled)


def _working_memory(vae, kind: str, shape: tuple[int, ...], dtype: torch.dtype) -> int:
    """What `comfy.sd.VAE.encode/decode` ask `load_models_gpu` to free for `shape` (encode: pixels NCHW,
    decode: latent NCHW)."""
    estimate = getattr(vae, f"memory_used_{kind}", None)
    if callable(estimate):
        return int(estimate(shape, dtype))
    per = _KL_ENCODE_BYTES_PER_PIXEL if kind == "encode" else _KL_DECODE_BYTES_PER_LATENT_PIXEL
    return int(per * shape[2] * shape[3] * mm.dtype_size(dtype))


def _scale(net) -> int:
    """Pixels per latent pixel of a VAE Encoder/Decoder (8 for SDXL's)."""
    return 2 ** (getattr(net, "num_resolutions", 4) - 1)


def _parked_channels(net) -> float:
    """Channels per image pixel that all tiles together hold at a GroupNorm, at most: a ResnetBlock's activation
    plus residual (its input and output widths) for the widest block, at its level's resolution (level i runs at
    1/2**i of the image's size)."""
    levels = net.down if hasattr(net, "down") else net.up
    return max(((b.in_channels + b.out_channels) / 4 ** i for i, level in enumerate(levels) for b in level.block),
               default=0.0)


def _padded_length(length: int, tile: int, pad: int) -> int:
    """Sum of the padded tiles' lengths along one axis (tiled_vae._split_axis): the margins overlap."""
    count = max(math.ceil((length - 2 * pad) / tile), 1)
    return length + 2 * pad * (count - 1)


def _vae_pass(vae, kind: str, net, size: tuple[int, int], dtype: torch.dtype, tile: int | None) -> _VaePass:
    """Memory of `net` ("encode": an Encoder on pixels, "decode": a Decoder on latents) over one image of `size`
    (its input's H, W), untiled (`tile` None) or tiled as tiled_vae.py does it."""
    h, w = size
    channels = 3 if kind == "encode" else getattr(vae, "latent_channels", 4)
    if tile is None:
        return _VaePass(_working_memory(vae, kind, (1, channels, h, w), dtype))
    pad = tiled_vae.ENCODER_PAD if kind == "encode" else tiled_vae.DECODER_PAD
    shape = (1, channels, min(h, tile + 2 * pad), min(w, tile + 2 * pad))  # largest padded tile
    parked = 0
    if max(h, w) > tile + 2 * pad:  # more than one tile
        px = 1 if kind == "encode" else _scale(net)
        area = _padded_length(h, tile, pad) * _padded_length(w, tile, pad) * px * px
        parked = int(_parked_channels(net) * area * mm.dtype_size(dtype))
    return _VaePass(_working_memory(vae, kind, shape, dtype), parked)


def _load_vae_stage(vae, patchers: list, passes: list[_VaePass]) -> int:
    """Loads the VAE-stage models, asking ComfyUI to free (offloading the UNet and adaptor if it must) the
    largest pass's working memory, as ComfyUI's own VAE.encode/decode do; returns that amount."""
    working = max(p.working for p in passes)
    kwargs = {"force_full_load": True} if getattr(vae, "disable_offload", False) else {}  # 0.3.75's VAE option
    mm.load_models_gpu(patchers, memory_required=working, **kwargs)
    return working


def _park_device(vae, device, working: int, parked: int):
    """Where waiting tiles are kept: their input's device (None) while they fit in its free memory next to one
    tile's working memory (fastest), else the VAE's offload device as the official tilevae.py does, so the
    stage's VRAM stays bounded by the tile size."""
    if parked == 0 or torch.device(device).type == "cpu":
        return None
    if mm.get_free_memory(device) >= working + parked:
        return None
    offload = vae.patcher.offload_device
    logger.info("tiled VAE: %.0f MiB of waiting tiles do not fit in free VRAM, keeping them on %s",
                parked / 2**20, offload)
    return offload


def _runners(tiled: bool, encoder_tile: int, decoder_tile: int, official_tile_norm: bool,
             park_encode=None, park_decode=None):
    """How the VAE networks run: directly, or GroupNorm-synchronised tiled (see tiled_vae.py), with waiting tiles
    on `park_encode`/`park_decode` (None: the input's device)."""
    if not tiled:
        return vae_ops.direct, vae_ops.direct
    valid = not official_tile_norm  # pooled per-tile statistics by default: far closer to the untiled VAE

    def encode(net, x):
        return tiled_vae.tiled_encode(net, x, tile_size=encoder_tile, valid_region_stats=valid, park_device=park_encode)

    def decode(net, z):
        return tiled_vae.tiled_decode(net, z, tile_size=decoder_tile, valid_region_stats=valid, park_device=park_decode)

    return encode, decode


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
    latent = (size[0] // _scale(ae.encoder), size[1] // _scale(ae.encoder))
    enc_tile, dec_tile = (encoder_tile, decoder_tile) if tiled else (None, None)
    encodes = [_vae_pass(vae, "encode", net, size, dtype, enc_tile) for net in (encoder.denoise_encoder, ae.encoder)]
    enc = max(encodes, key=lambda p: (p.working, p.parked))
    dec = _vae_pass(vae, "decode", ae.decoder, latent, dtype, dec_tile)
    working = _load_vae_stage(vae, [patcher, supir.denoise_encoder], [enc, dec])
    encode, decode_net = _runners(tiled, encoder_tile, decoder_tile, official_tile_norm,
                                  _park_device(vae, device, working, enc.parked),
                                  _park_device(vae, device, working, dec.parked))
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    outs: list[Stage1Result] = []
    for i in range(x.shape[0]):
        _interrupt()
        r = vae_ops.run_stage1(encoder, ae, x[i:i + 1].to(device, dtype), generator=gen,
                               encode=encode, decode=decode_net)
        outs.append(Stage1Result(r.control_latent.float().cpu(), r.stage1.float().cpu(),
                                 r.center_latent.float().cpu()))
    return Stage1Result(torch.cat([o.control_latent for o in outs]), torch.cat([o.stage1 for o in outs]),
                        torch.cat([o.center_latent for o in outs]))


# --- conditioning ------------------------------------------------------------------------------------------
def conditioning_tensors(conditioning: list, model_base, what: str) -> list[Conditioning]:
    """ComfyUI CONDITIONING -> one (crossattn, vector) per entry, the vector built by ComfyUI's SDXL
    `encode_adm` with the official size conditioning where the entry gives none."""
    if not isinstance(conditioning, list) or not conditioning:
        raise ValueError(f"{what} conditioning is empty; connect the SUPIR Conditioner (or a CLIP Text Encode) here")
    out = []
    for entry in conditioning:
        cross, extra = entry[0], dict(entry[1])
        if extra.get("pooled_output") is None:
            raise ValueError(f"{what} conditioning has no pooled output: it was not made by an SDXL CLIP; "
                             "use the CLIP that comes with the SDXL model")
        for k, v in SIZE_CONDITIONING.items():
            extra.setdefault(k, v)
        vector = model_base.encode_adm(**extra)
        out.append(Conditioning(cross.float(), vector.float()))
    return out


def _check_context(conds: list[Conditioning], unet, what: str) -> None:
    want = context_dim(unet)
    for c in conds:
        if want is not None and c.crossattn.shape[-1] != want:
            raise ValueError(f"{what} conditioning has width {c.crossattn.shape[-1]} but this SDXL model expects "
                             f"{want}: it was encoded with another model's CLIP; use the CLIP from the same loader")


def _per(conds: list[Conditioning], index: int) -> Conditioning:
    return conds[index] if len(conds) > 1 else conds[0]


# --- sampling ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileOptions:
    enabled: bool = False
    size: int = 128  # latent pixels (official default: 1024 px)
    stride: int = 64


CUDA_GRAPH_CHOICES = ("auto", "off")


@dataclass(frozen=True)
class Acceleration:
    """Fast paths of the sampler; each computes the plain path's function (tests/unit/test_fast_paths.py).

    cuda_graph "auto": on CUDA with the models fully loaded, the network call is replayed from CUDA graphs
    (checked against eager once, eager fallback; see cuda_graphs.py); "off": always eager.
    tile_batch: windows per network call in tiled sampling (more is faster on big GPUs, needs more memory).
    capture_backend: replaces CUDA graph capture (tests drive the graph bookkeeping on the CPU with it).
    """

    cuda_graph: str = "auto"
    tile_batch: int = 1
    capture_backend: Optional[CaptureBackend] = None

    def validate(self) -> None:
        if self.cuda_graph not in CUDA_GRAPH_CHOICES:
            raise ValueError(f"cuda_graph must be one of {CUDA_GRAPH_CHOICES}, got {self.cuda_graph!r}")
        if not isinstance(self.tile_batch, int) or self.tile_batch < 1:
            raise ValueError(f"tile_batch must be a whole number of at least 1, got {self.tile_batch!r}")


def _network(supir: SupirModel, accel: Acceleration, device: torch.device):
    """The network call of this run: eager `supir.eps`, or the same replayed from CUDA graphs."""
    if accel.cuda_graph == "off":
        return supir.eps
    if accel.capture_backend is not None:
        return GraphedNetwork(supir.eps, accel.capture_backend)
    if device.type != "cuda":
        return supir.eps
    if not all_on_device([supir.sdxl.model.diffusion_model, supir.adaptor.model], device):
        logger.info("SUPIR sampling eagerly: the models are only partly on the GPU (low VRAM), and a CUDA graph "
                    "cannot capture the weight copies of a partial load")
        return supir.eps
    return GraphedNetwork(supir.eps, CudaGraphBackend())


def _prompt_layout(n_pos: int, batch: int, n_windows: int, kind: str) -> str:
    if n_pos == 1:
        return "shared"
    if kind == "tile":
        if n_pos != n_windows:
            raise ValueError(f"{n_pos} tile captions for {n_windows} tiles: caption with the sampler's tile size "
                             "and stride, or use one caption")
        return "tile"
    if n_pos != batch:
        raise ValueError(f"{n_pos} captions for a batch of {batch} images: give one caption per image, or one")
    return "batch"


@torch.no_grad()
def sample(supir: SupirModel, latents: SupirLatents, positive: list, negative: list, settings: SamplerSettings,
           seed: int, tiles: TileOptions = TileOptions(), callback: StepCallback = None,
           initial_noise: torch.Tensor | None = None, accel: Acceleration = Acceleration()) -> torch.Tensor:
    """The restoration sampler on a batch; returns the final latent (scaled, as ComfyUI's LATENT) on the CPU.

    Inside the step loop nothing waits on the device: the schedule, denoiser scalings and guidance weights are
    host floats, the conditioning is batched once, and noise draws are copied asynchronously.
    """
    settings.validate()
    accel.validate()
    if latents.source != supir.source:
        raise ValueError(f"these SUPIR latents were encoded with {latents.source!r} but the sampler was given "
                         f"{supir.source!r}: connect the same SUPIR model to Encode and Sampler")
    model_base = supir.sdxl.model
    unet = model_base.diffusion_model
    if latents.control.shape[1] != unet.in_channels:
        raise ValueError(f"latents have {latents.control.shape[1]} channels, the model takes {unet.in_channels}")
    pos = conditioning_tensors(positive, model_base, "positive")
    neg = conditioning_tensors(negative, model_base, "negative")
    _check_context(pos + neg, unet, "the")
    b, _, h, w = latents.control.shape
    windows = (tiled_sampling.sliding_windows(h, w, tiles.size, tiles.stride) if tiles.enabled
               else [(0, h, 0, w)])
    layout = _prompt_layout(len(pos), b, len(windows), positive[0][1].get("fsupir_caption_kind", "batch"))
    if len(neg) not in (1, len(pos)):
        raise ValueError(f"{len(neg)} negative prompts for {len(pos)} positive ones: give one negative prompt")

    tile_h, tile_w = windows[0][1] - windows[0][0], windows[0][3] - windows[0][2]
    per_call = min(accel.tile_batch, len(windows)) if tiles.enabled else 1
    mm.load_models_gpu(supir.patchers_for_sampling(),
                       memory_required=model_base.memory_required([2 * b * per_call, 4, tile_h, tile_w]) * 1.5)
    device = mm.get_torch_device()
    control_latent = latents.control.to(device)
    center = latents.center.to(device)
    network = _network(supir, accel, device)
    denoise = make_denoise(network)
    cfg = CFGSchedule(settings.cfg_scale, settings.cfg_scale_start, settings.linear_cfg)
    control = ControlSchedule(settings.control_scale, settings.control_scale_start, settings.linear_control_scale)
    guidance = RestorationGuidance(settings.restore_cfg, settings.restore_cfg_s_tmin)

    def stacked(conds: list[Conditioning]) -> Conditioning:
        """One prompt for every image, or (batch layout) one per image, as a batch on the device."""
        if len(conds) == 1:
            c = conds[0]
            return Conditioning(c.crossattn.expand(b, -1, -1).to(device), c.vector.expand(b, -1).to(device))
        return Conditioning(torch.cat([c.crossattn for c in conds]).to(device),
                            torch.cat([c.vector for c in conds]).to(device))

    def model_for(cond: Conditioning, uncond: Conditioning, hint: torch.Tensor):
        inputs = cfg_inputs(cond, uncond, hint, device)  # batched once per run, not per step

        def model(x: torch.Tensor, sigma_hat: float, control_scale: float) -> torch.Tensor:
            return cfg_denoise(denoise, x, sigma_hat, inputs, control_scale, cfg)
        return model

    if settings.sampler == "restore_edm":
        sigmas = legacy_ddpm_sigmas(settings.steps)
    else:
        sigmas = karras_sigmas_for(settings.steps)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    noise = initial_noise if initial_noise is not None else torch.randn(latents.control.shape, generator=gen)
    x = initial_latent(noise.float(), sigmas).to(device)
    if settings.sampler == "restore_edm":
        noise_sampler = generator_noise_sampler(seed + 1)
    else:
        noise_sampler = brownian_noise_sampler(x, sigmas, seed)
    steps = len(sigmas) - 1

    def on_step(d: dict) -> None:
        _interrupt()
        if callback is not None:
            callback(d["i"], steps, d["x"], d["denoised"])

    common = dict(noise_sampler=noise_sampler, guidance=guidance, control=control, x_center=center, callback=on_step)
    try:
        if not tiles.enabled:
            model = model_for(stacked(pos), stacked(neg), control_latent)
            if settings.sampler == "restore_edm":
                churn = Churn(s_churn=settings.s_churn, s_noise=settings.s_noise)
                out = sample_restore_edm(model, x, sigmas, churn=churn, **common)
            else:
                out = sample_restore_dpmpp_2m(model, x, sigmas, eta=settings.eta, s_noise=settings.s_noise, **common)
        else:
            shared_pos, shared_neg = stacked(pos), stacked(neg)
            group_models: dict[tuple[int, ...], Callable] = {}

            def group_conditioning(group: tuple[int, ...], conds: list[Conditioning], shared: Conditioning,
                                   per_tile: bool) -> Conditioning:
                parts = [stacked([_per(conds, j)]) if per_tile else shared for j in group]
                return Conditioning(torch.cat([c.crossattn for c in parts]), torch.cat([c.vector for c in parts]))

            def tile_model(group: tuple[int, ...]):
                """The model of windows `group`, stacked on the batch dimension (built once per run)."""
                if group not in group_models:
                    cond = group_conditioning(group, pos, shared_pos, layout == "tile")
                    uncond = group_conditioning(group, neg, shared_neg, layout == "tile" and len(neg) > 1)
                    hint = torch.cat([control_latent[:, :, a:bb, c:d] for a, bb, c, d in (windows[j] for j in group)])
                    group_models[group] = model_for(cond, uncond, hint)
                return group_models[group]

            if settings.sampler == "restore_edm":
                churn = Churn(s_churn=settings.s_churn, s_noise=settings.s_noise)
                out = tiled_sampling.sample_tiled_restore_edm(tile_model, x, sigmas, windows=windows, churn=churn,
                                                              tile_batch=accel.tile_batch, **common)
            else:
                out = tiled_sampling.sample_tiled_restore_dpmpp_2m(tile_model, x, sigmas, windows=windows, eta=settings.eta,
                                                                   s_noise=settings.s_noise, tile_batch=accel.tile_batch,
                                                                   **common)
    finally:
        if isinstance(network, GraphedNetwork):
            network.release()  # the graphs' memory pool goes now, not whenever Python collects it
    return out.float().cpu()


# --- decode ------------------------------------------------------------------------------------------------
@torch.no_grad()
def decode(vae, samples: torch.Tensor, tiled: bool, decoder_tile: int, official_tile_norm: bool = False) -> torch.Tensor:
    """Scaled latent -> [-1, 1] NCHW image, unclamped (official decode_first_stage), one image at a time; ComfyUI
    is asked for the decoder's memory on the whole latent, or tiled on one padded tile."""
    patcher, ae, device, dtype = _vae_parts(vae)
    dec = _vae_pass(vae, "decode", ae.decoder, tuple(samples.shape[2:]), dtype, decoder_tile if tiled else None)
    working = _load_vae_stage(vae, [patcher], [dec])
    _, decode_net = _runners(tiled, tiled_vae.ENCODER_TILE_SIZE, decoder_tile, official_tile_norm,
                             park_decode=_park_device(vae, device, working, dec.parked))
    outs = []
    for i in range(samples.shape[0]):
        _interrupt()
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
