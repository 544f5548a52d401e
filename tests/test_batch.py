"""``vsr.batch``: many inputs over workers with a verified manifest, frame-exact segments joined
into what a single run gives, resume after SIGKILL, and exclusive leases.

Clips come from scripts/media.py (real photographs, AAC audio). Pixel comparisons use lossless
x264 (``qp=0``): segment pieces have other keyframes than one long encode, so only lossless
output can be identical bit for bit after decoding.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

import media
from helpers import tiny_srvgg
from vsr.batch import manifest as mf
from vsr.batch.run import collect_inputs, parse_shard, run_batch
from vsr.batch.segments import SEGMENTS_DIR, VideoIndex, index_video, piece_status, plan_segments
from vsr.compute import ComputeSpec
from vsr.errors import UsageError
from vsr.media.encode import EncodeSettings
from vsr.media.options import VideoOptions
from vsr.pipeline import VideoJob, run_video

LOSSLESS = EncodeSettings(options=(("qp", "0"),))
LONG_FRAMES = 48
GOP = 12


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> ComputeSpec:
    path = tmp_path_factory.mktemp("model") / "tiny_x4.pth"
    torch.save({"params_ema": tiny_srvgg(upscale=4).state_dict()}, path)
    return ComputeSpec(model=str(path), device="cpu", backend="torch", batch=4)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """48 frames at 12 fps, a keyframe every 12 frames exactly, AAC audio, chapters."""
    folder = tmp_path_factory.mktemp("long")
    return media.make_clip(
        folder / "long.mp4", frames=LONG_FRAMES, audio="aac", chapters=True, metadata={"title": "long clip"},
        photo=["astronaut", "rocket"], options={"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0", "crf": "18"},
    )


@pytest.fixture(scope="module")
def single_run(long_clip, spec, tmp_path_factory) -> Path:
    """The reference: one ``vsr run`` of the long clip, lossless."""
    out = tmp_path_factory.mktemp("single") / "long.mp4"
    run_video(VideoJob(long_clip, out, video=VideoOptions(settings=LOSSLESS)), spec())
    return out


def decoded(path: Path) -> tuple[list[int], list[list[np.ndarray]]]:
    frames = media.decode_frames(path)
    return [f.pts for f in frames], [media.planes(f) for f in frames]


def assert_same_video(a: Path, b: Path) -> None:
    pts_a, px_a = decoded(a)
    pts_b, px_b = decoded(b)
    assert len(pts_a) == len(pts_b) == LONG_FRAMES
    assert pts_a == pts_b
    for i, (fa, fb) in enumerate(zip(px_a, px_b, strict=True)):
        for pa, pb in zip(fa, fb, strict=True):
            assert np.array_equal(pa, pb), f"frame {i} differs"
    assert media.packets(a, "audio") == media.packets(b, "audio")  # pts, dts and bytes
    import av

    with av.open(str(a)) as ca, av.open(str(b)) as cb:
        assert [s.type for s in ca.streams] == [s.type for s in cb.streams]
        assert [Fraction(s.time_base) for s in ca.streams] == [Fraction(s.time_base) for s in cb.streams]
        assert dict(ca.metadata) == dict(cb.metadata)
        assert ca.chapters() == cb.chapters() and len(ca.chapters()) == 2


# --------------------------------------------------------------------------- pure parts


def test_plan_segments_cuts_by_frames_and_seeks_to_keyframes():
    pts = tuple(range(0, 48 * 100, 100))
    index = VideoIndex(pts, tuple(range(0, 48 * 100, 1200)), Fraction(1, 1200), usable=True)
    plan = plan_segments(index, segment_frames=10)
    assert [s.frames for s in plan] == [10, 10, 10, 10, 8]
    assert [(s.start_pts, s.end_pts) for s in plan] == [(None, 1000), (1000, 2000), (2000, 3000), (3000, 4000), (4000, None)]
    assert [s.seek_pts for s in plan] == [None, 0, 1200, 2400, 3600]
    assert [s.frames for s in plan_segments(index, segments=4)] == [12, 12, 12, 12]
    broken = VideoIndex(pts, (), Fraction(1, 1200), usable=False, reason="no keyframe flags")
    assert len(plan_segments(broken, segments=4)) == 1


def test_exit_code_classes_and_inputs(tmp_path):
    assert mf.worst_exit_code([65, 75]) == 75  # retryable wins: the scheduler should re-queue
    assert mf.worst_exit_code([65, 66]) == 66
    assert mf.worst_exit_code([]) == 0
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(UsageError):
        parse_shard("4/4")
    (tmp_path / "d").mkdir()
    for name in ("b.mkv", "a.mp4", "notes.txt"):
        (tmp_path / "d" / name).write_bytes(b"x")
    listing = tmp_path / "list.txt"
    listing.write_text("# inputs\nd/a.mp4\n\nd  # the folder\n")
    assert collect_inputs([listing]) == [tmp_path / "d/a.mp4", tmp_path / "d/a.mp4", tmp_path / "d/b.mkv"]


def test_resume_rule(tmp_path):
    out = tmp_path / "a.mp4"
    kw = dict(target=out, input_fp={"size": 1, "mtime_ns": 2}, options_fp="o", overwrite=False)
    assert mf.decide(None, **kw)[0] == "run"
    out.write_bytes(b"someone else's file")
    assert mf.decide(None, **kw)[0] == "fail"  # not ours: exit 73 unless --overwrite
    assert mf.decide(None, **{**kw, "overwrite": True})[0] == "run"
    failed73 = {"input_fingerprint": kw["input_fp"], "options": "o", "state": "failed", "exit_code": 73}
    assert mf.decide(failed73, **kw)[0] == "fail"  # still not ours on the next run
    done = {**failed73, "state": "done", "exit_code": 0, "owned": True, "sha256": mf.sha256_file(out)}
    assert mf.decide(done, **kw) == ("skip", "done, output verified (sha256)")
    assert mf.decide({**done, "options": "p"}, **kw)[0] == "run"
    assert mf.decide({**done, "sha256": "0" * 64}, **kw)[0] == "run"
    bad_input = {**failed73, "exit_code": 65}
    assert mf.decide(bad_input, **{**kw, "overwrite": True})[0] == "fail"  # 65: not again...
    assert mf.decide(bad_input, **{**kw, "overwrite": True, "input_fp": {"size": 3, "mtime_ns": 4}})[0] == "run"  # ...until it changes


def test_manifest_updates_are_merged_not_clobbered(tmp_path):
    m = mf.Manifest(tmp_path)
    m.update("a", state="queued", attempts=0)
    m.update("b", state="running")
    m.update("a", state="done", sha256="x")
    jobs = json.loads((tmp_path / mf.MANIFEST_NAME).read_text())["jobs"]
    assert jobs == {"a": {"state": "done", "attempts": 0, "sha256": "x"}, "b": {"state": "running"}}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- a folder, two workers


def test_folder_two_workers_broken_input_manifest_and_verified_resume(tmp_path, spec):
    src = tmp_path / "in"
    src.mkdir()
    media.make_clip(src / "a.mp4", frames=6, audio="aac", photo="astronaut")
    media.make_clip(src / "b.mkv", frames=5, photo="chelsea", size=(80, 48))
    media.make_clip(src / "c.mp4", frames=7, audio="aac", photo="coffee")
    (src / "broken.mp4").write_text("not a video\n" * 20)
    out = tmp_path / "out"

    summary = run_batch([src], out, make_upscaler=spec, workers=2, retries=2)
    rows = {Path(r.input).name: r for r in summary.rows}
    assert [Path(r.input).name for r in summary.rows] == ["a.mp4", "b.mkv", "broken.mp4", "c.mp4"]
    assert {n: r.state for n, r in rows.items()} == {"a.mp4": "done", "b.mkv": "done", "c.mp4": "done", "broken.mp4": "failed"}
    assert rows["broken.mp4"].exit_code == 65 and rows["broken.mp4"].attempts == 1  # never retried
    assert summary.exit_code == 65
    assert [rows[n].frames for n in ("a.mp4", "b.mkv", "c.mp4")] == [6, 5, 7]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.mp4", "b.mkv", "c.mp4", mf.MANIFEST_NAME]
    assert len(media.video_pts(out / "c.mp4")) == 7 and media.packets(out / "c.mp4") == media.packets(src / "c.mp4")

    jobs = {Path(j["input"]).name: j for j in mf.Manifest(out).jobs().values()}
    assert jobs["broken.mp4"]["state"] == "failed" and jobs["broken.mp4"]["exit_code"] == 65
    assert "not a video" in jobs["broken.mp4"]["error"]
    for name in ("a.mp4", "b.mkv", "c.mp4"):
        job = jobs[name]
        assert job["state"] == "done" and job["attempts"] == 1 and job["exit_code"] == 0 and job["owned"]
        assert job["sha256"] == mf.sha256_file(out / name)
        assert job["input_fingerprint"] == mf.input_fingerprint(src / name)

    # Again: the done ones are verified and skipped, the broken one is not tried again.
    mtimes = {n: (out / n).stat().st_mtime_ns for n in ("a.mp4", "b.mkv", "c.mp4")}
    again = run_batch([src], out, make_upscaler=spec, workers=1)
    assert {Path(r.input).name: r.state for r in again.rows} == {"a.mp4": "skipped", "b.mkv": "skipped", "c.mp4": "skipped", "broken.mp4": "failed"}
    assert again.exit_code == 65
    assert {n: (out / n).stat().st_mtime_ns for n in mtimes} == mtimes
    assert mf.Manifest(out).jobs()[next(k for k, j in mf.Manifest(out).jobs().items() if j["input"].endswith("broken.mp4"))]["attempts"] == 1

    # A tampered output no longer matches its sha256: that one (only) is redone.
    with open(out / "b.mkv", "ab") as fh:
        fh.write(b"\0" * 16)
    third = run_batch([src], out, make_upscaler=spec, workers=1)
    assert {Path(r.input).name: r.state for r in third.rows} == {"a.mp4": "skipped", "b.mkv": "done", "c.mp4": "skipped", "broken.mp4": "failed"}
    job_b = next(j for j in mf.Manifest(out).jobs().values() if j["input"].endswith("b.mkv"))
    assert job_b["sha256"] == mf.sha256_file(out / "b.mkv") and job_b["attempts"] == 2
    assert len(media.video_pts(out / "b.mkv")) == 5


# --------------------------------------------------------------------------- segments


@pytest.mark.parametrize("cut", [{"segments": 4}, {"segment_frames": 10}], ids=["4-segments-on-keyframes", "10-frame-segments-off-keyframes"])
def test_segments_join_to_what_a_single_run_gives(tmp_path, spec, long_clip, single_run, cut):
    index = index_video(long_clip)
    assert index.frames == LONG_FRAMES and len(index.keyframes) == LONG_FRAMES // GOP
    plan = plan_segments(index, **cut)
    if "segment_frames" in cut:
        assert any(s.start_pts not in index.keyframes for s in plan[1:])  # cuts between keyframes
    out = tmp_path / "out"
    summary = run_batch([long_clip], out, make_upscaler=spec, video=VideoOptions(settings=LOSSLESS), **cut)
    (row,) = summary.rows
    assert (row.state, row.frames, row.segments, summary.exit_code) == ("done", LONG_FRAMES, len(plan), 0)
    assert_same_video(out / "long.mp4", single_run)
    assert not (out / SEGMENTS_DIR / next(iter(mf.Manifest(out).jobs()))).exists()  # pieces removed after the join


def test_segments_with_two_workers(tmp_path, spec, long_clip, single_run):
    summary = run_batch([long_clip], tmp_path / "out", make_upscaler=spec, video=VideoOptions(settings=LOSSLESS), segments=4, workers=2)
    assert summary.rows[0].state == "done" and summary.exit_code == 0
    assert_same_video(tmp_path / "out" / "long.mp4", single_run)


DRIVER = """
import sys, time
from pathlib import Path
from vsr.batch.run import run_batch
from vsr.compute import ComputeSpec
from vsr.media.encode import EncodeSettings
from vsr.media.options import VideoOptions

