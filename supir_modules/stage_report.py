"""Wall time and peak GPU memory of one restoration stage (Encode, Sampler, Tiled Decode), as the nodes report
them: in ComfyUI's log, and in the node's UI output, which reaches the frontend and the /history of API runs.

Users of the other SUPIR packs mostly fail on memory and wait on speed, and reporting time and peak VRAM is one of
the things no existing option does well (../shared/docs/what-users-ask.md). The figures are those of
benchmarks/bench_supir.py's columns, measured the same way: the device is synchronised at the start and end of the
stage and once after the first sampler step (so ms/step is the steady state: it leaves out model loading and CUDA
graph capture), and the peak is `torch.cuda.max_memory_allocated` since the stage began (PyTorch's peak statistics
are reset at its start).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import torch

import comfy.model_management as mm

logger = logging.getLogger(__name__)

GIB = 1024 ** 3


@dataclass(frozen=True)
class StageReport:
    stage: str  # "encode", "sample" or "decode"
    seconds: float
    device: str
    peak_vram_gib: float | None  # None where the device keeps no statistics (CPU, MPS, ...)
    peak_reserved_gib: float | None
    steps: int | None = None  # sampler steps run
    ms_per_step: float | None = None  # (end - end of step 1) / (steps - 1)

    def line(self) -> str:
        """One line for the log and the node: 'sample: 12.31 s, 50 steps, 61.9 ms/step, peak VRAM 7.88 GiB'."""
        parts = [f"{self.stage}: {self.seconds:.2f} s"]
        if self.steps is not None:
            parts.append(f"{self.steps} steps")
        if self.ms_per_step is not None:
            parts.append(f"{self.ms_per_step:.1f} ms/step")
        if self.peak_vram_gib is not None:
            parts.append(f"peak VRAM {self.peak_vram_gib:.2f} GiB ({self.peak_reserved_gib:.2f} GiB reserved)")
        else:
            parts.append(f"on {self.device}")
        return ", ".join(parts)

    def as_dict(self) -> dict:
        """The figures and `summary` (the line), which the frontend shows as it is."""
        return {**asdict(self), "summary": self.line()}


def _keeps_statistics(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


class StageMeter:
    """`with StageMeter("sample") as meter: ...` measures the block; the sampler calls `meter.step_done()` after
    each step. When the block ends without an error, `meter.report` holds the figures and the log has its line.

    It costs two device synchronisations per stage and one after the first step, none inside the step loop.
    """

    def __init__(self, stage: str, device: torch.device | None = None):
        self.stage = stage
        self.device = torch.device(device) if device is not None else mm.get_torch_device()
        self.report: StageReport | None = None
        self.steps = 0
        self._first_step_end: float | None = None
        self.start = self.end = 0.0

    def _sync(self) -> None:
        if _keeps_statistics(self.device):
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> StageMeter:
        self._sync()  # work queued by earlier nodes is not this stage's
        if _keeps_statistics(self.device):
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start = time.perf_counter()
        return self

    def step_done(self) -> None:
        self.steps += 1
        if self.steps == 1:
            self._sync()
            self._first_step_end = time.perf_counter()

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            return False
        self._sync()
        self.end = time.perf_counter()
        stats = _keeps_statistics(self.device)
        per_step = None
        if self.steps > 1 and self._first_step_end is not None:
            per_step = (self.end - self._first_step_end) / (self.steps - 1) * 1000
        self.report = StageReport(
            stage=self.stage, seconds=self.end - self.start, device=str(self.device),
            peak_vram_gib=torch.cuda.max_memory_allocated(self.device) / GIB if stats else None,
            peak_reserved_gib=torch.cuda.max_memory_reserved(self.device) / GIB if stats else None,
            steps=self.steps or None, ms_per_step=per_step)
        logger.info("SUPIR %s", self.report.line())
        return False


def ui_output(report: StageReport | None) -> dict:
    """The node's UI output: {"fsupir_report": [figures]} (ComfyUI merges UI lists, hence the list)."""
    return {"fsupir_report": [report.as_dict()]} if report is not None else {}
