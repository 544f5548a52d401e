"""Engine conformance and ONNX export.

Every backend x precision x shape mode x architecture must reproduce the torch fp32 reference on
uint8 outputs of real photographs (DESIGN.md section 6): fp32 >= 60 dB, fp16/bf16 >= 45 dB.
A new backend is one line in ``BACKENDS``; its engine factory gets the model, precision, shape
mode and the ONNX file (exported on demand and cached for the module).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers import photos, psnr, tiny_rrdb, tiny_srvgg
from vsr.device import PRECISIONS
from vsr.engines import Engine, EngineCaps, TorchEngine
from vsr.engines.torch_engine import precision_works
from vsr.errors import BackendUnavailable, InputError, InputMissing, OutputError, UsageError
from vsr.kernels import quantize

HAVE_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAVE_ONNX, reason='needs onnx, onnxscript and onnxruntime: pip install "vsr[onnx]"')

# Minimum PSNR (dB, uint8) against the torch fp32 reference, per precision.
MIN_DB = {"fp32": 60.0, "fp16": 45.0, "bf16": 45.0}
ARCHS: dict[str, Callable[[], torch.nn.Module]] = {"rrdb": tiny_rrdb, "srvgg": tiny_srvgg}
# The input: helpers.photos, two real photographs, 40x48 (not square, so a swapped H/W shows), as
# one batch of 2.
SIZE = (40, 48)


@functools.cache
def model(arch: str) -> torch.nn.Module:
    return ARCHS[arch]()


@functools.cache
def onnx_bytes(arch: str, precision: str, shape: str) -> bytes:
    """The exported model, built once per module: "fixed" is batch 1 at ``SIZE``, "dynamic" is
    dynamic batch/height/width."""
    from vsr.engines.onnx_export import build_onnx

    kw = {"tile": SIZE, "batch": 1} if shape == "fixed" else {"dynamic": True}
    return build_onnx(model(arch), fp16=precision == "fp16", **kw)


def onnx_file(arch: str, precision: str, shape: str, folder: Path) -> Path:
    path = folder / f"{arch}-{precision}-{shape}.onnx"
    if not path.exists():
        path.write_bytes(onnx_bytes(arch, precision, shape))
    return path


# --------------------------------------------------------------------------- backends


def make_torch(arch: str, precision: str, shape: str, device: str, folder: Path) -> Engine:
    return TorchEngine(model(arch), device=torch.device(device), dtype=PRECISIONS[precision])


def make_ort(arch: str, precision: str, shape: str, device: str, folder: Path) -> Engine:
    if not HAVE_ONNX:
        pytest.skip('needs onnx, onnxscript and onnxruntime: pip install "vsr[onnx]"')
    import onnxruntime

    if device == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
    from vsr.engines.ort_engine import OrtEngine

    return OrtEngine(onnx_file(arch, precision, shape, folder), device=torch.device(device))


def make_tensorrt(arch: str, precision: str, shape: str, device: str, folder: Path) -> Engine:
    pytest.importorskip("tensorrt", reason="TensorRT is not importable here")
    if not HAVE_ONNX:
        pytest.skip('needs onnx, onnxscript and onnxruntime: pip install "vsr[onnx]"')
    from vsr.engines.trt_build import engine_from_onnx  # our own module: an import error must fail, not skip

    return engine_from_onnx(onnx_file(arch, precision, shape, folder))


def make_openvino(arch: str, precision: str, shape: str, device: str, folder: Path) -> Engine:
    from vsr.engines.openvino_engine import OpenVinoEngine, no_telemetry  # our own module: an import error must fail

    with no_telemetry():  # importing OpenVINO reports itself unless told not to
        pytest.importorskip("openvino", reason='needs OpenVINO: pip install "vsr[openvino]"')

    fixed = (1, 3, *SIZE) if shape == "fixed" else None
    return OpenVinoEngine(model(arch), device=device, dtype=PRECISIONS[precision], shape=fixed)


@dataclass(frozen=True)
class Backend:
    make: Callable[..., Engine]
    device: str
    precisions: tuple[str, ...]
    shapes: tuple[str, ...]  # "eager", or the ONNX export's shape modes


BACKENDS = {
    "torch-cpu": Backend(make_torch, "cpu", ("fp32", "fp16", "bf16"), ("eager",)),
    "ort-cpu": Backend(make_ort, "cpu", ("fp32", "fp16"), ("dynamic", "fixed")),
    "torch-cuda": Backend(make_torch, "cuda", ("fp32", "fp16", "bf16"), ("eager",)),
    "ort-cuda": Backend(make_ort, "cuda", ("fp32", "fp16"), ("dynamic", "fixed")),
    "tensorrt": Backend(make_tensorrt, "cuda", ("fp32", "fp16"), ("fixed", "dynamic")),
    # OpenVINO's CPU device (GPU/NPU cannot be run here); bf16 falls back to fp32 on CPUs without it.
    "openvino-cpu": Backend(make_openvino, "CPU", ("fp32", "bf16"), ("dynamic", "fixed")),
}

CASES = [
    pytest.param(name, precision, shape, id=f"{name}-{precision}-{shape}", marks=[pytest.mark.needs_cuda] if b.device == "cuda" else [])
    for name, b in BACKENDS.items()
    for precision in b.precisions
    for shape in b.shapes
]


@pytest.fixture(scope="module")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend,precision,shape", CASES)
def test_backend_matches_the_torch_fp32_reference(backend, precision, shape, arch, onnx_dir):
    spec = BACKENDS[backend]
    x = photos(*SIZE)
    with torch.inference_mode():
        ref = quantize(model(arch)(x), 8)
    engine = spec.make(arch, precision, shape, spec.device, onnx_dir)
    try:
        assert isinstance(engine, Engine)
        assert engine.spec == model(arch).spec
        wanted = PRECISIONS[precision]
        # TorchEngine falls back to fp32 where a precision's convolutions are missing (section 6).
        if isinstance(engine, TorchEngine) and not precision_works(engine.device, wanted):
            wanted = torch.float32
        caps = engine.caps
        assert isinstance(caps, EngineCaps) and caps.input_dtype == engine.dtype
        if backend == "openvino-cpu":
            # Float32 in and out; the network computes in the precision asked (or fp32 where the
            # CPU lacks it, with a warning).
            assert engine.dtype == torch.float32
            assert caps.compute_dtype in (wanted, torch.float32)
        else:
            assert engine.dtype == caps.compute_dtype == wanted
        check_caps(backend, shape, engine)
        # Batches as the Upscaler sends them: at most the batch a fixed-shape or profiled engine takes.
        limits = caps.limits
        step = limits[0] if limits else len(x)
        outs = [engine(x[i : i + step].to(engine.device, engine.dtype)) for i in range(0, len(x), step)]
        assert all(o.device.type == engine.device.type and o.dtype == engine.dtype for o in outs)
        got = quantize(torch.cat(outs).float().cpu(), 8)
    finally:
        engine.close()
    assert got.shape == ref.shape
    db = psnr(got, ref)
    print(f"{backend} {precision} {shape} {arch}: {db:.2f} dB")
    assert db >= MIN_DB[precision], f"{db:.2f} dB"


def check_caps(backend: str, shape: str, engine: Engine) -> None:
    """What every backend must declare in ``engine.caps`` besides its dtypes (the Upscaler, the
    pipeline and the CLI read nothing else)."""
    caps = engine.caps
    # A fixed-shape export is declared as one (TensorRT builds it as a profile of one shape).
    assert caps.fixed_shape == ((1, 3, *SIZE) if shape == "fixed" and backend != "tensorrt" else None)
    assert (caps.max_shape is not None) == (backend == "tensorrt")
    if backend == "tensorrt":
        assert caps.min_shape == tuple(engine.profile.min) and caps.max_shape == tuple(engine.profile.max)
    # onnxruntime and OpenVINO compute in their own CPU thread pools; torch's threads do the glue.
    assert caps.cpu_thread_pool == (backend in ("ort-cpu", "openvino-cpu"))
    # Several calls at once: eager torch on the CPU, OpenVINO's CPU streams where it has the threads.
    if backend == "openvino-cpu":
        assert caps.concurrent == (engine.parallel_calls > 1)
    else:
        assert caps.concurrent == (backend == "torch-cpu")
    assert caps.device_label == ("CPU" if backend == "openvino-cpu" else str(engine.device))


def test_engine_caps_refuse_a_fixed_shape_with_a_range():
    with pytest.raises(ValueError, match="not both"):
        EngineCaps(torch.float32, torch.float32, "cpu", fixed_shape=(1, 3, 8, 8), min_shape=(1, 3, 8, 8), max_shape=(1, 3, 8, 8))
    with pytest.raises(ValueError, match="both"):
        EngineCaps(torch.float32, torch.float32, "cpu", max_shape=(1, 3, 8, 8))
    caps = EngineCaps(torch.float16, torch.float16, "cuda:0", min_shape=(1, 3, 16, 24), max_shape=(4, 3, 64, 96))
    assert caps.limits == (4, 64, 96) and caps.min_side == 24
    assert EngineCaps(torch.float32, torch.float32, "cpu").limits is None


@pytest.mark.needs_cuda
@needs_onnx
def test_ort_cuda_keeps_tensors_on_the_gpu(onnx_dir):
    import onnxruntime

    from vsr.engines.ort_engine import OrtEngine

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime has no CUDA provider here (install onnxruntime-gpu)")
    engine = OrtEngine(onnx_file("srvgg", "fp16", "dynamic", onnx_dir), device="cuda")
    assert "CUDAExecutionProvider" in engine.providers
    x = photos(*SIZE).cuda().half()
    out = engine(x)
    assert out.is_cuda and out.dtype == torch.float16 and out.device == x.device
    # A second call on a fresh input must see that input, not stale memory.
    again = engine(x.flip(0))
    assert psnr(quantize(again.float(), 8).cpu(), quantize(out.flip(0).float(), 8).cpu()) >= MIN_DB["fp32"]


# --------------------------------------------------------------------------- export


@needs_onnx
def test_export_writes_one_checked_self_contained_file(tmp_path):
    import onnx

    from vsr.engines.onnx_export import build_onnx, export_onnx, read_onnx_spec

    net = model("srvgg")
    out = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.data").write_bytes(b"external data of an older export by torch")
    out.write_bytes(b"old")
    assert export_onnx(net, out, tile=(32, 48), batch=3, overwrite=True) == out
    # Nothing left beside it; the .data file is not vsr's, so it is kept (with a warning), unused.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx.data").read_bytes() == b"external data of an older export by torch"
    onnx.checker.check_model(str(out))
    proto = onnx.load(str(out), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [3, 3, 32, 48]
    assert (proto.graph.input[0].name, proto.graph.output[0].name) == ("input", "output")

    spec, info = read_onnx_spec(out)
    assert spec == net.spec and spec.activation_per_pixel == net.spec.activation_per_pixel
    assert info == {"precision": "fp32", "shape_mode": "fixed", "shape": [3, 3, 32, 48], "opset": info["opset"]}
    assert info["opset"] >= 18
    # Same model and options, same bytes: the engine cache keys on the file's sha256.
    assert build_onnx(net, tile=(32, 48), batch=3) == out.read_bytes()


@needs_onnx
def test_export_refuses_an_existing_output(tmp_path):
    from vsr.engines.onnx_export import export_onnx

    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(OutputError, match="already exists"):
        export_onnx(model("srvgg"), out, dynamic=True)
    assert out.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@needs_onnx
def test_fp16_export_is_a_float16_graph():
    import onnx

    proto = onnx.load_from_string(onnx_bytes("rrdb", "fp16", "fixed"))
    onnx.checker.check_model(proto)
    f16 = onnx.TensorProto.FLOAT16
    assert proto.graph.input[0].type.tensor_type.elem_type == f16
    assert proto.graph.output[0].type.tensor_type.elem_type == f16
    weights = [t for t in proto.graph.initializer if len(t.dims) == 4]
    assert weights and all(t.data_type == f16 for t in weights)


@needs_onnx
@pytest.mark.parametrize("arch", ARCHS)
def test_dynamic_export_runs_any_size_and_batch(arch):
    import onnx

    from vsr.engines.ort_engine import OrtEngine

    data = onnx_bytes(arch, "fp32", "dynamic")
    dims = onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    engine = OrtEngine(data)
    assert engine.fixed_shape is None and engine.caps.fixed_shape is None
    for x in (photos(24, 40), photos(48, 32)[:1]):
        out = engine(x)
        assert out.shape == (x.shape[0], 3, x.shape[2] * 4, x.shape[3] * 4)
        with torch.inference_mode():
            assert psnr(quantize(out, 8), quantize(model(arch)(x), 8)) >= MIN_DB["fp32"]


@needs_onnx
def test_threads_reach_onnxruntime_on_the_cpu(tmp_path):
    # --threads is the cores vsr may use: onnxruntime's own pool gets that count (it ignores
    # torch's), and it marks itself as computing in its own pool (Upscaler.glue_threads).
    from vsr.compute import ComputeSpec

    path = tmp_path / "tiny.pth"
    torch.save({"params_ema": tiny_srvgg(seed=2).state_dict()}, path)
    before = torch.get_num_threads()
    try:
        engine = ComputeSpec(model=str(path), device="cpu", backend="onnxruntime", precision="fp32", threads=1)().engine
    finally:
        torch.set_num_threads(before)
    assert engine.caps.cpu_thread_pool and engine._session.get_session_options().intra_op_num_threads == 1
    engine.close()


@needs_onnx
def test_fixed_engine_exposes_its_shape_and_pads_smaller_tiles():
    from vsr.engines.ort_engine import OrtEngine

    engine = OrtEngine(onnx_bytes("srvgg", "fp32", "fixed"))
    assert engine.fixed_shape == (1, 3, *SIZE)
    # More tiles than the fixed batch are run a batch at a time.
    with torch.inference_mode():
        assert psnr(quantize(engine(photos(*SIZE)), 8), quantize(model("srvgg")(photos(*SIZE)), 8)) >= MIN_DB["fp32"]
    with pytest.raises(ValueError, match="built for 48x40 tiles"):
        engine(photos(SIZE[0], SIZE[1] + 8))
    # Smaller tiles (a frame smaller than the tile) are padded and cropped: exact away from the
    # padded edge, which is further than the network's receptive field (4 convs: 4 pixels).
    x = photos(32, 40)
    out = engine(x)
    assert out.shape == (2, 3, 128, 160)
    with torch.inference_mode():
        ref = quantize(model("srvgg")(x), 8)
    inner = (..., slice(0, 4 * 26), slice(0, 4 * 34))
    assert psnr(quantize(out, 8)[inner], ref[inner]) >= MIN_DB["fp32"]


@needs_onnx
def test_engine_needs_the_spec_metadata(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from vsr.engines.ort_engine import OrtEngine

    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("input", "output")]
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"])], "plain", io[:1], io[1:])
    plain = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(InputError, match="no vsr.spec metadata"):
        OrtEngine(plain.SerializeToString())
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match="cannot load"):
        OrtEngine(tmp_path / "junk.onnx")
    with pytest.raises(InputMissing):
        OrtEngine(tmp_path / "absent.onnx")
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    from vsr.engines.onnx_export import read_onnx_spec

    with pytest.raises(InputError, match="no vsr.spec metadata"):
        read_onnx_spec(tmp_path / "plain.onnx")


@pytest.mark.slow
@needs_onnx
def test_x4plus_exports_and_matches_torch(x4plus, tmp_path):
    from vsr.engines.onnx_export import export_onnx
    from vsr.engines.ort_engine import OrtEngine

    x = photos(32, 32)
    out = export_onnx(x4plus, tmp_path / "x4plus.onnx", tile=(32, 32), batch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x4plus.onnx"]
    assert 60e6 < out.stat().st_size < 80e6  # 16.7 M fp32 weights, all inline
    engine = OrtEngine(out)
    assert engine.spec == x4plus.spec
    with torch.inference_mode():
        ref = quantize(x4plus(x), 8)
    db = psnr(quantize(engine(x), 8), ref)
    print(f"ort-cpu fp32 fixed x4plus: {db:.2f} dB")
    assert db >= MIN_DB["fp32"]


# --------------------------------------------------------------------------- pure parts


def test_spec_json_round_trip_and_damage():
    from vsr.engines.onnx_export import spec_from_json, spec_to_json

    for net in (tiny_rrdb(scale=2), tiny_srvgg()):
        spec, info = spec_from_json(spec_to_json(net.spec, precision="fp16", shape=["batch", 3, "height", "width"]))
        assert spec == net.spec and spec.params == net.spec.params
        assert spec.activation_per_pixel == net.spec.activation_per_pixel
        assert info == {"precision": "fp16", "shape": ["batch", 3, "height", "width"]}
    for bad in ("{", '{"format": 1}', '{"format": 99}'):
        with pytest.raises(InputError):
            spec_from_json(bad)


def test_export_options_are_checked_before_exporting():
    from vsr.engines.onnx_export import input_shape

    spec = tiny_rrdb(scale=2).spec  # pixel-unshuffle by 2: sides must be even
    assert input_shape(spec) == (None, 3, None, None)
    assert input_shape(spec, dynamic=True) == (None, 3, None, None)
    assert input_shape(spec, tile=(32, 48), batch=4) == (4, 3, 32, 48)
    for kw in ({"tile": (33, 32)}, {"tile": (32, 32), "dynamic": True}, {"tile": (32, 32), "batch": 0}):
        with pytest.raises(UsageError):
            input_shape(spec, **kw)


def test_missing_packages_are_exit_69_with_the_install_hint(monkeypatch, tmp_path):
    from vsr.engines import onnx_export, ort_engine

    for name in ("onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` raise ImportError
    with pytest.raises(BackendUnavailable, match=r'pip install "vsr\[onnx\]"') as err:
        ort_engine.OrtEngine(tmp_path / "m.onnx")
    assert err.value.exit_code == 69 and "\n" not in str(err.value)
    with pytest.raises(BackendUnavailable, match=r'pip install "vsr\[onnx\]"'):
        onnx_export.export_onnx(tiny_srvgg(), tmp_path / "m.onnx", dynamic=True)
    assert not any(tmp_path.iterdir())


def test_provider_choice():
    from vsr.engines.ort_engine import default_providers

    cpu_only = ["AzureExecutionProvider", "CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert default_providers(torch.device("cpu"), gpu) == ["CPUExecutionProvider"]
    with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
        default_providers(torch.device("cuda", 0), cpu_only)
    names = lambda ps: [p[0] if isinstance(p, tuple) else p for p in ps]  # noqa: E731
    with_trt = default_providers(torch.device("cuda", 1), gpu, tensorrt=True)
    assert names(with_trt) == gpu
    trt_options, cuda_options = with_trt[0][1], with_trt[1][1]
    assert trt_options["device_id"] == 1 and cuda_options == {"device_id": 1}
    assert Path(trt_options["trt_engine_cache_path"]).is_relative_to(Path(os.environ["VSR_HOME"]))
    assert "trt_fp16_enable" not in trt_options  # precision comes from the graph
    assert names(default_providers(torch.device("cuda", 0), gpu, tensorrt=False)) == gpu[1:]
