"""``vsr run`` on images, in-process through ``main(argv)``: results, formats, errors, exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import crop, leftovers, one_line_error, psnr, run, tiny_rrdb, tiny_srvgg
from vsr.cli import main
from vsr.media.image import read_image, write_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def small_model(tmp_path) -> Path:
    """A random SRVGG x4 checkpoint: fast, for everything where the weights are not the point."""
    path = tmp_path / "tiny_x4.pth"
    torch.save({"params_ema": tiny_srvgg(upscale=4).state_dict()}, path)
    return path


def _downscale(img: np.ndarray, factor: int) -> np.ndarray:
    h, w, c = img.shape
    return img.reshape(h // factor, factor, w // factor, factor, c).astype(np.float64).mean(axis=(1, 3))


@pytest.mark.slow
def test_photo_with_the_default_model_is_a_sharp_4x(tmp_path, capsys):
    src = tmp_path / "photo.png"
    write_image(src, crop("chelsea", 60, 130, 48, 64))
    code, err = run(capsys, "run", src, tmp_path / "big.png")
    assert code == 0, err
    big = read_image(tmp_path / "big.png")
    assert big.shape == (192, 256, 3) and big.dtype == np.uint8
    small = read_image(src)
    # Faithful: shrinking the result gives the input back closely ...
    assert psnr(_downscale(big, 4), small) > 28
    # ... and sharp: more fine detail than bicubic upscaling of the same input.
    bicubic = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None].float(), scale_factor=4, mode="bicubic")[0].permute(1, 2, 0).numpy()

    def detail(img):
        g = img.astype(np.float64).mean(axis=2)
        return np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()

    assert detail(big) > 1.2 * detail(bicubic)
    assert leftovers(tmp_path) == []


def test_the_readme_sample_exists_and_is_a_real_photo():
    sample = read_image(REPO / "samples" / "chelsea.png")
    assert sample.shape == (96, 128, 3) and sample.std() > 20


@pytest.mark.parametrize("ext", ["png", "jpg", "webp", "tif"])
def test_formats(tmp_path, capsys, small_model, ext):
    src = tmp_path / f"in.{ext}"
    write_image(src, crop("astronaut", 30, 200, 20, 28))
    code, err = run(capsys, "run", src, tmp_path / f"out.{ext}", "--model", small_model)
    assert code == 0, err
    assert read_image(tmp_path / f"out.{ext}").shape == (80, 112, 3)


def test_grayscale_stays_gray(tmp_path, capsys, small_model):
    write_image(tmp_path / "g.png", crop("camera", 100, 100, 24, 20))
    code, err = run(capsys, "run", tmp_path / "g.png", tmp_path / "g4.png", "--model", small_model)
    assert code == 0, err
    out = read_image(tmp_path / "g4.png")
    assert out.shape == (96, 80, 1)


def test_alpha_is_upscaled(tmp_path, capsys, small_model):
    rgb = crop("rocket", 100, 200, 32, 32)
    yy, xx = np.mgrid[:32, :32]
    alpha = np.where((yy - 16) ** 2 + (xx - 16) ** 2 < 100, 255, 0).astype(np.uint8)[..., None]
    write_image(tmp_path / "a.png", np.concatenate([rgb, alpha], axis=2))
    for mode in ("model", "resize"):
        out_path = tmp_path / f"a_{mode}.png"
        code, err = run(capsys, "run", tmp_path / "a.png", out_path, "--model", small_model, "--alpha", mode)
        assert code == 0, err
        out = read_image(out_path)
        assert out.shape == (128, 128, 4)
        # The disc is still there, four times larger.
        assert np.abs(_downscale(out[..., 3:], 4)[..., 0] - alpha[..., 0]).mean() < 25
        assert out[64, 64, 3] > 200 and out[2, 2, 3] < 50


def test_16_bit_png_stays_16_bit(tmp_path, capsys, small_model):
    rgb16 = crop("coffee", 150, 150, 20, 24).astype(np.uint16) * 257 + np.arange(24, dtype=np.uint16)[None, :, None]
    write_image(tmp_path / "deep.png", rgb16)
    code, err = run(capsys, "run", tmp_path / "deep.png", tmp_path / "deep4.png", "--model", small_model)
    assert code == 0, err
    out = read_image(tmp_path / "deep4.png")
    assert out.dtype == np.uint16 and out.shape == (80, 96, 3)
    # Real 16-bit values, not 8-bit ones scaled up.
    assert np.count_nonzero(out % 257) > out.size // 2


def test_outscale_resamples_after_the_model(tmp_path, capsys, small_model):
    write_image(tmp_path / "i.png", crop("chelsea", 0, 0, 30, 40))
    code, err = run(capsys, "run", tmp_path / "i.png", tmp_path / "o.png", "--model", small_model, "--outscale", "2.5")
    assert code == 0, err
    assert read_image(tmp_path / "o.png").shape == (75, 100, 3)


def test_tiles_precision_and_device_flags(tmp_path, capsys, small_model):
    src = tmp_path / "i.png"
    write_image(src, crop("astronaut", 0, 0, 40, 44))
    ref_path = tmp_path / "ref.png"
    assert run(capsys, "run", src, ref_path, "--model", small_model, "--device", "cpu")[0] == 0
    ref = read_image(ref_path)
    for extra in (["--tile", "16", "--tile-overlap", "4", "--batch", "3"], ["--precision", "bf16"], ["--fp16"]):
        out = tmp_path / f"o{len(extra)}{extra[0]}.png"
        code, err = run(capsys, "run", src, out, "--model", small_model, *extra)
        assert code == 0, err
        assert psnr(read_image(out), ref) > 30, extra


def test_folder_in_folder_out(tmp_path, capsys, small_model):
    src = tmp_path / "frames"
    src.mkdir()
    write_image(src / "a.png", crop("chelsea", 0, 0, 16, 16))
    write_image(src / "b.jpg", crop("coffee", 0, 0, 16, 20))
    write_image(src / "c.tif", crop("rocket", 0, 0, 12, 16).astype(np.uint16) * 257)
    (src / "notes.txt").write_text("not an image")
    code, err = run(capsys, "run", src, tmp_path / "up", "--model", small_model)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == ["a.png", "b.jpg", "c.tif"]
    assert read_image(tmp_path / "up" / "c.tif").dtype == np.uint16
    # Existing outputs are refused as a whole before any work, then replaced with --overwrite.
    before = (tmp_path / "up" / "a.png").stat().st_mtime_ns
    code, err = run(capsys, "run", src, tmp_path / "up", "--model", small_model)
    assert code == 73 and "and 2 more" in one_line_error(err)
    assert (tmp_path / "up" / "a.png").stat().st_mtime_ns == before
    assert run(capsys, "run", src, tmp_path / "up", "--model", small_model, "--overwrite")[0] == 0


def test_a_bad_image_in_a_folder_does_not_stop_the_others(tmp_path, capsys, small_model):
    src = tmp_path / "frames"
    src.mkdir()
    write_image(src / "good.png", crop("chelsea", 0, 0, 16, 16))
    (src / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    code, err = run(capsys, "run", src, tmp_path / "up", "--model", small_model)
    assert code == 65
    assert "1 of 2 images failed" in err.splitlines()[-1]
    assert sorted(p.name for p in (tmp_path / "up").iterdir()) == ["good.png"]


def test_file_into_an_existing_folder(tmp_path, capsys, small_model):
    write_image(tmp_path / "i.png", crop("chelsea", 0, 0, 16, 16))
    (tmp_path / "out").mkdir()
    assert run(capsys, "run", tmp_path / "i.png", tmp_path / "out", "--model", small_model)[0] == 0
    assert (tmp_path / "out" / "i.png").exists()


def test_interpolated_and_foreign_checkpoints_run(tmp_path, capsys):
    # An old-ESRGAN-layout x2 file with odd hyper-parameters is a valid --model.
    from helpers import to_old_arch

    model = tiny_rrdb(scale=2, num_upsample=1, num_feat=16, num_block=2, num_grow_ch=8)
    torch.save(to_old_arch(model.state_dict(), 1), tmp_path / "2x_old.pth")
    write_image(tmp_path / "i.png", crop("coffee", 0, 0, 15, 17))
    code, err = run(capsys, "run", tmp_path / "i.png", tmp_path / "o.png", "--model", tmp_path / "2x_old.pth")
    assert code == 0, err
    assert read_image(tmp_path / "o.png").shape == (30, 34, 3)


# --------------------------------------------------------------------------- errors


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "in.png"
    write_image(path, crop("chelsea", 0, 0, 16, 16))
    return path


@pytest.mark.parametrize(
    "argv,code,needle",
    [
        (["{d}/missing.png", "{d}/o.png"], 66, "does not exist"),
        (["{d}/notes.txt", "{d}/o.png"], 65, "not an image"),
        (["{d}/broken.png", "{d}/o.png"], 65, "not a readable image"),
        (["{d}/empty.png", "{d}/o.png"], 65, "empty"),
        (["{d}/in.png", "{d}/o.png", "--model", "no-such-model"], 66, "vsr models"),
        (["{d}/in.png", "{d}/o.png", "--model", "{d}/notes.txt"], 65, "not a readable"),
        (["{d}/in.png", "{d}/o.png", "--device", "cuda:0"], 69, "GPU"),
        (["{d}/in.png", "{d}/o.png", "--device", "tpu"], 2, "--device"),
        (["{d}/in.png", "{d}/o.png", "--tile", "32", "--tile-overlap", "32"], 2, "smaller than --tile"),
        (["{d}/in.png", "{d}/o.png", "--outscale", "-1"], 2, "outscale"),
        (["{d}/in.png", "{d}/o.png", "--fp16", "--precision", "bf16"], 2, "contradicts"),
        (["{d}/in.png", "{d}/o.png", "--precision", "fp8"], 2, "precision"),
        (["{d}/in.png", "{d}/o.mp4"], 2, "no image extension"),
        (["{d}/in.png", "{d}/exists.png"], 73, "--overwrite"),
        (["{d}/in.png", "{d}/in.png", "--overwrite"], 73, "is the input"),
        (["{d}/in.png", "{d}/exists.png/o.png"], 73, "is a file"),
        (["{d}", "{d}/out.png"], 2, "give a folder"),
        (["{d}/rgba.png", "{d}/o.jpg"], 2, "alpha"),
        (["{d}", "{d}"], 73, "input folder"),
        (["{d}/emptydir", "{d}/o"], 65, "holds no images"),
    ],
)
def test_bad_inputs_get_one_line_and_their_exit_code(tmp_path, capsys, image, small_model, argv, code, needle):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.png").write_bytes(image.read_bytes()[:60])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "emptydir").mkdir()
    write_image(tmp_path / "exists.png", crop("coffee", 0, 0, 8, 8))
    write_image(tmp_path / "rgba.png", np.zeros((8, 8, 4), np.uint8))
    args = [a.format(d=tmp_path) for a in argv]
    if "--model" not in args:
        args += ["--model", str(small_model)]
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    got, err = run(capsys, "run", *args)
    assert got == code, err
    assert needle in one_line_error(err)
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert after == before  # nothing written, nothing the user had was touched


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VSR_DEBUG", "1")
    code, err = run(capsys, "run", tmp_path / "missing.png", tmp_path / "o.png")
    assert code == 66 and "Traceback" in err and err.strip().endswith("does not exist")


def test_json_logs(tmp_path, capsys, image, small_model):
    import json

    code, err = run(capsys, "run", image, tmp_path / "o.png", "--model", small_model, "-v", "--log-format", "json")
    assert code == 0
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all({"level", "message", "logger"} <= r.keys() for r in records)


def test_no_command_and_version(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "vsr 0.1.0" in capsys.readouterr().out


def test_console_script_and_module_entry_points(tmp_path, image, small_model):
    env = {**os.environ, "VSR_HOME": os.environ["VSR_HOME"]}
    for cmd in ([shutil.which("vsr") or "vsr"], [sys.executable, "-m", "vsr"]):
        proc = subprocess.run([*cmd, "run", str(image), str(tmp_path / f"o{len(cmd)}.png"), "--model", str(small_model)], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        proc = subprocess.run([*cmd, "run", str(tmp_path / "nope.png"), str(tmp_path / "x.png")], env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 66 and proc.stderr.count("\n") == 1
