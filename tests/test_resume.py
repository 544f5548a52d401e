"""``vsr run`` checkpoints a long video as it goes (vsr/resume.py): killed with SIGKILL at about
70 %, the same command computes only the frames after the last finished piece, and the output is
an uninterrupted run's (frames, timestamps, pixels with lossless x264, audio packets); with a
trim, with a VFR source, and with an interlaced animation deinterlaced and deduplicated too. A
Ctrl-C keeps the finished pieces and no temporary file; so does a full disk (a real one: a small
tmpfs), and once space is freed the same command continues. A changed option or ``--no-resume``
starts over, and says why.

The network calls of the second run are counted on the real Upscaler (``Upscaler.__call__``
wrapped, the computation unchanged)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import media
from helpers import leftovers
from vsr.batch.segments import piece_status
from vsr.cli import main
from vsr.files import read_sidecar
from vsr.resume import checkpoint_folder
from vsr.upscale import Upscaler

FRAMES = 48
EVERY = 8  # frames per checkpoint in these tests
LOSSLESS = ("--encoder-opt", "qp=0")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """48 frames at 24 fps, a keyframe every 12, AAC audio and chapters."""
    folder = tmp_path_factory.mktemp("clip")
    return media.make_clip(folder / "film.mkv", size=(96, 64), frames=FRAMES, rate=Fraction(24), audio="aac", chapters=True,
                           photo=["astronaut", "rocket"], options={"g": "12"})


@pytest.fixture(scope="module")
def vfr_clip(tmp_path_factory) -> Path:
    """48 frames at irregular times (gaps of 1 to 5 thirtieths of a second), AAC audio, in MP4."""
    gaps = [1, 1, 3, 1, 2, 5, 1, 2, 1]
    pts = [sum(gaps[i % len(gaps)] for i in range(n)) * 3000 for n in range(FRAMES)]
    folder = tmp_path_factory.mktemp("vfr")
    return media.make_clip(folder / "vfr.mp4", size=(96, 64), frames=FRAMES, rate=Fraction(30), pts=pts, time_base=Fraction(1, 90000),
                           audio="aac", photo="rocket", options={"g": "12"})


@pytest.fixture(scope="module")
def animation(tmp_path_factory) -> Path:
    """The 60-frame animation of scripts/media.py (drawings held on twos and threes, a pan, a fade,
    a blink), x264 crf 20 with a keyframe every 12 frames, AAC audio: what ``--dedup auto`` holds."""
    rgb, _ = media.animation_frames((96, 64))
    return media.make_clip(tmp_path_factory.mktemp("anim") / "anim.mkv", rgb=rgb, frames=len(rgb), size=(96, 64), rate=24,
                           audio="aac", options={"crf": "20", "g": "12"})


@pytest.fixture(scope="module")
def interlaced(tmp_path_factory) -> Path:
    """48 frames of a pan woven from fields 1/50 s apart (real combing), flagged and coded
    interlaced top field first, a keyframe every 12 frames, AAC audio."""
    return media.make_clip(tmp_path_factory.mktemp("interlaced") / "tff.mkv", size=(96, 64), frames=FRAMES, rate=25, photo="rocket",
                           moves=[((0.15, 0.55, 0.35), (0.75, 0.55, 0.35))], interlaced="tff", audio="aac", options={"g": "12"})


class Counted:
    """Frames the network is asked to upscale in this process (the real Upscaler, counted)."""

    def __init__(self, monkeypatch):
        self.frames = 0
        inner = Upscaler.__call__

        def counting(upscaler, x):
            self.frames += x.shape[0]
            return inner(upscaler, x)

        monkeypatch.setattr(Upscaler, "__call__", counting)


def vsr_args(src: Path, out: Path, model: Path, *extra: str) -> list[str]:
    """``vsr run`` on the CPU with the torch backend, one frame a network call (every frame: no
    --dedup, so the calls count frames), lossless x264."""
    return ["run", str(src), str(out), "--model", str(model), "--device", "cpu", "--backend", "torch", "--batch", "1", "--dedup", "off", *LOSSLESS, *extra]


def events(stdout: str) -> dict[str, dict]:
    """The last JSON line of each event kind in ``--progress json`` output."""
    return {record["event"]: record for record in map(json.loads, stdout.splitlines())}


def kill_at(args: list[str], share: float, total: int) -> None:
    """Start ``vsr run ARGS --progress json`` in its own process and SIGKILL it once it reports
    ``share`` of ``total`` frames done."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsr", *args, "--progress", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        for line in proc.stdout:
            record = json.loads(line)
            assert record["event"] == "progress", record  # killed before it finished
            if record["done"] >= share * total:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err


