#!/usr/bin/env bash
# Builds the CPU kernels with AddressSanitizer and UndefinedBehaviorSanitizer into
# build/sanitize/ (the in-place library that the other tests use is left alone) and runs the
# op-level tests under them for every CPU ISA this machine has. Fails on any report.
#
# -fno-wrapv: Python's compile flags carry -fwrapv, which defines signed overflow and so turns
# UBSan's check for it off; the flag that comes last wins. -fno-sanitize-recover: the first
# report aborts the run, so it cannot scroll by unnoticed. -g1: line numbers in the reports
# (setup.py builds without debug information otherwise). Reports go to the log (pytest runs
# with --capture=sys: it does not swallow the sanitizers' stderr) and are searched for too.
#   PYTHON     interpreter (default python3)
#   MAX_JOBS   parallel compile jobs (default: the number of CPUs, at most 8)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=build/sanitize
mkdir -p "$OUT"
FLAGS="-fsanitize=address,undefined -fno-wrapv -fno-sanitize-recover=undefined -fno-omit-frame-pointer -O1 -g1"
# The op-level tests: kernels, their argument checks and the observers that drive them.
TESTS=(tests/test_quantize_ops.py tests/test_observer.py tests/test_gemm.py tests/test_conv.py tests/test_conv_transpose.py
       tests/test_elementwise.py
       tests/test_embedding.py tests/test_int4.py)

t0=$(date +%s)
# setup.py records the build it makes in python/torchquant/_build_config.py: keep the normal one.
config=python/torchquant/_build_config.py
saved=""
if [ -f "$config" ]; then saved=$(cat "$config"); fi
restore() { if [ -n "$saved" ]; then printf '%s\n' "$saved" > "$config"; fi; }
trap restore EXIT
if ! TORCHQUANT_CUDA=0 TORCHQUANT_EXTRA_CFLAGS="$FLAGS" MAX_JOBS=${MAX_JOBS:-$(n=$(nproc); echo $(( n < 8 ? n : 8 )))} \
    $PY setup.py build_ext -t "$OUT/temp" -b "$OUT/lib" > "$OUT/build.log" 2>&1; then
  tail -n 60 "$OUT/build.log"
  echo "sanitize: BUILD FAILED; log: $OUT/build.log"
  exit 1
fi
restore
# A copy of the Python package around the sanitized library.
rm -rf "$OUT/pkg"
mkdir -p "$OUT/pkg"
cp -r python/torchquant "$OUT/pkg/"
rm -f "$OUT/pkg/torchquant/"_C*.so
cp "$OUT/lib/torchquant/"_C*.so "$OUT/pkg/torchquant/"
find "$OUT/pkg" -name __pycache__ -prune -exec rm -rf {} +
t1=$(date +%s)

CXX_BIN=${CXX:-c++}
PRELOAD="$($CXX_BIN -print-file-name=libasan.so) $($CXX_BIN -print-file-name=libstdc++.so)"
for lib in $PRELOAD; do
  if [ ! -e "$lib" ]; then echo "sanitize: $lib not found (is the compiler's ASan runtime installed?)"; exit 1; fi
done

isas=()
for isa in amx avx512vnni avxvnni avx2 scalar; do
  if PYTHONPATH=python $PY -c "import torchquant; torchquant.set_cpu_isa('$isa')" 2>/dev/null; then isas+=("$isa"); fi
done
# (the ISAs are probed with the normal build in python/torchquant: without it none is found, and
# a run over no ISA would test nothing)
if [ ${#isas[@]} -eq 0 ]; then
  echo "sanitize: no CPU ISA could be set with the build in python/torchquant (build it first: scripts/setup.sh)"
  exit 1
fi

rc=0
first=1
for isa in "${isas[@]}"; do
  sel=()
  if [ $first -eq 0 ]; then
    # Tests with the `isa` fixture already ran every ISA in the first pass: here only the
    # others, which run on the ISA that TORCHQUANT_CPU_ISA sets.
    sel=(-k "not scalar and not avx2 and not avxvnni and not avx512vnni and not amx")
  fi
  first=0
  log="$OUT/test_$isa.log"
  ts=$(date +%s)
  set +e
  TORCHQUANT_CPU_ISA=$isa PYTHONPATH="$OUT/pkg" LD_PRELOAD="$PRELOAD" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
    $PY -m pytest -q -p no:cacheprovider --capture=sys "${TESTS[@]}" "${sel[@]}" > "$log" 2>&1
  test_rc=$?
  set -e
  reports=$(grep -cE "runtime error|ERROR: AddressSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$log" || true)
  echo "sanitize: TORCHQUANT_CPU_ISA=$isa  pytest rc=$test_rc  reports=$reports  $(( $(date +%s) - ts )) s  $(tail -n 1 "$log")"
  if [ "$test_rc" -ne 0 ] || [ "$reports" -ne 0 ]; then
    grep -nE -A12 "runtime error|ERROR: AddressSanitizer" "$log" | head -n 80 || true
    grep -E "^(FAILED|ERROR)" "$log" | head -n 20 || true
    rc=1
  fi
done
loaded=$(PYTHONPATH="$OUT/pkg" LD_PRELOAD="$PRELOAD" ASAN_OPTIONS=detect_leaks=0 \
  $PY -c "import torchquant._load as l; print(l.LIBRARY_PATH)" 2>/dev/null || true)
case "$loaded" in
  *"$OUT/pkg/torchquant/"*) ;;
  *) echo "sanitize: the tests did not load the sanitized library (loaded: '$loaded')"; rc=1 ;;
esac
if ! readelf -d "$OUT/pkg/torchquant/"_C*.so | grep -q "libasan"; then
  echo "sanitize: the library is not built with ASan"; rc=1
fi
echo "sanitize: build $((t1 - t0)) s; ISAs: ${isas[*]}; $([ $rc -eq 0 ] && echo clean || echo FAILED)"
exit $rc
