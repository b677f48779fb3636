"""What the Encode node hands to the Sampler."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


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
