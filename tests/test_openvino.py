"""The OpenVINO backend around the conformance suite: the engine cache, devices, shapes and tiling,
the CLI (`vsr run`/`vsr batch --backend openvino`), a missing package; and the CPU choices of
issue 13 (batch by frame size, threads, `--backend auto` on the CPU).

The conformance of OpenVINO's outputs against torch fp32 is in tests/test_engines.py.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import media
from helpers import LimitedMemoryEngine, crop, one_line_error, photos, psnr, run, tiny_rrdb, tiny_srvgg
from vsr.device import cpu_has_fast_bf16
from vsr.errors import UsageError
from vsr.media.image import write_image
from vsr.kernels import quantize
from vsr.upscale import Upscaler, cpu_batch

from vsr.engines.openvino_engine import no_telemetry  # noqa: E402  (imports no OpenVINO)

with no_telemetry():  # this import must not report either
    openvino = pytest.importorskip("openvino", reason='needs OpenVINO: pip install "vsr[openvino]"')

from vsr.engines import openvino_engine as ove  # noqa: E402  (after the importorskip)
from vsr.engines.openvino_engine import OpenVinoEngine  # noqa: E402


def reference(model, x):
    with torch.inference_mode():
        return quantize(model(x), 8)


# --------------------------------------------------------------------------- cache and key


def test_compiled_model_is_cached_under_a_full_key(tmp_path, caplog):
    model = tiny_srvgg(seed=3)
    with caplog.at_level(logging.INFO, logger="vsr.engines"):
        first = OpenVinoEngine(model, cache_root=tmp_path)
    assert caplog.text.count("converting") == 1
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vsr.engines"):
        again = OpenVinoEngine(model, cache_root=tmp_path, threads=1)
    assert "converting" not in caplog.text  # the second engine imports the cached file
    assert again.path == first.path and again.threads == 1
    from vsr.files import read_sidecar

    meta = read_sidecar(first.path)
    assert meta["complete"] and meta["precision"] == "fp32" and meta["shape"] == "dynamic" and meta["device"] == "CPU"
    x = photos(24, 32)
    assert psnr(quantize(again(x), 8), quantize(first(x), 8)) == float("inf")  # same compiled model
    # Another precision, shape or set of weights is another entry.
    fixed = OpenVinoEngine(model, cache_root=tmp_path, shape=(1, 3, 24, 32))
    other = OpenVinoEngine(tiny_srvgg(seed=4), cache_root=tmp_path)
    assert len({first.path, fixed.path, other.path}) == 3
    for engine in (first, again, fixed, other):
        engine.close()
    with pytest.raises(RuntimeError, match="after close"):
        first(x)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack through glibc")
def test_engine_leaves_the_threads_signal_stack_as_it_was(tmp_path):
    # compile_model registers an alternate signal stack of OpenVINO's own on the calling thread;
    # left there, this suite's process later segfaulted (exit 139). The engine puts the old one back.
    import ctypes

    libc = ctypes.CDLL(None)

    def current():
        stack = ove._Stack()
        assert libc.sigaltstack(None, ctypes.byref(stack)) == 0
        return stack.ss_sp, stack.ss_flags & ~1, stack.ss_size  # bit 0: SS_ONSTACK (never, here)

    before = current()
    engine = OpenVinoEngine(tiny_srvgg(seed=12), cache_root=tmp_path)  # a fresh conversion: compile_model runs
    engine(photos(8, 8))
    assert current() == before
    engine.close()


def test_conversion_sends_no_telemetry(tmp_path):
    # openvino.convert_model reports to Google Analytics from a forked process unless the user opted
    # out; such a child once deadlocked in getaddrinfo and hung this suite at exit.
    import multiprocessing

    tm = pytest.importorskip("openvino_telemetry")
    OpenVinoEngine(tiny_srvgg(seed=13), cache_root=tmp_path).close()  # a fresh conversion
    assert tm.Telemetry().consent is False
    assert multiprocessing.active_children() == []


def test_importing_and_running_openvino_sends_nothing(tmp_path):
    # `import openvino` itself reports a "general_import" event unless the user opted out; in a
    # fresh process (nothing imported before vsr), a whole vsr run through OpenVINO must send no
    # event, fork no process and write nothing into the user's home.
    pytest.importorskip("openvino_telemetry")
    code = """
