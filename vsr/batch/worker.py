"""Running one unit of a batch (a whole file, a segment, or a join) with a warm engine.

:class:`Worker` is what every executor runs, in this process, in a spawned process or in a Ray
actor: it builds the Upscaler on first use, takes the unit's lease (an ``flock`` file, so two
processes never do the same work) and turns every failure into a :class:`UnitResult` with its
exit code instead of an exception.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InputMissing, TransientError, VsrError
from ..media.encode import container_format
from ..files import read_sidecar, sha256_file
from .manifest import Lease, Manifest, input_fingerprint
from .segments import SEGMENTS_DIR, encode_segment, join_segments, piece_path, piece_status
from .units import Unit, UnitResult

log = logging.getLogger(__name__)

# Lease files of whole jobs (segments keep theirs beside their pieces).
LEASES_DIR = ".vsr-batch"
# Seconds between progress messages from a worker.
PROGRESS_INTERVAL = 0.25


class Worker:
    """A unit runner with its engine, built on first use and kept for every later unit."""

    def __init__(self, make_upscaler: Callable[[], Any], output_dir: Path, report: Callable[[str, int], None]):
        self.make_upscaler = make_upscaler
        self.output_dir = output_dir
        self.report = report  # (unit key, frames done in this unit)
        self._upscaler = None

    @property
    def upscaler(self):
        if self._upscaler is None:
            self._upscaler = self.make_upscaler()
        return self._upscaler

    def close(self) -> None:
        if self._upscaler is not None:
            with contextlib.suppress(Exception):
                self._upscaler.engine.close()
            self._upscaler = None

    def run(self, unit: Unit) -> UnitResult:
        started = time.perf_counter()
        result = UnitResult(unit.key, unit.job.job_id, unit.kind, ok=False)
        lease = Lease(self._lease_path(unit))
        if not lease.acquire():
            result.busy, result.exit_code = True, TransientError.exit_code
            result.error = f"{unit.key} is being processed by another vsr process (lease {lease.path})"
            return result
        try:
            if unit.kind != "segment" and self._done_elsewhere(unit, result):
                return result
            getattr(self, f"_run_{unit.kind}")(unit, result)
            result.ok = True
        except VsrError as err:
            result.exit_code, result.error = err.exit_code, str(err)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # a bug: keep the traceback in the log, the job fails with 1
            log.error("internal error in %s:\n%s", unit.key, traceback.format_exc())
            result.exit_code, result.error = 1, f"internal error ({type(err).__name__}: {err}); please report it"
        finally:
            lease.release()
        result.seconds = time.perf_counter() - started
        return result

    def _done_elsewhere(self, unit: Unit, result: UnitResult) -> bool:
        """Another process (a second batch over the same folder) finished this job between our
        plan and our lease: its verified output counts, instead of failing on "output exists"."""
        record = Manifest(self.output_dir).job(unit.job.job_id)
        # Not the state: the other coordinator's "running" may have landed after its "done"; a
        # recorded sha256 that the output matches, for this input and these options, is the proof.
        if not record or not record.get("sha256") or record.get("options") != unit.options_fp:
            return False
        if record.get("input_fingerprint") != input_fingerprint(unit.job.source) or not unit.job.target.exists():
            return False
        if sha256_file(unit.job.target) != record.get("sha256"):
            return False
        result.ok, result.reused, result.sha256 = True, True, record["sha256"]
        result.frames = int(record.get("frames") or 0)
        return True

    def _lease_path(self, unit: Unit) -> Path:
        if unit.kind == "segment":
            return self.output_dir / SEGMENTS_DIR / unit.job.job_id / f"{unit.segment.index:04d}.lease"
        return self.output_dir / LEASES_DIR / f"{unit.job.job_id}.lease"

    def _throttled(self, key: str) -> Callable[[int], None]:
        last = [0.0]

        def on_frame(done: int) -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_INTERVAL:
                last[0] = now
                self.report(key, done)

        return on_frame

    def _run_file(self, unit: Unit, result: UnitResult) -> None:
        from ..pipeline import VideoJob, run_video

        job = VideoJob(unit.job.source, unit.job.target, video=unit.options.video, overwrite=unit.overwrite)
        if not job.source.exists():
            raise InputMissing(f"input {job.source} does not exist")
        done = run_video(job, self.upscaler, on_frame=self._throttled(unit.key))
        self.report(unit.key, done.frames)
        result.frames = done.frames
        result.sha256 = sha256_file(unit.job.target)

    def _run_segment(self, unit: Unit, result: UnitResult) -> None:
        fmt = container_format(unit.job.target)
        folder = self.output_dir / SEGMENTS_DIR / unit.job.job_id
        piece = piece_path(folder, unit.segment, fmt)
        expected = {"segment": unit.segment.as_dict(), **(unit.piece_extra or {})}
        reusable, why = piece_status(piece, expected)
        if reusable:
            result.reused, result.frames = True, int((read_sidecar(piece) or {}).get("frames", 0))
            self.report(unit.key, result.frames)
            return
        if piece.exists():
            log.info("redoing %s (%s)", piece, why)
        meta = encode_segment(
            unit.job.source, unit.segment, piece, upscaler=self.upscaler, video=unit.options.video, fmt=fmt, extra=unit.piece_extra,
            on_frame=self._throttled(unit.key),
        )
        result.frames = int(meta["frames"])
        self.report(unit.key, result.frames)

    def _run_join(self, unit: Unit, result: UnitResult) -> None:
        result.frames = join_segments(
            unit.job.source, list(unit.pieces), unit.job.target, video=unit.options.video, overwrite=unit.overwrite,
        )
        result.sha256 = sha256_file(unit.job.target)
        shutil.rmtree(self.output_dir / SEGMENTS_DIR / unit.job.job_id, ignore_errors=True)
