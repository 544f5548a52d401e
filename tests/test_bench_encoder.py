"""scripts/bench_encoder.py kept runnable, and its BD-rate arithmetic on curves with a known answer."""

from __future__ import annotations


import numpy as np
import pytest

import bench_encoder  # scripts/, on pytest's pythonpath
from helpers import run_bench_script



def test_bd_rate_of_curves_with_a_known_gap():
    quality = np.array([34.0, 37.0, 40.0, 43.0])
    rates = np.exp(quality / 4)
    assert bench_encoder.bd_rate(rates, quality, rates, quality) == pytest.approx(0.0, abs=1e-9)
    assert bench_encoder.bd_rate(rates, quality, rates * 1.1, quality) == pytest.approx(10.0, abs=1e-6)
    assert bench_encoder.bd_rate(rates, quality, rates * 0.8, quality) == pytest.approx(-20.0, abs=1e-6)
    # Equal rates at half a dB more quality: fewer bits for the same quality.
    assert bench_encoder.bd_rate(rates, quality, rates, quality + 0.5) < 0
    assert np.isnan(bench_encoder.bd_rate(rates, quality, rates, quality + 20))  # no common range


def test_small_run_reports_curves_and_bd_rates(tmp_path, vsr_home):
    data = run_bench_script("bench_encoder.py", tmp_path, vsr_home, "--make-clip", "48x32", "--frames", "6", "--backend", "torch",
                            "--presets", "medium,ultrafast", "--crfs", "14,20,26,32", "--ssim-every", "1", seed=2)
    assert data["size"] == "192x128" and data["frames"] == 6
    assert [(r["preset"], r["crf"]) for r in data["rows"]] == [(p, c) for p in ("medium", "ultrafast") for c in (14, 20, 26, 32)]
    for preset in ("medium", "ultrafast"):
        curve = [r for r in data["rows"] if r["preset"] == preset]
        assert all(a["kbps"] > b["kbps"] and a["psnr"] > b["psnr"] for a, b in zip(curve, curve[1:])), curve  # higher CRF: fewer bits, less quality
        assert all(0 < r["ssim"] <= 1 and r["cpu_ms"] > 0 for r in curve)
    base, fast = data["summary"]
    assert base["preset"] == "medium" and base["bd_rate_psnr"] == pytest.approx(0.0, abs=1e-6)
    assert fast["preset"] == "ultrafast" and np.isfinite(fast["bd_rate_psnr"])
