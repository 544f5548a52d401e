"""``vsr batch``: many inputs (and segments of long ones) over several workers, resumable.

:func:`run_batch` is the whole thing. The calling process is the coordinator: it expands the
inputs, decides per job from the manifest what is left to do (vsr.batch.manifest.decide), cuts long
videos into segments when asked, and hands units of work to workers one at a time:

* ``file``: one whole input through :func:`vsr.pipeline.run_video`, exactly like ``vsr run``;
* ``segment``: one frame range into a piece (vsr.batch.segments.encode_segment);
* ``join``: the pieces of a job remuxed into its output, once all of them are complete.

Workers (``executor="local"``, :mod:`vsr.batch.local_executor`) are ``spawn``-ed processes, each
building its engine once from ``make_upscaler`` (a :class:`vsr.batch.units.UpscalerFactory` such as
:class:`vsr.compute.ComputeSpec`); with one worker everything runs in this process. ``executor="ray"`` runs
the same :class:`vsr.batch.worker.Worker` on Ray actors (:mod:`vsr.batch.ray_executor`); the units
and the executor protocol they share live in :mod:`vsr.batch.units`. Each unit is claimed with a lease file (an ``flock``), so
two workers, or two batches on different nodes over shared storage, never process the same job or
segment. Only the coordinator writes the manifest (locked, atomic), so the manifest shows queued,
running, done or failed per job, with attempts, exit code and the error line.

Failures stay with their job: a broken input fails with its exit code (65/66 are never retried;
1, 74 and 75 are retried up to ``retries`` times in the run) and the others go on. The batch's
exit code is the worst failure class (vsr.batch.manifest.worst_exit_code), 0 when all are done.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..dedup import check_mode
from ..errors import InputMissing, Interrupted, OutputError, TransientError, UsageError, VsrError
from ..media.encode import CONTAINERS, VIDEO_EXTENSIONS, check_encoder, container_format, encoder_record
from ..media.options import VideoOptions
from ..media.trim import check_decoder
from ..progress import Progress
from ..files import now_iso
from .manifest import RETRY_IN_RUN, Manifest, decide, input_fingerprint, new_record, options_fingerprint, options_record, worst_exit_code
from .segments import SEGMENTS_DIR, Segment, index_video, piece_path, plan_segments
from .units import BatchOptions, Executor, Job, Unit, UnitResult, UpscalerFactory

log = logging.getLogger(__name__)

# Files that list inputs (by extension). A folder expands to its videos (VIDEO_EXTENSIONS);
# anything FFmpeg reads works when named explicitly.
LIST_EXTENSIONS = frozenset({".txt", ".list", ".lst"})
EXECUTORS = ("local", "ray")


# --------------------------------------------------------------------------- inputs and jobs



@dataclass
class JobRow:
    """One line of the summary table."""

    input: str
    output: str
    state: str  # done, skipped (done before, verified), failed, busy (another process holds it)
    attempts: int = 0
    frames: int | None = None
    seconds: float | None = None
    exit_code: int = 0
    error: str | None = None
    segments: int | None = None
    segments_reused: int = 0

    @property
    def fps(self) -> float | None:
        return self.frames / self.seconds if self.frames and self.seconds else None


@dataclass
class BatchSummary:
    rows: list[JobRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return worst_exit_code(row.exit_code for row in self.rows if row.state in ("failed", "busy"))

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.state] = out.get(row.state, 0) + 1
        return out

    def records(self) -> list[dict[str, Any]]:
        """The rows as dicts (for ``--progress json``)."""
        return [{**asdict(row), "fps": None if row.fps is None else round(row.fps, 3)} for row in self.rows]

    def table(self) -> str:
        """A plain-text table, one row per input."""
        head = ("input", "state", "attempts", "frames", "seconds", "fps", "exit", "error")
        lines = [head]
        for r in self.rows:
            lines.append((
                r.input, r.state, str(r.attempts), "" if r.frames is None else str(r.frames),
                "" if r.seconds is None else f"{r.seconds:.1f}", "" if r.fps is None else f"{r.fps:.2f}",
                str(r.exit_code) if r.exit_code else "", r.error or "",
            ))
        widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1] for line in lines).rstrip()


def collect_inputs(inputs: Iterable[Path | str]) -> list[Path]:
    """Files as given; folders as their video files (by extension, sorted, not recursive); ``.txt``
    / ``.list`` / ``.lst`` files as lists of inputs, one per line, ``#`` comments, relative paths
    relative to the list. Missing paths stay in the list (their jobs fail with exit 66)."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS))
        elif path.suffix.lower() in LIST_EXTENSIONS and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("#") else ""
                if line:
                    entry = Path(line).expanduser()
                    out.extend(collect_inputs([entry if entry.is_absolute() else path.parent / entry]))
        else:
            out.append(path)
    return out


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` (0 <= I < N) -> (I, N)."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text}: give I/N, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text}: need 0 <= I < N")
    return index, count


def _job_id(source: Path, target: Path) -> str:
    import hashlib

    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in target.stem)[:60]
    return f"{safe}-{hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:8]}"


def plan_jobs(sources: Sequence[Path], output_dir: Path, output_ext: str | None) -> list[Job]:
    jobs, seen = [], {}
    for source in sources:
        ext = output_ext or (source.suffix.lower() if container_format(source) else ".mkv")
        if not ext.startswith("."):
            ext = "." + ext
        if container_format(Path("x" + ext)) is None:
            raise UsageError(f"--output-ext {ext}: vsr writes {', '.join(sorted(CONTAINERS))}")
        target = output_dir / (source.stem + ext)
        if target in seen:
            raise UsageError(f"inputs {seen[target]} and {source} would both be written to {target}; rename one or run them separately")
        seen[target] = source
        jobs.append(Job(_job_id(source, target), source, target))
    return jobs


# --------------------------------------------------------------------------- the coordinator


@dataclass
class _JobState:
    job: Job
    row: JobRow
    prior_attempts: int = 0
    units_total: int = 0
    units_ok: int = 0
    segments: list[Segment] | None = None
    pieces: list[Path] = field(default_factory=list)
    frames_planned: int | None = None
    attempts: dict[str, int] = field(default_factory=dict)
    failed: bool = False
    busy: bool = False
    started: float | None = None
    compute_seconds: float = 0.0


def run_batch(
    inputs: Sequence[Path | str],
    output_dir: Path,
    *,
    make_upscaler: UpscalerFactory,
    video: VideoOptions = VideoOptions(),
    output_ext: str | None = None,
    workers: int = 1,
    executor: str = "local",
    ray_address: str | None = None,
    retries: int = 2,
    segment_frames: int | None = None,
    segments: int | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    progress: Progress | None = None,
) -> BatchSummary:
    """Upscale every input into ``output_dir`` (same name, the input's container or ``output_ext``)
    with the ``video`` options.

    ``make_upscaler``: a picklable :class:`~vsr.batch.units.UpscalerFactory` (the CLI's
    :class:`vsr.compute.ComputeSpec`), called once per worker. ``segment_frames``/``segments`` cut each input
    into frame-exact segments processed as separate units and joined at the end (resumable at
    segment granularity). ``shard=(i, n)`` takes every n-th input starting at i (Slurm arrays).
    ``progress`` gets the total frames (planned) and the frames done across all workers.
    Returns the summary; its ``exit_code`` is 0 only when every job is done.

    With ``workers > 1`` the workers are ``spawn``-ed: a script calling this must guard its entry
    point with ``if __name__ == "__main__":`` (the CLI does), or each worker re-runs the script.
    """
    started = time.perf_counter()
    cut = _Cut(segment_frames, segments)
    _check_args(video, cut, executor=executor, workers=workers, retries=retries)
    output_dir, sources = _sources(inputs, Path(output_dir), shard=shard, absolute=executor == "ray")
    check_decoder(video.decoder, video.trim)
    options = BatchOptions(video=video, output_ext=output_ext)
    jobs = plan_jobs(sources, output_dir, output_ext)
    for fmt in sorted({container_format(job.target) for job in jobs}):
        check_encoder(fmt, video.settings)  # a bad --crf is a usage error before any job starts
    manifest = Manifest(output_dir)
    options_fp = options_fingerprint(options_record(video, make_upscaler.fingerprint()))
    states, todo = _plan_units(jobs, manifest, options, options_fp, cut, overwrite=overwrite)
    progress = progress or Progress()
    totals = [s.frames_planned for s in states.values() if s.units_total]
    progress.start(sum(totals) if totals and all(t is not None for t in totals) else None)
    try:
        if todo:
            _execute(todo, states, manifest, options, retries, progress,
                     lambda on_progress: _make_executor(executor, workers, make_upscaler, output_dir, on_progress, ray_address))
    finally:
        progress.close()
    for state in states.values():
        if state.row.state == "queued" and state.units_total:
            # Every unit finished but the job neither failed nor joined: another process holds part of it.
            state.row.state, state.row.exit_code = "busy", TransientError.exit_code
            state.row.error = state.row.error or "part of this job is held by another vsr process; run again to finish it"
    return BatchSummary([s.row for s in states.values()], time.perf_counter() - started)


@dataclass(frozen=True)
class _Cut:
    """How inputs are cut into segments: ``frames`` per segment or ``count`` segments (or whole)."""

    frames: int | None = None
    count: int | None = None

    @property
    def active(self) -> bool:
        return self.frames is not None or self.count is not None


def _check_args(video: VideoOptions, cut: _Cut, *, executor: str, workers: int, retries: int) -> None:
    """Usage errors of the batch flags, before any input is read."""
    if executor not in EXECUTORS:
        raise UsageError(f"--executor {executor}: choose {' or '.join(EXECUTORS)}")
    if workers < 1 or retries < 0:
        raise UsageError("--workers must be >= 1 and --retries >= 0")
    if cut.frames is not None and cut.count is not None:
        raise UsageError("give --segment-frames or --segments, not both")
    if cut.active and video.decoder != "pyav":
        raise UsageError("--segment-frames/--segments decode with PyAV (they seek by keyframe); leave out --decoder dali")
    check_mode(video.dedup)


def _sources(inputs: Sequence[Path | str], output_dir: Path, *, shard: tuple[int, int] | None, absolute: bool) -> tuple[Path, list[Path]]:
    """The output folder and the inputs (expanded, sharded; absolute for executors that may run
    elsewhere); an input inside the output folder is refused."""
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"--output-dir {output_dir} is a file, not a folder; give a folder")
    sources = collect_inputs(inputs)
    if shard is not None:
        sources = sources[shard[0] :: shard[1]]
    if absolute:  # actors may run in another folder, or on another node
        output_dir = output_dir.absolute()
        sources = [s.absolute() for s in sources]
    for source in sources:
        if source.is_dir():
            continue
        with contextlib.suppress(OSError):
            if source.parent.resolve() == output_dir.resolve() and source.suffix.lower() in VIDEO_EXTENSIONS:
                # The same mistake as `vsr run x.mp4 x.mp4`, and the same exit code (73).
                raise OutputError(f"input {source} is inside the output folder {output_dir}; write the outputs elsewhere")
    return output_dir, sources


def _plan_units(jobs: list[Job], manifest: Manifest, options: BatchOptions, options_fp: str, cut: _Cut, *,
                overwrite: bool) -> tuple[dict[str, _JobState], deque[Unit]]:
    """Per job, from its manifest record: skip it, fail it, or queue its units (the whole file, or
    its segments); the manifest records the decisions in one write."""
    states: dict[str, _JobState] = {}
    todo: deque[Unit] = deque()
    records = manifest.jobs()
    changes: dict[str, dict[str, Any]] = {}
    for job in jobs:
        record = records.get(job.job_id)
        fp = input_fingerprint(job.source)
        row = JobRow(str(job.source), str(job.target), "queued")
        state = _JobState(job, row, prior_attempts=int((record or {}).get("attempts") or 0))
        row.attempts = state.prior_attempts
        states[job.job_id] = state
        action, why = decide(record, target=job.target, input_fp=fp, options_fp=options_fp, overwrite=overwrite)
        log.info("%s: %s (%s)", job.source, action, why)
        if action == "skip":
            row.state, row.frames, row.seconds = "skipped", record.get("frames"), record.get("seconds")
            continue
        if action == "fail":
            code = (record or {}).get("exit_code") or 73
            row.state, row.exit_code, row.error = "failed", code, why
            changes[job.job_id] = {**(record or new_record(job.source, job.target, input_fp=fp, options_fp=options_fp)),
                                   "state": "failed", "exit_code": code, "error": why, "finished_at": now_iso()}
            continue
        # An output this batch published before is ours to replace; anyone else's needs --overwrite.
        unit_overwrite = overwrite or bool((record or {}).get("owned"))
        base = {**new_record(job.source, job.target, input_fp=fp, options_fp=options_fp), "attempts": state.prior_attempts}
        if cut.active:
            changes[job.job_id] = _plan_segments(state, base, todo, manifest.folder, options, cut, fp=fp, options_fp=options_fp,
                                                 overwrite=unit_overwrite)
        else:
            todo.append(Unit("file", job, options, unit_overwrite, options_fp=options_fp))
            state.units_total = 1
            state.frames_planned = _frames_hint(job.source)
            changes[job.job_id] = base
    if changes:
        manifest.update_many(changes)
    return states, todo


def _plan_segments(state: _JobState, base: dict[str, Any], todo: deque[Unit], output_dir: Path, options: BatchOptions, cut: _Cut, *,
                   fp: Any, options_fp: str, overwrite: bool) -> dict[str, Any]:
    """Queue the segments of ``state``'s job; returns its manifest record (failed when the input
    cannot be indexed)."""
    job, row = state.job, state.row
    trim = options.video.trim
    try:
        if not job.source.exists():
            raise InputMissing(f"input {job.source} does not exist")
        index = index_video(job.source, trim)
        # bwdif looks one frame back: decode one frame ahead of each segment of an interlaced source.
        context = 1 if index.interlaced and options.video.picture.deinterlace != "off" else 0
        plan = plan_segments(index, segment_frames=cut.frames, segments=cut.count, context=context)
    except VsrError as err:
        row.state, row.exit_code, row.error, row.attempts = "failed", err.exit_code, str(err), state.prior_attempts + 1
        return {**base, "state": "failed", "attempts": row.attempts, "exit_code": err.exit_code, "error": str(err), "finished_at": now_iso()}
    state.segments = plan
    state.frames_planned = index.frames
    state.units_total = len(plan)
    row.segments = len(plan)
    fmt = container_format(job.target)
    extra = {"source": fp, "options": options_fp, "encoder": encoder_record(fmt, options.video.settings)}
    folder = output_dir / SEGMENTS_DIR / job.job_id
    state.pieces = [piece_path(folder, seg, fmt) for seg in plan]
    for seg in plan:
        todo.append(Unit("segment", job, options, overwrite, segment=seg, piece_extra=extra, options_fp=options_fp))
    return {**base, "segments": {"total": len(plan), "done": 0}}


def _execute(todo: deque[Unit], states: dict[str, _JobState], manifest: Manifest, options: BatchOptions, retries: int,
             progress: Progress, make_executor: Callable[[Callable[[str, int], None]], Executor]) -> None:
    """Run the queued units on the executor ``make_executor(on_progress)`` builds, keeping its slots
    full, until every unit (and the joins and retries they lead to) is done. Ctrl-C stops the
    workers at once (exit 130; the same command resumes)."""
    unit_frames: dict[str, int] = {}
    done_frames = [0]

    def on_progress(key: str, frames: int) -> None:
        done_frames[0] += frames - unit_frames.get(key, 0)
        unit_frames[key] = frames
        progress.update(done_frames[0])

    pool = make_executor(on_progress)
    in_flight = 0
    sent: dict[str, Unit] = {}
    try:
        while todo or in_flight:
            while todo and in_flight < pool.slots:
                unit = todo.popleft()
                state = states[unit.job.job_id]
                if state.failed:
                    continue
                if state.started is None:
                    state.started = time.perf_counter()
                    state.row.attempts += 1
                    manifest.update(unit.job.job_id, state="running", started_at=now_iso(), attempts=state.row.attempts,
                                    host=os.uname().nodename, pid=os.getpid())
                state.attempts[unit.key] = state.attempts.get(unit.key, 0) + 1
                sent[unit.key] = unit
                pool.submit(unit)
                in_flight += 1
            for result in pool.results(timeout=0.2):
                in_flight -= 1
                _handle(result, sent.pop(result.key), states[result.job_id], todo, manifest, retries, options, on_progress)
    except KeyboardInterrupt:
        pool.close(kill=True)
        pool = None
        raise Interrupted("batch interrupted; run the same command again to resume") from None
    finally:
        if pool is not None:
            pool.close()


def _handle(result: UnitResult, unit: Unit, state: _JobState, todo: deque, manifest: Manifest, retries: int,
            options: BatchOptions, on_progress) -> None:
    row = state.row
    state.compute_seconds += result.seconds
    if result.busy:
        state.busy = True
        row.error = result.error
        log.info("%s", result.error)
        return
    if not result.ok:
        tries = state.attempts.get(result.key, 1)
        on_progress(result.key, 0)  # its frames will be counted again by the retry
        if result.exit_code in RETRY_IN_RUN and tries <= retries:
            log.warning("%s failed (exit %d: %s); retry %d of %d", result.key, result.exit_code, result.error, tries, retries)
            # A failed attempt may have left a partial output: replacing it is ours to do.
            todo.appendleft(replace(unit, overwrite=True))
            return
        state.failed = True
        row.state, row.exit_code, row.error = "failed", result.exit_code, result.error
        row.attempts = max(row.attempts, state.prior_attempts + tries)
        row.seconds = _elapsed(state)
        manifest.update(state.job.job_id, state="failed", exit_code=result.exit_code, error=result.error,
                        attempts=row.attempts, finished_at=now_iso(), seconds=row.seconds)
        log.error("%s failed (exit %d): %s", state.job.source, result.exit_code, result.error)
        return
    if result.kind == "segment":
        state.units_ok += 1
        row.segments_reused += int(result.reused)
        manifest.update(state.job.job_id, segments={"total": state.units_total, "done": state.units_ok, "reused": row.segments_reused})
        if state.units_ok == state.units_total and not state.busy:
            unit = Unit("join", state.job, options, overwrite=True, pieces=tuple(state.pieces), options_fp=unit.options_fp)
            todo.appendleft(unit)
        return
    # a whole file, or the join of a segmented job: the job is done
    row.state, row.exit_code, row.error = "done", 0, None
    row.frames, row.seconds = result.frames, _elapsed(state)
    row.attempts = max(row.attempts, state.prior_attempts + state.attempts.get(result.key, 1))
    manifest.update(state.job.job_id, state="done", owned=True, exit_code=0, error=None, sha256=result.sha256, frames=result.frames,
                    seconds=round(row.seconds, 3), fps=round(row.fps or 0.0, 3), finished_at=now_iso(), attempts=row.attempts)


def _elapsed(state: _JobState) -> float:
    return time.perf_counter() - state.started if state.started is not None else 0.0


def _frames_hint(path: Path) -> int | None:
    from ..media.decode import open_input

    try:
        container, info = open_input(path, probe_frame=False)  # the header's count is all it needs
    except VsrError:
        return None
    container.close()
    return info.frames_hint


def _make_executor(kind: str, workers: int, make_upscaler, output_dir: Path, on_progress, ray_address: str | None) -> Executor:
    if kind == "ray":
        from .ray_executor import RayExecutor  # imports Ray only when asked for

        return RayExecutor(workers, make_upscaler, output_dir, on_progress, address=ray_address)
    from .local_executor import InlineExecutor, PoolExecutor

    if workers == 1:
        return InlineExecutor(make_upscaler, output_dir, on_progress)
    return PoolExecutor(workers, make_upscaler, output_dir, on_progress)
