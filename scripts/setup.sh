#!/usr/bin/env bash
# Installs everything torchquant needs on a fresh machine and builds it against that torch.
#   TORCHQUANT_TORCH   pip requirement for torch (default torch==2.14.1; an installed torch>=2.11 is kept)
#   TORCHQUANT_CUDA    0 to skip the CUDA kernels (default: build them when nvcc is found)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! $PY -c 'import sys, torch; v = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(v < (2, 11))' 2>/dev/null; then
  $PY -m pip install -q "${TORCHQUANT_TORCH:-torch==2.14.1}"
fi
$PY -m pip install -q setuptools wheel ninja cmake numpy tqdm matplotlib pytest hypothesis nbclient nbformat ipykernel
# Test dependency: Hugging Face models built from small configs (tests/test_hf_dynamic.py).
$PY -m pip install -q transformers "torch==$($PY -c 'import torch; print(torch.__version__.split("+")[0])')"
# torchvision (test dependency: its quantizable models), the release matched to the installed torch.
TV=$($PY -c 'import torch; v = torch.__version__.split("+")[0].split("."); print("0.%d.*" % (int(v[1]) + 15))')
# torch pinned to the installed version, so that pip never swaps it for the torchvision release.
$PY -m pip install -q "torchvision==$TV" "torch==$($PY -c 'import torch; print(torch.__version__.split("+")[0])')"
# A torchvision built for another variant of that torch (PyPI's CUDA build beside a CPU-only torch)
# fails to import; its tests then skip instead of failing.
if ! $PY -c 'import torchvision' > /dev/null 2>&1; then
  echo "setup: torchvision $TV does not import beside this torch; removed (its tests will skip)" >&2
  $PY -m pip uninstall -q -y torchvision
fi
# A toolkit whose nvcc is a wrapper script leaves torch guessing CUDA_HOME; point it at the toolkit.
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda/include ]; then export CUDA_HOME=/usr/local/cuda; fi
$PY -m pip install -q --no-build-isolation -e .
if [ -f scripts/get_mnist.py ]; then $PY scripts/get_mnist.py; fi
$PY -c 'import torchquant; print(torchquant.build_info())'
