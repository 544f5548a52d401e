"""TensorRT backend: clean exit-69 failures without TensorRT, the pure helpers, and (on a GPU host
with TensorRT) a real engine built from an fp16 ONNX compared with torch fp32."""

from __future__ import annotations

import ast
import enum
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vsr import files
from vsr.engines import trt_build, trt_common, trt_runtime
from vsr.engines.onnx_export import SPEC_KEY
from vsr.engines.trt_build import BuildConfig, build_engine, engine_from_onnx, plan_profile
from vsr.engines.trt_common import ShapeRange
from vsr.engines.trt_runtime import TrtEngine
from vsr.models.spec import ModelSpec
from vsr.errors import BackendUnavailable, InputError, InputMissing, UsageError

from helpers import tiny_rrdb

HAVE_TRT = importlib.util.find_spec("tensorrt") is not None
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


# --------------------------------------------------------------------------- small ONNX files made by hand


def small_onnx(*, weights=np.float16, io=TensorProto.FLOAT16, spec: str | None = None, inputs_list_initializers=False, shape=("batch", 3, "h", "w")):
    """Conv (weights in ``weights``) + nearest Resize x2 with fp32 scales, like an fp16 RRDB export."""
    w = numpy_helper.from_array(np.full((3, 3, 3, 3), 0.01, dtype=weights), "conv.weight")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")
    nodes = [
        helper.make_node("Conv", ["input", "conv.weight"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c", "", "scales"], ["output"], mode="nearest"),
    ]
    graph_inputs = [helper.make_tensor_value_info("input", io, list(shape))]
    if inputs_list_initializers:  # IR < 4 files list initializers among the inputs
        graph_inputs.append(helper.make_tensor_value_info("conv.weight", TensorProto.FLOAT16, [3, 3, 3, 3]))
    graph = helper.make_graph(
        nodes, "g", graph_inputs, [helper.make_tensor_value_info("output", io, ["batch", 3, "h2", "w2"])], [w, scales]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    if spec is not None:
        helper.set_model_props(model, {SPEC_KEY: spec})
    return model


SPEC = tiny_rrdb().spec


def same_spec(a, b) -> bool:
    """Spec equality up to the order of ``params`` (the exporter's JSON sorts them)."""
    from dataclasses import replace

    return dict(a.params) == dict(b.params) and replace(a, params=b.params) == b


def spec_metadata(spec) -> str:
    """The ``vsr.spec`` value as the exporter writes it."""
    from vsr.engines.onnx_export import spec_to_json

    return spec_to_json(spec)


@pytest.fixture
def onnx_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save_model(small_onnx(spec=spec_metadata(SPEC)), path)
    return path


# --------------------------------------------------------------------------- without TensorRT


@pytest.mark.parametrize("module", [trt_common, trt_build, trt_runtime], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_modules_import_tensorrt_and_onnx_lazily(module):
    # The CLI imports parse_shape from trt_build at argparse time, on nodes without either package.
    tree = ast.parse(Path(module.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {n.module or "" for n in top if isinstance(n, ast.ImportFrom) and not n.level}
    assert not any(name.split(".")[0] in ("tensorrt", "onnx", "google") for name in names)


def test_reading_onnx_without_the_onnx_package_is_exit_69(onnx_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # what `import onnx` sees where it is not installed
    with pytest.raises(BackendUnavailable) as info:
        trt_build.inspect_onnx(onnx_file.read_bytes())
    assert info.value.exit_code == 69 and "\n" not in str(info.value)
    assert 'pip install "vsr[tensorrt]"' in str(info.value)


needs_no_trt = pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed here")


@needs_no_trt
def test_tensorrt_really_is_missing_here():
    with pytest.raises(ImportError):
        import tensorrt  # noqa: F401


def _check_69(err: BackendUnavailable) -> None:
    msg = str(err)
    assert err.exit_code == 69
    assert "\n" not in msg
    assert msg.startswith("TensorRT is not installed")
    assert "pip install tensorrt-cu13 --extra-index-url https://pypi.nvidia.com" in msg
    assert "--backend torch" in msg


@needs_no_trt
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda p, o: build_engine(p, o, BuildConfig()), id="build_engine-output"),
        pytest.param(lambda p, o: build_engine(p), id="build_engine-cache"),
        pytest.param(lambda p, o: engine_from_onnx(p, BuildConfig(fp16=True), root=o.parent), id="engine_from_onnx"),
        pytest.param(lambda p, o: TrtEngine.from_file(o), id="from_file"),
        pytest.param(lambda p, o: TrtEngine(b"plan", spec=SPEC), id="TrtEngine"),
    ],
)
def test_every_entry_point_is_exit_69_without_tensorrt(call, onnx_file, tmp_path):
    out = tmp_path / "out" / "m.engine"
    cache = Path(os.environ["VSR_HOME"]) / "engines"
    before = sorted(cache.rglob("*")) if cache.exists() else None  # other backends' tests may have cached files
    with pytest.raises(BackendUnavailable) as info:
        call(onnx_file, out)
    _check_69(info.value)
    assert not out.parent.exists(), "nothing may be written when the backend is missing"
    assert (sorted(cache.rglob("*")) if cache.exists() else None) == before


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("version", "flags"),
    [("10.0.1.6", ("STRONGLY_TYPED",)), ("10.12.0.36", ("STRONGLY_TYPED",)), ("10.16.1.11", ("STRONGLY_TYPED",)),
     ("11.0.0", ()), ("11.4.0.106", ()), ("12.1", ())],
)
def test_network_flags_per_version(version, flags):
    assert trt_common.network_flag_names(version) == flags


@pytest.mark.parametrize("version", ["8.6.1", "9.3.0.1", "", "garbage"])
def test_old_or_unknown_tensorrt_is_exit_69(version):
    with pytest.raises(BackendUnavailable) as info:
        trt_common.network_flag_names(version)
    assert info.value.exit_code == 69 and "too old" in str(info.value)


def test_parse_version():
    assert trt_common.parse_version("10.12.0.36") == (10, 12, 0)
    assert trt_common.parse_version("11.4.0.106") == (11, 4, 0)
    assert trt_common.parse_version("10.16") == (10, 16, 0)
    assert trt_common.parse_version("11.1.0.post1") == (11, 1, 0)


def test_torch_dtype_from_tensorrt_names():
    DataType = enum.Enum("DataType", "FLOAT HALF BF16 INT8 INT32 BOOL FP8")  # same member names as tensorrt.DataType
    assert trt_common.torch_dtype(DataType.HALF) is torch.float16
    assert trt_common.torch_dtype(DataType.FLOAT) is torch.float32
    assert trt_common.torch_dtype("BF16") is torch.bfloat16
    with pytest.raises(InputError):
        trt_common.torch_dtype(DataType.FP8)


def test_default_profile_is_batch_4_of_256_tiles():
    assert plan_profile() == ShapeRange((1, 3, 16, 16), (4, 3, 256, 256), (4, 3, 256, 256))
    assert BuildConfig().profile(SPEC) == plan_profile()


def test_tile_profile_accepts_smaller_batches_and_tiles():
    prof = plan_profile(batch=8, tile=(128, 192), channels=3)
    assert prof == ShapeRange((1, 3, 16, 16), (8, 3, 128, 192), (8, 3, 128, 192))
    assert prof.contains((1, 3, 40, 64)) and prof.contains((8, 3, 128, 192))
    assert not prof.contains((9, 3, 128, 192)) and not prof.contains((1, 3, 129, 64))
    assert not prof.contains((1, 3, 8, 64)) and not prof.contains((1, 4, 64, 64)) and not prof.contains((3, 64, 64))
    # Pixel-unshuffle models: the smallest side is rounded up to the multiple; a tile smaller than that stays.
    assert plan_profile(batch=2, tile=(24, 96), multiple_of=12).min == (1, 3, 24, 24)
    assert plan_profile(batch=1, tile=(8, 8)).min == (1, 3, 8, 8)


def test_parse_shape():
    assert trt_build.parse_shape("4x3x256x256") == (4, 3, 256, 256)
    assert trt_build.parse_shape(" 1,3,64,48 ") == (1, 3, 64, 48)
    for bad in ("4x3x256", "4x3x256x0", "axbxcxd", "4x3x-1x256", ""):
        with pytest.raises(UsageError):
            trt_build.parse_shape(bad)


def test_explicit_profile():
    prof = plan_profile(min_shape=(1, 3, 64, 64), opt_shape=(8, 3, 256, 256), max_shape=(16, 3, 512, 512))
    assert prof.as_dict() == {"min": [1, 3, 64, 64], "opt": [8, 3, 256, 256], "max": [16, 3, 512, 512]}
    assert ShapeRange.from_dict(prof.as_dict()) == prof
    assert "opt 8x3x256x256" in prof.describe()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_shape=(1, 3, 64, 64), max_shape=(4, 3, 64, 64)),  # opt missing
        dict(min_shape=(1, 3, 64, 64), opt_shape=(4, 3, 64, 64), max_shape=(4, 3, 64, 64), tile=(64, 64)),
        dict(min_shape=(1, 3, 64, 64), opt_shape=(4, 3, 64, 64), max_shape=(4, 3, 64, 64), batch=4),
        dict(min_shape=(1, 3, 64, 64), opt_shape=(4, 3, 32, 64), max_shape=(4, 3, 64, 64)),  # opt < min
        dict(min_shape=(1, 1, 64, 64), opt_shape=(4, 1, 64, 64), max_shape=(4, 1, 64, 64)),  # channels
        dict(min_shape=(1, 3, 64), opt_shape=(4, 3, 64, 64), max_shape=(4, 3, 64, 64)),
        dict(batch=0),
        dict(tile=(0, 64)),
        dict(tile=(30, 64), multiple_of=4),
        dict(min_shape=(1, 3, 62, 64), opt_shape=(4, 3, 64, 64), max_shape=(4, 3, 64, 64), multiple_of=4),
    ],
)
def test_bad_profiles_are_usage_errors(kwargs):
    with pytest.raises(UsageError) as info:
        plan_profile(**kwargs)
    assert info.value.exit_code == 2 and "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [dict(opt_level=6), dict(opt_level=-1), dict(opt_level=2.5), dict(workspace_gib=0), dict(tile=(64,)), dict(batch=0)])