def complete_pieces(folder: Path) -> list[dict]:
    """The sidecars of the complete pieces at the start of a checkpoint folder (what a rerun keeps)."""
    sidecars = []
    for piece in sorted(folder.glob("[0-9][0-9][0-9][0-9].nut")):
        if not piece_status(piece, {})[0]:
            break
        sidecars.append(read_sidecar(piece))
    return sidecars


def finished_pieces(out: Path) -> int:
    """Output frames in the complete pieces at the start of ``out``'s checkpoint."""
    return sum(int(meta["frames"]) for meta in complete_pieces(checkpoint_folder(out)))


def assert_same_output(a: Path, b: Path, frames: int) -> None:
    fa, fb = media.decode_frames(a), media.decode_frames(b)
    assert len(fa) == len(fb) == frames
    assert [f.pts for f in fa] == [f.pts for f in fb]
    for i, (x, y) in enumerate(zip(fa, fb, strict=True)):
        assert all(np.array_equal(p, q) for p, q in zip(media.planes(x), media.planes(y), strict=True)), f"frame {i} differs"
    audio = media.packets(a, "audio")
    assert audio and audio == media.packets(b, "audio")  # pts, dts and bytes


def reused_in_pieces(out: Path) -> int:
    """Frames ``--dedup`` reused in the complete pieces of ``out``'s checkpoint."""
    return sum(int(meta.get("dedup_reused") or 0) for meta in complete_pieces(checkpoint_folder(out)))


# fixture, extra flags, output frames, the uninterrupted reference's --checkpoint-frames
CASES = {
    "plain": ("clip", (), FRAMES, "0"),
    "trim": ("clip", ("--start", "0.25", "--frames", "40"), 40, "0"),
    "vfr": ("vfr_clip", (), FRAMES, "0"),
    # --dedup computes the first frame of every piece (a piece never reuses another's output), so
    # the reference is an uninterrupted run in the same pieces.
    "dedup": ("animation", ("--dedup", "auto"), 60, str(EVERY)),
    # bwdif at field rate: two output frames per input frame, each piece decoding one frame before
    # its start for the filter's look back.
    "deinterlace": ("interlaced", ("--deinterlace-rate", "field"), 2 * FRAMES, "0"),
}


@pytest.mark.parametrize("case", CASES)
def test_sigkill_at_70_percent_then_the_same_command_computes_only_the_rest(tmp_path, capsys, monkeypatch, slow_model, request, case):
    fixture, extra, total, reference_every = CASES[case]
    src = request.getfixturevalue(fixture)
    out = tmp_path / "out" / f"film_x4{src.suffix}"
    args = vsr_args(src, out, slow_model, "--checkpoint-frames", str(EVERY), *extra)
    kill_at(args, 0.7, total)
    assert not out.exists()
    kept, kept_reused = finished_pieces(out), reused_in_pieces(out)
    assert 0.5 * total <= kept < total

    counted = Counted(monkeypatch)
    assert main([*args, "--progress", "json", "-v"]) == 0
    captured = capsys.readouterr()
    seen = events(captured.out)
    reused = seen["done"]["reused"] - kept_reused  # held by this run
    assert counted.frames == total - kept - reused  # only the frames after the last finished piece
    assert seen["resume"] == {"event": "resume", "frame": kept, "frames": total}
    assert (seen["done"]["frames"], seen["done"]["resumed"]) == (total, kept)
    assert not checkpoint_folder(out).exists() and leftovers(out.parent) == []
    if case == "dedup":
        assert reused > 0 and kept_reused > 0  # held pictures in the kept pieces and in the rest
    if case == "deinterlace":
        assert "deinterlaced with bwdif" in captured.err

    reference = tmp_path / "ref" / out.name  # uninterrupted
    assert main(vsr_args(src, reference, slow_model, "--checkpoint-frames", reference_every, *extra, "--progress", "none")) == 0
    assert_same_output(out, reference, total)


def interrupt_after(monkeypatch, calls: int) -> None:
    """Ctrl-C in the middle of the network's ``calls``-th call (in this process)."""
    inner = Upscaler.__call__
    seen = [0]

    def interrupted(upscaler, x):
        seen[0] += 1
        if seen[0] == calls:
            raise KeyboardInterrupt
        return inner(upscaler, x)

    monkeypatch.setattr(Upscaler, "__call__", interrupted)


