"""The threads of a run: stages joined by bounded channels, and the skeleton that starts, stops and
joins them (one for ``vsr run`` and every ``vsr batch`` segment).

A run is a few :class:`Stage` threads (decode, encode) beside the calling thread (compute), passing
work through :class:`Channel` FIFOs that share one stop event. :meth:`Stages.run` owns the rules
every run needs: when any thread fails, every other one is woken and stopped, and the error that
surfaces is the one that caused the stop, never the :class:`Stopped` it triggered elsewhere.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# How long a failed run waits for each of its threads to notice the stop.
JOIN_SECONDS = 30.0


class Stopped(Exception):
    """Raised inside a stage when another stage failed or the run was interrupted."""


class Channel:
    """A FIFO between two threads, bounded by the total weight of what it holds.

    Frames weigh 1 and copied packets 0, so a burst of audio packets never blocks but the number
    of decoded frames in flight is capped. ``stop`` (shared by all channels of a run) wakes every
    waiting thread with :class:`Stopped`.
    """

    _END = object()

    def __init__(self, capacity: int, stop: threading.Event):
        self.capacity = capacity
        self.stop = stop
        self._items: deque = deque()
        self._weight = 0
        self._cond = threading.Condition()

    def put(self, item, weight: int = 1) -> None:
        with self._cond:
            while weight and self._weight + weight > self.capacity:
                if self.stop.is_set():
                    raise Stopped
                self._cond.wait(0.1)
            if self.stop.is_set():
                raise Stopped
            self._items.append((item, weight))
            self._weight += weight
            self._cond.notify_all()

    def close(self) -> None:
        """Mark the end of the stream (the reader gets :data:`END` after the last item)."""
        self.put(self._END, 0)

    def get(self):
        with self._cond:
            while not self._items:
                if self.stop.is_set():
                    raise Stopped
                self._cond.wait(0.1)
            item, weight = self._items.popleft()
            self._weight -= weight
            self._cond.notify_all()
            return item

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    @classmethod
    def is_end(cls, item) -> bool:
        return item is cls._END


class Stage(threading.Thread):
    """A pipeline thread that records its exception and stops the whole run when it fails."""

    def __init__(self, name: str, target: Callable[[], None], stop: threading.Event, wake: Callable[[], None]):
        super().__init__(name=f"vsr-{name}", daemon=True)
        self._target_fn = target
        self._stop_event = stop
        self._wake = wake
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._target_fn()
        except Stopped:
            pass
        except BaseException as err:  # handed to the calling thread, which re-raises it
            self.error = err
            self._stop_event.set()
            self._wake()


class Stages:
    """The threads of one run and the channels between them, sharing one stop event.

    Build the channels with :meth:`channel`, start the stage threads with :meth:`start`, then do
    the calling thread's part inside :meth:`run`.
    """

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._channels: list[Channel] = []
        self._stages: list[Stage] = []

    def channel(self, capacity: int) -> Channel:
        """A new channel of this run (woken when the run stops)."""
        channel = Channel(capacity, self.stop)
        self._channels.append(channel)
        return channel

    def start(self, name: str, target: Callable[[], None]) -> Stage:
        """Run ``target`` on a new thread ``vsr-<name>``; its failure stops the run."""
        stage = Stage(name, target, self.stop, self.wake)
        self._stages.append(stage)
        stage.start()
        return stage

    def wake(self) -> None:
        """Wake every thread waiting on a channel of this run (to see the stop)."""
        for channel in self._channels:
            channel.wake()

    def join(self) -> None:
        """Wait for every stage thread to end, then raise the first stage's error, if any."""
        for stage in self._stages:
            stage.join()
        self._raise_errors()

    def run(self, main: Callable[[], T], *, on_error: Callable[[], None] | None = None) -> T:
        """``main()`` on the calling thread beside the started stages; returns its result.

        ``main`` ends by closing its output channels and calling :meth:`join`. When anything fails
        (``main``, a stage, or an interrupt), the run is stopped, every thread is woken and joined
        (up to :data:`JOIN_SECONDS` each), ``on_error()`` runs (after the threads, so nothing
        still writes to what it cleans up), and the error that caused the stop is raised.
        """
        try:
            return main()
        except BaseException as err:
            self.stop.set()
            self.wake()
            for stage in self._stages:
                stage.join(timeout=JOIN_SECONDS)
            if on_error is not None:
                on_error()
            if isinstance(err, Stopped):
                self._raise_errors()
            raise

    def _raise_errors(self) -> None:
        for stage in self._stages:
            if stage.error is not None:
                raise stage.error
