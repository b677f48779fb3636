"""Sampler presets of the official code.

- Fidelity: the official CLI's defaults since 2025-05-12 (test.py; see supir-reference.md §4).
- Quality: the gradio demo's defaults (gradio_demo.py).
- Lightning: options/SUPIR_v0_Juggernautv9_lightning.yaml (RestoreDPMPP2MSampler, 8 steps, constant CFG 2.0,
  its "Quality" setting), for Lightning SDXL checkpoints.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

SAMPLERS = ("restore_edm", "dpmpp_2m")


@dataclass(frozen=True)
class SamplerSettings:
    sampler: str = "restore_edm"
    steps: int = 50
    cfg_scale: float = 4.0
    cfg_scale_start: float = 1.0
    linear_cfg: bool = True
    control_scale: float = 1.0
    control_scale_start: float = 0.0
    linear_control_scale: bool = False
    restore_cfg: float = -1.0
    restore_cfg_s_tmin: float = 0.05
    s_churn: float = 5.0
    s_noise: float = 1.01
    eta: float = 1.0  # DPM++ 2M's SDE noise (the official RestoreDPMPP2MSampler uses 1.0)

    def validate(self) -> "SamplerSettings":
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; choose one of {SAMPLERS}")
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        return self

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, SamplerSettings] = {
    "Fidelity": SamplerSettings(),
    "Quality": SamplerSettings(cfg_scale=7.5, cfg_scale_start=4.0, s_noise=1.003),
    "Lightning": SamplerSettings(sampler="dpmpp_2m", steps=8, cfg_scale=2.0, cfg_scale_start=2.0, linear_cfg=False,
                                 s_churn=0.0, s_noise=1.003),
}
CUSTOM = "Custom"


def resolve_settings(preset: str, custom: SamplerSettings) -> SamplerSettings:
    """The preset's settings, or the node's own values for "Custom"."""
    if preset == CUSTOM:
        return custom.validate()
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {[CUSTOM, *PRESETS]}")
    return replace(PRESETS[preset]).validate()
