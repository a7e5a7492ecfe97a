#!/usr/bin/env bash
# Sets up a fresh machine (scripts/setup.sh), then runs the main job: the MNIST demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
$PY -m torchquant.demo "$@"
