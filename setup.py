"""Build of torchquant: the Python package plus one C++/CUDA library of torch ops.

Sources are every *.cpp (and, with CUDA, every *.cu) under csrc/; CMakeLists.txt globs the
same tree, so the two builds cannot drift apart.

Environment:
  TORCHQUANT_CUDA=0|1|auto   build the CUDA kernels (auto: when nvcc and a CUDA build of torch
                             are both present)
  TORCH_CUDA_ARCH_LIST       CUDA architectures (default "8.0;9.0")

Install against the torch that is already installed:
  pip install --no-build-isolation -e .
"""
import glob
import os
import shutil

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

VERSION = "0.1.0"
ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(suffix):
    return sorted(
        os.path.relpath(p, ROOT)
        for p in glob.glob(os.path.join(ROOT, "csrc", "**", f"*{suffix}"), recursive=True)
    )


def _want_cuda():
    mode = os.environ.get("TORCHQUANT_CUDA", "auto").lower()
    if mode in ("0", "off", "false", "no"):
        return False
    nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")))
    available = bool(nvcc) and torch.version.cuda is not None
    if mode in ("1", "on", "true", "yes") and not available:
        raise RuntimeError(
            "TORCHQUANT_CUDA=1 but CUDA cannot be built: "
            f"nvcc found: {bool(nvcc)}, torch CUDA version: {torch.version.cuda}"
        )
    return available


WITH_CUDA = _want_cuda()

cxx_flags = ["-O3", "-ffp-contract=off", f'-DTORCHQUANT_VERSION="{VERSION}"']
# nvcc: no contraction of a*b+c into FMA either, so float epilogues match the CPU bit for bit.
nvcc_flags = ["-O3", "-fmad=false", "--expt-relaxed-constexpr", f'-DTORCHQUANT_VERSION="{VERSION}"']
sources = _sources(".cpp")
if WITH_CUDA:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cxx_flags.append("-DTORCHQUANT_WITH_CUDA")
    nvcc_flags.append("-DTORCHQUANT_WITH_CUDA")
    ext = CUDAExtension(
        "torchquant._C",
        sources + _sources(".cu"),
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        libraries=["cublasLt"],
    )
else:
    ext = CppExtension(
        "torchquant._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
    )

# Recorded so that a failed load can say which torch the library was built against.
with open(os.path.join(ROOT, "python", "torchquant", "_build_config.py"), "w") as f:
    f.write(
        "# Written by setup.py at build time.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {WITH_CUDA!r}\n"
        f"VERSION = {VERSION!r}\n"
    )

setup(
    name="torchquant",
    version=VERSION,
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["torchquant-mnist=torchquant.demo:main"]},
)
