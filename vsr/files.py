"""Every file vsr writes goes through this module: private temporary names, fsync, one atomic
publish, digests with sidecars, claims on outputs and file locks (DESIGN.md section 5).

**Temporary names.** A file is written to ``.<name>.<host>.<pid>.<random>.vsr-tmp`` in its own
folder (so the final rename never crosses file systems), shortened to fit the file system's name
limit (a long ``<name>`` is cut and tagged with a hash of the whole name). Two processes never
share one, and a leftover of a killed process is recognised by its host and pid and removed by
the next vsr process that writes into the same folder (once per folder and process). vsr never deletes or replaces a file whose name it did not make.

**Publishing.** :func:`publish` fsyncs the finished temporary file and gives it its name in one
step: ``os.replace`` where the caller may replace what is there (``--overwrite``, caches, the batch
manifest); otherwise ``os.link``, which fails when the name exists, so a file that appeared while
vsr was working is never clobbered (on file systems without hard links, a check and a rename:
a window of microseconds instead of the run's length).

**Claims.** :func:`claim` makes one process the only vsr writer of an output for as long as it
holds it: an exclusive ``flock`` on ``.<name>.vsr-lock`` beside the output, taken without waiting.
A second ``vsr run`` to the same output stops at once with exit 73 naming the first; so at most
one of them publishes, and the one that says "done" is the one whose file is at the path. The lock
file is removed by its holder; the kernel drops the lock when a holder dies, even by SIGKILL.

**Digests.** An artifact (a cached engine, converted weights, a batch piece, a checkpoint) carries
a sidecar ``<file>.json`` with its size and SHA-256; :func:`check_artifact` recomputes them on
every use, so a damaged file is never trusted on its name.

**Locks.** :func:`file_lock` is a waiting exclusive lock (caches building one entry, the batch
manifest). ``fcntl.flock`` is exact on local file systems; on NFS, Linux maps it to POSIX locks
through the lock manager (not with ``nolock`` mounts). Without ``fcntl`` (Windows) only threads of
one process are excluded; the atomic renames and digests keep files whole regardless.
"""

from __future__ import annotations

import contextlib
import errno
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import OutputError, TransientError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".vsr-tmp"
LOCK_SUFFIX = ".vsr-lock"
_LOCK_MAGIC = "vsr output lock"
_CHUNK = 1 << 20
# Host names go into temporary names: letters, digits and '-' only, at most 64 characters.
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "host")[:64]


def now_iso() -> str:
    """UTC time in ISO 8601 with seconds, for records and sidecars."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- names


def name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system holding ``folder`` (or its nearest existing
    ancestor) allows; 255 when it does not say."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def fit_name(name: str, suffix: str, limit: int) -> str:
    """``name + suffix`` when it fits in ``limit`` bytes (UTF-8); otherwise ``name`` cut at a
    character boundary and tagged ``~<8 hex of its SHA-256>`` so two long names stay apart."""
    if len((name + suffix).encode()) <= limit:
        return name + suffix
    tag = "~" + hashlib.sha256(name.encode()).hexdigest()[:8]
    room = limit - len((tag + suffix).encode())
    if room < 1:
        raise ValueError(f"no room for a name with suffix {suffix!r} in {limit} bytes")
    cut = name.encode()[:room].decode("utf-8", errors="ignore")
    return cut + tag + suffix


def check_name(path: Path) -> None:
    """Refuse (exit 73) an output whose file name the file system cannot hold."""
    path = Path(path)
    size, limit = len(path.name.encode()), name_max(path.parent)
    if size > limit:
        raise OutputError(f"output name {path.name[:40]}... is {size} bytes long and the file system allows {limit}; choose a shorter name")


def temp_path(path: Path) -> Path:
    """A private temporary name beside ``path`` that fits the file system's name limit."""
    path = Path(path)
    tail = f".{HOST}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"
    return path.with_name(fit_name("." + path.name, tail, name_max(path.parent)))


def lock_path(path: Path) -> Path:
    """``.<name>.vsr-lock`` beside ``path`` (shortened like temporary names)."""
    return hidden_companion(path, LOCK_SUFFIX)