def test_bad_build_config_is_usage_error(kwargs):
    with pytest.raises(UsageError):
        BuildConfig(**kwargs)


def test_build_config_key_fields():
    base = BuildConfig(batch=4, tile=(256, 256), fp16=True).key_fields(SPEC)
    assert BuildConfig(fp16=True).key_fields(SPEC) == base  # defaults resolve to the same profile
    assert BuildConfig(batch=4, tile=[256, 256], fp16=True, timing_cache=Path("/x/timing.cache")).key_fields(SPEC) == base
    for other in (BuildConfig(batch=2, fp16=True), BuildConfig(fp16=True, opt_level=5), BuildConfig(fp16=True, workspace_gib=8),
                  BuildConfig(fp16=None), BuildConfig(fp16=True, version_compatible=True)):
        assert other.key_fields(SPEC) != base
    json.dumps(base)  # JSON-able, for the key and the sidecar


def test_sidecar_spec_round_trip_and_rebuild_from_arch():
    d = SPEC.to_dict()
    assert trt_runtime.sidecar_spec(json.loads(json.dumps(d, sort_keys=True))) == SPEC  # params order survives
    assert trt_runtime.sidecar_spec({"arch": SPEC.arch, "params": dict(SPEC.params)}) == SPEC
    with pytest.raises(InputError):
        trt_runtime.sidecar_spec({"params": {}})
    with pytest.raises(InputError):
        trt_runtime.sidecar_spec({**d, "scale": "four"})


