"""Content-addressed cache of built engine files in ``$VSR_HOME/engines``.

An entry is ``<key>.engine`` plus a sidecar ``<key>.engine.json`` that says the file is complete and
gives its SHA-256. ``key`` is :func:`engine_key`: a hash of everything that decides what a build
produces (the ONNX graph, the whole build configuration, the library versions, the GPU), so a
change to any of them is a different file and a stale engine is never picked up by accident.

Building is done at most once per key, however many processes ask at the same moment: the first
takes an exclusive lock on ``<key>.lock``, builds into a private temporary file in the same folder,
fsyncs it, writes the sidecar and renames both into place. The others wait on the lock and then
find the finished entry. A reader never trusts a file without its sidecar and a matching SHA-256,
so a crash at any point (an exception, SIGKILL, a power cut) leaves nothing that looks finished,
and a damaged entry is rebuilt.

Locking uses ``fcntl.flock``. On local filesystems that is exact. On NFS, Linux maps ``flock`` to
POSIX byte-range locks held through the NFS lock manager, so it works across nodes as far as
``fcntl`` locks do there; with a ``nolock`` (or ``local_lock=all``) mount the lock only excludes
processes on the same node. Correctness does not depend on the lock (private temporary names,
atomic renames and the SHA-256 check make a double build safe, only wasteful); the lock only keeps
the expensive build from running twice. Without ``fcntl`` (Windows) only threads of one process are
serialised. Lock files are tiny and are never deleted: removing one while another process waits
on it would let two builders in.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import OutputError, TransientError
from ..paths import vsr_home

log = logging.getLogger(__name__)

SUFFIX = ".engine"
# Key schema: bump when the meaning of the hashed fields changes, so old entries are not reused.
KEY_SCHEMA = "vsr-engine-key/1"
# Long enough for a full RRDBNet build at the highest optimisation level on a busy node.
DEFAULT_LOCK_TIMEOUT = 3600.0
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20

# flock excludes other open files, also in this process, but a per-key thread lock avoids
# needless polling between threads of one process (and is the only guard where fcntl is missing).
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def cache_dir() -> Path:
    """Folder of the engine cache: ``$VSR_HOME/engines``."""
    return vsr_home() / "engines"


# --------------------------------------------------------------------------- keys


def canonical_json(obj: Any) -> str:
    """Deterministic JSON: sorted keys, no spaces, tuples as lists, paths as strings, and floats
    with an integral value written as integers (``4.0`` and ``4`` hash the same)."""
    return json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"engine key fields must have string keys, got {k!r}")
            out[k] = _canonical(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return int(obj) if obj.is_integer() else obj
    if isinstance(obj, os.PathLike):
        return Path(obj).as_posix()
    raise TypeError(f"engine key fields must be JSON-like, got {type(obj).__name__} {obj!r}")


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def engine_key(onnx: bytes | bytearray | memoryview | str, config: Mapping[str, Any], versions: Mapping[str, Any], device: Mapping[str, Any]) -> str:
    """SHA-256 (hex) naming the engine built from ``onnx`` with ``config`` by ``versions`` on ``device``.

    ``onnx`` is the ONNX file's bytes or their SHA-256 in hex (64 lowercase digits); both give the
    same key. ``config`` is the whole build configuration, ``versions`` the library versions
    (tensorrt, cuda, torch, ...), ``device`` the GPU name and compute capability. Dict order does
    not matter; every value does.
    """
    if isinstance(onnx, str):
        if not _SHA256.fullmatch(onnx):
            raise ValueError(f"onnx must be the ONNX bytes or their sha256 in lowercase hex, got {onnx[:80]!r}")
        onnx_sha = onnx
    else:
        onnx_sha = sha256_bytes(onnx)
    payload = {"schema": KEY_SCHEMA, "onnx_sha256": onnx_sha, "config": config, "versions": versions, "device": device}
    return sha256_bytes(canonical_json(payload).encode("ascii"))


def model_digest(model) -> str:
    """SHA-256 over a model's spec and every tensor of its state dict (names, dtypes, shapes, bytes)."""
    import torch

    digest = hashlib.sha256(repr(model.spec).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


# --------------------------------------------------------------------------- sidecars


def sidecar_path(path: Path) -> Path:
    """``<path>.json``: the JSON that says ``path`` is complete and what it holds."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar of ``path`` as a dict, or None when missing or not a JSON object."""
    try:
        meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check_artifact(path: Path) -> tuple[bool, str]:
    """(usable, reason): ``path`` exists, its sidecar says complete, and size and SHA-256 match."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False, "not built yet"
    except OSError as err:
        return False, f"unreadable ({err.strerror or err})"
    meta = read_sidecar(path)
    if meta is None:
        return False, "no readable sidecar"
    if meta.get("complete") is not True:
        return False, "sidecar does not say complete"
    if meta.get("size") != size:
        return False, f"size {size} differs from the sidecar's {meta.get('size')}"
    try:
        actual = sha256_file(path)
    except OSError as err:
        return False, f"unreadable ({err.strerror or err})"
    if actual != meta.get("sha256"):
        return False, "sha256 differs from the sidecar (damaged file)"
    return True, "ok"


def publish_artifact(
    path: Path,
    build: Callable[[Path], Mapping[str, Any] | None],
    *,
    key: str | None = None,
    overwrite: bool = True,
) -> dict[str, Any]:
    """Run ``build(tmp)`` and publish its output at ``path`` with a sidecar; returns the sidecar.

    ``build`` writes the artifact to ``tmp`` (a private name in the same folder) and may return a
    dict of metadata to keep in the sidecar. The file is fsynced, the sidecar written, and both are
    renamed into place; on any failure the temporary files are removed and nothing is published.
    Does no locking: :func:`get_or_build` calls it under the key's lock.
    """
    path = Path(path)
    tmp = temp_path(path)
    side_tmp = temp_path(sidecar_path(path))
    try:
        extra = build(tmp)
        if not tmp.is_file():
            raise RuntimeError(f"engine build callback wrote nothing to {tmp}")
        _fsync_file(tmp)
        digest, size = sha256_file(tmp), tmp.stat().st_size
        meta = dict(extra or {})
        meta.update(
            complete=True,
            sha256=digest,
            size=size,
            key=key,
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        with open(side_tmp, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        if not overwrite and path.exists():
            raise OutputError(f"output {path} appeared while vsr was building it; pass --overwrite to replace it")
        # Artifact first, sidecar second: in between, the old sidecar (if any) names another
        # SHA-256, so a reader sees "damaged" rather than trusting a mismatched pair.
        os.replace(tmp, path)
        os.replace(side_tmp, sidecar_path(path))
        _fsync_dir(path.parent)
        return meta
    finally:
        for leftover in (tmp, side_tmp):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


# --------------------------------------------------------------------------- get or build


def get_or_build(
    key: str,
    build: Callable[[Path], Mapping[str, Any] | None],
    *,
    root: Path | None = None,
    timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Path:
    """Path of the cached artifact ``<root>/<key>.engine``, building it with ``build(tmp)`` if needed.

    ``build`` writes the artifact to the given temporary path and may return metadata for the
    sidecar. It runs at most once per key across processes and threads; a caller that finds
    another build in progress waits up to ``timeout`` seconds for it (then ``TransientError``,
    exit 75). A damaged or unfinished entry is rebuilt. An exception from ``build`` propagates and
    leaves the cache as it was.
    """
    if not _KEY.fullmatch(key):
        raise ValueError(f"engine cache key must be letters, digits, '.', '_' or '-', got {key!r}")
    root = Path(root) if root is not None else cache_dir()
    path = root / f"{key}{SUFFIX}"
    ok, _ = check_artifact(path)
    if ok:
        log.debug("engine cache hit %s", path)
        return path
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the engine cache {root} ({err.strerror or err}); set VSR_HOME to a writable folder") from err
    with _key_lock(root, key, timeout):
        ok, reason_now = check_artifact(path)  # another process may have finished while we waited
        if ok:
            log.debug("engine %s was built by another process while this one waited", path)
            return path
        if reason_now != "not built yet":
            log.warning("cached engine %s is unusable (%s); building it again", path, reason_now)
        _remove_stale_tmp(root, key)
        started = time.perf_counter()
        try:
            publish_artifact(path, build, key=key)
        except OSError as err:
            raise OutputError(f"cannot write the engine cache {root} ({err.strerror or err}); check free space or set VSR_HOME") from err
        log.info("built engine %s in %.1f s", path, time.perf_counter() - started)
    return path


@contextlib.contextmanager
def _key_lock(root: Path, key: str, timeout: float) -> Iterator[None]:
    deadline = time.monotonic() + max(0.0, timeout)
    lock_path = root / f"{key}.lock"
    with _thread_locks_guard:
        tlock = _thread_locks.setdefault(str(lock_path), threading.Lock())
    if not tlock.acquire(timeout=max(0.0, timeout)):
        raise _lock_timeout(lock_path, timeout)
    try:
        try:
            import fcntl
        except ImportError:  # Windows: the thread lock and the atomic renames are all there is
            yield
            return
        try:
            fh = open(lock_path, "a+b")  # noqa: SIM115 - held open for the lock's lifetime
        except OSError as err:
            raise OutputError(f"cannot create the lock file {lock_path} ({err.strerror or err}); set VSR_HOME to a writable folder") from err
        with fh:
            _flock(fcntl, fh, lock_path, deadline, timeout)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        tlock.release()


def _flock(fcntl, fh, lock_path: Path, deadline: float, timeout: float) -> None:
    delay, waited_logged = 0.02, False
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as err:  # ENOLCK on a filesystem without lock support: go on unlocked
            log.warning("cannot lock %s (%s); building without the lock", lock_path, err.strerror or err)
            return
        if not waited_logged:
            log.info("waiting for another process building the same engine (lock %s)", lock_path)
            waited_logged = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _lock_timeout(lock_path, timeout)
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)


def _lock_timeout(lock_path: Path, timeout: float) -> TransientError:
    return TransientError(
        f"timed out after {timeout:g} s waiting for the engine cache lock {lock_path}"
        " (another process is building the same engine); try again later"
    )


# Temporary names carry host and pid, so a later builder can tell which are left by dead processes.
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:64]


def temp_path(path: Path) -> Path:
    """A private temporary name next to ``path`` (same folder, so ``os.replace`` is atomic)."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _remove_stale_tmp(root: Path, key: str) -> None:
    """Delete temporary files of ``key`` left by dead processes on this host (we hold the lock)."""
    for tmp in root.glob(f".{key}{SUFFIX}*.tmp"):
        parts = tmp.name[: -len(".tmp")].rsplit(".", 3)
        if len(parts) != 4 or parts[1] != _HOST or not parts[2].isdigit():
            continue  # another host's: it may still be building (see the NFS note above)
        pid = int(parts[2])
        if pid != os.getpid() and _pid_alive(pid):
            continue
        log.info("removing %s left by an interrupted build", tmp)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    # Makes the renames durable; not every filesystem (or OS) lets a folder be fsynced.
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
