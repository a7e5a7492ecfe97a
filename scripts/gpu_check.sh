#!/usr/bin/env bash
# One-shot check on a machine with an NVIDIA GPU (no network needed): builds the extension in
# place, runs the CUDA tests, runs the GPU benchmark and prints a summary table.
# Logs go to $OUT (if set) or build/gpu_check/. Meant to finish in under 5 minutes on an H100.
#   TORCH_CUDA_ARCH_LIST   defaults to the visible GPU's architecture (one arch: faster build)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=${OUT:-build/gpu_check}
mkdir -p "$LOG"
if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda; fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$($PY -c 'import torch; p = torch.cuda.get_device_capability(); print(f"{p[0]}.{p[1]}")' 2>/dev/null || echo "8.0;9.0")
  export TORCH_CUDA_ARCH_LIST
fi
# The C++ compiler first in PATH on some CUDA images is a wrapper around the distribution's
# compiler; an extension built with it crashed (SIGSEGV) whenever a check formatted an integer
# into its error message. The distribution's compiler (the one torch's wheels are built with)
# does not: prefer it when CC/CXX are not set. nvcc gets it through CC (-ccbin).
if [ -z "${CXX:-}" ] && [ -z "${CC:-}" ] && [ -x /usr/bin/g++ ] && [ -x /usr/bin/gcc ]; then
  export CC=/usr/bin/gcc CXX=/usr/bin/g++
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$LOG/gpu.txt" 2>&1 || true

t0=$(date +%s)
TORCHQUANT_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} $PY setup.py build_ext --inplace > "$LOG/build.log" 2>&1
build_rc=$?
t1=$(date +%s)
if [ $build_rc -ne 0 ]; then
  tail -n 60 "$LOG/build.log"
  echo "BUILD FAILED (rc=$build_rc, $((t1 - t0)) s); log: $LOG/build.log"
  exit 1
fi

XDIST=""
if $PY -c "import xdist" 2>/dev/null; then XDIST="-n 8"; fi
PYTHONPATH=python timeout 300 $PY -m pytest -q -p no:cacheprovider $XDIST -m cuda \
  tests/ > "$LOG/test_cuda.log" 2>&1
test_rc=$?
t2=$(date +%s)
PYTHONPATH=python timeout 150 $PY benchmarks/bench_gpu.py > "$LOG/bench_gpu.log" 2>&1
bench_rc=$?
# Model-level figures (LSTM b64, EmbeddingBag, Llama decode int4 vs bf16): their own time limit.
PYTHONPATH=python timeout 150 $PY benchmarks/bench_gpu_models.py > "$LOG/bench_gpu_models.log" 2>&1
models_rc=$?
t3=$(date +%s)
# compute-sanitizer over the CUDA op tests: memcheck on every kernel family, racecheck and
# initcheck on the files whose kernels use shared memory. Bounded so the whole script stays
# under 5 minutes; a refused device (some runtimes) is reported, not fatal.
SAN_RC=skipped
if command -v compute-sanitizer > /dev/null 2>&1; then
  SAN_RC=""
  for spec in "memcheck:80:tests/test_cuda.py tests/test_conv.py tests/test_elementwise.py tests/test_embedding.py tests/test_rnn.py tests/test_int4.py tests/test_cuda_int4.py tests/test_cuda_conv_mma.py" \
              "racecheck:40:tests/test_cuda.py tests/test_cuda_observe.py tests/test_cuda_conv_mma.py tests/test_cuda_int4.py" "initcheck:40:tests/test_cuda.py"; do
    tool=${spec%%:*}; rest=${spec#*:}; limit=${rest%%:*}; files=${rest#*:}
    PYTHONPATH=python timeout "$limit" compute-sanitizer --tool "$tool" --error-exitcode 99 --print-limit 20 \
      $PY -m pytest -q -x -p no:cacheprovider -m cuda $files > "$LOG/sanitizer_$tool.log" 2>&1
    SAN_RC="$SAN_RC $tool=$?"
  done
fi
t4=$(date +%s)

echo "== torchquant GPU check: $(cat "$LOG/gpu.txt" 2>/dev/null)"
echo "build   rc=$build_rc  $((t1 - t0)) s  (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST, CXX=${CXX:-default})"
echo "tests   rc=$test_rc  $((t2 - t1)) s  $(tail -n 1 "$LOG/test_cuda.log")"
echo "bench   rc=$bench_rc models rc=$models_rc  $((t3 - t2)) s"
echo "sanitizer $SAN_RC  $((t4 - t3)) s  (logs: $LOG/sanitizer_*.log; rc 99 = a finding, 124 = time limit)"
if [ $test_rc -ne 0 ]; then grep -E "^(FAILED|ERROR)" "$LOG/test_cuda.log" | cut -c1-300 | head -n 60; fi
echo
cat "$LOG/bench_gpu.log"
echo
cat "$LOG/bench_gpu_models.log"
[ $test_rc -eq 0 ] && [ $bench_rc -eq 0 ]
