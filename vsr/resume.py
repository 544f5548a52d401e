"""``vsr run`` on a long video, checkpointed as it goes: the same command after a crash continues.

A run that is worth checkpointing is done as consecutive ``vsr batch`` segments
(:mod:`vsr.batch.segments`): the video is indexed once (packets, not decoded), and each piece is a
frame-exact pts range encoded on its own (a closed GOP: the piece's encoder starts with a
keyframe and ends with the range), published with its sidecar (size, SHA-256, the packets the
encoder made) in a hidden folder beside the output, ``.<output name>.vsr-resume/``. When the last
piece is done, the pieces are joined by remuxing (:func:`vsr.batch.segments.join_segments`, with
the source's audio, subtitles and chapters copied once) into the output, which is published in
one atomic step, and the folder is removed. A run that is killed (SIGKILL, OOM, power loss),
interrupted (Ctrl-C, SIGTERM) or fails (a full disk) keeps its finished pieces; the same command
later checks them (digest, and the fingerprint of the input, the model and every option that
changes the pictures or the encode: :func:`vsr.batch.manifest.options_record`, the same record
``vsr batch`` keeps) and computes only the frames after the last good one.

Pieces are sized as the run goes: the first holds :data:`FIRST_PIECE_FRAMES` frames, each later
one about :data:`CHECKPOINT_SECONDS` of the pieces' measured speed (``--checkpoint-frames N``
fixes the size). A plan is only a size: a rerun keeps the pieces that cover a prefix of the frames
whatever sizes they were made with, and sizes the rest anew.

Some runs are done in one pass as before (:func:`vsr.pipeline.run_video`), with an info line saying
why: a video short enough to be one piece, ``--checkpoint-frames 0``, ``--decoder dali`` (it
decodes the whole file in one go, it cannot seek), and inputs that cannot be split exactly by pts
(packets without timestamps, repeated timestamps, no keyframe flags: the truncated MPEG-TS of the
tests).

Exclusion: the run holds its output's claim (:func:`vsr.files.claim`) for as long as it touches
the folder, so two runs to one output never share a checkpoint; the claim is dropped when the
process dies, so a later run of the same command picks the checkpoint up.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .batch.manifest import input_fingerprint, options_fingerprint, options_record
from .batch.segments import PIECE_SCHEMA, Segment, VideoIndex, encode_segment, index_video, join_segments, piece_path, piece_status, segment_at
from .dedup import log_summary
from .errors import VsrError
from .files import claim, hidden_companion, make_folder, read_sidecar, remove_artifact, remove_stale_temps
from .frame import VideoInfo
from .media.decode import open_input
from .media.encode import encoder_record
from .pipeline import RunResult, VideoJob, check_job, check_trim, cuda_index, frame_count_hint, plan_output, run_video
from .upscale import Upscaler

log = logging.getLogger(__name__)

FOLDER_SUFFIX = ".vsr-resume"
# The first piece's size: a video no longer than this is done in one pass (a kill loses less than
# one piece anyway). At 24 frames/s it is 10 s of video.
FIRST_PIECE_FRAMES = 240
# Compute time per later piece. Each piece costs a seek, an encoder start and a pipeline drain
# (measured in docs/BENCHMARKS.md), so a minute keeps the overhead small and the loss of a kill
# to about a minute.
CHECKPOINT_SECONDS = 60.0
# No piece smaller than this (a slow model on a big frame): the per-piece cost stays a small share.
MIN_PIECE_FRAMES = 8
# A last piece shorter than this share of the one before goes into the one before.
TAIL_SHARE = 0.25
_PIECE_NAME = re.compile(r"^\d{4}\.[a-z0-9]+(\.json)?$")


@dataclass(frozen=True)
class Checkpoints:
    """How ``vsr run`` checkpoints: ``frames`` per piece (None: the first :data:`FIRST_PIECE_FRAMES`,
    then about :data:`CHECKPOINT_SECONDS` of compute each; 0: no checkpoints, one pass) and whether
    an existing checkpoint is used (``resume=False``: ``--no-resume``, deleted and started over)."""

    frames: int | None = None
    resume: bool = True


@dataclass(frozen=True)
class Resumed:
    """What a rerun found: ``frame`` output frames already done in checkpoints, of ``frames``."""

    frame: int
    frames: int

    @property
    def percent(self) -> float:
        return 100.0 * self.frame / self.frames if self.frames else 0.0


def checkpoint_folder(target: Path) -> Path:
    """``.<output name>.vsr-resume`` beside the output: where its pieces wait for the join."""
    return hidden_companion(target, FOLDER_SUFFIX)


def run_checkpointed(
    job: VideoJob,
    upscaler: Upscaler,
    *,
    model: Mapping[str, Any],
    checkpoints: Checkpoints = Checkpoints(),
    on_start: Callable[[VideoInfo], None] | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_resume: Callable[[Resumed], None] | None = None,
) -> RunResult:
    """Upscale ``job.source`` into ``job.target`` like :func:`vsr.pipeline.run_video`, in
    checkpointed pieces where that is possible (see the module notes).

    ``model`` is the model's fingerprint (:meth:`vsr.compute.ComputeSpec.fingerprint`): pieces of
    another model are never joined. ``on_start(info)`` once the input is open (``frames_hint``:
    the frames the output will hold), ``on_frame(n)`` after every frame with the frames of the
    output done so far (those of kept pieces included), ``on_resume(resumed)`` when a checkpoint
    is picked up, before any frame is computed.
    """
    fmt = check_job(job)
    folder = checkpoint_folder(job.target)
    with claim(job.target, make_folder_now=False):
        if not checkpoints.resume and folder.is_dir():
            log.info("--no-resume: deleting the checkpoint %s", folder)
            _discard(folder)
        why_not, info, index, per_frame = _plan(job, fmt, upscaler, checkpoints)
        if why_not:
            log.info("no checkpoints for %s: %s; it is done in one pass", job.source, why_not)
            result = run_video(job, upscaler, on_start=on_start, on_frame=on_frame)
            if folder.is_dir():  # a checkpoint of an earlier run is outdated now that the output exists
                _discard(folder)
            return result
        with claim(job.target):  # makes the output's folder: the checkpoint folder goes beside it
            return _Run(job, fmt, upscaler, info, index, per_frame, folder, model, checkpoints).run(on_start, on_frame, on_resume)


def _plan(job: VideoJob, fmt: str, upscaler: Upscaler, checkpoints: Checkpoints) -> tuple[str, VideoInfo | None, VideoIndex | None, int]:
    """(why the run is done in one pass, or "", the input's info, its index, output frames per
    input frame: 2 when deinterlacing at field rate)."""
    video = job.video
    if checkpoints.frames == 0:
        return "--checkpoint-frames 0", None, None, 1
    if video.decoder != "pyav":
        return f"--decoder {video.decoder} decodes the file in one go and cannot start at a checkpoint", None, None, 1
    first = checkpoints.frames or FIRST_PIECE_FRAMES
    source, info = open_input(job.source, hwaccel=video.hwaccel, hwaccel_device=cuda_index(upscaler))
    source.close()
    check_trim(video.trim, info)
    _, _, plan = plan_output(info, fmt, video.settings, video.picture, scale=upscaler.scale, outscale=video.outscale, trim=video.trim)
    hint = frame_count_hint(info, video.trim, plan)
    per_frame = plan.deinterlace.frames_per_input
    if hint is not None and hint <= first * per_frame:  # known to be short: no need to read every packet
        return f"about {hint} frames, no more than one checkpoint's {first}", info, None, per_frame
    try:
        index = index_video(job.source, video.trim)
    except VsrError as err:
        if err.exit_code != 1:  # a bad input or trim: the one-pass run says it the usual way
            raise
        return str(err), info, None, per_frame
    if not index.usable:
        return f"it cannot be cut exactly by timestamps ({index.reason})", info, None, per_frame
    if index.frames <= first:
        return f"{index.frames} frames, no more than one checkpoint's {first}", info, None, per_frame
    log.info("input %s: %s", job.source, info.describe())
    plan.log()  # what a one-pass run says about the picture; every piece plans the same
    return "", info, index, per_frame


class _Run:
    """One checkpointed run: keep the good prefix of an earlier run's pieces, encode the rest piece
    by piece, join, publish, remove the folder."""

    def __init__(self, job: VideoJob, fmt: str, upscaler: Upscaler, info: VideoInfo, index: VideoIndex, per_frame: int, folder: Path,
                 model: Mapping[str, Any], checkpoints: Checkpoints):
        self.job, self.fmt, self.upscaler, self.info, self.index, self.folder = job, fmt, upscaler, info, index, folder
        self.per_frame = per_frame
        self.checkpoints = checkpoints
        video = job.video
        record = options_record(video, model)
        # What every piece's sidecar must hold to be joined into this output (as vsr batch's pieces).
        self.fingerprint = {
            "source": input_fingerprint(job.source), "options": options_fingerprint(record), "encoder": encoder_record(fmt, video.settings),
        }
        # As the sidecar gives it back (tuples become lists), so that _differences names real changes only.
        self.record = json.loads(json.dumps(record, default=str))
        # bwdif looks one frame back: each piece of an interlaced source decodes one frame ahead.
        self.context = 1 if index.interlaced and video.picture.deinterlace != "off" else 0

    def run(self, on_start, on_frame, on_resume) -> RunResult:
        started = time.perf_counter()
        total = self.index.frames * self.per_frame
        if on_start is not None:
            on_start(replace(self.info, frames_hint=total))
        pieces, metas = self._kept()
        position = sum(int(m["segment"]["frames"]) for m in metas)  # in index frames
        done = resumed_frames = sum(int(m["frames"]) for m in metas)  # in output frames
        if pieces:
            resumed = Resumed(done, total)
            log.info("%d checkpoint pieces kept from %s", len(pieces), self.folder)
            if on_resume is not None:
                on_resume(resumed)
            if on_frame is not None:
                on_frame(done)
        else:
            log.info("checkpoints of this run go to %s", self.folder)
        make_folder(self.folder)
        size = int(metas[-1]["segment"]["frames"]) if metas else (self.checkpoints.frames or FIRST_PIECE_FRAMES)
        reused = sum(int(m.get("dedup_reused") or 0) for m in metas)
        while position < self.index.frames:
            last = position + size
            if self.index.frames - last < TAIL_SHARE * size:
                last = self.index.frames
            segment = segment_at(self.index, len(pieces), position, last, context=self.context)
            path = piece_path(self.folder, segment, self.fmt)
            piece_started = time.perf_counter()
            meta = self._encode(segment, path, done, on_frame)
            pieces.append(path)
            position += segment.frames
            done += int(meta["frames"])
            reused += int(meta.get("dedup_reused") or 0)
            seconds = time.perf_counter() - piece_started
            log.info("checkpoint %s: %d frames in %.1f s, %d of %d done", path.name, int(meta["frames"]), seconds, done, total)
            if self.checkpoints.frames is None:
                rate = segment.frames / max(seconds, 1e-3)
                size = max(MIN_PIECE_FRAMES, round(rate * CHECKPOINT_SECONDS))
        video = self.job.video
        if video.dedup != "off":
            log_summary(video.dedup, reused, total)
        frames = join_segments(
            self.job.source, pieces, self.job.target, video=video, overwrite=self.job.overwrite,
        )
        _discard(self.folder)
        return RunResult(
            frames=frames, seconds=time.perf_counter() - started, output=self.job.target, output_bytes=self.job.target.stat().st_size,
            info=self.info, reused=reused, resumed=resumed_frames,
        )

    def _encode(self, segment: Segment, path: Path, done: int, on_frame) -> dict[str, Any]:
        video = self.job.video
        return encode_segment(
            self.job.source, segment, path, upscaler=self.upscaler, video=video, fmt=self.fmt, extra={**self.fingerprint, "run_options": self.record},
            on_frame=None if on_frame is None else (lambda n: on_frame(done + n)), first_frame=done, dedup_summary=False,
        )

    def _kept(self) -> tuple[list[Path], list[dict[str, Any]]]:
        """The pieces of an earlier run that cover a prefix of this run's frames, each complete (its
        digest) and made for this input, model and options; every later piece is deleted, with one
        line saying why the first of them cannot be used."""
        pieces: list[Path] = []
        metas: list[dict[str, Any]] = []
        if not self.folder.is_dir():
            return pieces, metas
        position = 0
        while position < self.index.frames:
            number = len(pieces)
            path = piece_path(self.folder, Segment(number, None, None, 0, None), self.fmt)
            meta = read_sidecar(path)
            if meta is None or meta.get("schema") != PIECE_SCHEMA:
                if path.exists():
                    log.info("checkpoint piece %s is not complete; computing from there", path.name)
                break
            count = int((meta.get("segment") or {}).get("frames") or 0)
            if count < 1 or position + count > self.index.frames:
                log.warning("the checkpoint in %s does not fit this input's frames; starting over", self.folder)
                break
            segment = segment_at(self.index, number, position, position + count, context=self.context)
            ok, why = piece_status(path, {"segment": segment.as_dict()})
            if ok:
                ok, why = self._same_run(meta)
            if not ok:
                log.warning("the checkpoint in %s cannot be used (%s); %s", self.folder, why, "starting over" if not pieces else f"going on from frame {sum(int(m['frames']) for m in metas)}")
                break
            pieces.append(path)
            metas.append(meta)
            position += count
        # Whatever follows the kept prefix is of no use: remove it so a later join never sees it.
        _discard(self.folder, keep={p.name for p in pieces})
        return pieces, metas

    def _same_run(self, meta: dict[str, Any]) -> tuple[bool, str]:
        """(same, what differs) between a piece's fingerprint and this run's."""
        if meta.get("source") != self.fingerprint["source"]:
            return False, f"{self.job.source} changed since it was made"
        if meta.get("options") != self.fingerprint["options"]:
            return False, f"it was made with other options: {', '.join(_differences(meta.get('run_options') or {}, self.record)) or 'unknown'}"
        if meta.get("encoder") != self.fingerprint["encoder"]:
            return False, "it was made with other encoder options"
        return True, ""


def _differences(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The keys (dotted, one level into dicts) whose values differ between two option records."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping) and not prefix:
            out.extend(_differences(a, b, f"{key}."))
        else:
            out.append(prefix + key)
    return out


def _discard(folder: Path, keep: frozenset[str] | set[str] = frozenset()) -> None:
    """Delete the pieces in a checkpoint folder (but those named in ``keep``), the temporary files
    killed vsr processes left there, and the folder when that empties it. Files vsr did not name
    are left alone, and so is the folder then."""
    remove_stale_temps(folder / "x")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in names:
        piece = name.removesuffix(".json")
        if _PIECE_NAME.match(name) and piece not in keep:
            remove_artifact(folder / piece)
    if not keep:
        with contextlib.suppress(OSError):
            folder.rmdir()
