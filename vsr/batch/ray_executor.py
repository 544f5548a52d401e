"""``vsr batch --executor ray``: the same units of work (files, segments, joins) on Ray actors.

One actor per GPU of the cluster (``num_gpus=1``; Ray sets ``CUDA_VISIBLE_DEVICES`` so the engine
builds on that GPU), or ``workers`` CPU actors when the cluster has no GPU. Each actor builds its
engine once and keeps it warm for every unit it runs. The coordinator (the ``vsr batch`` process)
keeps one unit in flight per actor, writes the manifest and decides retries, exactly as with local
workers; leases still guard every unit, so a Ray batch and a Slurm batch may even share a folder.

Inputs and the output folder must be on storage every node sees, under the same paths. Progress
is reported per finished unit (segments make that fine-grained), not per frame.

Ray is imported only here; without it, ``--executor ray`` fails with exit 69 naming the package.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import BackendUnavailable, TransientError
from ..runtime import apply_threads
from .units import UnitResult
from .worker import Worker

log = logging.getLogger(__name__)


class _RayWorker:
    """The actor: a :class:`vsr.batch.worker.Worker` with a warm engine."""

    def __init__(self, make_upscaler, output_dir: str, threads: int | None):
        apply_threads(threads)
        self._worker = Worker(make_upscaler, Path(output_dir), lambda key, done: None)

    def run(self, unit) -> UnitResult:
        return self._worker.run(unit)

    def close(self) -> None:
        self._worker.close()


def _import_ray():
    try:
        import ray
    except ImportError as err:
        raise BackendUnavailable('--executor ray needs Ray, which is not installed; pip install "ray[default]" (or use --executor local)') from err
    return ray


class RayExecutor:
    """The :class:`vsr.batch.units.Executor` protocol on Ray actors."""

    def __init__(self, workers: int, make_upscaler, output_dir: Path, on_progress, *, address: str | None = None):
        ray = _import_ray()
        self._ray = ray
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            try:
                ray.init(address=address or None, log_to_driver=True)
            except ConnectionError as err:
                raise BackendUnavailable(f"cannot reach the Ray cluster at {address or 'auto'} ({err}); start it with scripts/ray_cluster.sh head") from err
        self._on_progress = on_progress
        self._make_upscaler = make_upscaler
        self._output_dir = str(Path(output_dir).absolute())
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if gpus:
            self._options = {"num_gpus": 1, "num_cpus": 1}
            count = gpus if workers <= 1 else min(workers, gpus)
            self._threads = None
        else:
            self._options = {"num_cpus": 1}
            count = workers
            cpus = int(ray.cluster_resources().get("CPU", 1))
            self._threads = max(1, cpus // max(1, count))
        self._actor_class = ray.remote(**self._options)(_RayWorker)
        self._actors = [self._start() for _ in range(count)]
        self._idle = list(range(count))
        self._pending: dict = {}  # object ref -> (actor slot, unit)
        self.slots = count
        log.info("ray executor: %d actor(s) with %s", count, self._options)

    def _start(self):
        return self._actor_class.remote(self._make_upscaler, self._output_dir, self._threads)

    def submit(self, unit) -> None:
        slot = self._idle.pop()
        ref = self._actors[slot].run.remote(unit)
        self._pending[ref] = (slot, unit)

    def results(self, timeout: float) -> list[UnitResult]:
        if not self._pending:
            return []
        ready, _ = self._ray.wait(list(self._pending), num_returns=1, timeout=timeout)
        if ready:  # collect whatever else is finished too
            more, _ = self._ray.wait([r for r in self._pending if r not in ready], num_returns=len(self._pending) - len(ready), timeout=0)
            ready = list(ready) + list(more)
        out = []
        for ref in ready:
            slot, unit = self._pending.pop(ref)
            self._idle.append(slot)
            try:
                result = self._ray.get(ref)
            except self._ray.exceptions.RayActorError as err:  # the actor (or its node) died
                self._actors[slot] = self._start()
                result = UnitResult(unit.key, unit.job.job_id, unit.kind, ok=False, exit_code=TransientError.exit_code,
                                    error=f"ray actor died while running {unit.key} ({type(err).__name__})")
            except self._ray.exceptions.RayTaskError as err:
                result = UnitResult(unit.key, unit.job.job_id, unit.kind, ok=False, exit_code=1, error=f"ray task failed: {err}")
            if result.ok:
                self._on_progress(result.key, result.frames)
            out.append(result)
        return out

    def close(self, *, kill: bool = False) -> None:
        for actor in self._actors:
            try:
                if not kill:
                    self._ray.get(actor.close.remote(), timeout=30)
            except Exception:  # closing is best effort; the actor is killed next
                pass
            self._ray.kill(actor)
        self._actors = []
        if self._owns_ray:
            self._ray.shutdown()