import json, multiprocessing, sys
from openvino_telemetry.backend import backend_ga4
sent = []
backend_ga4.GA4Backend.send = lambda self, message: sent.append(message)
from vsr.engines.openvino_engine import OpenVinoEngine, import_openvino
import_openvino()
sys.path.insert(0, sys.argv[1])
from helpers import tiny_srvgg
OpenVinoEngine(tiny_srvgg(seed=14), cache_root=sys.argv[2]).close()
print(json.dumps({"sent": len(sent), "children": len(multiprocessing.active_children())}))
"""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    env.pop("CI", None)
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(tmp_path / "cache")],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"sent": 0, "children": 0}
    assert list(home.iterdir()) == []  # no consent file, no client id


def test_key_covers_weights_precision_shape_versions_and_device():
    base = dict(ov_device="CPU", device_name="AMD EPYC", dtype=torch.float32, shape=None, version="2026.4.1")
    digest = "a" * 64
    key = ove.blob_key(digest, **base)
    variants = [
        ove.blob_key("b" * 64, **base),
        ove.blob_key(digest, **{**base, "dtype": torch.bfloat16}),
        ove.blob_key(digest, **{**base, "shape": (1, 3, 64, 64)}),
        ove.blob_key(digest, **{**base, "version": "2026.5.0"}),
        ove.blob_key(digest, **{**base, "ov_device": "GPU"}),
        ove.blob_key(digest, **{**base, "device_name": "Intel Xeon"}),
    ]
    assert len({key, *variants}) == len(variants) + 1
    assert ove.blob_key(digest, **base) == key  # deterministic


def test_compile_config_always_names_the_precision():
    # The CPU plugin would run fp32 models in bf16 on CPUs with AVX512_BF16 if the hint were missing.
    assert ove.compile_config("CPU", torch.float32, 2) == {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 2}
    assert ove.compile_config("GPU", torch.float16, 2) == {"INFERENCE_PRECISION_HINT": "f16", "PERFORMANCE_HINT": "LATENCY"}
    with pytest.raises(UsageError):
        ove.compile_config("CPU", torch.float64, None)
    # The streams of concurrent(): THROUGHPUT with that many streams, which share the threads.
    assert ove.compile_config("CPU", torch.bfloat16, 2, streams=2) == {
        "INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": 2, "INFERENCE_NUM_THREADS": 2,
    }


def test_streams_rule():
    # Two streams wherever there are two threads for them on a CPU; one elsewhere (GPU/NPU: not run here).
    assert [ove.streams_for("CPU", t) for t in (None, 1, 2, 3, 16)] == [1, 1, 2, 2, 2]
    assert ove.streams_for("GPU", 8) == 1 and ove.streams_for("NPU", 4) == 1


def test_concurrent_calls_run_on_streams_of_their_own_and_agree():
    # A video run calls the engine from two compute threads at once; each call gets an infer
    # request of its own on the THROUGHPUT import, and the pictures are those of the one-stream
    # model and of torch.
    import threading

    model = tiny_srvgg(seed=11)
    engine = OpenVinoEngine(model, threads=2)
    x = photos(32, 48)[:1].repeat(6, 1, 1, 1) * torch.linspace(0.5, 1.0, 6).view(6, 1, 1, 1)
    one_stream = [engine(x[i : i + 1]) for i in range(6)]
    assert engine.parallel_calls == 2 and engine._streams is None  # nothing imported yet
    out: dict[int, torch.Tensor] = {}
    inside = threading.Barrier(2, timeout=30)

    def call(i: int) -> None:
        if i < 2:
            inside.wait()  # both threads start their first call together
        out[i] = engine(x[i : i + 1])

    with engine.concurrent() as workers:
        assert workers == 2 and engine.calls_at_once == 2  # the Upscaler halves each call's memory share
        compiled, free = engine._streams
        assert str(compiled.get_property("PERFORMANCE_HINT")) == "THROUGHPUT" and int(compiled.get_property("NUM_STREAMS")) == 2
        assert free.qsize() == 2
        threads = [threading.Thread(target=lambda k=k: [call(i) for i in range(k, 6, 2)]) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert free.qsize() == 2  # every request went back
    assert engine._pool is None and engine._streams is not None and engine.calls_at_once == 1  # kept for the next run
    want = reference(model, x)
    for i in range(6):
        assert psnr(quantize(out[i], 8)[0].float(), quantize(one_stream[i], 8)[0].float()) >= 60
        assert psnr(quantize(out[i], 8)[0].float(), want[i].float()) >= 60
    engine.close()
    with pytest.raises(RuntimeError, match="after close"):
        with engine.concurrent():
            pass
    single = OpenVinoEngine(model, threads=1)
    with single.concurrent() as workers:
        assert workers == 1 and single._streams is None
    single.close()


# --------------------------------------------------------------------------- devices


def test_device_names():
    assert [ove.openvino_device(t) for t in ("auto", "cpu", "CPU", "gpu", "GPU.1", "npu")] == ["CPU", "CPU", "CPU", "GPU", "GPU.1", "NPU"]
    assert [ove.is_openvino_only_device(t) for t in ("GPU", "gpu.0", "NPU", "cpu", "CPU", "auto", "cuda")] == [True] * 3 + [False] * 4
    for bad in ("cuda", "cuda:0", "tpu", "GPU.x"):
        with pytest.raises(UsageError, match="not an OpenVINO device"):
            ove.openvino_device(bad)


def test_device_and_backend_resolution():
    from vsr.compute import choose_backend

    assert choose_backend("openvino", "auto") == ("openvino", torch.device("cpu"), "CPU")
    assert choose_backend("auto", "GPU.1") == ("openvino", torch.device("cpu"), "GPU.1")
    with pytest.raises(UsageError, match="OpenVINO device"):
        choose_backend("torch", "NPU")
    with pytest.raises(UsageError, match="not cuda"):
        choose_backend("openvino", "cuda")


def test_a_device_openvino_does_not_see_is_exit_69(tmp_path):
    # This machine has no Intel GPU/NPU: the GPU path can only be checked up to here. In child
    # processes: probing OpenVINO's GPU/NPU plugins for absent hardware inside the pytest process
    # was followed, a few tests later, by heap corruption (segfaults in malloc) in this suite.
    probe = subprocess.run([sys.executable, "-c", "import openvino; print(' '.join(openvino.Core().available_devices))"],
                           capture_output=True, text=True, check=True)
    missing = next(d for d in ("NPU", "GPU") if d not in probe.stdout.split())
    image = tmp_path / "in.png"
    write_image(image, crop("astronaut", 100, 180, 16, 16))
    model = tmp_path / "tiny.pth"
    torch.save({"params_ema": tiny_srvgg().state_dict()}, model)
    proc = subprocess.run([sys.executable, "-m", "vsr", "run", str(image), str(tmp_path / "out.png"), "--model", str(model),
                           "--backend", "openvino", "--device", missing], capture_output=True, text=True)
    assert proc.returncode == 69, proc.stderr
    assert f"no {missing} device" in one_line_error(proc.stderr)
    assert not (tmp_path / "out.png").exists()


# --------------------------------------------------------------------------- shapes, tiling, memory


def test_fixed_shape_engine_limits_and_tiling():
    model = tiny_rrdb(seed=5)
    engine = OpenVinoEngine(model, shape=(2, 3, 32, 32))
    assert engine.fixed_shape == engine.caps.fixed_shape == (2, 3, 32, 32) and engine.caps.limits == (2, 32, 32)
    x = photos(48, 64)  # larger than the fixed tile: the Upscaler tiles it to 32x32
    up = Upscaler(engine, tile=0, overlap=8, batch=4)
    assert up.batch == 2
    out = up(x)
    assert out.shape == (2, 3, 192, 256)
    assert psnr(quantize(out, 8), reference(model, x)) >= 45  # tile seams blended, interior exact
    with pytest.raises(ValueError, match="built for 32x32 tiles"):
        engine(photos(32, 40))
    small = photos(24, 16)  # a frame smaller than the tile: padded inside the engine, cropped
    assert engine(small).shape == (2, 3, 96, 64)
    with pytest.raises(UsageError, match="does not fit"):
        OpenVinoEngine(model, shape=(1, 4, 32, 32))  # 4 channels into a 3-channel network


def test_out_of_memory_retries_with_smaller_tiles():
    model = tiny_srvgg(seed=6)
    engine = LimitedMemoryEngine(OpenVinoEngine(model), max_pixels=2 * 40 * 40)
    x = photos(64, 80)
    out = Upscaler(engine, overlap=8, batch=2)(x)
    assert max(h * w for _, _, h, w in engine.calls[-1:]) <= 40 * 40
    assert psnr(quantize(out, 8), reference(model, x)) >= 45


def test_allocation_failures_are_recognised():
    assert ove.is_out_of_memory("Exception from src/plugins/intel_cpu: std::bad_alloc")
    assert ove.is_out_of_memory("[GPU] out of GPU resources: Failed to allocate 2 GB")
    assert not ove.is_out_of_memory("Shape inference failed: incompatible dimensions")


# --------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ov_model") / "tiny_x4.pth"
    torch.save({"params_ema": tiny_srvgg(seed=7).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return media.make_clip(tmp_path_factory.mktemp("ov_clip") / "c.mp4", frames=6, audio="aac", size=(48, 32))


def test_vsr_run_with_openvino_agrees_with_torch(tmp_path, capsys, tiny_file, clip):
    outs = {}
    for backend in ("torch", "openvino"):
        outs[backend] = tmp_path / f"{backend}.mkv"
        code, err = run(capsys, "run", clip, outs[backend], "--model", tiny_file, "--backend", backend, "--precision", "fp32", "--progress", "none",
                        "--encoder-opt", "qp=0", "--threads", "2", "-v")
        assert code == 0, err
    assert "openvino CPU, fp32" in err and "2 streams for concurrent calls" in err  # two compute threads
    a, b = media.decode_frames(outs["torch"]), media.decode_frames(outs["openvino"])
    assert len(a) == len(b) == 6
    for fa, fb in zip(a, b, strict=True):
        assert psnr(media.planes(fa)[0], media.planes(fb)[0]) >= 50


def test_vsr_batch_with_openvino(tmp_path, capsys, tiny_file, clip):
    code, err = run(capsys, "batch", clip, "--output-dir", tmp_path / "out", "--model", tiny_file, "--backend", "openvino",
                    "--device", "cpu", "--progress", "none", "-v")
    assert code == 0, err
    # ComputeSpec carried the backend into the worker, and `--precision auto` chose there.
    assert f"openvino CPU, {'bf16' if cpu_has_fast_bf16() else 'fp32'}" in err
    assert len(media.decode_frames(tmp_path / "out" / "c.mp4")) == 6


def test_missing_openvino_is_exit_69_naming_the_install(tmp_path, capsys, tiny_file, clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    code, err = run(capsys, "run", clip, tmp_path / "o.mp4", "--model", tiny_file, "--backend", "openvino", "--progress", "none")
    assert code == 69
    assert 'pip install "vsr[openvino]"' in one_line_error(err)
    assert not any(tmp_path.iterdir())


def test_openvino_refuses_engine_files_and_cuda(tmp_path, capsys, tiny_file, clip):
    code, err = run(capsys, "run", clip, tmp_path / "o.mp4", "--model", tiny_file, "--backend", "openvino", "--engine", tmp_path / "x.onnx")
    assert code == 2 and "--engine is for" in one_line_error(err)
    code, err = run(capsys, "run", clip, tmp_path / "o.mp4", "--model", tiny_file, "--backend", "torch", "--device", "NPU")
    assert code == 2 and "OpenVINO device" in one_line_error(err)


# --------------------------------------------------------------------------- CPU choices (issue 13)


def test_cpu_batch_rule():
    # Measured: batches pay off below about 8k LR pixels per call, cost more above (BENCHMARKS.md).
    assert [cpu_batch(h, w) for h, w in ((32, 48), (48, 64), (64, 96), (144, 176), (1080, 1920))] == [4, 2, 1, 1, 1]
    assert cpu_batch(32, 48, most=2) == 2 and cpu_batch(8, 8, most=3) == 3


def test_auto_batch_sizes_engine_calls_by_frame_size(caplog):
    from vsr.engines import TorchEngine

    inner = TorchEngine(tiny_srvgg(seed=8), device="cpu")
    engine = LimitedMemoryEngine(inner, max_pixels=10**9)  # records the shape of every call
    up = Upscaler(engine, batch=None)
    assert up.batch == 4 and up.auto_batch  # frames are still grouped by 4 for the pipeline
    with caplog.at_level(logging.INFO, logger="vsr.upscale"):
        up(torch.rand(4, 3, 32, 48))
        up(torch.rand(4, 3, 96, 128))
    assert [c[0] for c in engine.calls] == [4, 1, 1, 1, 1]
    assert "batch 4 per call for 48x32" in caplog.text and "batch 1 per call for 128x96" in caplog.text
    fixed = LimitedMemoryEngine(inner, max_pixels=10**9)
    Upscaler(fixed, batch=3)(torch.rand(4, 3, 96, 128))  # --batch given: used as is
    assert [c[0] for c in fixed.calls] == [3, 1]


def test_threads_flag_sets_the_network_threads(tmp_path, capsys, tiny_file, clip):
    before = torch.get_num_threads()
    try:
        code, err = run(capsys, "run", clip, tmp_path / "o.mp4", "--model", tiny_file, "--backend", "openvino", "--precision", "fp32", "--threads", "1",
                        "--progress", "none", "-v")
        assert code == 0, err
        assert torch.get_num_threads() == 1
        assert "1 CPU thread(s) for the network" in err and "openvino CPU, fp32, 1 threads" in err
    finally:
        torch.set_num_threads(before)
    code, err = run(capsys, "run", clip, tmp_path / "p.mp4", "--model", tiny_file, "--threads", "0")
    assert code == 2


class _CountsThreads:
    """An engine wrapper that records torch's thread count on every call (the compute thread)."""

    def __init__(self, inner):
        self.inner, self.spec, self.device, self.dtype, self.caps = inner, inner.spec, inner.device, inner.dtype, inner.caps
        self.concurrent = inner.concurrent  # the run's compute threads hold it where caps.concurrent says so
        self.counts: list[int] = []

    def __call__(self, x):
        self.counts.append(torch.get_num_threads())
        return self.inner(x)

    def close(self):
        self.inner.close()


