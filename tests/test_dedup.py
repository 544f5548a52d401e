"""``--dedup off|exact|auto``: a repeated picture is computed once, and nothing else changes.

The clips are real x264 encodes (scripts/media.py) of photographs held on twos and threes, a
slow pan and a fade on twos, a blinking eye, a slideshow and live action with grain, so held
pictures are not bit-identical after decoding. Outputs are lossless (x264 qp 0): what a test sees
is what the pipeline computed. Every run is compared with an ``off`` run of the same clip: frame
count, timestamps and audio packets must be the same, every frame at least 45 dB from ``off``'s,
and the frames that change the picture (a new drawing, a blink) must never be held.
"""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

import media
from benchlib import held_pairs_warp_error
from helpers import one_line_error, psnr, run, tiny_srvgg
from vsr.color import Colour
from vsr.dedup import AUTO, Detector, Thresholds, difference
from vsr.frame import Frame
from vsr.media.encode import EncodeSettings
from vsr.media.options import VideoOptions
from vsr.media.trim import Trim
from vsr.pipeline import VideoJob, run_video
from vsr.upscale import Upscaler

LOSSLESS = EncodeSettings(crf=0)


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    from vsr.engines import TorchEngine

    return Upscaler(TorchEngine(tiny_srvgg(), device=torch.device("cpu"), dtype=torch.float32), batch=2)


@pytest.fixture(scope="module")
def animation(tmp_path_factory):
    """(clip, drawing number of each frame): x264 crf 20, 24 fps, with AAC audio."""
    rgb, ids = media.animation_frames((96, 64))
    path = media.make_clip(tmp_path_factory.mktemp("anim") / "anim.mp4", rgb=rgb, frames=len(rgb), size=(96, 64), rate=24,
                           options={"crf": "20"}, audio="aac")
    return path, ids


@pytest.fixture(scope="module")
def runs(tmp_path_factory, animation, upscaler):
    """The animation through each mode: mode -> (RunResult, decoded RGB frames, output path)."""
    folder = tmp_path_factory.mktemp("runs")
    out = {}
    for mode in ("off", "exact", "auto"):
        target = folder / f"{mode}.mkv"
        result = run_video(VideoJob(animation[0], target, video=VideoOptions(settings=LOSSLESS, dedup=mode)), upscaler)
        out[mode] = (result, [f.to_ndarray(format="rgb24") for f in media.decode_frames(target)], target)
    return out


# --------------------------------------------------------------------------- the comparison


def planes(*values: np.ndarray) -> list[torch.Tensor]:
    return [torch.from_numpy(v) for v in values]


def test_difference_sees_a_small_local_change_that_the_mean_hides():
    from helpers import crop

    rgb = crop("chelsea", 60, 130, 64, 96)
    y = np.ascontiguousarray(rgb[..., 1])
    u = np.ascontiguousarray(rgb[::2, ::2, 2])
    eye = y.copy()
    eye[20:24, 40:45] = np.clip(eye[20:24, 40:45].astype(int) - 60, 0, 255)  # 20 of 6144 pixels: an eye that closes
    same = difference(planes(y, u, u), planes(y.copy(), u, u), bits=8, block_size=8)
    local = difference(planes(y, u, u), planes(eye, u, u), bits=8, block_size=8)
    assert same.identical and same.within(AUTO)
    assert not local.identical and local.mean < AUTO.mean  # the whole frame barely changed ...
    assert local.block > AUTO.block and not local.within(AUTO)  # ... but one block did


