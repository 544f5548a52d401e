#!/usr/bin/env bash
# Run a vsr command and map its exit code (DESIGN.md section 7) to what a scheduler should do.
#
#   scripts/exitcode_wrapper.sh vsr batch inputs.txt --output-dir out ...
#
#   0                        success                     -> exit 0
#   2 65 66 73 78            permanent (bad input/usage/ -> log "skip", exit $VSR_PERMANENT_EXIT
#                            config, output exists)         (default 0: the scheduler must not retry)
#   1 69 74 75 130, other    worth retrying (bug, no GPU -> exit $VSR_RETRY_EXIT (default 75);
#                            here, I/O, OOM, interrupted)   with VSR_SLURM_REQUEUE=1 inside Slurm the
#                                                           task is also requeued with scontrol
#
# `vsr batch` exits with the worst failure class of its jobs, retryable classes first, and a
# re-run skips finished (sha256-verified) outputs and inputs that failed with 65/66, so retrying a
# whole shard only redoes what is left. No pipeline logic lives here.
set -u

permanent_exit=${VSR_PERMANENT_EXIT:-0}
retry_exit=${VSR_RETRY_EXIT:-75}

if [ "$#" -eq 0 ]; then
    echo "usage: $0 vsr COMMAND [ARGS...]" >&2
    exit 2
fi

"$@"
code=$?

case "$code" in
    0)
        exit 0
        ;;
    2|65|66|73|78)
        echo "vsr-wrapper: skip: permanent failure (exit $code), not retried" >&2
        exit "$permanent_exit"
        ;;
    *)
        echo "vsr-wrapper: retry: exit $code is worth retrying (exit $retry_exit)" >&2
        if [ "${VSR_SLURM_REQUEUE:-0}" = "1" ] && [ -n "${SLURM_JOB_ID:-}" ]; then
            task=${SLURM_JOB_ID}
            if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
                task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
            fi
            scontrol requeue "$task" || echo "vsr-wrapper: scontrol requeue $task failed" >&2
        fi
        exit "$retry_exit"
        ;;
esac