def test_engine_metadata_sidecar():
    meta = trt_build.engine_metadata(
        spec=SPEC, profile=plan_profile(batch=2, tile=(64, 64)), precision="fp16", input_name="input", output_name="output",
        config=BuildConfig(batch=2, tile=(64, 64), fp16=True, timing_cache=Path("t.cache")),
        versions={"tensorrt": "10.12.0.36", "cuda": "13.0", "torch": "2.13.0"},
        device={"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}, onnx_sha256="0" * 64, onnx_path=Path("m.onnx"),
    )
    meta = json.loads(json.dumps(meta, sort_keys=True))  # as the sidecar is written
    assert meta["format"] == trt_build.ENGINE_FORMAT
    assert ModelSpec.from_dict(meta["spec"]) == SPEC
    assert meta["profile"] == {"min": [1, 3, 16, 16], "opt": [2, 3, 64, 64], "max": [2, 3, 64, 64]}
    assert meta["precision"] == "fp16" and meta["input"] == "input" and meta["output"] == "output"
    assert meta["versions"]["tensorrt"] == "10.12.0.36" and meta["device"]["compute_capability"] == "9.0"
    assert meta["build"]["timing_cache"] == "t.cache" and meta["build"]["opt_level"] == 3
    assert meta["onnx_sha256"] == "0" * 64


# --------------------------------------------------------------------------- reading ONNX (with the onnx package)


def test_inspect_onnx_fp16_graph(onnx_file):
    info = trt_build.inspect_onnx(onnx_file.read_bytes())
    assert info.inputs == [("input", TensorProto.FLOAT16)] and info.outputs == [("output", TensorProto.FLOAT16)]
    assert info.weight_elements == {TensorProto.FLOAT16: 81, TensorProto.FLOAT: 4}
    assert info.precision == "fp16"  # the fp32 Resize scales do not make it mixed
    assert json.loads(info.metadata[SPEC_KEY])["arch"] == "RRDBNet"
    assert json.loads(info.metadata[SPEC_KEY])["scale"] == 4
    assert info.external_files == []
    assert same_spec(trt_build.read_spec(onnx_file, info), SPEC)


def test_inspect_onnx_fp32_mixed_and_old_ir(tmp_path):
    fp32 = trt_build.inspect_onnx(small_onnx(weights=np.float32, io=TensorProto.FLOAT).SerializeToString())
    assert fp32.precision == "fp32"
    mixed = trt_build.inspect_onnx(small_onnx(io=TensorProto.FLOAT).SerializeToString())  # autocast with keep_io_types
    assert mixed.precision == "fp16 (fp32 I/O)" and mixed.weight_precision == "fp16"
    old = trt_build.inspect_onnx(small_onnx(inputs_list_initializers=True).SerializeToString())
    assert [name for name, _ in old.inputs] == ["input"]
    with pytest.raises(InputError) as info:
        trt_build.read_spec(tmp_path / "x.onnx", fp32)
    assert "vsr.spec" in str(info.value)


def test_profile_follows_fixed_dims_of_the_graph():
    dynamic = trt_build.inspect_onnx(small_onnx().SerializeToString())
    assert dynamic.input_shape == (None, 3, None, None)
    fixed = trt_build.inspect_onnx(small_onnx(shape=(2, 3, 64, 64)).SerializeToString())
    assert fixed.input_shape == (2, 3, 64, 64)
    default = BuildConfig()
    assert trt_build.fit_profile(default.profile(SPEC), dynamic.input_shape, default) == default.profile(SPEC)
    assert trt_build.fit_profile(default.profile(SPEC), fixed.input_shape, default) == ShapeRange(*[(2, 3, 64, 64)] * 3)
    matching = BuildConfig(batch=2, tile=(64, 64))
    assert trt_build.fit_profile(matching.profile(SPEC), fixed.input_shape, matching) == ShapeRange(*[(2, 3, 64, 64)] * 3)
    tile_only = BuildConfig(tile=(128, 128))
    fixed_batch = (1, 3, None, None)
    assert trt_build.fit_profile(tile_only.profile(SPEC), fixed_batch, tile_only) == ShapeRange((1, 3, 16, 16), (1, 3, 128, 128), (1, 3, 128, 128))
    for config in (tile_only, BuildConfig(batch=4)):
        with pytest.raises(UsageError) as info:
            trt_build.fit_profile(config.profile(SPEC), fixed.input_shape, config)
        assert "fixed" in str(info.value)
    # The key follows the profile actually built.
    fitted = trt_build.fit_profile(default.profile(SPEC), fixed.input_shape, default)
    assert default.key_fields(SPEC, fitted) != default.key_fields(SPEC)


def test_check_precision():
    fp16 = trt_build.inspect_onnx(small_onnx().SerializeToString())
    fp32 = trt_build.inspect_onnx(small_onnx(weights=np.float32, io=TensorProto.FLOAT).SerializeToString())
    mixed = trt_build.inspect_onnx(small_onnx(io=TensorProto.FLOAT).SerializeToString())
    for info, fp16_flag in ((fp16, True), (fp16, None), (fp32, False), (fp32, None), (mixed, True)):
        trt_build.check_precision(info, fp16_flag, Path("m.onnx"))
    with pytest.raises(UsageError) as err:
        trt_build.check_precision(fp32, True, Path("m.onnx"))
    assert "fp16" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError):
        trt_build.check_precision(fp16, False, Path("m.onnx"))


