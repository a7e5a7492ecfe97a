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
* every tensor argument is a plain ``torch.Tensor`` (or None where the schema takes an optional
  one): the input's and the module's own buffers alike, since torch.func.functional_call or an
  assignment can put a subclass with its own ``__torch_function__`` in a weight, scale or bias;
* every other argument already has the type the binding takes (a module attribute such as an
  EmbeddingBag's padding_idx of another type goes to torch.ops, whose error names it).

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


def usable_int8_layer(x, x_scale, x_zero_point, w_packed, w_col_sums, w_scale, bias, out_scale,
                      out_zero_point) -> bool:
    """usable() for linear_int8 and conv_int8, whose tensor arguments are these (bias,
    out_scale and out_zero_point optional)."""
    return (not _is_compiling() and enabled and type(x) is _Tensor and type(x_scale) is _Tensor
            and type(x_zero_point) is _Tensor and type(w_packed) is _Tensor and type(w_col_sums) is _Tensor
            and type(w_scale) is _Tensor and (type(bias) is _Tensor or bias is None)
            and (type(out_scale) is _Tensor or out_scale is None)
            and (type(out_zero_point) is _Tensor or out_zero_point is None) and not _function_mode_enabled())


def usable_dynamic(x, w_packed, w_col_sums, w_scale, bias) -> bool:
    """usable() for linear_dynamic, whose tensor arguments are these (bias optional)."""
    return (not _is_compiling() and enabled and type(x) is _Tensor and type(w_packed) is _Tensor
            and type(w_col_sums) is _Tensor and type(w_scale) is _Tensor and (type(bias) is _Tensor or bias is None)
            and not _function_mode_enabled())


def is_int64(v) -> bool:
    """Whether v is an int within int64, which the bindings take as it is; anything else goes to
    torch.ops, which converts or refuses it as the op's schema says."""
    return type(v) is int and -0x8000000000000000 <= v <= 0x7FFFFFFFFFFFFFFF


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
