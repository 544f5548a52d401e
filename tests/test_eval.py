"""`vsr eval` with the perceptual metrics: LPIPS, DISTS and NIQE per picture, tOF and the warping
error on videos, each beside bicubic; scoring another tool's pictures (--sr); which metrics run
when files are missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import media
from helpers import one_line_error, photo, run, tiny_srvgg
from vsr.media.image import read_image, write_image
from vsr.train.degrade import bicubic_downsample

SCALE = 4


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny_x4.pth"
    torch.save({"params_ema": tiny_srvgg(upscale=SCALE, seed=3).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> tuple[Path, Path]:
    """HR photographs (one big enough for NIQE, one not) and their LR made the way eval makes it."""
    root = tmp_path_factory.mktemp("pics")
    hr, lr = root / "hr", root / "lr"
    hr.mkdir(), lr.mkdir()
    for name, pixels in (("coffee.png", photo("coffee")[:160, :200]), ("rocket.png", photo("rocket")[200:272, 300:396])):
        write_image(hr / name, np.ascontiguousarray(pixels))
        small = bicubic_downsample(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1).float() / 255, SCALE)
        write_image(lr / name, (small.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    return hr, lr


def vsr_eval(capsys, *argv) -> dict:
    from vsr.cli import main

    code = main(["eval", *map(str, argv), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_perceptual_metrics_beside_psnr_for_the_model_and_bicubic(capsys, perceptual_home, pictures, model_file):
    hr, lr = pictures
    result = vsr_eval(capsys, hr, "--model", model_file)
    keys = {"psnr", "ssim", "lpips", "dists", "niqe"}
    assert keys | {f"bicubic_{k}" for k in keys} <= result["mean"].keys()
    rows = {r["name"]: r for r in result["images"]}
    assert rows["coffee.png"]["niqe"] > 0 and rows["rocket.png"]["niqe"] is None  # 96x72: no 96x96 block inside the border
    assert result["mean"]["niqe"] == rows["coffee.png"]["niqe"]  # the mean of the pictures that have one
    assert any("NIQE needs pictures of at least 104 pixels" in n for n in result["notes"])
    # Bicubic is far from the photograph in LPIPS and DISTS; a random network is farther still.
    for r in rows.values():
        assert 0 < r["bicubic_lpips"] < r["lpips"] and 0 < r["bicubic_dists"] < r["dists"]


def test_sr_scores_another_tools_pictures_exactly_as_the_models_own(capsys, perceptual_home, pictures, model_file, tmp_path):
    """`vsr run` writes the model's upscaled pictures (the pipeline, PNG files); `vsr eval --sr`
    scores them and must find what `vsr eval --model` finds by running the model inside."""
    hr, lr = pictures
    code, err = run(capsys, "run", lr, tmp_path / "sr", "--model", model_file, "--precision", "fp32", "--backend", "torch")
    assert code == 0, err
    own = vsr_eval(capsys, hr, "--model", model_file, "--lr-dir", lr)
    theirs = vsr_eval(capsys, hr, "--sr", tmp_path / "sr", "--scale", str(SCALE))
    assert theirs["model"] == f"pictures in {tmp_path / 'sr'}"
    for a, b in zip(own["images"], theirs["images"], strict=True):
        assert a["name"] == b["name"]
        for key in ("psnr", "ssim", "lpips", "dists"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
        assert (a["niqe"] is None) == (b["niqe"] is None)


def test_sr_pairs_by_name_and_size(capsys, pictures, tmp_path):
    hr, _ = pictures
    (tmp_path / "sr").mkdir()
    write_image(tmp_path / "sr" / "coffee.png", read_image(hr / "coffee.png"))
    code, err = run(capsys, "eval", hr, "--sr", tmp_path / "sr", "--metrics", "psnr")
    assert code == 66 and "no picture named like rocket.png" in one_line_error(err)
    write_image(tmp_path / "sr" / "rocket.png", read_image(hr / "rocket.png")[:40])
    code, err = run(capsys, "eval", hr, "--sr", tmp_path / "sr", "--metrics", "psnr")
    assert code == 65 and "give pictures of the HR size" in one_line_error(err)
    code, err = run(capsys, "eval", hr, "--sr", tmp_path / "sr", "--model", "x.pth")
    assert code == 2 and "not both" in one_line_error(err)


def test_a_video_gets_tof_and_the_warping_error(capsys, perceptual_home, model_file, tmp_path):
    clip = media.make_clip(tmp_path / "pan.mkv", vcodec="ffv1", size=(128, 96), frames=12, photo="astronaut")
    result = vsr_eval(capsys, clip, "--model", model_file, "--metrics", "psnr,ssim,lpips,tof,warp_error")
    mean = result["mean"]
    assert {"tof", "warp_error", "bicubic_tof", "bicubic_warp_error", "lpips"} <= mean.keys() and "dists" not in mean
    assert result["sequence"] == {"first": 0, "frames": 12}
    assert all(v >= 0 for k, v in mean.items() if "tof" in k or "warp" in k)
    # The clip scored against itself moves exactly as itself: tOF 0. (--sr with the HR video.)
    same = vsr_eval(capsys, clip, "--sr", clip, "--metrics", "lpips,tof")
    assert same["mean"]["tof"] == 0 and same["mean"]["lpips"] == 0
    short = media.make_clip(tmp_path / "short.mkv", vcodec="ffv1", size=(128, 96), frames=10, photo="astronaut")
    code, err = run(capsys, "eval", clip, "--sr", short)
    assert code == 65 and "frame for frame" in one_line_error(err)


def test_a_clip_too_short_for_a_sequence_metric(capsys, model_file, tmp_path):
    one = media.make_clip(tmp_path / "one.mkv", vcodec="ffv1", size=(64, 48), frames=1, photo="astronaut")
    code, err = run(capsys, "eval", one, "--model", model_file, "--metrics", "psnr,warp_error")
    assert code == 2 and "warp_error needs a video of at least 2 frames" in one_line_error(err)
    result = vsr_eval(capsys, one, "--model", model_file, "--metrics", "psnr")
    assert result["images"][0]["name"] == "one.mkv#0" and "sequence" not in result
    # Without --metrics, what the clip allows is measured and the rest is named.
    from vsr.cli import main

    four = media.make_clip(tmp_path / "four.mkv", vcodec="ffv1", size=(64, 48), frames=4, photo="astronaut")
    assert main(["eval", str(four), "--model", str(model_file), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "warp_error" in result["mean"] and "tof" not in result["mean"]
    assert any("tof not measured" in n for n in result["notes"]) and result["sequence"]["frames"] == 4


def test_metrics_that_cannot_run_are_named(capsys, pictures, tmp_path, monkeypatch):
    hr, _ = pictures
    monkeypatch.setenv("VSR_HOME", str(tmp_path / "empty_home"))  # no perceptual files here
    code, err = run(capsys, "eval", hr, "--sr", hr, "--metrics", "lpips")
    assert code == 69 and "vsr models fetch perceptual" in one_line_error(err)
    code, err = run(capsys, "eval", hr, "--sr", hr, "--metrics", "tof")
    assert code == 2 and "give a video" in one_line_error(err)
    code, err = run(capsys, "eval", hr, "--sr", hr, "--metrics", "psnr,sharpness")
    assert code == 2 and "sharpness is not a metric" in one_line_error(err)
    # Without --metrics: what can run, and a note on the rest (PSNR of identical pictures is infinite).
    from vsr.cli import main

    assert main(["eval", str(hr), "--sr", str(hr), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "lpips" not in result["mean"] and any("vsr models fetch perceptual" in n for n in result["notes"])


def test_no_reference_upscales_the_pictures_themselves_and_scores_niqe(capsys, perceptual_home, pictures, model_file, tmp_path):
    """--no-reference: the pictures are the inputs (no ground truth). `vsr eval --model` must find
    the NIQE that `vsr eval --sr` finds on the PNGs `vsr run` wrote from the same inputs."""
    _, lr = pictures  # 50x40 and 24x18 inputs: 200x160 and 96x72 upscaled
    own = vsr_eval(capsys, lr, "--model", model_file, "--no-reference")
    assert own["reference"] is False and "channel" not in own
    assert set(own["mean"]) == {"niqe", "bicubic_niqe"}  # nothing that needs a ground truth
    rows = {r["name"]: r for r in own["images"]}
    assert (rows["coffee.png"]["width"], rows["coffee.png"]["height"]) == (200, 160)
    assert rows["coffee.png"]["niqe"] > 0 and rows["rocket.png"]["niqe"] is None  # 96x72: no block inside the border
    code, err = run(capsys, "run", lr, tmp_path / "sr", "--model", model_file, "--precision", "fp32", "--backend", "torch")
    assert code == 0, err
    theirs = vsr_eval(capsys, lr, "--sr", tmp_path / "sr", "--scale", str(SCALE), "--no-reference")
    for a, b in zip(own["images"], theirs["images"], strict=True):
        assert a["name"] == b["name"] and a["bicubic_niqe"] == b["bicubic_niqe"]
        assert a["niqe"] == pytest.approx(b["niqe"], abs=1e-6) if a["niqe"] is not None else b["niqe"] is None
    # The terminal table says what was measured.
    from vsr.cli import main

    assert main(["eval", str(lr), "--model", str(model_file), "--no-reference"]) == 0
    assert "no reference: the pictures are the inputs" in capsys.readouterr().out


def test_no_reference_on_a_video_measures_the_warping_error_along_the_inputs_motion(capsys, perceptual_home, model_file, tmp_path):
    pan = media.make_clip(tmp_path / "pan.mkv", vcodec="ffv1", size=(64, 48), frames=8, photo="astronaut")
    result = vsr_eval(capsys, pan, "--model", model_file, "--no-reference")
    assert set(result["mean"]) == {"niqe", "bicubic_niqe", "warp_error", "bicubic_warp_error"}
    assert result["sequence"] == {"first": 0, "frames": 8} and result["images"][0]["width"] == 256
    assert result["mean"]["warp_error"] > 0
    # A held photograph: every upscaled frame is the same, so nothing moves against the input's motion.
    held = np.repeat(media.camera_frames("astronaut", (64, 48), 1), 4, axis=0)
    still = media.make_clip(tmp_path / "still.mkv", vcodec="ffv1", size=(64, 48), frames=4, rgb=held)
    assert vsr_eval(capsys, still, "--model", model_file, "--no-reference", "--metrics", "warp_error")["mean"]["warp_error"] == 0


def test_no_reference_refuses_what_needs_a_ground_truth(capsys, pictures, model_file, tmp_path):
    hr, lr = pictures
    code, err = run(capsys, "eval", lr, "--model", model_file, "--no-reference", "--metrics", "lpips")
    assert code == 2 and "--metrics lpips compares with a ground truth" in one_line_error(err)
    code, err = run(capsys, "eval", hr, "--model", model_file, "--no-reference", "--lr-dir", lr)
    assert code == 2 and "--lr-dir pairs LR pictures with HR ones" in one_line_error(err)
    code, err = run(capsys, "eval", lr, "--sr", hr, "--scale", "2", "--no-reference", "--metrics", "niqe")  # HR is x4 of LR
    assert code == 65 and "its input upscaled x2 is" in one_line_error(err)
