"""``vsr batch --executor local``: units run in this process (one worker) or in ``spawn``-ed
worker processes, each building its engine once and keeping it for every unit it runs."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
from collections import deque
from pathlib import Path

from ..errors import TransientError
from ..runtime import apply_threads
from .units import Unit, UnitResult, UpscalerFactory
from .worker import Worker


class InlineExecutor:
    """Runs each unit in this process when it is submitted (one worker: no spawn, no pickling)."""

    def __init__(self, make_upscaler, output_dir: Path, on_progress):
        self.slots = 1
        self._worker = Worker(make_upscaler, output_dir, on_progress)
        self._done: deque[UnitResult] = deque()

    def submit(self, unit: Unit) -> None:
        self._done.append(self._worker.run(unit))

    def results(self, timeout: float) -> list[UnitResult]:
        out = list(self._done)
        self._done.clear()
        return out

    def close(self, *, kill: bool = False) -> None:
        self._worker.close()


def _worker_main(index: int, make_upscaler: UpscalerFactory, output_dir: str, threads: int | None, tasks, results) -> None:
    """A spawned worker: build the engine lazily, run units until it gets None."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides; it terminates us on Ctrl-C
    apply_threads(threads)
    worker = Worker(make_upscaler.for_worker(index), Path(output_dir), lambda key, done: results.put(("progress", index, key, done)))
    try:
        while True:
            unit = tasks.get()
            if unit is None:
                return
            results.put(("done", index, worker.run(unit)))
    finally:
        worker.close()


class PoolExecutor:
    """``workers`` spawned processes, each with its own task queue so the coordinator knows which
    unit each one holds (a worker that dies fails its unit with exit 75 and is replaced)."""

    def __init__(self, workers: int, make_upscaler: UpscalerFactory, output_dir: Path, on_progress):
        self.slots = workers
        self._ctx = multiprocessing.get_context("spawn")
        self._make_upscaler = make_upscaler
        self._output_dir = str(output_dir)
        self._on_progress = on_progress
        self._results = self._ctx.Queue()
        cpu = make_upscaler.threads or os.cpu_count() or 1  # --threads is split between the workers
        self._threads = max(1, cpu // workers)
        self._procs: list = [None] * workers
        self._tasks: list = [None] * workers
        self._holding: list[Unit | None] = [None] * workers
        for i in range(workers):
            self._start(i)

    def _start(self, i: int) -> None:
        self._tasks[i] = self._ctx.Queue()
        proc = self._ctx.Process(
            target=_worker_main, args=(i, self._make_upscaler, self._output_dir, self._threads, self._tasks[i], self._results),
            name=f"vsr-batch-worker-{i}", daemon=True,
        )
        proc.start()
        self._procs[i] = proc

    def submit(self, unit: Unit) -> None:
        i = self._holding.index(None)
        self._holding[i] = unit
        self._tasks[i].put(unit)

    def results(self, timeout: float) -> list[UnitResult]:
        out: list[UnitResult] = []
        try:
            msg = self._results.get(timeout=timeout)
            while True:
                kind, index = msg[0], msg[1]
                if kind == "progress":
                    self._on_progress(msg[2], msg[3])
                else:
                    self._holding[index] = None
                    out.append(msg[2])
                msg = self._results.get_nowait()
        except queue.Empty:
            pass
        for i, proc in enumerate(self._procs):
            if not proc.is_alive() and self._holding[i] is not None:
                unit = self._holding[i]
                self._holding[i] = None
                out.append(UnitResult(unit.key, unit.job.job_id, unit.kind, ok=False, exit_code=TransientError.exit_code,
                                      error=f"worker process died (exit {proc.exitcode}) while running {unit.key}"))
                self._start(i)
        return out

    def close(self, *, kill: bool = False) -> None:
        for i, proc in enumerate(self._procs):
            if kill:
                proc.terminate()
            else:
                with contextlib.suppress(Exception):
                    self._tasks[i].put(None)
        for proc in self._procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