def test_auto_tells_coding_noise_from_a_camera_that_barely_moves():
    from helpers import crop

    y = np.ascontiguousarray(crop("astronaut", 100, 180, 64, 96)[..., 1])
    u = np.full((32, 48), 128, dtype=np.uint8)
    # A held picture after an inter-coded encode: most macroblocks skipped (bit-identical), two
    # re-coded with a little noise.
    recoded = y.astype(int)
    recoded[0:16, 0:16] += np.random.default_rng(2).integers(-2, 3, (16, 16))
    recoded[32:48, 48:64] += 1
    held = difference(planes(y, u, u), planes(np.clip(recoded, 0, 255).astype(np.uint8), u, u), bits=8, block_size=8)
    # The same small numbers, but everywhere: a camera that moved a hundredth of a pixel.
    moved = np.clip(y.astype(int) + (np.indices(y.shape).sum(axis=0) % 2), 0, 255).astype(np.uint8)
    drift = difference(planes(y, u, u), planes(moved, u, u), bits=8, block_size=8)
    assert held.mean < AUTO.mean and held.block < AUTO.block and held.unchanged >= AUTO.unchanged and held.within(AUTO)
    assert drift.mean < AUTO.mean and drift.block < AUTO.block and drift.unchanged == 0.0 and not drift.within(AUTO)


def test_difference_counts_ten_bit_codes_in_eight_bit_units():
    y = np.full((16, 16), 512, dtype=np.uint16)
    off_by_four = (y + 4).astype(np.uint16)  # 4 ten-bit codes = 1 eight-bit code
    d = difference([torch.from_numpy(y.astype(np.int32))], [torch.from_numpy(off_by_four.astype(np.int32))], bits=10, block_size=8)
    assert d.mean == pytest.approx(1.0) and d.block == pytest.approx(1.0)


BT709 = Colour("bt709", False, 1, 1, 1, 1)


