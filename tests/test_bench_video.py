"""scripts/bench_video.py kept runnable: a small run of every row kind with the CPU breakdown, and
the thread accounting it rests on."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import bench_video  # scripts/, on pytest's pythonpath
from helpers import run_bench_script



def _spin(seconds: float, then: threading.Event | None = None) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    if then is not None:
        then.wait()  # stay alive (idle) until told: a thread is counted up to its last sample


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread CPU time comes from Linux /proc")
def test_thread_cpu_puts_each_thread_in_its_group():
    release = threading.Event()
    pool = threading.Thread(target=_spin, args=(0.25, release), name="pool-like")  # alive before the block
    pool.start()
    try:
        with bench_video.ThreadCpu(interval=0.01) as cpu:
            _spin(0.3)  # the calling thread
            started = [threading.Thread(target=_spin, args=(0.2, release), name="vsr-encode"),
                       threading.Thread(target=_spin, args=(0.1, release), name="Dummy-codec"),
                       *(threading.Thread(target=_spin, args=(0.1, release), name=f"vsr-compute_{i}") for i in range(2))]
            for t in started:
                t.start()
            deadline = time.monotonic() + 20
            while not _all_idle([pool, *started]) and time.monotonic() < deadline:
                pass
    finally:
        release.set()
    groups = cpu.groups
    # /proc counts CPU in clock ticks (10 ms), and the threads share the GIL: each group within a
    # few ticks of what its threads spun.
    assert groups["compute thread (network calls, colour, padding)"] == pytest.approx(0.3, abs=0.05)
    assert groups["vsr-encode thread"] == pytest.approx(0.2, abs=0.05)
    assert groups["vsr-compute threads (network calls, colour, padding)"] == pytest.approx(0.2, abs=0.05)  # both, as one
    assert groups["threads started by the codecs (x264's, FFmpeg's)"] == pytest.approx(0.1, abs=0.05)
    assert groups["threads alive before the run (the network's pool)"] <= 0.3


def _all_idle(threads: list[threading.Thread]) -> bool:
    """Whether every thread has spun its share (its CPU time stopped growing)."""
    first = bench_video.ThreadCpu.sample()
    time.sleep(0.05)
    second = bench_video.ThreadCpu.sample()
    return all(first.get(str(t.native_id)) == second.get(str(t.native_id)) for t in threads)


def test_small_run_reports_every_row_and_the_breakdown(tmp_path, vsr_home):
    data = run_bench_script("bench_video.py", tmp_path, vsr_home, "--make-clip", "48x32", "--frames", "6", "--repeat", "2",
                            "--backend", "torch", "--cpu-breakdown")
    assert data["frames"] == 6 and data["size"] == "48x32"
    assert [r["what"] for r in data["rows"]] == ["vsr model only", "vsr run (end to end)"]
    assert all(r["fps"] > 0 for r in data["rows"])
    assert data["skipped"] and "not a named model" in data["skipped"][0]  # no ncnn files for a .pth
    # A 6-frame run takes a few clock ticks (10 ms) of CPU, so groups may round to nothing (they are
    # left out then); the grouping itself is checked above.
    breakdown = data["cpu_ms_per_frame"]
    assert isinstance(breakdown, dict) and all(ms > 0 for ms in breakdown.values())
    assert set(breakdown) <= {"compute thread (network calls, colour, padding)", "threads alive before the run (the network's pool)",
                              "vsr-decode thread", "vsr-encode thread", "threads started by the codecs (x264's, FFmpeg's)"}
