"""The precision choice (``--precision auto``, the default), and the small device helpers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import tiny_srvgg
from vsr.cli import _precision, build_parser
from vsr.compute import ComputeSpec, resolve_precision
from vsr.device import PRECISION_CHOICES, choose_precision, cpu_has_fast_bf16, to_device_once
from vsr.errors import UsageError

ALL = lambda dtype: True  # noqa: E731
NONE = lambda dtype: dtype == torch.float32  # noqa: E731


def test_auto_is_fp16_on_cuda_bf16_where_fp16_does_not_run_and_bf16_only_on_cpus_that_have_it():
    assert choose_precision("auto", "cuda", ALL) == "fp16"
    assert choose_precision("auto", "cuda", lambda dt: dt != torch.float16) == "bf16"
    assert choose_precision("auto", "cuda", NONE) == "fp32"
    asked: list[torch.dtype] = []
    assert choose_precision("auto", "cpu", lambda dt: asked.append(dt) or True) == "fp32"
    assert choose_precision("auto", "cpu", lambda dt: asked.append(dt) or True, cpu_bf16=True) == "bf16"
    assert choose_precision("fp32", "cpu", ALL, cpu_bf16=True) == "fp32"
    assert choose_precision("auto", "cuda", ALL, cpu_bf16=True) == "fp16"
    assert asked == []  # the CPU's choice needs no probe


def cpuinfo_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (the independent reference for torch's probe)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="reads Linux's /proc/cpuinfo")
def test_cpu_bf16_probe_agrees_with_proc_cpuinfo():
    flags = cpuinfo_flags()
    assert cpu_has_fast_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_explicit_precisions_are_kept_and_bad_ones_refused():
    for name in ("fp32", "fp16", "bf16"):
        assert choose_precision(name, "cuda", NONE) == name and choose_precision(name, "cpu", ALL) == name
    with pytest.raises(UsageError, match="fp8"):
        choose_precision("fp8", "cuda", ALL)
    assert PRECISION_CHOICES[0] == "auto"


def test_resolve_precision_on_the_cpu():
    native = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    assert resolve_precision("auto", torch.device("cpu")) == native
    assert resolve_precision("auto") == native
    assert resolve_precision("auto", torch.device("cpu"), backend="openvino") == native
    # onnxruntime takes fp32/fp16 exports only; OpenVINO's GPU/NPU devices are not the CPU.
    assert resolve_precision("auto", torch.device("cpu"), backend="onnxruntime") == torch.float32
    assert resolve_precision("auto", torch.device("cpu"), backend="openvino", ov_device="GPU") == torch.float32
    assert resolve_precision("fp32", torch.device("cpu")) == torch.float32
    assert resolve_precision("bf16", torch.device("cpu")) == torch.bfloat16


@pytest.mark.parametrize(
    "argv,expected",
    [
        ([], "auto"),
        (["--fp16"], "fp16"),
        (["--no-fp16"], "fp32"),
        (["--precision", "bf16"], "bf16"),
        (["--precision", "auto", "--fp16"], "fp16"),
        (["--precision", "fp16", "--fp16"], "fp16"),
    ],
)
def test_cli_precision_flags(argv, expected):
    parser = build_parser()
    assert _precision(parser.parse_args(["run", "in.mp4", "out.mp4", *argv])) == expected
    # vsr batch shares the flags.
    assert _precision(parser.parse_args(["batch", "in.mp4", "--output-dir", "out", *argv])) == expected


def test_cli_contradictions_are_usage_errors():
    with pytest.raises(UsageError, match="contradicts"):
        _precision(build_parser().parse_args(["run", "a.mp4", "b.mp4", "--precision", "bf16", "--fp16"]))
    with pytest.raises(UsageError, match="contradicts"):
        _precision(build_parser().parse_args(["run", "a.mp4", "b.mp4", "--precision", "fp16", "--no-fp16"]))


def test_default_engine_on_the_cpu_is_fp32(tmp_path):
    path = tmp_path / "m.pth"
    torch.save({"params_ema": tiny_srvgg().state_dict()}, path)
    spec = ComputeSpec(model=str(path), device="cpu")
    assert spec.precision == "auto"
    assert spec().engine.dtype == torch.float32


def test_to_device_once_on_the_cpu_is_the_tensor_itself():
    host = torch.arange(6.0)
    assert to_device_once(host, torch.device("cpu")) is host


@pytest.mark.needs_cuda
def test_auto_is_fp16_on_this_gpu_and_uploads_are_resident():
    dev = torch.device("cuda", 0)
    assert resolve_precision("auto", dev) == torch.float16
    host = torch.linspace(0, 1, 1000)
    resident = to_device_once(host, dev)
    assert resident.device == dev and torch.equal(resident.cpu(), host)
