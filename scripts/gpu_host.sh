#!/usr/bin/env bash
# Everything to check on the lab's offline GPU host (H100/H200) in one device call, sized for one
# lease: at most 15 minutes of device time in all (the machine's start included), 10 minutes per
# command, 64 MiB carried per call (the working tree counts). See docs/BENCHMARKS.md for the exact
# `run` tool invocation, and ../shared/gpu-host.md for the host.
#
#   scripts/gpu_host.sh prepare   on a connected machine, in the repo with vsr installed: fills .device/
#   scripts/gpu_host.sh run       on the GPU host: install, GPU tests, the benchmark table (default)
#   scripts/gpu_host.sh bench     on the GPU host: install and the benchmark only (a rerun; BENCH_ARGS
#                                 passes options, e.g. BENCH_ARGS="--mode compiled --no-pipeline")
#   scripts/gpu_host.sh smoke     anywhere without a GPU: the same steps as `run`, the benchmark at tiny
#                                 sizes on the CPU (a dry run that catches silly breakage before a lease)
#
# What travels (.device/ is git-ignored and named in the call's `carry`):
#   .device/wheels/av-*.whl                     PyAV (35 MB): the host has no PyAV
#   .device/vsr_home/models/realesr-animevideov3.safetensors   1.2 MB of converted weights for the GPU
#                                               tests; x4plus (33 MB) does not fit beside PyAV, so its
#                                               tests skip there, and the benchmark times random-
#                                               initialised networks (the weights do not change the cost)
# TensorRT (hundreds of MB) and onnxruntime-gpu (256 MB) wheels do not fit in a call either: their
# backends cannot run on the host, and their GPU tests skip with the reason.
#
# Time (BUDGET_S, default 520 s of the 600 s a command may run): install ~15 s, GPU tests <= 180 s,
# the benchmark gets what is left minus a margin and starts no row it has no time for (skipped rows
# are listed). Output under $OUT (comes back): gpu.txt, tests.log, bench.log, bench_gpu.json,
# bench_gpu.md; the test summary and the table are printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-run}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-520}
TESTS_S=${TESTS_S:-180}
OUT=${OUT:-$PWD/gpu-out}
WHEELS=.device/wheels
export PYTHONUNBUFFERED=1
# The GPU tests: every file with needs_cuda tests (collecting only these keeps Ray/ncnn/DALI imports out).
GPU_TESTS=(tests/test_gpu.py tests/test_transfer.py tests/test_device.py tests/test_nvdec.py tests/test_torch_engine.py
           tests/test_engines.py tests/test_tensorrt.py tests/test_dali.py)
AV_VERSION=18.1.0   # the version CI tests with (abi3 wheel: runs on the host's Python 3.12)
MAX_CARRY_MIB=60    # of the 64 MiB a call may carry, a margin for files added later

prepare() {
  grep -qx '/.device/' .gitignore || { echo "gpu_host.sh: .device/ must be in .gitignore" >&2; return 1; }
  mkdir -p "$WHEELS" .device/vsr_home/models
  if ! ls "$WHEELS"/av-"$AV_VERSION"-*.whl >/dev/null 2>&1; then
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d "$WHEELS" "av==$AV_VERSION" || return 1
  fi
  # The converted weights the GPU tests use (converted here first if this machine has not yet).
  local weights tree_kib carry_kib
  weights=$("$PY" -c "from vsr.models import zoo; print(zoo.ensure_converted('realesr-animevideov3'))") || return 1
  cp "$weights" .device/vsr_home/models/
  tree_kib=$(git ls-files -z -co --exclude-standard | du -ck --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  carry_kib=$(du -sk .device | cut -f1)
  echo "gpu_host.sh: the call carries $(( (tree_kib + carry_kib) / 1024 )) MiB (tree $(( tree_kib / 1024 )), .device $(( carry_kib / 1024 )))"
  if (( (tree_kib + carry_kib) / 1024 > MAX_CARRY_MIB )); then
    echo "gpu_host.sh: over $MAX_CARRY_MIB MiB: the device call would be refused; remove what is not needed" >&2
    return 1
  fi
}

install() {
  # Offline: the carried wheels into a private target, vsr itself editable, no dependency resolution.
  if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/vsr-site "$WHEELS"/*.whl || return 1
    export PYTHONPATH=/tmp/vsr-site${PYTHONPATH:+:$PYTHONPATH}
  fi
  "$PY" -c "from vsr.tiling import plan_frames" 2>/dev/null || "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . || return 1
  "$PY" -c "import av, vsr, vsr.pipeline; print('PyAV', av.__version__, 'vsr from', vsr.__file__)"
  export VSR_HOME=$PWD/.device/vsr_home   # conftest copies its models into each test session's home
}

environment() {
  { date -u +"%F %T UTC"; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi";
    "$PY" -c "import torch, platform; print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)";
    nproc; } 2>&1 | tee "$OUT/gpu.txt"
}

gpu_tests() {
  local args=(-q -p no:cacheprovider -m needs_cuda)
  "$PY" -c "import xdist" 2>/dev/null && args+=(-n 6)             # compile-heavy tests in parallel
  "$PY" -c "import pytest_timeout" 2>/dev/null && args+=(--timeout 150)
  if [[ $MODE == run ]]; then export VSR_REQUIRE_CUDA=1; fi       # a missing GPU fails instead of skipping
  timeout --signal=INT "$TESTS_S" "$PY" -m pytest "${args[@]}" "${GPU_TESTS[@]}" >"$OUT/tests.log" 2>&1
  local rc=$?
  unset VSR_REQUIRE_CUDA
  echo "GPU tests exit $rc ($( (( rc == 124 )) && echo "cut at ${TESTS_S} s" || tail -n 1 "$OUT/tests.log"))"
}

bench() {
  local left=$(( BUDGET_S - SECONDS - 20 ))
  (( left < 60 )) && left=60
  local extra=()
  [[ $MODE == smoke ]] && extra=(--cpu-smoke)
  read -r -a more <<<"${BENCH_ARGS:-}"
  extra+=("${more[@]}")
  timeout --signal=INT $(( left + 60 )) "$PY" scripts/bench_gpu.py --out "$OUT" --deadline-s "$left" "${extra[@]}" 2>"$OUT/bench.log"
}

case $MODE in
  prepare) prepare; exit $? ;;
  run|smoke|bench) ;;
  *) echo "usage: scripts/gpu_host.sh [prepare|run|bench|smoke]" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
install || { echo "gpu_host.sh: install failed (were .device/ wheels carried? run 'scripts/gpu_host.sh prepare' first)" >&2; exit 1; }
environment
summary="GPU tests not run"
if [[ $MODE != bench ]]; then
  summary=$(gpu_tests)
  echo "$summary"
fi
bench
status=$?
echo "== $summary; benchmark exit $status; $SECONDS s in all =="
exit $status