def _frame(y: np.ndarray, index: int, pix_fmt: str = "yuv420p") -> Frame:
    uv = np.full((y.shape[0] // 2, y.shape[1] // 2), 128, dtype=np.uint8)
    return Frame(index=index, planes=[y, uv, uv], pix_fmt=pix_fmt, pts=index, time_base=Fraction(1, 24), width=y.shape[1], height=y.shape[0], colour=BT709)


def test_the_reference_is_the_last_computed_frame_not_the_previous_one():
    # A slow fade: each frame is 0.3 codes darker than the one before, within `auto`'s mean
    # threshold, but the fade adds up; compared with the previous frame it would be held forever.
    base = np.full((32, 32), 200, dtype=np.uint8)
    noise = np.random.default_rng(1).random((32, 32))
    frames = [_frame(np.clip(base - 0.3 * k + noise, 0, 255).astype(np.uint8), k) for k in range(12)]
    detector = Detector("auto", torch.device("cpu"), Thresholds(mean=0.5, block=2.0, block_size=8, unchanged=0.0, max_reuse=100))
    held = [detector.is_repeat(f) for f in frames]
    assert held[0] is False and 0 < sum(held) < len(held) - 1  # some held, and recomputed as the fade adds up
    computed = [f for f, h in zip(frames, held, strict=True) if not h]
    for a, b in zip(computed, computed[1:]):  # consecutive computed frames are apart by more than the threshold
        assert np.abs(a.planes[0].astype(int) - b.planes[0].astype(int)).mean() > 0.5 - 1e-9


def test_auto_recomputes_after_the_reuse_cap_but_exact_never_needs_to():
    still = np.full((16, 16), 90, dtype=np.uint8)
    frames = [_frame(still, k) for k in range(10)]
    capped = Detector("auto", torch.device("cpu"), Thresholds(mean=0.5, block=2.0, block_size=8, unchanged=0.0, max_reuse=3))
    assert [capped.is_repeat(f) for f in frames] == [False, True, True, True, False, True, True, True, False, True]
    exact = Detector("exact", torch.device("cpu"))
    assert [exact.is_repeat(f) for f in frames] == [False] + [True] * 9
    assert exact.reused == 9


def test_a_change_of_format_is_never_a_repeat():
    y = np.full((16, 16), 90, dtype=np.uint8)
    detector = Detector("exact", torch.device("cpu"))
    assert detector.is_repeat(_frame(y, 0)) is False
    assert detector.is_repeat(_frame(y, 1, "yuvj420p")) is False


# --------------------------------------------------------------------------- whole runs


def test_every_frame_timestamp_and_audio_packet_is_kept(runs, animation):
    off_pts = media.video_pts(runs["off"][2])
    off_audio = media.packets(runs["off"][2], "audio")
    for mode in ("exact", "auto"):
        result, frames, path = runs[mode]
        assert result.frames == len(frames) == len(animation[1]) == 60
        assert media.video_pts(path) == off_pts
        assert media.packets(path, "audio") == off_audio


def test_auto_holds_the_held_drawings_and_never_a_new_picture(runs, animation):
    ids = animation[1]
    off, auto = runs["off"][1], runs["auto"][1]
    repeats = sum(a == b for a, b in zip(ids, ids[1:]))  # 32 frames repeat the drawing before them
    result = runs["auto"][0]
    assert result.reused >= repeats - 4, f"auto reused {result.reused} of {repeats} held frames"
    for i in range(1, len(ids)):
        same_output = np.array_equal(auto[i], auto[i - 1])
        if ids[i] != ids[i - 1]:  # a new drawing, a pan step, a fade step, the eye opening or closing
            assert not same_output, f"frame {i} changes the picture but its output was held"
    for i, (a, b) in enumerate(zip(auto, off, strict=True)):  # a held frame is close to what would have been computed
        assert psnr(a, b) >= 45.0, f"frame {i}: {psnr(a, b):.1f} dB from the off run"


def test_exact_reuses_only_bit_identical_pictures_and_changes_nothing(runs):
    result, frames, _ = runs["exact"]
    assert 0 < result.reused <= runs["auto"][0].reused
    for i, (a, b) in enumerate(zip(frames, runs["off"][1], strict=True)):
        assert psnr(a, b) >= 60.0, f"frame {i}"  # the same network on the same picture (float rounding of other batches aside)


def test_held_drawings_do_not_boil(runs, animation):
    # While a drawing is held, the network turns its coding noise into texture that changes from
    # frame to frame; reusing the computed output keeps the held drawing still.
    pytest.importorskip("cv2", reason="the flow-warping error needs OpenCV: pip install 'vsr[metrics]'")
    off = held_pairs_warp_error(runs["off"][1], animation[1])
    auto = held_pairs_warp_error(runs["auto"][1], animation[1])
    assert off > 0 and auto < off / 4, (off, auto)


def test_live_action_is_left_alone(tmp_path, upscaler):
    rgb = media.live_frames((96, 64), frames=24)
    src = media.make_clip(tmp_path / "live.mp4", rgb=rgb, frames=len(rgb), size=(96, 64), rate=24, options={"crf": "20"})
    outputs = {}
    for mode in ("off", "auto"):
        result = run_video(VideoJob(src, tmp_path / f"{mode}.mkv", video=VideoOptions(settings=LOSSLESS, dedup=mode)), upscaler)
        outputs[mode] = (result.reused, [f.to_ndarray(format="rgb24") for f in media.decode_frames(tmp_path / f"{mode}.mkv")])
    reused, frames = outputs["auto"]
    assert reused <= 2  # a camera that moves in every frame has almost nothing to hold
    for a, b in zip(frames, outputs["off"][1], strict=True):
        assert np.array_equal(a, b) or psnr(a, b) >= 50.0


def test_dedup_with_a_trim_keeps_the_trimmed_frames(tmp_path, animation, upscaler):
    trim = Trim(start=Fraction(1, 2), frames=20)
    counts = {}
    for mode in ("off", "auto"):
        target = tmp_path / f"{mode}.mkv"
        counts[mode] = (run_video(VideoJob(animation[0], target, video=VideoOptions(settings=LOSSLESS, trim=trim, dedup=mode)), upscaler).frames,
                        media.video_pts(target))
    assert counts["auto"] == counts["off"] and counts["off"][0] == 20


@pytest.mark.parametrize("threads", [1, 2])
def test_two_compute_threads_give_the_same_video(tmp_path, animation, upscaler, runs, threads):
    # torch eager on the CPU with 2+ threads computes groups on two threads (in order); repeats ride
    # in the groups and are written from the last computed frame, whichever thread computed it.
    from vsr.runtime import torch_threads

    target = tmp_path / "t.mkv"
    with torch_threads(threads):
        result = run_video(VideoJob(animation[0], target, video=VideoOptions(settings=LOSSLESS, dedup="auto")), upscaler)
    frames = [f.to_ndarray(format="rgb24") for f in media.decode_frames(target)]
    assert result.reused == runs["auto"][0].reused
    for i, (a, b) in enumerate(zip(frames, runs["auto"][1], strict=True)):
        assert psnr(a, b) >= 60.0, f"frame {i}"


def test_deinterlaced_frames_are_compared_after_deinterlacing(tmp_path, upscaler):
    src = media.interlaced_mkv(tmp_path)
    counts = {}
    for mode in ("off", "auto"):
        target = tmp_path / f"{mode}.mkv"
        result = run_video(VideoJob(src, target, video=VideoOptions(settings=LOSSLESS, dedup=mode)), upscaler)
        counts[mode] = (result.frames, media.video_pts(target))
    assert counts["auto"] == counts["off"]


def test_batch_segments_recompute_at_each_boundary(tmp_path, animation, fast_model):
    from vsr.batch.run import run_batch
    from vsr.compute import ComputeSpec

    src_dir = tmp_path / "in"
    src_dir.mkdir()
    (src_dir / "anim.mp4").write_bytes(animation[0].read_bytes())
    spec = ComputeSpec(model=str(fast_model), device="cpu", precision="fp32", backend="torch")
    summary = run_batch([src_dir], tmp_path / "out", make_upscaler=spec, video=VideoOptions(settings=LOSSLESS, dedup="auto"), segment_frames=20)
    assert summary.exit_code == 0
    whole = run_video(VideoJob(animation[0], tmp_path / "whole.mp4", video=VideoOptions(settings=LOSSLESS, dedup="auto")), spec())
    joined = tmp_path / "out" / "anim.mp4"
    assert media.video_pts(joined) == media.video_pts(tmp_path / "whole.mp4")
    assert len(media.decode_frames(joined)) == whole.frames == 60


def test_the_cli_reports_reused_frames(tmp_path, capsys, animation, fast_model):
    from vsr.cli import main

    out = tmp_path / "o.mkv"
    code = main([str(a) for a in ("run", animation[0], out, "--model", fast_model, "--backend", "torch", "--precision", "fp32", "--dedup", "auto", "--progress", "json", "-v")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    done = json.loads(captured.out.splitlines()[-1])
    assert done["event"] == "done" and done["frames"] == 60 and done["reused"] >= 28
    assert f"--dedup auto: {done['reused']} of 60 frames reused" in captured.err
    code, err = run(capsys, "run", animation[0], tmp_path / "q.mkv", "--model", fast_model, "--backend", "torch", "--precision", "fp32", "--dedup", "off", "-v")
    assert code == 0 and "frames reused" not in err and "(0 reused)" not in err


def test_dedup_on_an_image_or_an_unknown_mode_is_a_usage_error(tmp_path, capsys, fast_model):
    from PIL import Image

    picture = tmp_path / "p.png"
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(picture)
    code, err = run(capsys, "run", picture, tmp_path / "o.png", "--model", fast_model, "--dedup", "exact")
    assert code == 2 and "--dedup" in one_line_error(err) and not (tmp_path / "o.png").exists()
    code, err = run(capsys, "run", picture, tmp_path / "o.mkv", "--dedup", "sometimes")
    assert code == 2 and "--dedup" in one_line_error(err) and "sometimes" in err
