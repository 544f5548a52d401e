"""What the batch coordinator hands to workers and gets back: the units of work and their results,
and the protocol every executor follows.

This module is the bottom of ``vsr.batch``: the coordinator (:mod:`vsr.batch.run`), the unit
runner (:mod:`vsr.batch.worker`) and the executors (:mod:`vsr.batch.local_executor`,
:mod:`vsr.batch.ray_executor`) all depend on it, and it depends on none of them. Everything here
is pickled into worker processes and Ray actors, so it stays plain frozen data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..media.options import VideoOptions

if TYPE_CHECKING:
    from .segments import Segment


class UpscalerFactory(Protocol):
    """What builds a worker's Upscaler (:class:`vsr.compute.ComputeSpec` is one): picklable,
    called once per worker; ``threads`` is the cores the pool splits between its workers (None:
    all), :meth:`for_worker` the factory for one of them, :meth:`fingerprint` what the manifest
    records of it (a change starts the jobs over)."""

    threads: int | None

    def __call__(self) -> Any:
        """A new :class:`vsr.upscale.Upscaler`."""

    def for_worker(self, index: int) -> UpscalerFactory:
        """The factory worker ``index`` calls (its GPU, no thread count of its own)."""

    def fingerprint(self) -> dict[str, Any]:
        """The options that change the output, as plain data."""


@dataclass(frozen=True)
class BatchOptions:
    """The processing options of every job: the ``vsr run`` video flags (every job is cut the same
    way by ``video.trim``: previews of a whole folder) and the outputs' container."""

    video: VideoOptions = VideoOptions()
    output_ext: str | None = None  # default: the input's when vsr writes it, else .mkv


@dataclass(frozen=True)
class Job:
    """One input and the output it is written to; ``job_id`` names it in the manifest."""

    job_id: str
    source: Path
    target: Path


@dataclass(frozen=True)
class Unit:
    """One piece of work: a whole ``file``, one ``segment`` of a long input, or the ``join`` of its pieces."""

    kind: str  # "file" | "segment" | "join"
    job: Job
    options: BatchOptions
    overwrite: bool
    segment: Segment | None = None
    pieces: tuple[Path, ...] = ()
    piece_extra: dict | None = None
    options_fp: str | None = None

    @property
    def key(self) -> str:
        return f"{self.job.job_id}/{self.kind}" + (f"/{self.segment.index:04d}" if self.segment is not None else "")


@dataclass
class UnitResult:
    """What a worker reports for a unit (``busy``: another process held its lease)."""

    key: str
    job_id: str
    kind: str
    ok: bool
    exit_code: int = 0
    error: str | None = None
    frames: int = 0
    seconds: float = 0.0
    reused: bool = False
    busy: bool = False
    sha256: str | None = None


class Executor(Protocol):
    """Runs units on workers. The coordinator keeps at most ``slots`` units submitted and collects
    finished ones with :meth:`results`; progress goes to the ``on_progress(unit key, frames done)``
    callback each executor is built with."""

    slots: int

    def submit(self, unit: Unit) -> None:
        """Start ``unit`` on a free worker (the caller never exceeds ``slots``)."""

    def results(self, timeout: float) -> list[UnitResult]:
        """Units finished since the last call, waiting up to ``timeout`` seconds for the first."""

    def close(self, *, kill: bool = False) -> None:
        """Stop the workers; ``kill`` (Ctrl-C) does not wait for units in flight."""
