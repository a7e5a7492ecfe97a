"""Public functions with torch's names and signatures, running torchquant's kernels.

Example::

    >>> import torch, torchquant
    >>> x = torch.randn(4, 8)
    >>> y = torchquant.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127)
    >>> torch.equal(y, torch.fake_quantize_per_tensor_affine(x, 0.05, 0, -128, 127))
    True
    >>> q = torchquant.quantize_per_channel(x, torch.full((4,), 0.05), torch.zeros(4, dtype=torch.int32), 0, torch.qint8)
    >>> q.int_repr().dtype
    torch.int8
"""
import math
import numbers
import operator
from typing import Optional, Tuple, Union

import torch

from . import _fastcall
from ._ops import ops
from .qtensor import QTensor

__all__ = [
    "quantize_per_tensor",
    "quantize_per_channel",
    "dequantize",
    "fake_quantize_per_tensor_affine",
    "fake_quantize_per_channel_affine",
    "fake_quantize_learnable_per_tensor_affine",
    "fake_quantize_learnable_per_channel_affine",
    "choose_qparams",
    "storage_dtype",
]

_STORAGE = {
    torch.qint8: torch.int8,
    torch.quint8: torch.uint8,
    torch.int8: torch.int8,
    torch.uint8: torch.uint8,
}

Number = Union[float, int]


def storage_dtype(dtype: torch.dtype) -> torch.dtype:
    """torch.qint8/torch.int8 -> torch.int8; torch.quint8/torch.uint8 -> torch.uint8."""
    try:
        return _STORAGE[dtype]
    except KeyError:
        raise ValueError(
            f"argument 'dtype' must be torch.qint8, torch.quint8, torch.int8 or torch.uint8, got {dtype}"
        ) from None


def _as_tensor(v, dtype, device, name) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        if v.device != device:
            raise ValueError(f"argument '{name}' is on {v.device} but the input is on {device}")
        return v
    return _number_tensor(v, dtype, device, name)


def _number_tensor(v, dtype, device, name) -> torch.Tensor:
    """A number (Python's or NumPy's scalars, as torch takes them; not a bool) as a one-element
    tensor of dtype. An integer dtype takes only an integer (a float would be truncated:
    zero_point 0.5 would become 0) inside the int32 range."""
    if dtype.is_floating_point:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"argument '{name}' must be a number or a tensor, got {type(v).__name__}")
        v = float(v)
    else:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            got = f"float {v}" if isinstance(v, float) else type(v).__name__
            raise TypeError(f"argument '{name}' must be an integer or a tensor, got {got}")
        v = int(v)
        if not -2 ** 31 <= v < 2 ** 31:
            raise ValueError(f"argument '{name}' must lie in the int32 range, got {v}")
    if dtype == torch.float32 and v != 0 and not 1e-38 < abs(v) < 3e38 and math.isfinite(v):
        # Outside float32's normal range the value may round to 0 or inf; handed over as float64
        # the kernel's check reports the value given ("got 1e-50 (0 in float32)"), not "got 0".
        dtype = torch.float64
    return torch.tensor([v], dtype=dtype, device=device)


def quantize_per_tensor(x: torch.Tensor, scale, zero_point, dtype: torch.dtype) -> QTensor:
    """``torch.quantize_per_tensor`` returning a :class:`QTensor`.

    >>> torchquant.quantize_per_tensor(torch.tensor([0.5, -1.0]), 0.01, 10, torch.quint8).int_repr()
    tensor([60,  0], dtype=torch.uint8)
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize_per_tensor: argument 'x' must be a tensor, got {type(x).__name__}")
    st = storage_dtype(dtype)
    info = torch.iinfo(st)
    s = _as_tensor(scale, torch.float32, x.device, "scale")
    z = _as_tensor(zero_point, torch.int32, x.device, "zero_point")
    f = _fastcall.quantize if _fastcall.usable(x, s, z) else ops.quantize
    data = f(x, s, z, None, info.min, info.max, st)
    # Copies of the qparams (as torch's quantized tensor keeps its own): a later in-place change
    # of the caller's scale (a fake-quant's buffer) must not change this QTensor.
    return QTensor(data, s.reshape(1).to(torch.float32, copy=True), z.reshape(1).to(torch.int32, copy=True), None,
                   info.min, info.max)


def quantize_per_channel(x: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, axis: int,
                         dtype: torch.dtype) -> QTensor:
    """``torch.quantize_per_channel`` returning a :class:`QTensor`."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize_per_channel: argument 'x' must be a tensor, got {type(x).__name__}")
    for name, t in (("scales", scales), ("zero_points", zero_points)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"quantize_per_channel: argument '{name}' must be a tensor, got {type(t).__name__}")
        if t.dim() != 1:  # as torch's: "scale tensor must have dimension 1"
            raise ValueError(f"quantize_per_channel: argument '{name}' must be 1-D (one value per channel), got "
                             f"shape {tuple(t.shape)}")
    st = storage_dtype(dtype)
    info = torch.iinfo(st)
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"quantize_per_channel: argument 'axis' must be an integer, got {axis!r}") from None
    # An axis past int64 goes to torch.ops too, so that its error is the same either way.
    typed = -2 ** 63 <= axis < 2 ** 63 and _fastcall.usable(x, scales, zero_points)
    f = _fastcall.quantize if typed else ops.quantize
    data = f(x, scales, zero_points, axis, info.min, info.max, st)
    axis = axis + x.dim() if axis < 0 else axis
    return QTensor(data, scales.to(torch.float32, copy=True), zero_points.to(torch.int32, copy=True), axis,
                   info.min, info.max)


