#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh), then runs the Python tests and the C++ test.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
$PY -m pytest -q -p no:cacheprovider tests "$@"
mkdir -p build
cmake -S . -B build/cmake -G Ninja -DPython3_EXECUTABLE="$(command -v $PY)" > build/cmake.log 2>&1 || { cat build/cmake.log; exit 1; }
cmake --build build/cmake -j2 >> build/cmake.log 2>&1 || { cat build/cmake.log; exit 1; }
ctest --test-dir build/cmake --output-on-failure
