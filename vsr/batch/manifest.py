"""The batch job manifest (``<output dir>/vsr-batch.json``) and the file locks batch workers share.

The manifest is one JSON object, ``{"schema": ..., "jobs": {job_id: record}}``. Every change is a
read-modify-write of the whole file under an exclusive ``fcntl.flock`` on ``.vsr-batch.lock`` in the
same folder, published through :func:`vsr.files.publish` (a private temporary file, fsync, rename), so readers
never see half a file and two workers (or two nodes sharing the storage) never lose each other's
updates. Readers need no lock.

A record (see :func:`new_record`) holds the input and output paths, the input's size+mtime
fingerprint, the options fingerprint, ``state`` (queued, running, done, failed), ``attempts``, the
last ``exit_code`` and ``error`` line, the output's SHA-256, frame count and timings.

:func:`decide` is the resume rule: a job is skipped only when its output exists and hashes to the
SHA-256 the manifest recorded (verified, not assumed) for the same input and options; a job that
failed with exit 65/66 (bad or missing input) is not tried again until the input changes.

Leases (:class:`Lease`) are ``flock``-ed files, one per job or segment: whoever holds it processes
that unit; the kernel drops the lock when the holder dies, even by SIGKILL, so a crashed unit is
free again at once. On NFS, ``flock`` is mapped to POSIX locks through the NFS lock manager and
excludes across nodes as far as that does (not with ``nolock`` mounts); see :mod:`vsr.files`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ..errors import OutputError
from ..files import file_lock, now_iso, sha256_file, write_json
from ..media.options import VideoOptions
from ..media.plan import PictureOptions

log = logging.getLogger(__name__)

MANIFEST_NAME = "vsr-batch.json"
LOCK_NAME = ".vsr-batch.lock"
SCHEMA = "vsr-batch/1"
STATES = ("queued", "running", "done", "failed")
# Bad or missing input: trying again cannot help until the file changes.
NO_RETRY = frozenset({65, 66})
# Failures a retry in the same run may fix (an internal error, I/O, out of memory, a lock timeout).
RETRY_IN_RUN = frozenset({1, 74, 75})
# Worst first: the batch's exit code is the first of these among its failures. Retryable classes
# come before permanent ones so a scheduler re-queues a shard that still has work it can finish.
SEVERITY = (130, 1, 69, 74, 75, 73, 78, 2, 66, 65)
LOCK_TIMEOUT = 120.0


def worst_exit_code(codes) -> int:
    """The batch's exit code for these per-job failure codes (0 when there are none)."""
    codes = [c for c in codes if c]
    if not codes:
        return 0
    rank = {code: i for i, code in enumerate(SEVERITY)}
    return min(codes, key=lambda c: rank.get(c, -1))  # an unknown code counts as worst


def input_fingerprint(path: Path) -> dict[str, int] | None:
    """Size and mtime (ns) of ``path``; None when it does not exist. Cheap, and changes when a file is
    replaced or re-copied, which is what decides whether an old result still applies."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def options_fingerprint(options: Mapping[str, Any]) -> str:
    """SHA-256 (16 hex digits) of the processing options as canonical JSON."""
    text = json.dumps(options, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def options_record(video: VideoOptions, model: Mapping[str, Any]) -> dict[str, Any]:
    """What of a run's options changes its output: the encode settings, the picture options, the
    trim, ``--dedup auto`` and the model (``model``: :meth:`vsr.compute.ComputeSpec.fingerprint`).
    Hashed by :func:`options_fingerprint` for the manifest and the pieces of ``vsr batch`` and the
    checkpoints of ``vsr run`` (:mod:`vsr.resume`)."""
    record = {"settings": asdict(video.settings), "outscale": video.outscale, "decoder": video.decoder, "model": dict(model)}
    # Only when set, so that manifests written before these options existed still match.
    if video.picture != PictureOptions():
        record["picture"] = asdict(video.picture)
    if video.trim is not None and video.trim.active:
        record["trim"] = video.trim.fingerprint()
    if video.dedup == "auto":  # exact reuse computes the same pictures as off
        record["dedup"] = video.dedup
    return record


def new_record(source: Path, target: Path, *, input_fp, options_fp: str) -> dict[str, Any]:
    return {
        "input": str(source), "output": str(target), "input_fingerprint": input_fp, "options": options_fp,
        "state": "queued", "attempts": 0, "exit_code": None, "error": None, "sha256": None,
        "frames": None, "seconds": None, "fps": None, "segments": None,
        "queued_at": now_iso(), "started_at": None, "finished_at": None, "host": None, "pid": None,
    }


# --------------------------------------------------------------------------- locks


class Lease:
    """A non-blocking claim on one unit of work (a job or a segment), held until :meth:`release`.

    ``acquire()`` returns False at once when another process (here or on another node sharing the
    folder) holds it. The lease file records who holds it, for people looking at a stuck batch.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = None

    def acquire(self) -> bool:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: no cross-process exclusion
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+")  # noqa: SIM115 - kept open while held
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        except OSError as err:
            log.warning("cannot lock %s (%s); going on without the lease", self.path, err.strerror or err)
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": now_iso()}) + "\n")
        fh.flush()
        self._fh = fh
        return True

    def release(self) -> None:
        # The file stays: deleting it while another process waits on it would let two holders in.
        if self._fh is not None:
            with contextlib.suppress(OSError):
                self._fh.close()
            self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------- the manifest