def hidden_companion(path: Path, suffix: str) -> Path:
    """``.<name><suffix>`` beside ``path``, shortened like temporary names: the name of something
    vsr keeps beside an output while it works on it (its lock, ``vsr run``'s checkpoints)."""
    path = Path(path)
    return path.with_name(fit_name("." + path.name, suffix, name_max(path.parent)))


# Folders whose leftovers this process has cleared: once per folder is enough (a dead process
# writes nothing more), and a folder of thousands of images is listed once, not once per image.
_swept: set[str] = set()
_swept_guard = threading.Lock()


def remove_stale_temps(path: Path) -> None:
    """Delete the temporary files in ``path``'s folder left by vsr processes of this host that
    are gone (once per folder and process).

    Only names of :func:`temp_path`'s pattern are touched; another host's may still be in use
    (shared storage), and this process's own belong to a write still under way."""
    folder = Path(path).parent
    key = os.path.abspath(folder)
    with _swept_guard:
        if key in _swept:
            return
        _swept.add(key)
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX)]
    except OSError:
        return
    for name in names:
        parts = name[: -len(TEMP_SUFFIX)].rsplit(".", 3)  # [.<name cut>, host, pid, random]
        if len(parts) != 4 or parts[1] != HOST or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid == os.getpid() or pid_alive(pid):
            continue
        log.info("removing %s, left by an interrupted vsr process", folder / name)
        with contextlib.suppress(OSError):
            (folder / name).unlink()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, under another user
        return True
    return True


# --------------------------------------------------------------------------- output checks


def check_output(output: Path, *, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse, before any work (exit 73), an output that exists (without ``overwrite``), is a
    folder, is one of the inputs, has a name the file system cannot hold, or lies where nothing
    can be written."""
    output = Path(output)
    check_name(output)  # first: the stat calls below fail on a name the file system cannot hold
    for inp in inputs:
        with contextlib.suppress(OSError):
            if output.exists() and output.samefile(inp):
                raise OutputError(f"output {output} is the input file; choose another output path")
    if output.is_dir():
        raise OutputError(f"output {output} is an existing folder; give a file name")
    # Fail before any work if the folder cannot be made or written (as root, access() says yes).
    ancestor = output.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"cannot create output {output}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create output {output}: {ancestor} is not writable; choose another place")
    if output.exists() and not overwrite:
        raise OutputError(f"output {output} already exists; pass --overwrite to replace it")


def make_folder(folder: Path) -> None:
    """``mkdir -p`` with the exit-73 error vsr gives for an output folder it cannot create."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create folder {folder} ({err.strerror or err}); check permissions") from err


# --------------------------------------------------------------------------- claims


@dataclass
class _Claim:
    thread: int
    depth: int


_claims: dict[str, _Claim] = {}
_claims_guard = threading.Lock()


@contextlib.contextmanager
def claim(path: Path, *, make_folder_now: bool = True) -> Iterator[None]:
    """Hold ``path`` as this process's output until the block ends; exit 73 at once when another
    vsr process (or another thread here) holds it. Re-entrant in one thread.

    ``make_folder_now=False`` is for a claim taken before the work starts: where the folder does
    not exist yet, nobody can be writing there, so nothing is created and :func:`publish` takes
    the claim when it makes the folder.
    """
    path = Path(path)
    key = os.path.abspath(path)
    with _claims_guard:
        held = _claims.get(key)
        if held is not None:
            if held.thread != threading.get_ident():
                raise OutputError(f"another thread of this process is writing {path}; write each output once")
            held.depth += 1
    if held is not None:
        try:
            yield
        finally:
            with _claims_guard:
                held.depth -= 1
        return
    if not make_folder_now and not path.parent.is_dir():
        yield
        return
    make_folder(path.parent)
    fd = _lock_output(path)
    with _claims_guard:
        _claims[key] = _Claim(threading.get_ident(), 1)
    try:
        yield
    finally:
        with _claims_guard:
            _claims.pop(key, None)
        if fd is not None:
            _release_output(path, fd)