@pytest.fixture
def one_compute_thread():
    """torch on one thread: then a run computes on one thread too (eager torch on the CPU with 2+
    threads computes two groups at once), so an interrupt "in the N-th call" leaves exactly N - 1
    frames computed, not one more from the other compute thread."""
    from vsr.runtime import torch_threads

    with torch_threads(1):
        yield


def test_ctrl_c_keeps_finished_pieces_and_a_changed_option_or_no_resume_starts_over(tmp_path, capsys, monkeypatch, clip, fast_model, one_compute_thread):
    out = tmp_path / "out" / "film_x4.mkv"
    args = vsr_args(clip, out, fast_model, "--checkpoint-frames", str(EVERY), "--progress", "none")
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3 * EVERY + 2)  # --batch 1: one call a frame
        assert main(args) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "vsr: error: interrupted by the user"
    folder = checkpoint_folder(out)
    assert finished_pieces(out) == 3 * EVERY and not out.exists()
    assert leftovers(out.parent) == [] and leftovers(folder) == []  # no temporary file anywhere

    # Another --crf: the checkpoint is not used, and the log says which option differs.
    with monkeypatch.context() as patch:
        counted = Counted(patch)
        with patch.context() as inner:
            interrupt_after(inner, EVERY + 1)
            assert main([*args, "--crf", "20"]) == 130
        assert "cannot be used (it was made with other options: settings.crf); starting over" in capsys.readouterr().err
        assert counted.frames == EVERY
    assert finished_pieces(out) == EVERY  # the crf 20 run's own piece replaced the old ones

    # The same command again resumes from that piece; --no-resume computes everything.
    with monkeypatch.context() as patch:
        counted = Counted(patch)
        assert main([*args, "--crf", "20", "--overwrite"]) == 0
        assert counted.frames == FRAMES - EVERY
        assert f"vsr: resuming at frame {EVERY} of {FRAMES} ({100 * EVERY / FRAMES:.1f} % done)" in capsys.readouterr().err
    with monkeypatch.context() as patch:
        counted = Counted(patch)
        interrupt_after(patch, EVERY + 2)
        assert main([*args, "--overwrite"]) == 130
    with monkeypatch.context() as patch:
        counted = Counted(patch)
        assert main([*args, "--overwrite", "--no-resume"]) == 0
        assert counted.frames == FRAMES
    assert not folder.exists() and media.video_pts(out) == media.video_pts(clip)


def test_short_videos_and_checkpoint_frames_0_are_done_in_one_pass(tmp_path, capsys, fast_model, clip):
    for extra, why in (((), "frames, no more than one checkpoint's 240"), (("--checkpoint-frames", "0"), "--checkpoint-frames 0")):
        out = tmp_path / "out" / "o.mkv"
        assert main([*vsr_args(clip, out, fast_model, *extra), "-v", "--overwrite", "--progress", "none"]) == 0
        err = capsys.readouterr().err
        assert f"no checkpoints for {clip}: " in err and f"{why}; it is done in one pass" in err
        assert not checkpoint_folder(out).exists()


def test_a_truncated_transport_stream_in_pieces_keeps_every_frame_it_decodes(tmp_path, capsys, fast_model):
    src = media.truncated_ts(tmp_path)
    outs = {every: tmp_path / every / "o.ts" for every in ("0", "4")}
    for every, out in outs.items():
        assert main([*vsr_args(src, out, fast_model, "--checkpoint-frames", every), "--progress", "none"]) == 0
    assert "truncated" in capsys.readouterr().err
    assert media.video_pts(outs["4"]) == media.video_pts(outs["0"]) and len(media.video_pts(outs["0"])) == 19
    assert media.packets(outs["4"], "audio") == media.packets(outs["0"], "audio")


def test_a_second_run_to_the_same_output_never_touches_the_first_ones_checkpoint(tmp_path, capsys, clip, slow_model):
    out = tmp_path / "out" / "film_x4.mkv"
    args = vsr_args(clip, out, slow_model, "--checkpoint-frames", str(EVERY))
    first = subprocess.Popen([sys.executable, "-m", "vsr", *args, "--progress", "none"], stderr=subprocess.PIPE, text=True)
    try:
        sidecar = checkpoint_folder(out) / "0000.nut.json"
        deadline = time.monotonic() + 60
        while not sidecar.exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # A holds the output and its checkpoint, mid-run
        before = sorted(p.name for p in checkpoint_folder(out).iterdir())
        assert main([*args, "--no-resume", "--progress", "none"]) == 73  # B, even asking to start over
        assert "is writing" in capsys.readouterr().err
        assert sorted(p.name for p in checkpoint_folder(out).iterdir()) == before
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert len(media.video_pts(out)) == FRAMES and not checkpoint_folder(out).exists()