class Slow(ComputeSpec):
    # a real engine, slowed down so the test can kill the run between pieces (same fingerprint)
    def __call__(self):
        up = super().__call__()
        inner = up.__call__
        class Wrapped(type(up)):
            def __call__(self, x):
                time.sleep(0.25)
                return inner(x)
        up.__class__ = Wrapped
        return up

spec = Slow(model=sys.argv[3], device="cpu", backend="torch", batch=4)
run_batch([Path(sys.argv[1])], Path(sys.argv[2]), make_upscaler=spec, video=VideoOptions(settings=EncodeSettings(options=(("qp", "0"),))), segments=4)
"""


class Counting(ComputeSpec):
    """A ComputeSpec (same fingerprint) that counts the frames the network is asked to upscale."""

    frames = 0

    def __call__(self):
        up = super().__call__()
        inner = up.__call__

        class Wrapped(type(up)):
            def __call__(self, x):
                Counting.frames += x.shape[0]
                return inner(x)

        up.__class__ = Wrapped
        return up


def test_sigkill_mid_run_then_resume_redoes_only_unfinished_segments(tmp_path, spec, long_clip, single_run):
    out = tmp_path / "out"
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(driver), str(long_clip), str(out), spec.model], env=env)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(f"{SEGMENTS_DIR}/*/0000.nut.json")):
            assert proc.poll() is None, "the driver ended before the first piece was finished"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    (job_id, record), = mf.Manifest(out).jobs().items()
    assert record["state"] == "running" and not (out / "long.mp4").exists()
    folder = out / SEGMENTS_DIR / job_id
    finished = [p for p in sorted(folder.glob("*.nut")) if piece_status(p, {})[0]]
    assert 1 <= len(finished) < 4
    frames_left = LONG_FRAMES - 12 * len(finished)
    # Each piece records the encoder and its resolved options; a piece an older vsr encoded under
    # other defaults (x264 medium) is made again rather than joined with headers that differ.
    sidecar = finished[0].with_name(finished[0].name + ".json")
    meta = json.loads(sidecar.read_text())
    assert meta["encoder"] == {"codec": "libx264", "options": {"preset": "faster", "qp": "0"}}
    meta["encoder"]["options"]["preset"] = "medium"
    sidecar.write_text(json.dumps(meta))
    frames_left += 12

    Counting.frames = 0
    summary = run_batch([long_clip], out, make_upscaler=Counting(**asdict(spec)), video=VideoOptions(settings=LOSSLESS), segments=4)
    (row,) = summary.rows
    assert row.state == "done" and row.segments_reused == len(finished) - 1
    assert Counting.frames == frames_left  # only the unfinished segments went through the network
    assert mf.Manifest(out).job(job_id)["state"] == "done"
    assert_same_video(out / "long.mp4", single_run)


# --------------------------------------------------------------------------- leases


RACER = """
import sys, time
from vsr.batch.manifest import Lease
lease = Lease(sys.argv[1])
while time.time() < float(sys.argv[2]):
    pass
