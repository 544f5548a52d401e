"""Host <-> device copies of the compute stage, and the CUDA stream/event plan they follow.

On CUDA a batch of frames goes through three streams of its own, joined only by events::

    upload    pinned host planes -> device            records "uploaded"
    compute   colour, network, back to planes         waits "uploaded", records "computed"
    download  device planes -> pinned host buffers    waits "computed", records "downloaded" (blocking)
    encode    (host thread)                           waits "downloaded"

Every wait is on an event of the *same* batch, and nothing waits on another stream's later work,
so consecutive batches overlap: the upload of batch N+1 runs while batch N computes, and the
download of batch N while batch N+1 computes (each stream still runs its own work in order). The
encode thread waits for its batch's download on an event made with ``blocking=True``, so it sleeps
in the driver instead of spinning a core the CPU encoder needs.

:func:`stream_plan` is that plan as plain data (tests assert on it); :class:`Transfer` executes it.
On the CPU the plan has no streams and both directions are plain (zero-copy where possible).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

UPLOAD, COMPUTE, DOWNLOAD, ENCODE = "upload", "compute", "download", "encode"


@dataclass(frozen=True)
class Step:
    """One stage of a batch: the stream its work is queued on (None: the host thread), the events
    (recorded earlier in the same batch) it waits for first, and the event it records when done."""

    name: str
    stream: str | None
    waits: tuple[str, ...] = ()
    records: str | None = None
    blocking: bool = False  # the recorded event puts a host thread waiting on it to sleep


@dataclass(frozen=True)
class StreamPlan:
    """The streams of a device and the steps of one batch over them, in order."""

    streams: tuple[str, ...]
    steps: tuple[Step, ...]

    def step(self, name: str) -> Step:
        return next(s for s in self.steps if s.name == name)

    def recorder(self, event: str) -> Step:
        """The step that records ``event``."""
        return next(s for s in self.steps if s.records == event)


def stream_plan(device_type: str) -> StreamPlan:
    """The stream/event plan of one batch on a device of ``device_type`` (``"cuda"`` or another)."""
    if device_type != "cuda":
        return StreamPlan((), tuple(Step(name, None) for name in (UPLOAD, COMPUTE, DOWNLOAD, ENCODE)))
    return StreamPlan(
        (UPLOAD, COMPUTE, DOWNLOAD),
        (
            Step(UPLOAD, UPLOAD, records="uploaded"),
            Step(COMPUTE, COMPUTE, waits=("uploaded",), records="computed"),
            Step(DOWNLOAD, DOWNLOAD, waits=("computed",), records="downloaded", blocking=True),
            Step(ENCODE, None, waits=("downloaded",)),
        ),
    )


class Transfer:
    """Uploads, the compute stream and downloads of one compute stage, following :func:`stream_plan`.

    Use :meth:`computing` around a batch's device work (it makes the plan's compute stream current),
    :meth:`upload` for each host tensor going in and :meth:`download` once for what goes out. The
    compute step is whatever stream is current when they are called (the plan's compute stream
    inside :meth:`computing`), so a caller that skips :meth:`computing` is still ordered correctly.
    :attr:`events` holds the last event recorded under each name (for tests and benchmarks).
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.plan = stream_plan(self.device.type)
        self.streams = {name: torch.cuda.Stream(self.device) for name in self.plan.streams}
        self.events: dict[str, torch.cuda.Event] = {}

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """Run the block's device work on the plan's compute stream (no-op on the CPU)."""
        stream = self.streams.get(self.plan.step(COMPUTE).stream)
        if stream is None:
            yield
            return
        with torch.cuda.stream(stream):
            yield

    def upload(self, host: torch.Tensor) -> torch.Tensor:
        """``host`` on the device, for use on the compute stream."""
        step = self.plan.step(UPLOAD)
        if step.stream is None:
            return host.to(self.device)
        stream = self.streams[step.stream]
        host = host.pin_memory()
        with torch.cuda.stream(stream):
            self._wait(step, stream)
            dev = host.to(self.device, non_blocking=True)
            self._record(step, stream)
        compute = torch.cuda.current_stream(self.device)
        self._wait(self.plan.step(COMPUTE), compute)
        dev.record_stream(compute)  # the allocator must not reuse it while the compute stream reads
        return dev

    def download(self, tensors: list[torch.Tensor]) -> tuple[list[torch.Tensor], Callable[[], None] | None]:
        """Start copying ``tensors`` (made on the compute stream) to the host; returns the host
        tensors and the function the encode thread calls before reading them (None: ready now)."""
        step = self.plan.step(DOWNLOAD)
        if step.stream is None:
            return [t.cpu() for t in tensors], None
        self._record(self.plan.step(COMPUTE), torch.cuda.current_stream(self.device))
        stream = self.streams[step.stream]
        with torch.cuda.stream(stream):
            self._wait(step, stream)
            host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in tensors]
            for t in tensors:
                t.record_stream(stream)
            done = self._record(step, stream)
        return host, done.synchronize

    # ------------------------------------------------------------------ executing the plan

    def _wait(self, step: Step, stream: torch.cuda.Stream) -> None:
        for name in step.waits:
            stream.wait_event(self.events[name])

    def _record(self, step: Step, stream: torch.cuda.Stream) -> torch.cuda.Event:
        event = torch.cuda.Event(blocking=step.blocking)
        event.record(stream)
        self.events[step.records] = event
        return event
