"""``vsr run`` on videos: every frame, timestamp, stream and colour tag kept; bad media refused.

The clips come from scripts/media.py (real photographs with camera motion, real audio and
subtitles). Pixel checks re-run the model on the input's decoded frames and compare with the
output decoded by PyAV; a lossless encode (`qp=0`) makes that comparison exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import media
from helpers import leftovers, one_line_error, psnr, run, tiny_rrdb, tiny_srvgg
from vsr import color
from vsr.engines import TorchEngine
from vsr.kernels.yuv import rgb_to_yuv, yuv_to_rgb
from vsr.media.encode import EncodeSettings
from vsr.media.options import VideoOptions
from vsr.upscale import Upscaler

SCALE = 4


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Each named clip of scripts/media.py, made once per module on first use."""
    folder = tmp_path_factory.mktemp("clips")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = getattr(media, name)(folder)
        return made[name]

    return get


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny_x4.pth"
    torch.save({"params_ema": tiny_srvgg(upscale=SCALE).state_dict()}, path)
    return path


def upscale(args, capsys, model_file, *extra):
    # fp32: the pixel references run the network in fp32 (`auto` is bf16 on CPUs with AVX512_BF16).
    precision = () if "--precision" in extra else ("--precision", "fp32")
    code, err = run(capsys, "run", *args, "--model", model_file, "--progress", "none", *precision, *extra)
    return code, err


def stream_kinds(path: Path) -> list[str]:
    with av.open(str(path)) as c:
        return [s.type for s in c.streams]


def video_props(path: Path) -> dict:
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        frame = next(c.decode(v))
        return {
            "codec": v.codec_context.name, "width": v.codec_context.width, "height": v.codec_context.height,
            "pix_fmt": frame.format.name, "colorspace": int(frame.colorspace), "color_range": int(frame.color_range),
            "primaries": int(frame.color_primaries), "trc": int(frame.color_trc),
            "time_base": Fraction(v.time_base), "metadata": dict(c.metadata),
        }


def seconds(path: Path) -> list[Fraction]:
    """Exact presentation times of every video frame."""
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return [f.pts * Fraction(v.time_base) for f in c.decode(v)]


def reference(path: Path, model: torch.nn.Module) -> list[list[np.ndarray]]:
    """The model run directly on the input's decoded frames, converted back to the source's planes."""
    info_colour, lay = None, None
    out = []
    with av.open(str(path)) as c:
        v = c.streams.video[0]
        cc = v.codec_context
        info_colour = color.resolve(int(cc.colorspace), int(cc.color_range), int(cc.color_primaries), int(cc.color_trc),
                                    pix_fmt=cc.format.name, width=cc.width, height=cc.height)
        lay = color.layout(cc.format.name)
        kr, kb = color.MATRICES[info_colour.matrix]
        engine = TorchEngine(model, device=torch.device("cpu"), dtype=torch.float32)
        for frame in c.decode(v):
            y, u, w = (torch.from_numpy(p.astype(np.int32))[None] for p in media.planes(frame))
            rgb = yuv_to_rgb(y, u, w, kr=kr, kb=kb, bits=lay.bits, full_range=info_colour.full_range)
            with torch.no_grad():
                up = Upscaler(engine, batch=1)(rgb)
            planes = rgb_to_yuv(up, kr=kr, kb=kb, bits=lay.bits, full_range=info_colour.full_range, chroma=lay.chroma)
            out.append([p[0].numpy().astype(np.int64) for p in planes])
    return out


def assert_pixels_match(output: Path, expected: list[list[np.ndarray]]) -> None:
    frames = media.decode_frames(output)
    assert len(frames) == len(expected)
    for frame, want in zip(frames, expected, strict=True):
        got = [p.astype(np.int64) for p in media.planes(frame)]
        for g, w in zip(got, want, strict=True):
            assert g.shape == w.shape
            diff = np.abs(g - w)
            # Batched vs single-frame convolutions differ in the last float bits.
            assert diff.max() <= 1 and diff.mean() < 0.01, (diff.max(), diff.mean())


