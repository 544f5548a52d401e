"""scripts/bench_gpu.py, the GPU table of the lab's host, kept runnable: its --cpu-smoke dry run end
to end (every row kind, the JSON it leaves behind), and the shell script's syntax."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_smoke_makes_every_kind_of_row(tmp_path, vsr_home):
    env = dict(os.environ, VSR_HOME=str(vsr_home), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--cpu-smoke", "--network", "SRVGG", "--frames", "2", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "bench_gpu.json").read_text())
    rows = data["rows"]
    assert {(r["kind"], r["mode"]) for r in rows} == {("model", "eager"), ("model", "channels_last"), ("pipeline", "channels_last"), ("encoder", "no network")}
    peak = rows[0]["peak_tflops"]
    assert peak > 0 and all(r["peak_tflops"] == peak for r in rows)
    for r in rows:
        assert r["fps"] > 0
        if r["kind"] != "encoder":
            # TFLOP/s from SRVGGNetCompact's 619,200 MAC per input pixel at 32x48.
            assert r["tflops"] == pytest.approx(2 * 619_200 * 32 * 48 * r["fps"] / 1e12, rel=2e-2, abs=2e-3)
            assert r["peak_fraction"] == pytest.approx(r["tflops"] / peak, rel=2e-2, abs=1e-3)
    pipeline = next(r for r in rows if r["kind"] == "pipeline")
    assert pipeline["frames"] == 2 and pipeline["layout"] == "NHWC"
    encoder = next(r for r in rows if r["kind"] == "encoder")
    assert encoder["size"] == "128x192 out" and encoder["frames"] == 2 and encoder["tflops"] is None
    assert sorted(data["skipped"]) == ["SRVGG compiled fp32: CUDA only", "SRVGG graphs fp32: CUDA only"]
    assert data["environment"]["pyav"] and data["environment"]["torch"]
    # The table is printed last and saved beside the JSON.
    assert proc.stdout.strip().endswith("# skipped SRVGG compiled fp32: CUDA only")
    assert "| encoder " in (tmp_path / "bench_gpu.md").read_text()


def test_gpu_host_script_parses_and_names_what_it_carries():
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_host.sh")]).returncode == 0
    text = (ROOT / "scripts" / "gpu_host.sh").read_text()
    assert "/.device/" in (ROOT / ".gitignore").read_text().splitlines()
    for test_file in text.split("GPU_TESTS=(")[1].split(")")[0].split():
        assert (ROOT / test_file).is_file(), test_file
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_host.sh"), "nonsense"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
