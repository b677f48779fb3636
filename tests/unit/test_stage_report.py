"""StageMeter / StageReport (supir_modules/stage_report.py): what the stage nodes report of a run.

On the CPU there are no memory statistics; the time figures are checked against sleeps of known length (lower
bounds, which a busy machine can only lengthen) with a first step far longer than the others, so a ms/step that
counted the first step would be far off."""
from __future__ import annotations

import logging
import time

import pytest
from parity_helpers import mod

_report = mod("stage_report")
StageMeter, StageReport, ui_output = _report.StageMeter, _report.StageReport, _report.ui_output
LOGGER = _report.logger.name

FIRST_STEP_S = 0.6  # stands in for model loading and CUDA graph capture in step 1
STEP_S = 0.02


def test_sampler_stage_reports_steady_state_ms_per_step(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with StageMeter("sample", device="cpu") as meter:
            time.sleep(FIRST_STEP_S)
            meter.step_done()
            for _ in range(4):
                time.sleep(STEP_S)
                meter.step_done()
    r = meter.report
    assert r.stage == "sample" and r.device == "cpu" and r.steps == 5
    assert r.seconds >= FIRST_STEP_S + 4 * STEP_S
    # Steps 2..5 only: a ms/step that averaged in step 1 would be >= (600 + 80) / 4 = 170 ms.
    assert STEP_S * 1000 <= r.ms_per_step < 150, r
    assert r.peak_vram_gib is None and r.peak_reserved_gib is None  # the CPU keeps no statistics
    assert f"SUPIR {r.line()}" in caplog.messages
    assert r.line().startswith("sample: ") and "5 steps" in r.line() and r.line().endswith("on cpu")


def test_stage_without_steps_reports_time_only():
    with StageMeter("decode", device="cpu") as meter:
        time.sleep(STEP_S)
    assert meter.report.steps is None and meter.report.ms_per_step is None
    assert meter.report.seconds >= STEP_S
    assert ui_output(meter.report) == {"fsupir_report": [meter.report.as_dict()]}


def test_one_step_has_no_steady_state():
    with StageMeter("sample", device="cpu") as meter:
        meter.step_done()
    assert meter.report.steps == 1 and meter.report.ms_per_step is None


def test_a_failed_stage_reports_nothing(caplog):
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with pytest.raises(ValueError, match="bad input"):
            with StageMeter("encode", device="cpu") as meter:
                raise ValueError("bad input")
    assert meter.report is None and ui_output(meter.report) == {}
    assert not caplog.messages


def test_gpu_figures_in_the_line():
    r = StageReport("sample", 12.345, "cuda:0", 7.876, 8.3, steps=50, ms_per_step=61.94)
    assert r.line() == "sample: 12.35 s, 50 steps, 61.9 ms/step, peak VRAM 7.88 GiB (8.30 GiB reserved)"
    assert r.as_dict()["peak_vram_gib"] == 7.876 and r.as_dict()["summary"] == r.line()