def load_model(path: Path) -> torch.nn.Module:
    from vsr import models

    return models.load(str(path))


# --------------------------------------------------------------------------- good inputs


def test_h264_aac_mp4_odd_size(tmp_path, capsys, clips, model_file):
    src = clips("h264_aac_mp4")
    out = tmp_path / "out.mp4"
    code, err = upscale([src, out], capsys, model_file, "--encoder-opt", "qp=0")
    assert code == 0, err
    assert "done: 8 frames" in err
    props = video_props(out)
    assert (props["width"], props["height"]) == (98 * SCALE, 70 * SCALE)
    assert props["codec"] == "h264" and props["pix_fmt"] == "yuv420p"
    assert (props["colorspace"], props["color_range"], props["primaries"], props["trc"]) == (1, 1, 1, 1)
    assert props["metadata"].get("title") == "vsr test clip"
    assert seconds(out) == seconds(src)
    assert [p[2] for p in media.packets(out, "audio")] == [p[2] for p in media.packets(src, "audio")]
    with av.open(str(src)) as a, av.open(str(out)) as b:
        assert [c["metadata"].get("title") for c in b.chapters()] == [c["metadata"].get("title") for c in a.chapters()]
        assert len(b.chapters()) == 2
    assert_pixels_match(out, reference(src, load_model(model_file)))
    assert not leftovers(tmp_path)


def test_hevc_10bit_opus_srt_mkv(tmp_path, capsys, clips, model_file):
    src = clips("hevc10_opus_srt_mkv")
    out = tmp_path / "out.mkv"
    code, err = upscale([src, out], capsys, model_file, "--codec", "libx265", "--encoder-opt", "x265-params=lossless=1:log-level=error")
    assert code == 0, err
    props = video_props(out)
    assert props["codec"] == "hevc" and props["pix_fmt"] == "yuv420p10le"
    assert (props["width"], props["height"]) == (96 * SCALE, 64 * SCALE)
    assert seconds(out) == seconds(src)
    assert [p[2] for p in media.packets(out, "audio")] == [p[2] for p in media.packets(src, "audio")]
    subs_in, subs_out = media.packets(src, "subtitle"), media.packets(out, "subtitle")
    assert subs_out and [p[2] for p in subs_out] == [p[2] for p in subs_in]
    assert stream_kinds(out) == ["video", "audio", "subtitle"]
    expected = reference(src, load_model(model_file))
    assert_pixels_match(out, expected)
    luma = np.concatenate([f[0].ravel() for f in expected])
    assert np.mean(luma % 4 != 0) > 0.5  # real 10-bit output, not 8-bit codes shifted up


def test_variable_frame_rate_survives(tmp_path, capsys, clips, model_file):
    src = clips("vfr_mp4")
    out = tmp_path / "out.mkv"
    code, err = upscale([src, out], capsys, model_file)
    assert code == 0, err
    got = seconds(out)
    want = [Fraction(p) * media.VFR_TIME_BASE for p in media.vfr_pts()]
    assert [round(float(t), 3) for t in got] == [round(float(t), 3) for t in want]  # MKV keeps milliseconds
    assert len(set(np.diff([float(t) for t in got]).round(3))) > 2  # still irregular


def test_full_range_bt601_without_audio(tmp_path, capsys, clips, model_file):
    src = clips("yuvj420p_mp4")
    out = tmp_path / "out.mp4"
    code, err = upscale([src, out], capsys, model_file, "--encoder-opt", "qp=0")
    assert code == 0, err
    props = video_props(out)
    assert props["color_range"] == 2 and props["colorspace"] in (5, 6)
    assert stream_kinds(out) == ["video"]
    assert_pixels_match(out, reference(src, load_model(model_file)))


def test_vp9_opus_webm(tmp_path, capsys, clips, model_file):
    src = clips("vp9_opus_webm")
    out = tmp_path / "out.webm"
    code, err = upscale([src, out], capsys, model_file)
    assert code == 0, err
    props = video_props(out)
    assert props["codec"] == "vp9" and (props["width"], props["height"]) == (384, 256)
    assert [p[2] for p in media.packets(out, "audio")] == [p[2] for p in media.packets(src, "audio")]
    assert seconds(out) == seconds(src)
    # Lossy encode: the luma is compared with the model's own output by PSNR.
    ref = reference(src, load_model(model_file))
    got = [media.planes(f)[0] for f in media.decode_frames(out)]
    assert min(psnr(g, r[0]) for g, r in zip(got, ref, strict=True)) > 30


