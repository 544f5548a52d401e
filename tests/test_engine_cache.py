"""The engine cache: content-addressed keys, one build per key across real processes, crash safety."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from vsr import files
from vsr.engines import cache
from vsr.errors import TransientError

PAYLOAD = b"vsr-engine-test-payload\x00\x01\x02" * 1000
KEY = "a" * 64


# --------------------------------------------------------------------------- keys

BASE = dict(
    onnx=b"onnx bytes",
    config={"profile": {"min": [1, 3, 16, 16], "opt": [4, 3, 256, 256], "max": [4, 3, 256, 256]}, "opt_level": 3, "workspace_gib": None, "fp16": True},
    versions={"tensorrt": "10.12.0.36", "cuda": "13.0", "torch": "2.13.0"},
    device={"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
)


def key_of(**changes):
    args = {**BASE, **changes}
    return cache.engine_key(args["onnx"], args["config"], args["versions"], args["device"])


def test_engine_key_is_a_pure_sha256():
    key = key_of()
    assert key == key_of()
    assert len(key) == 64 and int(key, 16) >= 0


def test_engine_key_takes_bytes_or_their_sha256():
    assert key_of(onnx=files.sha256_bytes(b"onnx bytes")) == key_of()
    with pytest.raises(ValueError):
        key_of(onnx="not-a-sha")


def test_engine_key_ignores_dict_order_and_number_spelling():
    reordered = {k: BASE["config"][k] for k in reversed(list(BASE["config"]))}
    reordered["profile"] = {k: tuple(v) for k, v in reversed(list(BASE["config"]["profile"].items()))}
    assert key_of(config=reordered) == key_of()
    assert key_of(config={**BASE["config"], "opt_level": 3.0}) == key_of()
    assert key_of(device=dict(reversed(list(BASE["device"].items())))) == key_of()


@pytest.mark.parametrize(
    "change",
    [
        {"onnx": b"onnx bytez"},
        {"config": {**BASE["config"], "opt_level": 4}},
        {"config": {**BASE["config"], "workspace_gib": 8}},
        {"config": {**BASE["config"], "fp16": False}},
        {"config": {**BASE["config"], "profile": {**BASE["config"]["profile"], "max": [8, 3, 256, 256]}}},
        {"config": {**BASE["config"], "extra_option": True}},
        {"versions": {**BASE["versions"], "tensorrt": "11.4.0.106"}},
        {"versions": {**BASE["versions"], "cuda": "12.9"}},
        {"versions": {**BASE["versions"], "torch": "2.14.0"}},
        {"device": {**BASE["device"], "name": "NVIDIA H200"}},
        {"device": {**BASE["device"], "compute_capability": "8.9"}},
    ],
    ids=lambda c: next(iter(c)) + ":" + json.dumps(c, default=str)[-40:],
)
def test_engine_key_changes_with_every_field(change):
    assert key_of(**change) != key_of()


def test_engine_key_refuses_values_that_are_not_json():
    with pytest.raises(TypeError):
        key_of(config={"x": object()})
    with pytest.raises(ValueError):
        key_of(config={"x": float("nan")})


# --------------------------------------------------------------------------- builds in this process


def writer(payload: bytes = PAYLOAD, counter: Path | None = None, delay: float = 0.0):
    def build(tmp: Path) -> dict:
        if counter is not None:
            with open(counter, "a") as fh:
                fh.write(f"{os.getpid()}\n")
        time.sleep(delay)
        tmp.write_bytes(payload)
        return {"note": "test"}

    return build


def finished_files(root: Path) -> list[str]:
    """Files a reader could take for a finished engine."""
    return sorted(p.name for p in root.iterdir() if p.name.endswith(cache.SUFFIX))


def test_build_once_then_hit(tmp_path):
    count = tmp_path / "count"
    first = cache.get_or_build(KEY, writer(counter=count), root=tmp_path)
    second = cache.get_or_build(KEY, writer(counter=count), root=tmp_path)
    assert first == second == tmp_path / f"{KEY}.engine"
    assert first.read_bytes() == PAYLOAD
    assert len(count.read_text().splitlines()) == 1
    meta = files.read_sidecar(first)
    assert meta["complete"] is True and meta["sha256"] == files.sha256_bytes(PAYLOAD)
    assert meta["size"] == len(PAYLOAD) and meta["key"] == KEY and meta["note"] == "test"
    assert files.check_artifact(first) == (True, "ok")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(files.TEMP_SUFFIX)]


def test_default_root_is_vsr_home_engines(tmp_path, monkeypatch):
    monkeypatch.setenv("VSR_HOME", str(tmp_path / "home"))
    path = cache.get_or_build(KEY, writer())
    assert path == tmp_path / "home" / "engines" / f"{KEY}.engine"


def test_build_that_raises_leaves_nothing_and_next_call_builds(tmp_path):
    def broken(tmp: Path):
        tmp.write_bytes(PAYLOAD[:100])  # half an engine, then the builder fails
        raise RuntimeError("builder failed")

    with pytest.raises(RuntimeError, match="builder failed"):
        cache.get_or_build(KEY, broken, root=tmp_path)
    assert finished_files(tmp_path) == []
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(files.TEMP_SUFFIX)]
    count = tmp_path / "count"
    assert cache.get_or_build(KEY, writer(counter=count), root=tmp_path).read_bytes() == PAYLOAD
    assert len(count.read_text().splitlines()) == 1


def test_build_that_writes_nothing_is_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="wrote nothing"):
        cache.get_or_build(KEY, lambda tmp: None, root=tmp_path)
    assert finished_files(tmp_path) == []


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "no_sidecar", "incomplete", "bad_json"])
def test_damaged_entry_is_rebuilt(tmp_path, damage):
    count = tmp_path / "count"
    path = cache.get_or_build(KEY, writer(counter=count), root=tmp_path)
    side = files.sidecar_path(path)
    if damage == "flip_byte":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(PAYLOAD[:-10])
    elif damage == "no_sidecar":
        side.unlink()
    elif damage == "incomplete":
        side.write_text(json.dumps({**json.loads(side.read_text()), "complete": False}))
    else:
        side.write_text("{not json")
    assert not files.check_artifact(path)[0]
    again = cache.get_or_build(KEY, writer(counter=count), root=tmp_path)
    assert again == path and again.read_bytes() == PAYLOAD
    assert files.check_artifact(path) == (True, "ok")
    assert len(count.read_text().splitlines()) == 2


def test_lock_timeout_is_transient_exit_75(tmp_path):
    import fcntl

    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / f"{KEY}.lock", "a+b") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another "process" is building
        started = time.monotonic()
        with pytest.raises(TransientError) as info:
            cache.get_or_build(KEY, writer(), root=tmp_path, timeout=0.3)
        assert 0.25 <= time.monotonic() - started < 5
    assert info.value.exit_code == 75
    assert "\n" not in str(info.value) and "lock" in str(info.value)
    assert finished_files(tmp_path) == []
    # Released: the next caller builds.
    assert cache.get_or_build(KEY, writer(), root=tmp_path, timeout=0.3).read_bytes() == PAYLOAD


def test_threads_share_one_build(tmp_path):
    count = tmp_path / "count"
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get_or_build(KEY, writer(counter=count, delay=0.3), root=tmp_path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert len(count.read_text().splitlines()) == 1


def test_bad_key_and_unwritable_root(tmp_path):
    with pytest.raises(ValueError):
        cache.get_or_build("../escape", writer(), root=tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from vsr.errors import OutputError

    with pytest.raises(OutputError) as info:
        cache.get_or_build(KEY, writer(), root=blocker / "engines")
    assert info.value.exit_code == 73


# --------------------------------------------------------------------------- real processes
# Workers live at module level so the spawn start method can import them in the child.


def _race_worker(root: str, counter: str, barrier, results) -> None:
    barrier.wait()
    path = cache.get_or_build(KEY, writer(counter=Path(counter), delay=0.5), root=Path(root), timeout=60)
    results.put((os.getpid(), str(path), path.read_bytes() == PAYLOAD))


def _killed_worker(root: str, started: str) -> None:
    def build(tmp: Path):
        tmp.write_bytes(PAYLOAD[:1000])  # half written when the kill comes
        Path(started).write_text("building")
        time.sleep(60)
        tmp.write_bytes(PAYLOAD)

    cache.get_or_build(KEY, build, root=Path(root), timeout=60)


def test_processes_racing_on_one_key_build_once(tmp_path):
    ctx = mp.get_context("spawn")
    count = tmp_path / "count"
    n = 2  # two is the race; each spawned child pays torch's import, so keep it at two
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(tmp_path), str(count), barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in range(n)]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert len(count.read_text().splitlines()) == 1, "exactly one process may build"
    assert {path for _, path, _ in outcomes} == {str(tmp_path / f"{KEY}.engine")}
    assert all(ok for _, _, ok in outcomes)
    assert files.check_artifact(tmp_path / f"{KEY}.engine") == (True, "ok")


def test_builder_killed_mid_build_leaves_nothing_finished(tmp_path):
    ctx = mp.get_context("spawn")
    started = tmp_path / "started"
    proc = ctx.Process(target=_killed_worker, args=(str(tmp_path), str(started)))
    proc.start()
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and proc.is_alive(), "worker never started building"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL

    assert finished_files(tmp_path) == []
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(files.TEMP_SUFFIX)]
    assert leftovers, "the half-written temporary file should still be there before the rebuild"
    assert not files.check_artifact(tmp_path / f"{KEY}.engine")[0]

    # The dead builder's lock went with it: the next call does not wait, rebuilds and cleans up.
    count = tmp_path / "count"
    path = cache.get_or_build(KEY, writer(counter=count), root=tmp_path, timeout=5)
    assert path.read_bytes() == PAYLOAD and len(count.read_text().splitlines()) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(files.TEMP_SUFFIX)]