def test_garbage_is_not_onnx():
    with pytest.raises(InputError) as info:
        trt_build.inspect_onnx(b"\xff\xff\xff\xff not a protobuf")
    assert info.value.exit_code == 65


def test_onnx_digest_covers_external_weights(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(small_onnx(), path, save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data", size_threshold=0)
    data = path.read_bytes()
    info = trt_build.inspect_onnx(data)
    assert info.external_files == ["ext.onnx.data"]
    before = trt_build.onnx_digest(data, info, tmp_path)
    assert before != files.sha256_bytes(data)
    blob = bytearray((tmp_path / "ext.onnx.data").read_bytes())
    blob[0] ^= 1
    (tmp_path / "ext.onnx.data").write_bytes(bytes(blob))
    assert trt_build.onnx_digest(data, info, tmp_path) != before
    (tmp_path / "ext.onnx.data").unlink()
    with pytest.raises(InputMissing):
        trt_build.onnx_digest(data, info, tmp_path)
    single = small_onnx().SerializeToString()
    assert trt_build.onnx_digest(single, trt_build.inspect_onnx(single), tmp_path) == files.sha256_bytes(single)


def test_onnx_source_reads_parses_and_hashes_once(onnx_file, monkeypatch):
    parsed = []
    real_inspect = trt_build.inspect_onnx
    monkeypatch.setattr(trt_build, "inspect_onnx", lambda data: parsed.append(1) or real_inspect(data))
    source = trt_build.OnnxSource(onnx_file)
    digest, data = source.sha256, onnx_file.read_bytes()
    assert digest == files.sha256_bytes(data) and same_spec(source.spec, SPEC)
    onnx_file.unlink()  # everything a later build of another size needs is kept
    assert (source.sha256, source.info.input_shape, source.data) == (digest, (None, 3, None, None), data)
    assert len(parsed) == 1
    given = trt_build.OnnxSource(onnx_file, data=small_onnx().SerializeToString(), spec=SPEC)
    assert given.spec is SPEC and given.info.precision == "fp16"  # no file read: the bytes and spec were given
    with pytest.raises(InputMissing):
        trt_build.OnnxSource(onnx_file).data


def test_frame_engine_shares_one_onnx_source_across_sizes(onnx_file, monkeypatch):
    from vsr.engines.trt_frames import trt_frame_engine

    class Built:
        def __init__(self, source, config):
            self.source, self.config = source, config

        def close(self):
            pass

    monkeypatch.setattr(trt_common, "cuda_device", lambda device: torch.device("cpu"))  # no GPU here
    monkeypatch.setattr(trt_build, "engine_from_onnx", lambda source, config, **kw: Built(source, config))
    engine = trt_frame_engine(onnx_file, spec=SPEC, device=torch.device("cpu"), fp16=True, batch=2)
    small, large = engine.engine_for((2, 3, 32, 48)), engine.engine_for((1, 3, 64, 64))
    assert small.source is large.source and small.source.path == onnx_file
    assert small.config.max_shape == (2, 3, 32, 48) and large.config.max_shape == (2, 3, 64, 64)


# --------------------------------------------------------------------------- on a GPU host with TensorRT


@pytest.fixture
def trt():
    if not HAVE_TRT:
        if os.environ.get("VSR_REQUIRE_TENSORRT") == "1":
            pytest.fail("VSR_REQUIRE_TENSORRT=1 but tensorrt is not installed")
        pytest.skip("tensorrt is not installed")
    import tensorrt

    return tensorrt


def export_fp16_onnx(model: torch.nn.Module, path: Path, *, half: bool = True) -> Path:
    """Single-file ONNX with dynamic batch/height/width and the spec in the metadata."""
    try:
        from vsr.engines.onnx_export import export_onnx
    except ImportError:
        export_onnx = None
    if export_onnx is not None:
        return export_onnx(model, path, fp16=half, dynamic=True)
    from torch.export import Dim

    net = (model.half() if half else model.float()).eval()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float16 if half else torch.float32)
    dims = {0: Dim("batch", min=1, max=64), 2: Dim("h", min=8, max=2048), 3: Dim("w", min=8, max=2048)}
    program = torch.onnx.export(net, (x,), dynamo=True, input_names=["input"], output_names=["output"], dynamic_shapes={"x": dims}, external_data=False)
    program.model.metadata_props[SPEC_KEY] = spec_metadata(model.spec)
    program.save(str(path))
    return path


def to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


@pytest.mark.needs_cuda
def test_fp16_engine_matches_torch_fp32_and_is_cached(trt, tmp_path, monkeypatch):
    from helpers import crop, psnr
    from vsr.engines import Engine

    model = tiny_rrdb()
    onnx_path = export_fp16_onnx(tiny_rrdb(), tmp_path / "tiny_fp16.onnx")
    builds = []
    real_build = trt_build._build_plan
    monkeypatch.setattr(trt_build, "_build_plan", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    config = BuildConfig(batch=2, tile=(64, 64), fp16=True, timing_cache=tmp_path / "timing.cache")
    root = tmp_path / "engines"

    engine = engine_from_onnx(onnx_path, config, root=root)
    assert isinstance(engine, Engine)
    assert engine.dtype == torch.float16 and engine.device.type == "cuda" and same_spec(engine.spec, model.spec)
    assert engine.profile == ShapeRange((1, 3, 16, 16), (2, 3, 64, 64), (2, 3, 64, 64))
    assert engine.meta["precision"] == "fp16" and (tmp_path / "timing.cache").stat().st_size > 0

    pixels = np.stack([crop("astronaut", 80, 160, 64, 64), crop("coffee", 120, 200, 64, 64)])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        ref = model.float()(x)
    y = engine(x.cuda().half())
    torch.cuda.synchronize()
    assert y.shape == (2, 3, 256, 256) and y.dtype == torch.float16
    assert psnr(to_uint8(y), to_uint8(ref)) >= 45

    # Smaller batches and tiles inside the profile run; outside it is a clear ValueError.
    small = engine(x[:1, :, :40, :48].cuda().half())
    assert small.shape == (1, 3, 160, 192)
    with torch.inference_mode():
        ref_small = model(x[:1, :, :40, :48])
    assert psnr(to_uint8(small), to_uint8(ref_small)) >= 45
    with pytest.raises(ValueError, match="outside"):
        engine(torch.zeros(3, 3, 64, 64, device="cuda", dtype=torch.float16))
    engine.close()

    # Same ONNX and config: taken from the cache, no second build; the timing cache is not in the key.
    again = engine_from_onnx(onnx_path, BuildConfig(batch=2, tile=(64, 64), fp16=True), root=root)
    assert len(builds) == 1 and again.path == engine.path
    assert psnr(to_uint8(again(x.cuda().half())), to_uint8(ref)) >= 45
    again.close()
    # A different build option is a different engine.
    other = engine_from_onnx(onnx_path, BuildConfig(batch=1, tile=(64, 64), fp16=True), root=root)
    assert len(builds) == 2 and other.path != engine.path
    other.close()


@pytest.mark.needs_cuda
def test_build_engine_to_output_and_load_from_file(trt, tmp_path):
    onnx_path = export_fp16_onnx(tiny_rrdb(), tmp_path / "tiny_fp16.onnx")
    out = build_engine(onnx_path, tmp_path / "out" / "tiny.engine", BuildConfig(batch=1, tile=(32, 32), opt_level=1))
    meta = files.read_sidecar(out)
    assert files.check_artifact(out) == (True, "ok")
    assert meta["versions"]["tensorrt"] == trt.__version__ and meta["precision"] == "fp16"
    assert meta["onnx_sha256"] == files.sha256_bytes(onnx_path.read_bytes())
    engine = TrtEngine.from_file(out)
    assert same_spec(engine.spec, tiny_rrdb().spec) and engine.profile.max == (1, 3, 32, 32)
    assert engine(torch.rand(1, 3, 32, 32, device="cuda")).shape == (1, 3, 128, 128)  # fp32 input is cast
    engine.close()
    with pytest.raises(RuntimeError):
        engine(torch.rand(1, 3, 32, 32, device="cuda"))
    from vsr.errors import OutputError

    with pytest.raises(OutputError):
        build_engine(onnx_path, out, BuildConfig(batch=1, tile=(32, 32)))
    # fp16 asked of an fp32 graph: refused before any build.
    fp32 = export_fp16_onnx(tiny_rrdb(), tmp_path / "tiny_fp32.onnx", half=False)
    with pytest.raises(UsageError):
        build_engine(fp32, tmp_path / "x.engine", BuildConfig(fp16=True))


def test_tensor_addresses_are_aligned_before_they_reach_tensorrt():
    # set_tensor_address refuses pointers without 256-byte alignment; a slice of a batch has one.
    assert trt_runtime.TENSOR_ALIGNMENT == 256
    base = torch.arange(3 * 3 * 5 * 7, dtype=torch.float16).reshape(3, 3, 5, 7)
    assert trt_runtime.aligned(base, 64) is base  # the CPU allocator aligns to 64 bytes
    part = base[1:]
    assert part.data_ptr() % 64 and part.is_contiguous()
    fixed = trt_runtime.aligned(part, 64)
    assert fixed is not part and fixed.data_ptr() % 64 == 0 and torch.equal(fixed, part)


@pytest.mark.needs_cuda
def test_frame_engine_builds_a_whole_frame_profile_under_the_upscaler(trt, tmp_path):
    from helpers import crop, psnr
    from vsr.engines.trt_frames import trt_frame_engine
    from vsr.upscale import Upscaler

    model = tiny_rrdb()
    onnx_path = export_fp16_onnx(tiny_rrdb(), tmp_path / "tiny_fp16.onnx")
    engine = trt_frame_engine(onnx_path, spec=model.spec, device=torch.device("cuda"), fp16=True, batch=3, root=tmp_path / "engines")
    frames = np.stack([crop(name, 40, 60, 72, 120) for name in ("astronaut", "coffee", "chelsea")])
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    out = Upscaler(engine, tile=0, batch=3)(x.cuda())
    assert engine.sizes == [(72, 120)]
    built = engine.engine_for((3, 3, 72, 120))
    assert built.profile == ShapeRange((1, 3, 72, 120), (3, 3, 72, 120), (3, 3, 72, 120))  # one whole-frame call of 3
    with torch.inference_mode():
        ref = model.float()(x)
    assert psnr(to_uint8(out), to_uint8(ref)) >= 45
    # A misaligned slice of the batch goes in too (copied to an aligned buffer first).
    part = x.cuda().half()[1:]
    assert part.data_ptr() % trt_runtime.TENSOR_ALIGNMENT
    assert psnr(to_uint8(built(part)), to_uint8(ref[1:])) >= 45
    engine.close()
