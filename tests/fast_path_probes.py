"""CPU-side probes for the sampler's fast paths, with the meta device standing in for an accelerator (every op
runs for shapes only, so full-size models cost nothing):
- `DeviceTraffic` records what would make the host wait for the device;
- `LiveStorage` follows the bytes of the tensors a computation allocates, for its peak (what
  `torch.cuda.max_memory_allocated` reports, less the allocator's rounding and library workspaces).
The CUDA-graph stand-in is the pack's own `cuda_graphs.RecomputingCapture`.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


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


class LiveStorage(TorchDispatchMode):
    """Peak bytes of the storages created while active and still alive; storages of `existing` tensors (weights,
    inputs) are not counted, also when an op returns a view of them (a weight's transpose)."""

    def __init__(self, existing=()):
        super().__init__()
        self._live: dict[int, int] = {_key(t): 0 for t in existing}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _key(t) not in self._live:
                storage = t.untyped_storage()
                key, size = _key(t), storage.nbytes()
                self._live[key] = size
                self.current += size
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)


def _key(t: torch.Tensor) -> int:
    return t.untyped_storage()._cdata