def test_torch_glue_runs_on_one_thread_while_openvino_computes(tmp_path, clip):
    # torch's OpenMP workers spin after each op and took the cores OpenVINO's own pool needs
    # (measured: 80 vs 118 frames/s at 96x64); during a run with OpenVINO torch has one thread,
    # in the compute threads and the encode thread alike, and gets its count back afterwards.
    from vsr.engines import TorchEngine
    from vsr.pipeline import VideoJob, run_video

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = {}
        for name, inner in (("openvino", OpenVinoEngine(tiny_srvgg(seed=5))), ("torch", TorchEngine(tiny_srvgg(seed=5), device="cpu"))):
            engine, encode_side = _CountsThreads(inner), []
            run_video(VideoJob(clip, tmp_path / f"{name}.mp4"), Upscaler(engine), on_frame=lambda _n: encode_side.append(torch.get_num_threads()))
            seen[name] = (set(engine.counts), set(encode_side))
            assert torch.get_num_threads() == 2
            engine.close()
        assert seen["openvino"] == ({1}, {1})
        # torch itself computes on two compute threads of one torch thread each (TorchEngine.concurrent,
        # entered once the encode thread runs: torch fixes a thread's count at its first op, so the
        # encode thread, which does no torch compute, may keep 2).
        assert seen["torch"][0] == {1}
        # A call outside a run (a library user's own loop) too.
        engine = _CountsThreads(OpenVinoEngine(tiny_srvgg(seed=5)))
        Upscaler(engine)(photos(16, 24))
        assert engine.counts == [1] and torch.get_num_threads() == 2
        engine.close()
        # Pictures too (vsr.images.run_tasks).
        from vsr.images import ImageTask, run_tasks

        photo = tmp_path / "photo.png"
        write_image(photo, (photos(24, 32)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        engine = _CountsThreads(OpenVinoEngine(tiny_srvgg(seed=5)))
        assert run_tasks([ImageTask(photo, tmp_path / "photo_x4.png")], Upscaler(engine)) == []
        assert engine.counts == [1] and torch.get_num_threads() == 2 and (tmp_path / "photo_x4.png").is_file()
        engine.close()
    finally:
        torch.set_num_threads(before)


def test_auto_backend_on_the_cpu(monkeypatch, caplog):
    from vsr.compute import choose_backend
    from vsr.engines.backends import choose_cpu_backend

    assert choose_cpu_backend(openvino_available=True) == "openvino"
    assert choose_cpu_backend(openvino_available=False) == "torch"
    with caplog.at_level(logging.WARNING, logger="vsr"):
        assert choose_backend("auto", "cpu") == ("openvino", torch.device("cpu"), "CPU")  # installed here
        assert choose_backend("torch", "cpu")[0] == "torch"  # asked for: nothing to say
    assert not caplog.records
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "openvino" else object())
    with caplog.at_level(logging.WARNING, logger="vsr"):
        assert choose_backend("auto", "cpu")[0] == "torch"
    # Without OpenVINO the user hears, once per run, where the faster CPU backend is.
    assert [r.levelno for r in caplog.records] == [logging.WARNING] and 'pip install "vsr[openvino]"' in caplog.text


def test_upscaled_output_is_float32_on_the_cpu():
    engine = OpenVinoEngine(tiny_srvgg(seed=9))
    y = engine(photos(16, 24).double())
    assert y.dtype == torch.float32 and y.device.type == "cpu" and y.is_contiguous()
    assert np.isfinite(y.numpy()).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["realesrgan-x4plus", "realesr-animevideov3"])
def test_real_weights_match_torch_fp32(name):
    # The pretrained networks themselves (RRDBNet and SRVGGNetCompact) on a real photograph.
    from vsr import models

    model = models.load(name)
    x = photos(32, 32)[:1]
    engine = OpenVinoEngine(model)
    db = psnr(quantize(engine(x), 8), reference(model, x))
    print(f"openvino fp32 {name}: {db:.2f} dB")
    assert db >= 60
