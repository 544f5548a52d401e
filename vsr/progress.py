"""Progress reporting for long jobs: a tqdm bar, JSON lines for machines, or nothing.

Reporters are driven from worker threads (``update`` is called by the encode thread), so each
keeps its own lock. The CLI picks one with ``--progress``; library users pass their own callback.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import TextIO

KINDS = ("bar", "json", "none")


class Progress:
    """No output; the base of the real reporters."""

    def start(self, total: int | None) -> None:
        """Begin; ``total`` is a hint (from the container header) and may be None or wrong."""

    def update(self, done: int) -> None:
        """``done`` units finished so far (absolute, not a delta)."""

    def close(self) -> None:
        """End the display (also after a failure)."""


class BarProgress(Progress):
    """A tqdm bar on stderr with frames, frames/s and ETA."""

    def __init__(self, unit: str = "frame", stream: TextIO | None = None):
        self.unit = unit
        self.stream = stream or sys.stderr
        self._bar = None
        self._lock = threading.Lock()

    def start(self, total: int | None) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, unit=self.unit, file=self.stream, dynamic_ncols=True, smoothing=0.1)

    def update(self, done: int) -> None:
        with self._lock:
            if self._bar is not None:
                if self._bar.total is not None and done > self._bar.total:
                    self._bar.total = done  # the header under-counted
                self._bar.update(done - self._bar.n)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None


class JsonProgress(Progress):
    """One JSON object per line: ``{"event": "progress", "done", "total", "fps", "eta_s", "elapsed_s"}``.

    Lines come at most every ``interval`` seconds, and always for the first and last unit.
    """

    def __init__(self, unit: str = "frame", stream: TextIO | None = None, interval: float = 0.5):
        self.unit = unit
        self.stream = stream or sys.stdout
        self.interval = interval
        self._total: int | None = None
        self._started = 0.0
        self._last = -1.0
        self._lock = threading.Lock()

    def start(self, total: int | None) -> None:
        self._total = total
        self._started = time.perf_counter()

    def update(self, done: int) -> None:
        now = time.perf_counter()
        with self._lock:
            final = self._total is not None and done >= self._total
            if done > 1 and not final and now - self._last < self.interval:
                return
            self._last = now
            self.stream.write(json.dumps(progress_record(done, self._total, now - self._started, self.unit)) + "\n")
            self.stream.flush()


def progress_record(done: int, total: int | None, elapsed: float, unit: str = "frame") -> dict:
    """The JSON progress object (pure, for tests and for other front ends)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if total is not None and rate > 0 and total >= done else None
    return {
        "event": "progress",
        "unit": unit,
        "done": done,
        "total": total,
        "fps": round(rate, 3),
        "eta_s": None if eta is None else round(eta, 1),
        "elapsed_s": round(elapsed, 2),
    }


def make(kind: str, unit: str = "frame") -> Progress:
    """The reporter for ``--progress KIND``."""
    if kind == "bar":
        return BarProgress(unit)
    if kind == "json":
        return JsonProgress(unit)
    return Progress()
