"""Typed entry points into the ops the quantized modules call on every forward (and the
public GEMM functions on every call).

``torch.ops.torchquant.<op>(...)`` boxes its arguments against the op's schema on every call:
about 2 us more per call than the op itself at the argument counts of a quantized Linear, which
at batch 1 is more than the Linear's arithmetic. ``torchquant._C`` binds the same ops with
typed arguments and calls them through the same dispatcher (csrc/python/fastcall.cpp), so
every registered kernel, fake kernel and dispatch mode applies as before. What the typed path
leaves out is Python's ``__torch_function__`` handling, so :func:`usable` sends a call there
only where that handling has nothing to do:

* not while torch.compile or torch.export traces (they must see ``torch.ops`` calls);
* no torch function mode active;
* the tensors the caller hands in are plain ``torch.Tensor`` (a quantized Linear checks its
  input's, not its own weight, scale and bias buffers).

Everywhere else the modules call ``torch.ops``. ``TORCHQUANT_FASTCALL=0`` (read at import) or
``torchquant._fastcall.enabled = False`` sends every call through ``torch.ops``.
"""
import os

import torch

from . import _load  # noqa: F401  (the op library, registered with torch, before its bindings)
from . import _C

quantize = _C.quantize
dequantize = _C.dequantize
int8_mm = _C.int8_mm
linear_int8 = _C.linear_int8
linear_dynamic = _C.linear_dynamic
max_pool_int8 = _C.max_pool_int8
avg_pool_int8 = _C.avg_pool_int8
adaptive_avg_pool_int8 = _C.adaptive_avg_pool_int8
embedding_bag_rowwise = _C.embedding_bag_rowwise
conv_int8 = _C.conv_int8

enabled = os.environ.get("TORCHQUANT_FASTCALL", "1").strip().lower() not in ("0", "off", "false", "no")

_Tensor = torch.Tensor
_is_compiling = torch.compiler.is_compiling
_function_mode_enabled = torch._C._is_torch_function_mode_enabled


def usable(a, b, c) -> bool:
    """Whether a call whose user-supplied tensors are a, b, c may take the typed path."""
    # is_compiling() first: under tracing it is a constant and nothing after it is traced.
    return (not _is_compiling() and enabled and type(a) is _Tensor and type(b) is _Tensor
            and type(c) is _Tensor and not _function_mode_enabled())


def usable_all(required, optional) -> bool:
    """usable() for any number of arguments: each of ``required`` a plain tensor, each of
    ``optional`` one or None (an absent optional tensor). A None where the schema requires a
    tensor goes to torch.ops, whose error names the argument; pybind11 would reject it with a
    TypeError listing the binding's signature."""
    if _is_compiling() or not enabled or _function_mode_enabled():
        return False
    for t in required:
        if type(t) is not _Tensor:
            return False
    for t in optional:
        if t is not None and type(t) is not _Tensor:
            return False
    return True
