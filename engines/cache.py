"""Content-addressed cache of built engine files in ``$VSR_HOME/engines``.

An entry is ``<key>.engine`` plus a sidecar ``<key>.engine.json`` that says the file is complete and
gives its SHA-256. ``key`` is :func:`engine_key`: a hash of everything that decides what a build
produces (the ONNX graph, the whole build configuration, the library versions, the GPU), so a
change to any of them is a different file and a stale engine is never picked up by accident.

Building is done at most once per key, however many processes ask at the same moment: the first
takes an exclusive lock on ``<key>.lock`` and publishes the entry with its sidecar through
:func:`vsr.files.publish_artifact` (a private temporary file, fsync, atomic rename). The others
wait on the lock and then find the finished entry. Every use re-checks the size and SHA-256
against the sidecar (:func:`vsr.files.check_artifact`), so a crash at any point (an exception,
SIGKILL, a power cut) leaves nothing that looks finished, and a damaged entry is rebuilt with a
warning. Correctness does not depend on the lock (private temporary names, atomic renames and the
SHA-256 check make a double build safe, only wasteful); the lock keeps the expensive build from
running twice (see :mod:`vsr.files` for how far ``flock`` reaches on NFS).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..files import check_artifact, file_lock, publish_artifact, sha256_bytes
from ..paths import vsr_home

log = logging.getLogger(__name__)

SUFFIX = ".engine"
# Key schema: bump when the meaning of the hashed fields changes, so old entries are not reused.
KEY_SCHEMA = "vsr-engine-key/1"
# Long enough for a full RRDBNet build at the highest optimisation level on a busy node.
DEFAULT_LOCK_TIMEOUT = 3600.0
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    with file_lock(root / f"{key}.lock", timeout=timeout, what="another process building the same engine"):
        ok, reason_now = check_artifact(path)  # another process may have finished while we waited
        if ok:
            log.debug("engine %s was built by another process while this one waited", path)
            return path
        if reason_now != "not built yet":
            log.warning("cached engine %s is unusable (%s); building it again", path, reason_now)
        started = time.perf_counter()
        try:
            publish_artifact(path, build, key=key)
        except OSError as err:
            raise OutputError(f"cannot write the engine cache {root} ({err.strerror or err}); check free space or set VSR_HOME") from err
        log.info("built engine %s in %.1f s", path, time.perf_counter() - started)
    return path
