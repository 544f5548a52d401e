"""vsr.files on the real file system: names that fit, publishing that never clobbers, claims held
by other real processes, stale temporary files, digests."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vsr import files
from vsr.errors import OutputError

# --------------------------------------------------------------------------- names


def test_names_fit_the_file_system_limit():
    assert files.fit_name("a.mp4", ".vsr-lock", 255) == "a.mp4.vsr-lock"
    long_a, long_b = "x" * 240 + "a.mp4", "x" * 240 + "b.mp4"
    fa, fb = files.fit_name(long_a, ".vsr-lock", 255), files.fit_name(long_b, ".vsr-lock", 255)
    assert len(fa.encode()) <= 255 and len(fb.encode()) <= 255 and fa != fb  # the tag keeps them apart
    # Cut at a character boundary: a name of 3-byte characters stays valid UTF-8.
    cut = files.fit_name("視" * 100, ".vsr-tmp", 64)
    assert len(cut.encode()) <= 64 and cut.encode().decode() == cut


def test_temporary_and_lock_names_of_a_250_byte_output_fit(tmp_path):
    out = tmp_path / ("a" * 246 + ".mp4")
    assert len(out.name.encode()) == 250
    tmp, lock = files.temp_path(out), files.lock_path(out)
    assert len(tmp.name.encode()) <= 255 and len(lock.name.encode()) <= 255
    assert tmp.parent == out.parent and tmp.name.startswith(".") and tmp.name.endswith(files.TEMP_SUFFIX)
    assert files.temp_path(out) != tmp  # private: another call, another name
    tmp.write_bytes(b"x")  # the file system takes both names
    lock.write_bytes(b"")
    files.check_name(out)
    with pytest.raises(OutputError, match="256 bytes long"):
        files.check_name(tmp_path / ("a" * 252 + ".mp4"))


# --------------------------------------------------------------------------- publish


def test_publish_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "o.bin"
    with pytest.raises(OutputError, match="appeared while vsr was writing it"):
        with files.publish(out, overwrite=False) as tmp:
            tmp.write_bytes(b"vsr's result")
            out.write_bytes(b"the user's file")  # written by someone else during the run
    assert out.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.bin"]  # our temporary file and lock are gone

    with files.publish(out, overwrite=True) as tmp:
        tmp.write_bytes(b"vsr's result")
    assert out.read_bytes() == b"vsr's result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.bin"]


def test_publish_removes_its_temporary_file_on_failure_and_touches_no_other_file(tmp_path):
    out = tmp_path / "o.mp4"
    users = {
        "o.mp4.partial": b"a file of the user's that older vsr versions would have replaced",
        ".o.mp4.otherhost.123.abcd1234.vsr-tmp": b"another host's write in progress (shared storage)",
        ".o.mp4.vsr-tmp": b"not of vsr's pattern",
    }
    for name, data in users.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(RuntimeError, match="boom"):
        with files.publish(out, overwrite=False) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert not out.exists()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == users


def test_stale_temporary_files_of_dead_processes_here_are_removed(tmp_path):
    out = tmp_path / "o.mp4"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        prefix = files.temp_path(out).name.split(f".{files.HOST}.")[0]
        stale = tmp_path / f"{prefix}.{files.HOST}.{dead_pid}.0badf00d{files.TEMP_SUFFIX}"
        running = tmp_path / f"{prefix}.{files.HOST}.{alive.pid}.0badf00d{files.TEMP_SUFFIX}"
        stale.write_bytes(b"left by a killed run")
        running.write_bytes(b"being written by a live process")
        files.write_bytes(out, b"new", overwrite=False)
        assert not stale.exists() and running.exists() and out.read_bytes() == b"new"
    finally:
        alive.kill()
        alive.wait()


# --------------------------------------------------------------------------- claims

# Module level, so the spawn start method can import it in the child.
def _hold_claim(path: str, ready: str, release: str) -> None:
    with files.claim(Path(path)):
        Path(ready).write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.01)


def _start_holder(tmp_path: Path, out: Path):
    ready, release = tmp_path / "ready", tmp_path / "release"
    proc = mp.get_context("spawn").Process(target=_hold_claim, args=(str(out), str(ready), str(release)))
    proc.start()
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.is_alive() and time.monotonic() < deadline, "the holder never took the claim"
        time.sleep(0.01)
    return proc, release


def test_a_claim_held_by_another_process_refuses_at_once_and_names_it(tmp_path):
    out = tmp_path / "o.mp4"
    proc, release = _start_holder(tmp_path, out)
    try:
        started = time.monotonic()
        with pytest.raises(OutputError, match=rf"another vsr process \(pid {proc.pid} on {files.HOST} since .*\) is writing"):
            with files.claim(out):
                pass
        assert time.monotonic() - started < 5  # no waiting
        with pytest.raises(OutputError, match="another vsr process"):
            files.write_bytes(out, b"x", overwrite=True)  # --overwrite does not get past a claim
        assert not out.exists()
    finally:
        release.write_text("")
        proc.join(30)
    assert proc.exitcode == 0
    assert not files.lock_path(out).exists()  # its holder removed the lock file
    with files.claim(out):  # free again
        assert files.lock_path(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ready", "release"]


def test_a_claim_of_a_killed_process_is_free_at_once(tmp_path):
    out = tmp_path / "o.mp4"
    proc, _ = _start_holder(tmp_path, out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert files.lock_path(out).exists()  # left behind by SIGKILL ...
    with files.claim(out):  # ... but the kernel dropped the lock with the process
        pass
    assert not files.lock_path(out).exists()


def test_claims_are_reentrant_in_one_thread_and_exclusive_between_threads(tmp_path):
    out = tmp_path / "o.mp4"
    errors: list[BaseException] = []

    def other() -> None:
        try:
            with files.claim(out):
                pass
        except OutputError as err:
            errors.append(err)

    with files.claim(out):
        with files.claim(out):  # the CLI claims early, the pipeline's publish claims again
            pass
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert len(errors) == 1 and "another thread" in str(errors[0])
    assert not files.lock_path(out).exists()


def test_a_foreign_file_where_the_lock_goes_is_not_touched(tmp_path):
    out = tmp_path / "o.mp4"
    lock = files.lock_path(out)
    lock.write_text("my notes, nothing to do with vsr\n")
    with pytest.raises(OutputError, match="is not a vsr lock file"):
        with files.claim(out):
            pass
    assert lock.read_text() == "my notes, nothing to do with vsr\n"


def test_an_early_claim_creates_no_folder(tmp_path):
    out = tmp_path / "new" / "deeper" / "o.mp4"
    with files.claim(out, make_folder_now=False):
        assert not (tmp_path / "new").exists()
        files.write_bytes(out, b"x", overwrite=False)  # publish makes the folder and claims it then
    assert out.read_bytes() == b"x" and sorted(p.name for p in out.parent.iterdir()) == ["o.mp4"]


# --------------------------------------------------------------------------- digests


def test_an_artifact_damaged_in_place_is_not_trusted(tmp_path):
    path = tmp_path / "weights.bin"
    data = os.urandom(1 << 16)
    meta = files.publish_artifact(path, lambda tmp: {"bytes_written": tmp.write_bytes(data)}, key="k")
    assert meta["sha256"] == files.sha256_bytes(data) and meta["size"] == meta["bytes_written"] == len(data)
    assert files.check_artifact(path) == (True, "ok")
    damaged = bytearray(data)
    damaged[1000:1064] = bytes(255 - b for b in damaged[1000:1064])  # same size, 64 bytes flipped
    path.write_bytes(bytes(damaged))
    assert files.check_artifact(path) == (False, "sha256 differs from the sidecar (damaged file)")
