"""Batch execution: many inputs, frame-exact segments of long videos, a resumable job manifest,
local multi-process (one engine per worker) and Ray executors.

Entry point: :func:`vsr.batch.run.run_batch` (the coordinator). Below it, one way only:
``local_executor`` / ``ray_executor`` -> ``worker`` (runs one unit) -> ``units`` (the shared
unit/result types and the executor protocol), with ``manifest`` and ``segments`` beside them.
"""

from .manifest import Manifest, worst_exit_code
from .run import BatchSummary, JobRow, collect_inputs, parse_shard, run_batch

__all__ = ["BatchSummary", "JobRow", "Manifest", "collect_inputs", "parse_shard", "run_batch", "worst_exit_code"]
