"""PSNR / SSIM (supir_modules/metrics.py) against scikit-image on real photos it ships, LPIPS detection, the metrics
command line, and that the module imports without ComfyUI.

Reference settings: Y = skimage.color.rgb2ycbcr(rgb)[..., 0] (BT.601, 16-235, the formula BasicSR uses);
peak_signal_noise_ratio(data_range=255); structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255) (11x11 window, valid region), channel_axis=-1 for RGB.
Measured agreement: ~1e-14 in both; asserted to 1e-9.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fsupir_under_test.supir_modules import degrade
from fsupir_under_test.supir_modules import metrics as m

skimage_data = pytest.importorskip("skimage.data")
from skimage import color  # noqa: E402
from skimage.metrics import peak_signal_noise_ratio, structural_similarity  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PHOTOS = ("astronaut", "coffee", "chelsea", "camera")
TOL = 1e-9


def photo(name: str) -> np.ndarray:
    """A 256 x 256 crop (odd offset, to keep the tests quick) of a photo that scikit-image ships."""
    arr = getattr(skimage_data, name)()
    arr = np.stack([arr] * 3, axis=-1) if arr.ndim == 2 else arr
    return np.ascontiguousarray(arr[17:273, 31:287])


def degraded_8bit(ref: np.ndarray, seed: int) -> np.ndarray:
    x = torch.from_numpy(ref).float().div(255).unsqueeze(0)
    out = degrade.degrade_parameterised(x, degrade.SpireParams(1.0, 1.0, 0.03, 50), seed=seed).image[0]
    return (out.numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def pairs():
    return [(name, photo(name), degraded_8bit(photo(name), i)) for i, name in enumerate(PHOTOS)]


@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_and_ssim_on_y_agree_with_scikit_image(pairs, crop):
    for name, ref, test in pairs:
        a, b = test / 255.0, ref / 255.0
        s = slice(crop, -crop if crop else None)
        ya, yb = color.rgb2ycbcr(a)[s, s, 0], color.rgb2ycbcr(b)[s, s, 0]
        expected_psnr = peak_signal_noise_ratio(yb, ya, data_range=255)
        expected_ssim = structural_similarity(yb, ya, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                              data_range=255)
        assert m.psnr(a, b, crop, "Y") == pytest.approx(expected_psnr, abs=TOL), name
        assert m.ssim(a, b, crop, "Y") == pytest.approx(expected_ssim, abs=TOL), name
        assert 20 < expected_psnr < 45 and 0.5 < expected_ssim < 0.99, f"{name}: the pair should be degraded"


@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_and_ssim_on_rgb_agree_with_scikit_image(pairs, crop):
    for name, ref, test in pairs:
        s = slice(crop, -crop if crop else None)
        r, t = ref[s, s].astype(np.float64), test[s, s].astype(np.float64)
        expected_psnr = peak_signal_noise_ratio(r, t, data_range=255)
        expected_ssim = structural_similarity(r, t, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                              data_range=255, channel_axis=-1)
        assert m.psnr(test / 255.0, ref / 255.0, crop, "RGB") == pytest.approx(expected_psnr, abs=TOL), name
        assert m.ssim(test / 255.0, ref / 255.0, crop, "RGB") == pytest.approx(expected_ssim, abs=TOL), name


def test_metrics_order_degradations_sensibly():
    ref = photo("chelsea") / 255.0
    x = torch.from_numpy(ref).float().unsqueeze(0)
    scores = [m.score(str(q), degrade.degrade_parameterised(x, degrade.SpireParams(jpeg_quality=q)).image[0], ref)
              for q in (90, 50, 10)]
    assert scores[0].psnr > scores[1].psnr > scores[2].psnr
    assert scores[0].ssim > scores[1].ssim > scores[2].ssim
    assert math.isinf(m.psnr(ref, ref)) and m.ssim(ref, ref) == pytest.approx(1.0)
    mean = m.mean_score(scores)
    assert mean.psnr == pytest.approx(np.mean([s.psnr for s in scores]))
    assert m.format_line(scores[0]).startswith("90: PSNR ") and " dB, SSIM 0." in m.format_line(scores[0])


def test_bad_inputs_name_the_problem():
    a = np.zeros((32, 40, 3))
    with pytest.raises(ValueError, match="40x32 px but the reference is 32x32 px"):
        m.psnr(a, np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="crop_border"):
        m.ssim(a, a, crop_border=16)
    with pytest.raises(ValueError, match="color_space"):
        m.psnr(a, a, color_space="YUV")
    with pytest.raises(ValueError, match="at least 11x11"):
        m.ssim(np.zeros((10, 10, 3)), np.zeros((10, 10, 3)))


def test_lpips_is_reported_unavailable_without_local_weights(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty hub cache
    ok, why = m.lpips_status()
    assert not ok and why
    with pytest.raises(RuntimeError, match="^LPIPS unavailable: "):
        m.LpipsScorer()


def _run_cli(*args, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fsupir_cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_metrics_command_pairs_by_stem_and_writes_json(tmp_path, pairs):
    from PIL import Image

    (tmp_path / "restored").mkdir()
    (tmp_path / "reference").mkdir()
    for name, ref, test in pairs[:2]:
        Image.fromarray(ref).save(tmp_path / "reference" / f"{name}.png")
        Image.fromarray(test).save(tmp_path / "restored" / f"{name}.png")
    Image.fromarray(pairs[2][2]).save(tmp_path / "restored" / "unpaired.png")
    out = tmp_path / "scores.json"
    done = _run_cli("metrics", "--restored", str(tmp_path / "restored"), "--reference", str(tmp_path / "reference"),
                    "--crop-border", "4", "--lpips", "--json", str(out))
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert [r["image"] for r in report["images"]] == [pairs[0][0], pairs[1][0]]
    for row, (name, ref, test) in zip(report["images"], pairs):
        assert row["psnr"] == pytest.approx(m.psnr(test / 255.0, ref / 255.0, 4), abs=1e-5)
        assert row["ssim"] == pytest.approx(m.ssim(test / 255.0, ref / 255.0, 4), abs=1e-5)
    assert "| **mean** |" in done.stdout and "| astronaut |" in done.stdout
    if report["lpips_note"] is not None:
        assert report["lpips_note"].startswith("LPIPS unavailable: ") and "LPIPS unavailable" in done.stderr
    assert "unpaired" in done.stderr


def test_metrics_command_reports_bad_folders(tmp_path, caplog):
    import argparse

    from fsupir_under_test.fsupir_cli import metrics_cmd

    parser = argparse.ArgumentParser()
    metrics_cmd.add_arguments(parser)
    args = parser.parse_args(["--restored", str(tmp_path / "nothing"), "--reference", str(tmp_path), "--rgb"])
    assert args.color_space == "RGB"
    assert metrics_cmd.main(args) == 2
    assert "does not exist" in caplog.text


def test_tools_modules_import_without_comfyui():
    code = ("import sys; import supir_modules.metrics, supir_modules.degrade, fsupir_cli.metrics_cmd, "
            "fsupir_cli.benchmark; "
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('comfy', 'nodes', 'folder_paths')); "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
