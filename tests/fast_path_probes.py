"""CPU-side probe for the sampler's fast paths: `DeviceTraffic` records what would make the host wait for an
accelerator, with the meta device standing in for it (every op runs for shapes only). The CUDA-graph stand-in
is the pack's own `cuda_graphs.RecomputingCapture`.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


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