print("got" if lease.acquire() else "busy", flush=True)
time.sleep(1.0)
"""


def test_two_processes_racing_for_one_segment_lease(tmp_path):
    path = tmp_path / "0003.lease"
    start = time.time() + 1.5  # both processes are up and spinning by then
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(path), str(start)], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = sorted(p.communicate(timeout=30)[0].strip() for p in procs)
    assert outs == ["busy", "got"]
    lease = mf.Lease(path)  # both gone: the kernel dropped the lock with its holder
    assert lease.acquire()
    assert not mf.Lease(path).acquire()  # exclusive within a process too (one open file each)
    lease.release()
    assert json.loads(path.read_text())["pid"] == os.getpid()


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (65, 0), (66, 0), (2, 0), (73, 0), (75, 75), (69, 75), (74, 75), (1, 75), (130, 75)])
def test_exitcode_wrapper_maps_vsr_codes_to_scheduler_semantics(code, expected):
    wrapper = Path(__file__).parents[1] / "scripts" / "exitcode_wrapper.sh"
    done = subprocess.run(["bash", str(wrapper), sys.executable, "-c", f"raise SystemExit({code})"], capture_output=True, text=True)
    assert done.returncode == expected
    assert ("skip" in done.stderr) == (code in (2, 65, 66, 73)) and ("retry" in done.stderr) == (expected == 75)


def test_ray_executor_on_a_local_cluster(tmp_path, spec, long_clip, single_run):
    """Segments as tasks on two CPU actors of a Ray started here (ray is in the test extra)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_batch([long_clip], tmp_path / "out", make_upscaler=spec, video=VideoOptions(settings=LOSSLESS), segments=4, workers=2, executor="ray")
        again = run_batch([long_clip], tmp_path / "out", make_upscaler=spec, video=VideoOptions(settings=LOSSLESS), segments=4, workers=2, executor="ray")
    finally:
        ray.shutdown()
    assert summary.rows[0].state == "done" and summary.exit_code == 0
    assert again.rows[0].state == "skipped"
    assert_same_video(tmp_path / "out" / "long.mp4", single_run)


