"""The SUPIR network call (GLVControl + SDXL UNet with connectors) replayed from CUDA graphs.

Eager SDXL at 1024 px on an H100 is bound by kernel launches and host work, not by the GPU; the same UNet
replayed from a CUDA graph runs about twice as fast (../shared/docs/performance-notes.md). One sampling run
captures the network once per input shape (tiles share one shape) and replays it every step:

- inputs are copied into static buffers (device to device), the graph is replayed, and the output is cloned
  out of the static output buffer;
- the control scale, which the linear control ramp changes every step, enters as a 0-dim device tensor
  (a scale of exactly 1, the unramped default, gets its own graph with the 1 baked in);
- the capture is checked once: the first replay must equal the eager warm-up on the same inputs within the
  dtype's tolerance, or the run falls back to eager (logged), as it does when the capture itself fails;
- graphs live for one run only: ComfyUI may offload and reload the weights between runs, which moves them,
  and a graph would keep reading the old addresses.

The capture mechanics are behind `CaptureBackend`, so the buffer bookkeeping is tested on the CPU with
`RecomputingCapture`, which "replays" by recomputing from the static buffers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Protocol

import torch

logger = logging.getLogger(__name__)

Network = Callable[..., torch.Tensor]  # (x_in, t, context, y, hint, control_scale) -> eps

# Largest |graph - eager| / max|eager| accepted at the capture check. Replays run the captured kernels, so they
# normally agree bit for bit; the slack covers kernels that pick another algorithm at capture time.
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 5e-3, torch.bfloat16: 2e-2}


class CaptureBackend(Protocol):
    def capture(self, run: Callable[[], torch.Tensor]) -> tuple[Callable[[], None], torch.Tensor, torch.Tensor]:
        """Warm up and capture `run` (which reads only static buffers): -> (replay, static output, the eager
        output of the warm-up on the same buffers)."""


class CudaGraphBackend:
    """torch.cuda.CUDAGraph capture as PyTorch documents it: a warm-up run on a side stream (its output is the
    eager reference the first replay is checked against), then capture; all graphs of a run share one memory
    pool (they are replayed one at a time and outputs are cloned)."""

    def __init__(self):
        self.pool = torch.cuda.graph_pool_handle()

    def capture(self, run):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            reference = run()
        torch.cuda.current_stream().wait_stream(side)
        reference = reference.clone()
        # The warm-up's activations stay cached for the side stream, and the allocator cannot give cached blocks
        # back while a capture is under way: hand them back now, or a tight GPU runs out of memory capturing.
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            static_out = run()
        return graph.replay, static_out, reference


class RecomputingCapture:
    """A stand-in for CUDA graph capture on any device: "replay" recomputes the captured function from the static
    input buffers into the same static output tensor, which is what a graph's replay amounts to. Bookkeeping
    errors (an input not copied into its buffer, the static output handed out uncopied) give wrong numbers
    with it as they would on the GPU; the tests and `benchmarks/check_fast_paths.py --tiny` run on it.

    `fail` is raised at capture (as an op that cannot be captured would); `corrupt` makes replays add 1 (a
    capture that does not compute what eager does)."""

    def __init__(self, fail: Exception | None = None, corrupt: bool = False):
        self.fail = fail
        self.corrupt = corrupt
        self.captures = 0
        self.replays = 0

    def capture(self, run):
        if self.fail is not None:
            raise self.fail
        reference = run().clone()
        out = run()
        self.captures += 1

        def replay():
            self.replays += 1
            out.copy_(run() + (1.0 if self.corrupt else 0.0))

        return replay, out, reference


@dataclass
class _Captured:
    inputs: list[torch.Tensor]  # static buffers: x_in, t, context, y, hint
    scale: torch.Tensor | None  # 0-dim control scale, float32; None when the graph has a scale of 1 baked in
    replay: Callable[[], None]
    out: torch.Tensor


def _signature(tensors: list[torch.Tensor]) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)


class GraphedNetwork:
    """Drop-in for the eager `network(x_in, t, context, y, hint, control_scale)`, replayed from graphs."""

    def __init__(self, network: Network, backend: CaptureBackend):
        self.network = network
        self.backend = backend
        self.graphs: dict[tuple, _Captured] = {}
        self.disabled: str | None = None  # why the run went back to eager

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor,
                 hint: torch.Tensor, control_scale: float) -> torch.Tensor:
        args = [x_in, t, context, y, hint]
        if self.disabled is not None:
            return self.network(*args, control_scale)
        # A control scale of exactly 1 (the default, unramped) is baked into its own graph, where the
        # connectors skip their blend; any other scale is read from a device scalar at replay.
        unit_scale = control_scale == 1
        key = (_signature(args), unit_scale)
        captured = self.graphs.get(key)
        if captured is None:
            return self._capture(key, args, control_scale, unit_scale)
        for buf, value in zip(captured.inputs, args):
            buf.copy_(value)
        if captured.scale is not None:
            captured.scale.fill_(control_scale)
        captured.replay()
        return captured.out.clone()

    def release(self) -> None:
        """Drop the graphs and their buffers (end of the run)."""
        self.graphs.clear()

    def _capture(self, key: tuple, args: list[torch.Tensor], control_scale: float, unit_scale: bool) -> torch.Tensor:
        inputs = [a.clone() for a in args]
        scale = None if unit_scale else torch.full((), float(control_scale), dtype=torch.float32,
                                                   device=args[0].device)
        try:
            replay, out, reference = self.backend.capture(lambda: self.network(*inputs, 1.0 if scale is None else scale))
            replay()
        except Exception as e:  # noqa: BLE001 - any capture failure means: run eagerly, and say why
            return self._give_up(f"capture failed ({type(e).__name__}: {e})", args, control_scale)
        err = _relative_error(out, reference)
        tol = CHECK_TOLERANCE.get(reference.dtype, 1e-4)
        if not err <= tol:  # also catches NaN
            return self._give_up(f"the replay differs from eager by {err:.2e} (tolerance {tol:.0e})", args,
                                 control_scale)
        self.graphs[key] = _Captured(inputs, scale, replay, out)
        logger.info("SUPIR network captured in a CUDA graph for input %s (replay matches eager to %.1e)",
                    tuple(args[0].shape), err)
        return out.clone()

    def _give_up(self, why: str, args: list[torch.Tensor], control_scale: float) -> torch.Tensor:
        self.disabled = why
        self.graphs.clear()
        logger.warning("SUPIR CUDA graph off for this run, sampling eagerly: %s", why)
        return self.network(*args, control_scale)


def _relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    ref = reference.detach().float()
    scale = ref.abs().max().clamp_min(1e-12)
    return float((out.detach().float() - ref).abs().max() / scale)


def all_on_device(modules: list[torch.nn.Module], device: torch.device) -> bool:
    """True when every weight is already on `device`: a partially loaded (low-VRAM) model copies weights in
    during its forward, which a CUDA graph cannot capture."""
    def same(d: torch.device) -> bool:
        return d.type == device.type and (device.index is None or d.index in (None, device.index))

    return all(same(t.device) for m in modules for t in (*m.parameters(), *m.buffers()))
