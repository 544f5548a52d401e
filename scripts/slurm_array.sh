#!/usr/bin/env bash
# A Slurm array job: task i of N runs `vsr batch` on every N-th input of a list (shard i/N), one GPU
# per task. All tasks write to one shared output folder; the manifest there is updated under a lock
# and every job/segment is leased, so tasks never process the same input twice.
#
#   sbatch --array=0-7 scripts/slurm_array.sh inputs.txt /shared/out [vsr batch flags...]
#   sbatch --array=0-7 scripts/slurm_array.sh inputs.txt /shared/out --model realesr-animevideov3 --fp16 --crf 16
#
# inputs.txt: one video (or folder) per line, # comments, paths relative to the list's folder.
# Re-submitting the same array resumes: finished outputs are verified (sha256) and skipped.
# Environment: VSR (the vsr command, default `vsr`), VSR_SCRIPTS (this folder, default
# $SLURM_SUBMIT_DIR/scripts: sbatch runs a copy of this file from its spool folder).
#SBATCH --job-name=vsr-batch
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=16
#SBATCH --time=24:00:00
#SBATCH --output=vsr-batch-%A_%a.log
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: sbatch --array=0-(N-1) $0 INPUTS OUTPUT_DIR [vsr batch flags...]" >&2
    exit 2
fi
inputs=$1
output_dir=$2
shift 2

task=${SLURM_ARRAY_TASK_ID:?run this with sbatch --array}
first=${SLURM_ARRAY_TASK_MIN:-0}
count=${SLURM_ARRAY_TASK_COUNT:-1}
shard="$(( task - first ))/${count}"
scripts=${VSR_SCRIPTS:-${SLURM_SUBMIT_DIR:-.}/scripts}

exec "$scripts/exitcode_wrapper.sh" "${VSR:-vsr}" batch "$inputs" --output-dir "$output_dir" --shard "$shard" \
    --log-format json --progress json "$@"
