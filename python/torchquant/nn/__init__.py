"""torchquant's modules: ``intrinsic`` (fused float modules), ``qat`` (fake-quantized training
modules) and ``quantized`` (int8 modules that ``convert`` swaps in)."""
from . import intrinsic, qat, quantized  # noqa: F401