# The full disk below is a real one: a tmpfs of a few hundred KiB, mounted in a mount namespace of
# its own (`unshare --user --map-root-user --mount`: no root needed, and the mount vanishes with
# the shell). Both runs and the "clearing" happen inside that shell; what the test asserts on is
# copied out before it ends.
FULL_DISK = r"""
set -u
mount -t tmpfs -o size="$DISK_BYTES" tmpfs "$DISK"
head -c "$FILLER_BYTES" /dev/zero > "$DISK/filler"
"$@" --progress none 2> "$RESULTS/first.err"; echo $? > "$RESULTS/first.rc"
cp -a "$DISK/." "$RESULTS/after_first"
rm "$DISK/filler"
"$@" -v --progress json > "$RESULTS/second.out" 2> "$RESULTS/second.err"; echo $? > "$RESULTS/second.rc"
cp -a "$DISK/." "$RESULTS/after_second"
"""


def user_namespaces() -> bool:
    """Whether this machine lets an unprivileged user mount a tmpfs in a namespace of its own."""
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True, timeout=30).returncode == 0
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("fills", ["mid-run", "at the join"])
def test_a_full_disk_stops_the_run_keeping_its_pieces_and_once_space_is_freed_the_same_command_finishes(tmp_path, clip, fast_model, fills):
    if not user_namespaces():
        pytest.skip("needs `unshare` with user namespaces to mount a small file system that can fill up")
    # The size of the finished output, from an uninterrupted run in the same pieces (the reference).
    reference = tmp_path / "ref" / "film_x4.mkv"
    assert main(vsr_args(clip, reference, fast_model, "--checkpoint-frames", str(EVERY), "--progress", "none")) == 0
    size = reference.stat().st_size
    disk, results = tmp_path / "disk", tmp_path / "results"
    disk.mkdir()
    results.mkdir()
    out = disk / "film_x4.mkv"
    # Room for the pieces and the joined output (the pieces stay until the output is published),
    # filled so that about half of the pieces fit, or all of them but not the joined output.
    disk_bytes = 2 * size + 256 * 1024
    free = size // 2 if fills == "mid-run" else size + 128 * 1024
    env = {**os.environ, "DISK": str(disk), "RESULTS": str(results), "DISK_BYTES": str(disk_bytes), "FILLER_BYTES": str(disk_bytes - free)}
    command = [sys.executable, "-m", "vsr", *vsr_args(clip, out, fast_model, "--checkpoint-frames", str(EVERY))]
    shell = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", FULL_DISK, "full-disk", *command],
                           env=env, capture_output=True, text=True, timeout=300)
    assert shell.returncode == 0, shell.stderr

    # The first run: exit 74 (I/O error) with one line saying the disk is full; finished pieces kept.
    err = (results / "first.err").read_text().strip().splitlines()
    assert (results / "first.rc").read_text().strip() == "74"
    assert err == [f"vsr: error: writing the output file in {out.parent if fills == 'at the join' else checkpoint_folder(out)} failed "
                   "(No space left on device); check free space and the disk"]
    kept_folder = results / "after_first" / checkpoint_folder(out).name
    kept_frames = sum(int(meta["frames"]) for meta in complete_pieces(kept_folder))
    assert 0 < kept_frames < FRAMES if fills == "mid-run" else kept_frames == FRAMES
    assert leftovers(kept_folder) == [] and not (results / "after_first" / out.name).exists()

    # Space freed, the same command: it continues after the kept pieces and publishes the output.
    assert (results / "second.rc").read_text().strip() == "0", (results / "second.err").read_text()
    seen = events((results / "second.out").read_text())
    assert seen["resume"] == {"event": "resume", "frame": kept_frames, "frames": FRAMES}
    assert (seen["done"]["frames"], seen["done"]["resumed"]) == (FRAMES, kept_frames)
    finished = results / "after_second"
    assert sorted(p.name for p in finished.iterdir()) == [out.name]  # no checkpoint, no temporary file
    assert_same_output(finished / out.name, reference, FRAMES)