def _lock_output(path: Path) -> int | None:
    """The open, flocked lock file of ``path`` (None where locks do not work here)."""
    try:
        import fcntl
    except ImportError:  # Windows: temporary names and the no-clobber publish are all there is
        return None
    lock = lock_path(path)
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise OutputError(f"cannot create output {path} ({err.strerror or err}); check the folder's permissions") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_lock(fd)
            os.close(fd)
            who = f" ({holder})" if holder else ""
            raise OutputError(f"another vsr process{who} is writing {path}; wait for it to finish or choose another output") from None
        except OSError as err:  # ENOLCK: a file system without locks; the publish still never clobbers
            os.close(fd)
            log.warning("cannot lock %s (%s); going on without excluding other vsr runs", lock, err.strerror or err)
            return None
        # The holder before us may have removed the file after we opened it: lock the one at the path.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    text = _read_lock(fd)
    if text is None:
        os.close(fd)
        raise OutputError(f"{lock} exists and is not a vsr lock file; move it away to write {path}")
    record = f"{_LOCK_MAGIC}: pid {os.getpid()} on {HOST} since {now_iso()}\n".encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, record, 0)
    return fd


def _read_lock(fd: int) -> str | None:
    """Who holds a lock file (``pid N on HOST since T``); "" when empty; None when it is not vsr's."""
    try:
        data = os.pread(fd, 4096, 0)
    except OSError:
        return ""
    if not data:
        return ""
    text = data.decode("utf-8", errors="replace").strip()
    if not text.startswith(_LOCK_MAGIC + ":"):
        return None
    return text[len(_LOCK_MAGIC) + 1 :].strip()


def _release_output(path: Path, fd: int) -> None:
    # Removed while still locked, so a process waiting to open it finds it gone (and retries)
    # rather than locking a file nobody else sees.
    with contextlib.suppress(OSError):
        os.unlink(lock_path(path))
    os.close(fd)


# --------------------------------------------------------------------------- publishing


@contextlib.contextmanager
def _writing(path: Path, claim_output: bool) -> Iterator[Callable[[Path], Path]]:
    """The frame of every write: the folder made, the name checked, ``path`` claimed if asked;
    yields a maker of temporary names (for ``path`` and its companions) that are all removed when
    the block ends, whatever happened, unless they were published."""
    path = Path(path)
    make_folder(path.parent)
    check_name(path)
    made: list[Path] = []

    def new_temp(target: Path) -> Path:
        remove_stale_temps(target)
        made.append(temp_path(target))
        return made[-1]

    with claim(path) if claim_output else contextlib.nullcontext():
        try:
            yield new_temp
        finally:
            for tmp in made:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()


@contextlib.contextmanager
def publish(path: Path, *, overwrite: bool, claim_output: bool = True) -> Iterator[Path]:
    """Yield a private temporary path to write ``path``'s content to; when the block ends without
    an error, fsync it and publish it at ``path`` (see the module notes); on any error remove it.

    Without ``overwrite`` a file at ``path`` is never replaced, even one that appeared while the
    block ran (exit 73). ``claim_output`` holds :func:`claim` on ``path`` meanwhile; callers that
    already exclude other writers (a cache under its key lock, the manifest under its lock) pass
    False.
    """
    path = Path(path)
    with _writing(path, claim_output) as new_temp:
        tmp = new_temp(path)
        yield tmp
        if not tmp.is_file():
            raise RuntimeError(f"nothing was written to {tmp}")
        fsync_file(tmp)
        place(tmp, path, overwrite=overwrite)
        fsync_dir(path.parent)


def place(tmp: Path, path: Path, *, overwrite: bool) -> None:
    """Give the finished file ``tmp`` the name ``path`` atomically; without ``overwrite`` never
    replace a file that is there (exit 73)."""
    try:
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _appeared(path) from None
        except OSError as err:
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS, errno.EXDEV):
                raise
            # No hard links here (FAT, some network and FUSE file systems): check, then rename.
            if os.path.lexists(path):
                raise _appeared(path) from None
            os.replace(tmp, path)
            return
        os.unlink(tmp)
    except OutputError:
        raise
    except OSError as err:
        raise OutputError(f"cannot publish {path} ({err.strerror or err}); check free space and permissions") from err


def _appeared(path: Path) -> OutputError:
    return OutputError(f"output {path} appeared while vsr was writing it and was left as it is; pass --overwrite to replace it")


def write_bytes(path: Path, data: bytes | bytearray | memoryview, *, overwrite: bool, claim_output: bool = True) -> None:
    """Write ``data`` to ``path`` through :func:`publish`."""
    with publish(path, overwrite=overwrite, claim_output=claim_output) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
        except OSError as err:
            raise OutputError(f"cannot write {path} ({err.strerror or err}); check free space and permissions") from err


