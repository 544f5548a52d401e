"""Where vsr keeps its files, and how outputs are published without ever leaving half a file."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

PARTIAL_SUFFIX = ".partial"


def vsr_home() -> Path:
    """The cache root: ``$VSR_HOME``, else ``$XDG_CACHE_HOME/vsr``, else ``~/.cache/vsr``."""
    if os.environ.get("VSR_HOME"):
        return Path(os.environ["VSR_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "vsr"


def partial_path(output: Path) -> Path:
    """``<output>.partial`` in the same folder, so the final rename never crosses filesystems."""
    return output.with_name(output.name + PARTIAL_SUFFIX)


def check_output(output: Path, *, overwrite: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse an output that exists (without ``overwrite``), is a folder, or is one of the inputs."""
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


@contextlib.contextmanager
def publish(output: Path, *, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it onto ``output``, on failure delete it.

    The existence check is repeated at publish time so a file that appeared during a long run is
    not clobbered without ``overwrite``.
    """
    output = Path(output)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create folder {output.parent} ({err.strerror}); check permissions") from err
    tmp = partial_path(output)
    try:
        yield tmp
        if output.exists() and not overwrite:
            raise OutputError(f"output {output} appeared while vsr was running; pass --overwrite to replace it")
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(output: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to ``output`` through a ``.partial`` file and an atomic rename."""
    with publish(output, overwrite=overwrite) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as err:
            raise OutputError(f"cannot write {output} ({err.strerror}); check free space and permissions") from err