def dequantize(q: QTensor, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """float from a :class:`QTensor` (``torch.dequantize`` for torchquant's QTensor), float32
    unless ``dtype`` says otherwise; a torch quantized tensor is dequantized by torch, and a
    floating-point tensor is returned as it is, as ``torch.dequantize`` returns one (in ``dtype``
    when given)."""
    if isinstance(q, QTensor):
        return q.dequantize(torch.float32 if dtype is None else dtype)
    if isinstance(q, torch.Tensor) and (q.is_quantized or q.is_floating_point()):
        t = q.dequantize() if q.is_quantized else q
        return t if dtype is None or t.dtype == dtype else t.to(dtype)
    raise TypeError(f"dequantize: argument 'q' must be a QTensor (or a torch quantized / floating-point tensor), got "
                    f"{q.dtype if isinstance(q, torch.Tensor) else type(q).__name__}")


def fake_quantize_per_tensor_affine(x: torch.Tensor, scale, zero_point, quant_min: int, quant_max: int) -> torch.Tensor:
    """Same signature and results as ``torch.fake_quantize_per_tensor_affine``; differentiable
    with respect to x (straight-through inside [quant_min, quant_max]). A scale that requires
    grad raises, as torch's: ``fake_quantize_learnable_per_tensor_affine`` trains the qparams."""
    s = _as_tensor(scale, torch.float32, x.device, "scale")
    z = _as_tensor(zero_point, torch.int32, x.device, "zero_point")
    return ops.fake_quantize(x, s, z, None, quant_min, quant_max)


def fake_quantize_per_channel_affine(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, axis: int,
                                     quant_min: int, quant_max: int) -> torch.Tensor:
    """Same signature and results as ``torch.fake_quantize_per_channel_affine``; a scale that
    requires grad raises, as torch's: ``fake_quantize_learnable_per_channel_affine`` trains the qparams."""
    return ops.fake_quantize(x, scale, zero_point, axis, quant_min, quant_max)


def fake_quantize_learnable_per_tensor_affine(x, scale: torch.Tensor, zero_point: torch.Tensor, quant_min: int,
                                              quant_max: int, grad_factor: float = 1.0) -> torch.Tensor:
    """``torch._fake_quantize_learnable_per_tensor_affine``: gradients flow to scale and
    zero_point (LSQ)."""
    return ops.fake_quantize_learnable(x, scale, zero_point, None, quant_min, quant_max, grad_factor)


def fake_quantize_learnable_per_channel_affine(x, scale: torch.Tensor, zero_point: torch.Tensor, axis: int,
                                               quant_min: int, quant_max: int, grad_factor: float = 1.0) -> torch.Tensor:
    """``torch._fake_quantize_learnable_per_channel_affine``."""
    return ops.fake_quantize_learnable(x, scale, zero_point, axis, quant_min, quant_max, grad_factor)


def choose_qparams(min_val: torch.Tensor, max_val: torch.Tensor, quant_min: int, quant_max: int,
                   symmetric: bool = False, eps: float = torch.finfo(torch.float32).eps,
                   symmetric_zero_point: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero point (int32) from observed min/max, on their device, with
    torch.ao's formulas.

    >>> torchquant.choose_qparams(torch.tensor([-1.0]), torch.tensor([3.0]), 0, 255)
    (tensor([0.0157]), tensor([64], dtype=torch.int32))
    """
    return ops.choose_qparams(min_val, max_val, quant_min, quant_max, symmetric, eps, symmetric_zero_point)
