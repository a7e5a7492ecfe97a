"""Build of torchquant: the Python package plus one C++/CUDA library of torch ops.

Sources are every *.cpp (and, with CUDA, every *.cu) under csrc/; CMakeLists.txt globs the
same tree, so the two builds cannot drift apart.

Environment:
  TORCHQUANT_CUDA=0|1|auto   build the CUDA kernels (auto: when nvcc and a CUDA build of torch
                             are both present)
  TORCH_CUDA_ARCH_LIST       CUDA architectures (default "8.0;9.0")
  TORCHQUANT_DEBUG=1         keep debug information in the library (default: -g0)

Install against the torch that is already installed:
  pip install --no-build-isolation -e .
"""
import glob
import os
import shlex
import shutil

from setuptools import find_packages, setup

import torch


def _discover_cuda_home():
    """torch guesses CUDA_HOME from the directory of `nvcc`; where nvcc is a wrapper script
    (e.g. /usr/local/bin/nvcc) that guess is wrong, so point it at a real toolkit first. Must run
    before torch.utils.cpp_extension is imported: it reads CUDA_HOME once, at import."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        # A toolkit has the runtime's header; /usr/local (a wrapper in /usr/local/bin) does not.
        if os.path.exists(os.path.join(c, "bin", "nvcc")) and os.path.exists(
                os.path.join(c, "include", "cuda_runtime.h")):
            os.environ["CUDA_HOME"] = c
            return


_discover_cuda_home()

from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

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


def _find_cublaslt():
    """(include_dir, lib_dir, lib_file) of the cuBLASLt that torch itself loads.

    The CUDA toolkit may ship without cuBLAS; torch's wheels depend on the `nvidia-cublas` pip
    package (site-packages/nvidia/cu13/ or nvidia/cublas/), so look there first, then in
    CUDA_HOME. Linking the versioned soname (libcublasLt.so.13) makes the dynamic loader reuse
    the copy torch has already loaded instead of finding a second one."""
    roots = []
    try:
        import nvidia  # namespace package of the nvidia-* wheels

        for base in list(nvidia.__path__):
            roots += sorted(glob.glob(os.path.join(base, "*")))
    except ImportError:
        pass
    if CUDA_HOME:
        roots += [CUDA_HOME, os.path.join(CUDA_HOME, "targets", "x86_64-linux"),
                  os.path.join(CUDA_HOME, "targets", "sbsa-linux")]
    for root in roots:
        header = os.path.join(root, "include", "cublasLt.h")
        if not os.path.exists(header):
            continue
        for libdir in (os.path.join(root, "lib"), os.path.join(root, "lib64")):
            # The soname (libcublasLt.so.13) is what torch's own libraries name in DT_NEEDED.
            sonames = sorted(glob.glob(os.path.join(libdir, "libcublasLt.so.[0-9]*")), key=len)
            plain = glob.glob(os.path.join(libdir, "libcublasLt.so"))
            if sonames or plain:
                return os.path.join(root, "include"), libdir, os.path.basename((sonames or plain)[0])
    raise RuntimeError(
        "building the CUDA kernels needs cuBLASLt (cublasLt.h and libcublasLt.so*), found neither "
        "in the nvidia-cublas pip package nor in CUDA_HOME; install nvidia-cublas or set "
        "TORCHQUANT_CUDA=0 for a CPU-only build"
    )



def _cublas_only_include(include_dir):
    """An include directory holding only the cuBLAS headers of `include_dir`.

    The nvidia-cublas wheel's include/ also carries a full set of CUDA runtime headers; putting
    it on the path would let them shadow the toolkit's own (nvcc's), which must match nvcc.
    Symlinks to the few cuBLAS headers avoid that."""
    if CUDA_HOME and os.path.exists(os.path.join(CUDA_HOME, "include", "cublasLt.h")):
        return os.path.join(CUDA_HOME, "include")
    out = os.path.join(ROOT, "build", "cublas_include")
    os.makedirs(out, exist_ok=True)
    for name in ("cublasLt.h", "cublas_api.h"):
        link = os.path.join(out, name)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.join(include_dir, name), link)
    return out


def persistent_build_temp(build_temp: str, root: str) -> str:
    """Where the objects and ninja's build file go. ``pip install -e .`` (setuptools' editable
    wheel) hands build_ext a fresh temporary directory ("...build-temp") on every run, so ninja
    found no earlier objects and recompiled the whole extension each time (scripts/test.sh after
    scripts/demo.sh rebuilt it all). That directory is replaced by the one ``python setup.py
    build_ext`` uses by default, in the source tree: unchanged sources are then not recompiled,
    only relinked. Any other directory (``build_ext -t DIR``) is kept as given."""
    if not os.path.basename(os.path.normpath(build_temp)).endswith(".build-temp"):
        return build_temp
    import sys
    import sysconfig

    return os.path.join(root, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


class _BuildExt(BuildExtension.with_options(use_ninja=True)):
    def finalize_options(self):
        super().finalize_options()
        self.build_temp = persistent_build_temp(self.build_temp, ROOT)


# -fopenmp: at::parallel_for is an inline template whose `#pragma omp parallel` compiles into
# this library; without the flag the pragma is dropped and every "parallel" loop runs on one
# thread. The OpenMP runtime is the one torch already loads (same soname, libgomp.so.1).
cxx_flags = ["-O3", "-ffp-contract=off", "-fopenmp", f'-DTORCHQUANT_VERSION="{VERSION}"']
# nvcc: no contraction of a*b+c into FMA either, so float epilogues match the CPU bit for bit.
nvcc_flags = ["-O3", "-fmad=false", "--expt-relaxed-constexpr", f'-DTORCHQUANT_VERSION="{VERSION}"']
# No debug information (Python's own flags carry -g): it made the library 50 MB against 2 MB
# stripped, in every wheel. TORCHQUANT_DEBUG=1 keeps it.
if os.environ.get("TORCHQUANT_DEBUG", "0").lower() in ("", "0", "off", "false", "no"):
    cxx_flags.append("-g0")
# Extra flags for the C++ sources and the link (scripts/sanitize.sh passes -fsanitize=...).
# They come after Python's own flags, so they can undo one (-fno-wrapv).
extra_flags = shlex.split(os.environ.get("TORCHQUANT_EXTRA_CFLAGS", ""))
cxx_flags += extra_flags
sources = _sources(".cpp")
if WITH_CUDA:
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    cxx_flags.append("-DTORCHQUANT_WITH_CUDA")
    nvcc_flags.append("-DTORCHQUANT_WITH_CUDA")
    lt_include, lt_libdir, lt_lib = _find_cublaslt()
    lt_include = _cublas_only_include(lt_include)
    ext = CUDAExtension(
        "torchquant._C",
        sources + _sources(".cu"),
        include_dirs=[os.path.join(ROOT, "csrc"), lt_include],
        library_dirs=[lt_libdir],
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=["-fopenmp", f"-l:{lt_lib}", f"-Wl,-rpath,{lt_libdir}"] + extra_flags,
    )
else:
    ext = CppExtension(
        "torchquant._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp"] + extra_flags,
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
    cmdclass={"build_ext": _BuildExt},
    entry_points={"console_scripts": ["torchquant-mnist=torchquant.demo:main"]},
)