def test_odd_size_444_keeps_chroma(tmp_path, capsys, clips, model_file):
    src = clips("yuv444_odd_mkv")
    out = tmp_path / "out.mkv"
    code, err = upscale([src, out], capsys, model_file, "--encoder-opt", "qp=0")
    assert code == 0, err
    props = video_props(out)
    assert props["pix_fmt"] == "yuv444p" and (props["width"], props["height"]) == (97 * SCALE, 71 * SCALE)
    assert_pixels_match(out, reference(src, load_model(model_file)))


def test_truncated_transport_stream_is_processed_with_a_warning(tmp_path, capsys, clips, model_file):
    src = clips("truncated_ts")
    decodable = len(media.decode_frames(src))
    assert decodable < media.TRUNCATED_FRAMES
    out = tmp_path / "out.ts"
    code, err = upscale([src, out], capsys, model_file)
    assert code == 0, err
    assert f"{decodable} frames read" in err and "truncated" in err
    assert len(media.decode_frames(out)) == decodable
    assert seconds(out) == seconds(src)


def test_outscale_no_audio_no_subtitles_and_json_progress(tmp_path, capsys, clips, model_file):
    src = clips("hevc10_opus_srt_mkv")
    out = tmp_path / "out.mkv"
    code = run_main(["run", src, out, "--model", model_file, "--outscale", "2", "--no-audio", "--no-subtitles", "--progress", "json", "--batch", "3"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [json.loads(line) for line in captured.out.splitlines()]
    progress, done = lines[:-1], lines[-1]
    assert progress and all(p["event"] == "progress" and p["unit"] == "frame" for p in progress)
    assert progress[-1]["done"] == 8 and done["event"] == "done" and done["frames"] == 8 and done["bytes"] == out.stat().st_size
    assert stream_kinds(out) == ["video"]
    props = video_props(out)
    assert (props["width"], props["height"]) == (192, 128)


def run_main(argv) -> int:
    from vsr.cli import main

    return main([str(a) for a in argv])


def test_tiles_and_batches_give_the_same_video(tmp_path, capsys, clips, model_file):
    src = clips("h264_aac_mp4")
    whole, tiled = tmp_path / "whole.mkv", tmp_path / "tiled.mkv"
    assert upscale([src, whole], capsys, model_file, "--encoder-opt", "qp=0", "--batch", "8")[0] == 0
    assert upscale([src, tiled], capsys, model_file, "--encoder-opt", "qp=0", "--tile", "48", "--tile-overlap", "8", "--batch", "5")[0] == 0
    for a, b in zip(media.decode_frames(whole), media.decode_frames(tiled), strict=True):
        assert psnr(media.planes(a)[0], media.planes(b)[0]) > 40


def test_stream_the_container_cannot_hold_is_named(tmp_path, capsys, clips, model_file):
    src = clips("hevc10_opus_srt_mkv")
    code, err = upscale([src, tmp_path / "out.mp4"], capsys, model_file)
    assert code == 73
    line = one_line_error(err)
    assert "subtitle stream #2" in line and "--no-subtitles" in line and ".mkv" in line
    assert list(tmp_path.iterdir()) == []
    code, err = upscale([src, tmp_path / "out.mp4"], capsys, model_file, "--no-subtitles")
    assert code == 0, err
    assert stream_kinds(tmp_path / "out.mp4") == ["video", "audio"]


def test_existing_output_is_kept_without_overwrite(tmp_path, capsys, clips, model_file):
    src = clips("vfr_mp4")
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    code, err = upscale([src, out], capsys, model_file)
    assert code == 73 and "--overwrite" in one_line_error(err)
    assert out.read_bytes() == b"precious"
    code, err = upscale([src, out], capsys, model_file, "--overwrite")
    assert code == 0, err
    assert len(media.decode_frames(out)) == len(media.vfr_pts())


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "name,code,needle",
    [
        ("audio_only", 65, "no video stream"),
        ("empty_file", 65, "empty"),
        ("text_file", 65, "not a video"),
        (None, 66, "does not exist"),
    ],
)
def test_bad_media_get_one_line_and_leave_nothing(tmp_path, capsys, clips, model_file, name, code, needle):
    src = clips(name) if name else tmp_path / "missing.mp4"
    outdir = tmp_path / "out"
    outdir.mkdir()
    got, err = upscale([src, outdir / "o.mp4"], capsys, model_file)
    assert got == code, err
    assert needle in one_line_error(err)
    assert list(outdir.iterdir()) == []


@pytest.mark.parametrize(
    "extra,code,needle",
    [
        (["--codec", "nope264"], 2, "no such encoder"),
        (["--pix-fmt", "yuv420p10le", "--codec", "libvpx-vp9"], 2, "not accepted by libvpx-vp9"),
        (["--preset", "slow", "--codec", "libvpx-vp9"], 2, "cpu-used"),
        (["--encoder-opt", "novalue"], 2, "KEY=VALUE"),
        (["--hwaccel", "cuda"], 69, "NVIDIA"),
    ],
)
def test_bad_encoder_settings(tmp_path, capsys, clips, model_file, extra, code, needle):
    if "--hwaccel" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    got, err = upscale([clips("vfr_mp4"), tmp_path / "o.mkv"], capsys, model_file, *extra)
    assert got == code, err
    assert needle in one_line_error(err)
    assert list(tmp_path.iterdir()) == []


def test_wrong_output_extension(tmp_path, capsys, clips, model_file):
    got, err = upscale([clips("vfr_mp4"), tmp_path / "o.avi2"], capsys, model_file)
    assert got == 2 and "container" in one_line_error(err)


# --------------------------------------------------------------------------- interruption


@pytest.mark.parametrize(
    "sig,last",
    [(signal.SIGINT, "vsr: error: interrupted by the user"), (signal.SIGTERM, "vsr: error: terminated by SIGTERM")],
)
def test_interrupt_exits_130_and_removes_the_partial_file(tmp_path, sig, last):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM once frames are being written."""
    src = media.make_clip(tmp_path / "long.mkv", size=(96, 64), frames=120, rate=Fraction(24))
    model = tmp_path / "slow.pth"
    torch.save({"params_ema": tiny_rrdb(num_feat=32, num_block=3, num_grow_ch=16).state_dict()}, model)
    out = tmp_path / "out" / "o.mkv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsr", "run", str(src), str(out), "--model", str(model), "--progress", "json", "--batch", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        # A test run started in the background of a shell (`.ci/run &`) inherits SIGINT ignored, and
        # Python then keeps it ignored: give vsr the default disposition a terminal would.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in proc.stdout:  # the first progress line comes before the output is open: wait for a written frame
        record = json.loads(line)
        assert record["event"] == "progress", record  # still running
        if record["done"] >= 1:
            break
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == last
    assert not out.exists() and list(out.parent.iterdir()) == []


# --------------------------------------------------------------------------- more sources and outputs


def test_gray_and_rgb_sources(tmp_path, capsys, model_file):
    gray = media.make_clip(tmp_path / "gray.mkv", vcodec="ffv1", pix_fmt="gray", size=(64, 48), frames=4, photo="coffee")
    rgb = media.make_clip(tmp_path / "rgb.mkv", vcodec="ffv1", pix_fmt="bgr0", size=(64, 48), frames=4, photo="coffee")
    for src in (gray, rgb):
        out = tmp_path / f"out_{src.stem}.mkv"
        code, err = upscale([src, out], capsys, model_file, "--codec", "ffv1")
        assert code == 0, err
        assert seconds(out) == seconds(src)
        assert video_props(out)["width"] == 256
    assert video_props(tmp_path / "out_gray.mkv")["pix_fmt"] == "gray"
    # RGB through the network comes back as RGB, close to the model run on FFmpeg's own RGB decode.
    model = load_model(model_file)
    src_rgb = [f.to_ndarray(format="rgb24") for f in media.decode_frames(rgb)]
    out_rgb = [f.to_ndarray(format="rgb24") for f in media.decode_frames(tmp_path / "out_rgb.mkv")]
    with torch.no_grad():
        for a, b in zip(src_rgb, out_rgb, strict=True):
            x = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255
            want = (model(x).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            assert psnr(b, want) > 45


def test_8_bit_source_to_10_bit_output(tmp_path, capsys, clips, model_file):
    src = clips("vfr_mp4")
    out = tmp_path / "out.mkv"
    code, err = upscale([src, out], capsys, model_file, "--pix-fmt", "yuv420p10le", "--crf", "12")
    assert code == 0, err
    assert video_props(out)["pix_fmt"] == "yuv420p10le"
    luma = media.planes(media.decode_frames(out)[0])[0]
    assert luma.dtype == np.uint16 and luma.max() <= 940 and np.mean(luma % 4 != 0) > 0.3


def test_attachments_metadata_and_dispositions_survive_in_mkv(tmp_path, capsys, clips, model_file):
    src = tmp_path / "with_font.mkv"
    base = clips("hevc10_opus_srt_mkv")
    with av.open(str(base)) as inp, av.open(str(src), "w") as out:
        mapping = {s.index: out.add_stream_from_template(s) for s in inp.streams}
        mapping[2].disposition = av.stream.Disposition.forced
        mapping[1].metadata["language"] = "fra"
        out.add_attachment("font.ttf", "font/ttf", b"\x00\x01\x00\x00 not really a font")
        for pkt in inp.demux():
            if pkt.size:
                pkt.stream = mapping[pkt.stream_index]
                out.mux(pkt)
    result = tmp_path / "out.mkv"
    code, err = upscale([src, result], capsys, model_file)
    assert code == 0, err
    with av.open(str(result)) as c:
        kinds = [s.type for s in c.streams]
        assert kinds == ["video", "audio", "subtitle", "attachment"]
        assert c.streams[1].metadata.get("language") == "fra"
        assert c.streams[2].disposition & av.stream.Disposition.forced
        assert c.streams[3].data == b"\x00\x01\x00\x00 not really a font"


def test_out_of_memory_retries_then_fails_with_75(tmp_path, caplog, clips, model_file):
    from helpers import LimitedMemoryEngine
    from vsr.errors import TransientError
    from vsr.pipeline import VideoJob, run_video

    src = clips("h264_aac_mp4")
    inner = TorchEngine(load_model(model_file), device=torch.device("cpu"))
    small = LimitedMemoryEngine(inner, max_pixels=2 * 48 * 48)
    out = tmp_path / "o.mkv"
    result = run_video(VideoJob(src, out), Upscaler(small, batch=2, overlap=4))
    assert result.frames == 8 and "retrying with tile" in caplog.text
    assert len(media.decode_frames(out)) == 8
    with pytest.raises(TransientError):
        run_video(VideoJob(src, tmp_path / "never.mkv"), Upscaler(LimitedMemoryEngine(inner, max_pixels=16), batch=2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mkv"]


def test_channel_bounds_frames_but_not_packets():
    import threading

    from vsr.stages import Channel

    stop = threading.Event()
    ch = Channel(2, stop)
    ch.put("f1", 1)
    ch.put("f2", 1)
    for i in range(100):
        ch.put(f"p{i}", 0)  # packets never block
    blocked = threading.Thread(target=ch.put, args=("f3", 1))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # a third frame waits for room
    assert ch.get() == "f1"
    blocked.join(2)
    assert not blocked.is_alive()
    ch.close()
    got = [ch.get() for _ in range(102)]
    assert got[0] == "f2" and got[-1] == "f3" and Channel.is_end(ch.get())


def test_groups_computed_on_several_threads_come_out_in_order():
    # OpenVINO's CPU streams let a run compute groups on several threads; the encoder must still
    # get them in decode order, whichever finishes first.
    import threading

    from vsr.video_compute import in_order

    made, started = [], []

    def make():
        made.append(threading.current_thread().name)

        def compute(group):
            started.append(group[0])
            time.sleep(0.03 if group[0] % 3 == 0 else 0.001)  # every third group finishes late
            return ("done", group[0], threading.current_thread().name)

        return compute

    out = list(in_order(([i, i] for i in range(12)), make, 3))
    assert [(r[1], n) for r, n in out] == [(i, 2) for i in range(12)]
    assert len(made) == 3 and all(name.startswith("vsr-compute") for name in made)  # one make() per thread
    assert len({r[2] for r, _ in out}) == 3

    # An error reaches the caller; groups not yet started are dropped, not computed.
    started.clear()

    def failing():
        def compute(group):
            started.append(group[0])
            if group[0] == 2:
                raise ValueError("group 2 failed")
            time.sleep(0.01)
            return group[0]

        return compute

    with pytest.raises(ValueError, match="group 2 failed"):
        list(in_order(([i] for i in range(50)), failing, 2))
    assert max(started) <= 2 + 2 + 1  # at most the workers' and one queued group past the failure


class _NamesCallers:
    """An engine wrapper that records which thread makes each call; with ``concurrent=False`` the
    pipeline sees an engine whose caps declare no ``concurrent()`` (every call from one thread)."""

    def __init__(self, inner, *, concurrent: bool):
        self.inner, self.spec, self.device, self.dtype = inner, inner.spec, inner.device, inner.dtype
        self.caps = replace(inner.caps, concurrent=inner.caps.concurrent and concurrent)
        self.concurrent = inner.concurrent
        self.callers: list[str] = []

    def __call__(self, x):
        self.callers.append(threading.current_thread().name)
        return self.inner(x)


@pytest.mark.parametrize("backend", ["openvino", "torch"])
def test_concurrent_compute_gives_the_frames_and_timestamps_of_one_thread(tmp_path, backend):
    # A CPU run on two compute threads (OpenVINO streams; torch with half its threads each)
    # against the same run on one: every frame in order at its timestamp, the audio packets, and
    # the same pictures (fp32; the two ways may sum in other orders, so within a code or so).
    from vsr.pipeline import VideoJob, run_video

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        if backend == "openvino":
            from vsr.engines.openvino_engine import OpenVinoEngine, no_telemetry  # our own module: an import error must fail

            with no_telemetry():  # importing OpenVINO reports itself unless told not to
                pytest.importorskip("openvino", reason='needs OpenVINO: pip install "vsr[openvino]"')

            engine = OpenVinoEngine(tiny_srvgg(seed=4), threads=2)
        else:
            engine = TorchEngine(tiny_srvgg(seed=4), device="cpu")
        src = media.make_clip(tmp_path / "src.mp4", frames=14, size=(40, 24), rate=Fraction(30000, 1001), audio="aac")
        outs, callers = {}, {}
        for calls in (1, 2):
            outs[calls] = tmp_path / f"calls{calls}.mkv"
            wrapped = _NamesCallers(engine, concurrent=calls == 2)
            run_video(VideoJob(src, outs[calls], video=VideoOptions(settings=EncodeSettings(options=(("qp", "0"),)))), Upscaler(wrapped, batch=1))
            callers[calls] = set(wrapped.callers)
        assert callers[1] == {threading.current_thread().name}
        assert len(callers[2]) == 2 and all(name.startswith("vsr-compute") for name in callers[2])
        if backend == "openvino":
            assert engine._streams is not None  # the second run computed on the streams' import
        engine.close()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    a, b = media.decode_frames(outs[1]), media.decode_frames(outs[2])
    assert len(a) == len(b) == 14
    assert [f.pts for f in a] == [f.pts for f in b]
    for fa, fb in zip(a, b, strict=True):
        assert psnr(media.planes(fa)[0], media.planes(fb)[0]) >= 50
    with av.open(str(outs[1])) as x, av.open(str(outs[2])) as y:
        pa = [(p.pts, bytes(p)) for p in x.demux(audio=0) if p.size]
        pb = [(p.pts, bytes(p)) for p in y.demux(audio=0) if p.size]
    assert pa == pb and len(pa) > 5