def test_ray_executor_without_ray_is_exit_69(tmp_path, spec, long_clip, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    from vsr.errors import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="pip install"):
        run_batch([long_clip], tmp_path / "out", make_upscaler=spec, executor="ray")


def test_cli_batch_folder_with_a_bad_input(tmp_path, capsys, spec):
    """`vsr batch` as a user runs it: a folder with one broken file; exit 65 names it, the rest is done,
    and the same command again skips the verified outputs."""
    from helpers import run

    folder = tmp_path / "in"
    folder.mkdir()
    media.make_clip(folder / "a.mp4", frames=6, audio="aac")
    media.make_clip(folder / "b.mkv", frames=5, photo="coffee")
    (folder / "c.mp4").write_text("not a video")
    argv = ["batch", folder, "--output-dir", tmp_path / "out", "--model", spec.model, "--device", "cpu", "--progress", "none"]
    code, err = run(capsys, *argv)
    assert code == 65, err
    assert err.strip().splitlines()[-1].startswith("vsr: error: 1 of 3 jobs did not finish (first: ")
    assert len(media.decode_frames(tmp_path / "out" / "a.mp4")) == 6
    assert len(media.decode_frames(tmp_path / "out" / "b.mkv")) == 5
    assert not (tmp_path / "out" / "c.mp4").exists()
    before = (tmp_path / "out" / "a.mp4").stat().st_mtime_ns
    code, err = run(capsys, *argv)
    assert code == 65 and "skipped" in err
    assert (tmp_path / "out" / "a.mp4").stat().st_mtime_ns == before
