#!/usr/bin/env bash
# Everything to check on the lab's offline GPU host in one go (see ../shared/gpu-host.md):
# install vsr and the wheels carried in .device/, run the GPU tests with VSR_REQUIRE_CUDA=1,
# run the model benchmark, and print the table last. Logs go to $OUT (or ./gpu-out).
#
# Expected carried files (ignored by git, listed in .git/info/exclude):
#   .device/wheels/*.whl        av (PyAV) and any other missing wheels for Python 3.12
#   .device/vsr_home/models/    converted named models (copy of a connected machine's $VSR_HOME/models)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/.site${PYTHONPATH:+:$PYTHONPATH}
export VSR_HOME=${VSR_HOME:-$PWD/.device/vsr_home}

if ls .device/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target .site .device/wheels/*.whl 2>&1 | tail -3
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . 2>&1 | tail -3

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -m vsr env | tee "$OUT/env.txt"

VSR_REQUIRE_CUDA=1 python3 -m pytest -q tests/test_gpu.py tests/test_tiling.py tests/test_kernels.py tests/test_color.py \
  tests/test_torch_engine.py tests/test_engines.py tests/test_tensorrt.py tests/test_dali.py 2>&1 | tee "$OUT/gpu-tests.txt" | tail -15

for precision in fp32 fp16 bf16; do
  python3 scripts/bench_models.py --device cuda --precision "$precision" --size 270x480 --size 540x960 --repeat 10 \
    2>&1 | tee "$OUT/bench-$precision.txt"
done
for precision in fp16 bf16; do
  python3 scripts/bench_video.py --device cuda --precision "$precision" --model realesr-animevideov3 --batch 8 \
    2>&1 | tee "$OUT/bench-video-$precision.txt"
done
for precision in fp16 bf16; do
  python3 scripts/bench_engines.py --device cuda --model realesrgan-x4plus --backend torch --precision "$precision" \
    --mode eager,compiled,graphs --size 540x960 --size 360x640 --repeat 20 2>&1 | tee "$OUT/bench-engines-$precision.txt"
done
python3 scripts/bench_engines.py --device cuda --model realesrgan-x4plus --backend tensorrt,onnxruntime --precision fp16 \
  --size 540x960 --size 360x640 --repeat 20 2>&1 | tee "$OUT/bench-engines-trt.txt"
echo "== summary =="
tail -n 1 "$OUT/gpu-tests.txt"
cat "$OUT"/bench-*.txt
