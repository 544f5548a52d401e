"""stdout and stderr that a reader going away cannot crash (``vsr run ... --progress json | head -1``).

What vsr does when its stdout or stderr is closed, and why: the product of a run is the output
file, and what vsr prints (progress lines, the summary, warnings) is a view of it. A progress
reader that exits (``head``, a monitor that crashed, an SSH session that dropped) must not throw
away hours of compute, so a write that fails stops all writing to that stream for the rest of the
process; the run finishes and publishes its output, and the exit code is the run's own. One
warning goes to stderr while stderr is still open. The stream's file descriptor is then pointed at
``/dev/null``, so the interpreter's own flush at exit cannot fail either (Python would print
"Exception ignored ... BrokenPipeError" and exit 120). A user who wants the run to stop with the
reader stops the run (Ctrl-C, SIGTERM: exit 130, nothing published).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

log = logging.getLogger(__name__)


class GuardedStream:
    """A text stream whose writes never raise: the first failure (a closed pipe, a hung-up
    terminal, a full disk) marks it lost, and later writes are dropped."""

    def __init__(self, stream: TextIO | None, name: str):
        self._stream = stream
        self.name = name
        self.lost = stream is None  # started with the stream closed (`>&-`)
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                return self._stream.write(text)
            except (OSError, ValueError) as err:  # ValueError: written after someone closed it
                self._lose(err)
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if not self.lost:
            try:
                self._stream.flush()
            except (OSError, ValueError) as err:
                self._lose(err)

    def isatty(self) -> bool:
        if self.lost:
            return False
        try:
            return self._stream.isatty()
        except (OSError, ValueError):
            return False

    def __getattr__(self, name: str) -> Any:  # encoding, errors, fileno, ... of the real stream
        if self._stream is None:
            raise AttributeError(name)
        return getattr(self._stream, name)

    def _lose(self, err: BaseException) -> None:
        with self._lock:
            if self.lost:
                return
            self.lost = True
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            fd = self._stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)
            finally:
                os.close(devnull)
        reason = os.strerror(err.errno) if isinstance(err, OSError) and err.errno else str(err) or type(err).__name__
        log.warning("%s is closed (%s); vsr goes on and writes nothing more there", self.name, reason)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """Replace ``sys.stdout`` and ``sys.stderr`` with :class:`GuardedStream` wrappers for the block
    (the CLI's whole run), and put the real ones back after."""
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = GuardedStream(real_out, "stdout"), GuardedStream(real_err, "stderr")
    try:
        yield
    finally:
        sys.stdout, sys.stderr = real_out, real_err
