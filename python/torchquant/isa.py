"""Which CPU kernel variant runs: detected from CPUID, forced for tests and benchmarks.

    >>> torchquant.cpu_isa()
    'avx512vnni'
    >>> with torchquant.force_cpu_isa("scalar"):
    ...     ...  # every CPU kernel runs its scalar version here
"""
import contextlib
import os
import threading
import warnings

import torch
from torch.fx.node import has_side_effect

from . import _load  # noqa: F401

__all__ = ["cpu_isa", "set_cpu_isa", "force_cpu_isa", "build_info", "ISAS"]

ISAS = ("scalar", "avx2", "avxvnni", "avx512vnni", "amx")


@torch.compiler.disable
def cpu_isa() -> str:
    """The CPU kernel variant in use: 'scalar', 'avx2', 'avxvnni' (AVX2 with AVX-VNNI: the AVX2
    kernels, but the int8 GEMMs multiply with 256-bit vpdpbusd), 'avx512vnni' or 'amx'
    (AVX-512 VNNI with AMX-INT8 tiles, Intel since Sapphire Rapids, on Linux: the AVX-512 VNNI
    kernels, but the int8 GEMM of Linear layers with 16 rows or more and K >= 64, and of
    convolutions of GEMM depth 256 or more with 64 output pixels or more (16 or more with 256
    output channels; 64 or more GEMM depth for a 1x1 read in place), multiplies on tiles).

    Not traced by torch.compile: a compiled function calls it (and set_cpu_isa) at run time, where
    the graph breaks; fullgraph=True refuses it."""
    return torch.ops.torchquant.cpu_isa()


@torch.compiler.disable
def set_cpu_isa(isa: str) -> None:
    """Forces a variant for the whole process ('auto' returns to detection). Raises if the CPU
    lacks it. The environment variable TORCHQUANT_CPU_ISA sets the initial choice."""
    torch.ops.torchquant.set_cpu_isa(isa)


@contextlib.contextmanager
def force_cpu_isa(isa: str):
    """Runs the block with the given CPU kernel variant, then restores the previous one. The
    variant is one for the whole process: a block in another thread waits until this one ends
    (blocks nest within a thread)."""
    with _FORCE_LOCK:
        previous = cpu_isa()
        set_cpu_isa(isa)
        try:
            yield
        finally:
            set_cpu_isa(previous)


_FORCE_LOCK = threading.RLock()

# The op changes process state and returns nothing: a traced graph must not drop it as dead code.
has_side_effect(torch.ops.torchquant.set_cpu_isa.default)


def _check_environment() -> None:
    """TORCHQUANT_CPU_ISA is read by the library once; a value that is no ISA, or one this CPU
    lacks, is ignored there (detection is used) and reported here, at import, with one warning
    naming the variable."""
    value = os.environ.get("TORCHQUANT_CPU_ISA")
    if value is None or value in ("", "auto"):
        return
    used = cpu_isa()
    if value not in ISAS:
        warnings.warn(f"environment variable TORCHQUANT_CPU_ISA={value!r} is not one of auto, {', '.join(ISAS)}; "
                      f"ignoring it and using the detected {used!r}", RuntimeWarning, stacklevel=3)
    elif used != value:
        warnings.warn(f"environment variable TORCHQUANT_CPU_ISA={value!r} asks for an ISA this CPU does not "
                      f"support; ignoring it and using the detected {used!r}", RuntimeWarning, stacklevel=3)


_check_environment()


def build_info() -> str:
    """One line describing the build: version, whether CUDA kernels are compiled in, and the CPU
    variant detected on this machine (``"torchquant 0.1.0 cuda=no cpu_isa_detected=avx512vnni"``)."""
    return torch.ops.torchquant.build_info()
