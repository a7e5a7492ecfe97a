"""torchquant: int8 quantization for PyTorch.

torch.ao.quantization's eager API (QuantStub, QConfig, prepare, convert, ...) on real int8
kernels for CPU (AVX2 / AVX-512 VNNI) and CUDA, registered as ``torch.ops.torchquant.*``.

    >>> import torch, torchquant
    >>> q = torchquant.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8)
    >>> q.dequantize()
"""
from . import _ops  # noqa: F401  (loads the op library; raises ImportError saying why if it cannot)
from . import reference  # noqa: F401
from ._load import LIBRARY_PATH
from .functional import (
    choose_qparams,
    dequantize,
    fake_quantize_learnable_per_channel_affine,
    fake_quantize_learnable_per_tensor_affine,
    fake_quantize_per_channel_affine,
    fake_quantize_per_tensor_affine,
    quantize_per_channel,
    quantize_per_tensor,
)
from .qtensor import QTensor
from .isa import cpu_isa, force_cpu_isa, set_cpu_isa, build_info

try:
    from ._build_config import VERSION as __version__
except ImportError:  # pragma: no cover
    __version__ = "unknown"

# GEMM-EXPORTS-BEGIN
from .gemm import int8_mm, linear_dynamic, linear_int8, pack_weight, quantize_rowwise
# GEMM-EXPORTS-END
# OBSERVER-EXPORTS-BEGIN
# OBSERVER-EXPORTS-END
# EAGER-EXPORTS-BEGIN
# EAGER-EXPORTS-END
