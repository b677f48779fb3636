"""CPU-side probes for the sampler's fast paths.

`RecomputingCapture`: a CPU stand-in for CUDA graph capture, to test the bookkeeping around it
(cuda_graphs.GraphedNetwork).

A CUDA graph replays fixed kernels on fixed memory: it reads the static input buffers and overwrites the static
output buffer. `RecomputingCapture` models exactly that: `replay()` recomputes the captured function from the
static buffers into the same output tensor. A wrapper that forgot to copy an input into its buffer, or handed
out the static output without a copy, gives wrong numbers here as it would on the GPU.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class RecomputingCapture:
    def __init__(self, fail: Exception | None = None, corrupt: bool = False):
        self.fail = fail  # raise this at capture (as an uncapturable op would)
        self.corrupt = corrupt  # replays add 1 (a capture that does not compute what eager does)
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


class DeviceTraffic(TorchDispatchMode):
    """Records the ops that would make the host wait for an accelerator (here: the meta device)."""

    def __init__(self, device: str = "meta"):
        super().__init__()
        self.device = device
        self.in_network = False
        self.blocking: list[str] = []  # transfers that wait for the device, scalar reads
        self.async_uploads = 0  # non-blocking host-to-device copies (noise draws)
        self.network_transfers: list[str] = []  # any transfer inside the network call

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        devices = {t.device.type for t in tensors if t.dim() > 0 or t.device.type == self.device}
        target = kwargs.get("device")
        target = torch.device(target).type if target is not None else None
        name = str(func)
        crosses = (len(devices) > 1 or (target is not None and devices and target not in devices))
        if crosses:
            if self.in_network:
                self.network_transfers.append(name)
            if name.startswith("aten._to_copy") and target == self.device and kwargs.get("non_blocking"):
                self.async_uploads += 1
            else:
                self.blocking.append(f"{name} {sorted(devices)} -> {target}")
        if name.startswith("aten._local_scalar_dense") and self.device in devices:
            self.blocking.append(name)
        return func(*args, **kwargs)