def write_text(path: Path, text: str, *, overwrite: bool = True, claim_output: bool = False) -> None:
    """Write UTF-8 ``text`` to ``path`` through :func:`publish` (default: a file vsr owns, replaced)."""
    write_bytes(path, text.encode("utf-8"), overwrite=overwrite, claim_output=claim_output)


def write_json(path: Path, obj: Any, *, overwrite: bool = True, claim_output: bool = False, indent: int = 2) -> None:
    """Write ``obj`` as sorted, indented JSON through :func:`publish`."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n", overwrite=overwrite, claim_output=claim_output)


def fsync_file(path: Path) -> None:
    """Flush a file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (not every file system lets a folder be fsynced)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- digests and sidecars


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """SHA-256 of ``data`` in lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file's content in lowercase hex, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    """(usable, reason): ``path`` exists, its sidecar says complete, and its size and SHA-256 are
    the sidecar's (recomputed now: a damaged file is never trusted on its name)."""
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
    claim_output: bool = False,
) -> dict[str, Any]:
    """Run ``build(tmp)`` and publish its output at ``path`` with a sidecar; returns the sidecar.

    ``build`` writes the artifact to ``tmp`` and may return metadata to keep in the sidecar. The
    file is fsynced, its size and SHA-256 go into the sidecar, and both are published (artifact
    first: in between, an old sidecar names another digest, so a reader sees "damaged" rather
    than trusting a mismatched pair). On any failure nothing is published.
    """
    path = Path(path)
    side = sidecar_path(path)
    with _writing(path, claim_output) as new_temp:
        tmp, side_tmp = new_temp(path), new_temp(side)
        extra = build(tmp)
        if not tmp.is_file():
            raise RuntimeError(f"the build callback wrote nothing to {tmp}")
        fsync_file(tmp)
        meta = dict(extra or {})
        meta.update(complete=True, sha256=sha256_file(tmp), size=tmp.stat().st_size, key=key, created=now_iso())
        with open(side_tmp, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        place(tmp, path, overwrite=overwrite)
        place(side_tmp, side, overwrite=True)
        fsync_dir(path.parent)
    return meta


def remove_artifact(path: Path) -> None:
    """Delete an artifact vsr made and its sidecar (missing ones are fine)."""
    for p in (Path(path), sidecar_path(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


# --------------------------------------------------------------------------- waiting locks

# flock excludes other open files, also in this process, but a per-path thread lock avoids needless
# polling between threads of one process (and is the only guard where fcntl is missing).
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


@contextlib.contextmanager
def file_lock(path: Path, *, timeout: float, what: str = "another vsr process") -> Iterator[None]:
    """Exclusive lock on the file ``path`` (created if needed; never deleted, since removing it
    while another process waits would let two in), waiting up to ``timeout`` seconds, then exit 75.
    ``what`` says in the log and the error who is expected to hold it."""
    deadline = time.monotonic() + max(0.0, timeout)
    with _thread_locks_guard:
        tlock = _thread_locks.setdefault(os.path.abspath(path), threading.Lock())
    if not tlock.acquire(timeout=max(0.0, timeout)):
        raise _lock_timeout(path, timeout, what)
    try:
        try:
            import fcntl
        except ImportError:
            yield
            return
        try:
            fh = open(path, "a+b")  # noqa: SIM115 - held open for the lock's lifetime
        except OSError as err:
            raise OutputError(f"cannot create the lock file {path} ({err.strerror or err}); check the folder's permissions") from err
        with fh:
            _flock(fcntl, fh, Path(path), deadline, timeout, what)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    finally:
        tlock.release()


def _flock(fcntl, fh, path: Path, deadline: float, timeout: float, what: str) -> None:
    delay, logged = 0.01, False
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        except OSError as err:  # ENOLCK on a file system without lock support: go on unlocked
            log.warning("cannot lock %s (%s); going on without the lock", path, err.strerror or err)
            return
        if not logged:
            log.info("waiting for %s (lock %s)", what, path)
            logged = True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _lock_timeout(path, timeout, what)
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)


def _lock_timeout(path: Path, timeout: float, what: str) -> TransientError:
    return TransientError(f"timed out after {timeout:g} s waiting for the lock {path} ({what}); try again later")