class Manifest:
    """``vsr-batch.json`` in ``folder``; all writes are locked read-modify-writes."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_NAME
        self.lock_path = self.folder / LOCK_NAME

    def read(self) -> dict[str, Any]:
        """The whole manifest (an empty one when there is none yet)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"schema": SCHEMA, "jobs": {}}
        except (OSError, UnicodeDecodeError, ValueError) as err:
            # Only an outside edit can do this (writes are atomic); every job is then re-verified.
            log.warning("batch manifest %s is unreadable (%s); starting a new one", self.path, err)
            return {"schema": SCHEMA, "jobs": {}}
        if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
            log.warning("batch manifest %s has an unknown layout; starting a new one", self.path)
            return {"schema": SCHEMA, "jobs": {}}
        return data

    def jobs(self) -> dict[str, dict[str, Any]]:
        return self.read()["jobs"]

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self.jobs().get(job_id)

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into one job's record (created if missing); returns the new record."""
        return self.update_many({job_id: fields})[job_id]

    def update_many(self, changes: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        """Merge several records' fields in one locked write; returns the changed records."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"cannot create the output folder {self.folder} ({err.strerror or err}); check permissions") from err
        with file_lock(self.lock_path, timeout=LOCK_TIMEOUT, what="another worker updating the batch manifest"):
            data = self.read()
            data["schema"] = SCHEMA
            jobs = data["jobs"]
            for job_id, fields in changes.items():
                record = jobs.setdefault(job_id, {})
                record.update(fields)
                if record.get("state") not in (None, *STATES):
                    raise ValueError(f"bad job state {record.get('state')!r}")
            self._write(data)
            return {job_id: dict(jobs[job_id]) for job_id in changes}

    def _write(self, data: dict[str, Any]) -> None:
        # Under the manifest lock: replacing the file is ours to do, and no output claim is needed.
        try:
            write_json(self.path, data, indent=1)
        except OutputError as err:
            raise OutputError(f"cannot write the batch manifest {self.path} ({err}); check free space") from err


# --------------------------------------------------------------------------- the resume rule


def decide(record: Mapping[str, Any] | None, *, target: Path, input_fp, options_fp: str, overwrite: bool) -> tuple[str, str]:
    """What to do with a job now: ``("skip", why)``, ``("run", why)`` or ``("fail", why)``.

    * done before, same input and options, output present with the recorded SHA-256: skip;
    * failed before with exit 65/66 and the input unchanged: fail again without trying;
    * an output that exists but is not in the manifest is refused (exit 73) unless ``overwrite``;
      one this batch published (``owned`` in its record) is redone when it no longer verifies;
    * anything else (queued, running when a run crashed, failed with a retryable code): run.
    """
    target = Path(target)
    if target.exists() and not overwrite and not (record or {}).get("owned"):
        return "fail", f"output {target} already exists and is not from this batch; pass --overwrite to replace it"
    if record is None:
        return "run", "new"
    same_input = record.get("input_fingerprint") == input_fp
    same_options = record.get("options") == options_fp
    if not same_input:
        return "run", "the input changed"
    if not same_options:
        return "run", "the options changed"
    state = record.get("state")
    if state == "done":
        if not target.exists():
            return "run", "the output is missing"
        try:
            actual = sha256_file(target)
        except OSError as err:
            return "run", f"the output is unreadable ({err.strerror or err})"
        if actual != record.get("sha256"):
            return "run", "the output's sha256 differs from the manifest (changed or damaged)"
        return "skip", "done, output verified (sha256)"
    if state == "failed" and record.get("exit_code") in NO_RETRY:
        return "fail", record.get("error") or f"failed with exit {record.get('exit_code')}"
    return "run", f"{state or 'unknown'} before"
