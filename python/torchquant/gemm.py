"""int8 GEMM with exact int32 accumulation and a fused requantize / dequantize epilogue.

    >>> w = torch.randint(-128, 128, (256, 784), dtype=torch.int8)   # nn.Linear layout [N, K]
    >>> w_packed, w_col_sums = torchquant.pack_weight(w)              # once, at convert time
    >>> x = torch.randint(0, 256, (64, 784), dtype=torch.uint8)
    >>> y = torchquant.linear_int8(x, 0.02, 128, w_packed, w_col_sums, torch.full((256,), 0.01))
    >>> y.shape, y.dtype
    (torch.Size([64, 256]), torch.float32)

The arithmetic is the contract of docs/quantization.md ("Requantization"): exact int32
accumulators, zero-point correction with precomputed column sums, then float32 steps in a fixed
order, so every CPU kernel variant and the reference in ``torchquant.reference`` agree bit for
bit.
"""
from typing import Optional, Tuple, Union

import torch

from . import _fastcall
from . import _ops  # noqa: F401  (registers the fake kernels)
from ._ops import packed_weight_shape
from .functional import _number_tensor

__all__ = ["int8_mm", "pack_weight", "linear_int8", "quantize_rowwise", "linear_dynamic",
           "packed_weight_shape"]

ops = torch.ops.torchquant
Number = Union[int, float]


def _as_tensor(v, dtype, like: torch.Tensor, name: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    return _number_tensor(v, dtype, like.device, name)


def _qparam_tensors(x, x_scale, x_zero_point, out_scale, out_zero_point):
    """(x_scale, x_zero_point, out_scale, out_zero_point) of a linear / conv op as tensors on
    x's device: numbers converted (float32 / int32), tensors and None passed through."""
    x_scale = _as_tensor(x_scale, torch.float32, x, "x_scale")
    x_zero_point = _as_tensor(x_zero_point, torch.int32, x, "x_zero_point")
    if out_scale is not None:
        out_scale = _as_tensor(out_scale, torch.float32, x, "out_scale")
    if out_zero_point is not None:
        out_zero_point = _as_tensor(out_zero_point, torch.int32, x, "out_zero_point")
    return x_scale, x_zero_point, out_scale, out_zero_point


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact int8 x int8 -> int32 matrix product, like ``torch._int_mm`` but for any shape
    (M, K, N >= 0) and any strides. K is limited to 65793 (no int32 overflow possible).

    >>> a = torch.randint(-128, 128, (3, 5), dtype=torch.int8)
    >>> b = torch.randint(-128, 128, (5, 2), dtype=torch.int8)
    >>> torch.equal(torchquant.int8_mm(a, b), (a.long() @ b.long()).int())
    True
    """
    if _fastcall.usable(a, b, b):
        return _fastcall.int8_mm(a, b)
    return ops.int8_mm(a, b)


def pack_weight(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Packs an int8 weight [N, K] (nn.Linear layout) for ``linear_int8`` / ``linear_dynamic``
    on w's device. Returns ``(packed, col_sums)``: col_sums[n] = sum_k w[n, k] (int32), used to
    correct for the activations' zero point. Call it once when a model is converted.

    >>> packed, col_sums = torchquant.pack_weight(torch.ones(20, 7, dtype=torch.int8))
    >>> packed.shape, col_sums[:3]
    (torch.Size([2, 7, 16]), tensor([7, 7, 7], dtype=torch.int32))
    """
    return ops.pack_weight(w)


def linear_int8(x: torch.Tensor, x_scale: Union[torch.Tensor, float],
                x_zero_point: Union[torch.Tensor, int], w_packed: torch.Tensor,
                w_col_sums: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                out_scale: Optional[Union[torch.Tensor, float]] = None,
                out_zero_point: Optional[Union[torch.Tensor, int]] = None, relu: bool = False,
                out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Static int8 Linear: ``x`` [..., K] int8/uint8 with ``x_scale`` (float, > 0) and
    ``x_zero_point`` (integer, inside x's range), each either one value (per tensor) or one per
    row of x (per row: rows = x.numel() // K elements, any shape, in the order of
    ``x.reshape(-1, K)``, e.g. what ``quantize_rowwise`` returns), on CPU and CUDA alike; weights
    packed by ``pack_weight`` with symmetric per-output-channel ``w_scale`` [N]; optional float
    ``bias`` [N]; optional fused ReLU. Returns float32 [..., N] by default (bfloat16 / float16
    if asked: the float32 result rounded to nearest even), or int8/uint8 requantized with
    per-tensor ``out_scale`` / ``out_zero_point`` when ``out_dtype`` is torch.int8 / torch.uint8.

    >>> w = torch.randint(-128, 128, (4, 8), dtype=torch.int8)
    >>> wp, cs = torchquant.pack_weight(w)
    >>> x = torch.randint(0, 256, (2, 3, 8), dtype=torch.uint8)
    >>> torchquant.linear_int8(x, 0.1, 128, wp, cs, torch.full((4,), 0.01), relu=True,
    ...                        out_scale=0.05, out_zero_point=0, out_dtype=torch.uint8).shape
    torch.Size([2, 3, 4])
    >>> q, s, z = torchquant.quantize_rowwise(torch.randn(5, 8))      # per-row qparams
    >>> torchquant.linear_int8(q, s, z, wp, cs, torch.full((4,), 0.01)).shape
    torch.Size([5, 4])
    """
    if not isinstance(x, torch.Tensor):  # (its device is read below)
        raise TypeError(f"linear_int8: argument 'x' must be a tensor, got {type(x).__name__}")
    x_scale, x_zero_point, out_scale, out_zero_point = _qparam_tensors(x, x_scale, x_zero_point, out_scale,
                                                                       out_zero_point)
    args = (x, x_scale, x_zero_point, w_packed, w_col_sums, w_scale, bias, out_scale, out_zero_point)
    # relu and out_dtype of another type (1, np.bool_, a dtype given as an int) go to torch.ops,
    # which converts or rejects them in its own words; pybind11 would word it otherwise.
    typed = (type(relu) is bool and (out_dtype is None or type(out_dtype) is torch.dtype)
             and _fastcall.usable_all(args[:6], args[6:]))
    f = _fastcall.linear_int8 if typed else ops.linear_int8
    return f(*args, relu, out_dtype)


def quantize_rowwise(x: torch.Tensor, qmin: int = -128,
                     qmax: int = 127) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row affine quantization of x [..., K] (torch.ao's choose_qparams on each row's
    min/max, widened to include 0). Returns ``(q int8 like x, scale float32 [rows],
    zero_point int32 [rows])`` with rows = x.numel() // K. NaN elements count as 0.

    >>> q, s, z = torchquant.quantize_rowwise(torch.tensor([[0.0, 1.0, 2.55]]))
    >>> q, s, z
    (tensor([[-128,  -28,  127]], dtype=torch.int8), tensor([0.0100]), tensor([-128], dtype=torch.int32))
    """
    return ops.quantize_rowwise(x, qmin, qmax)


def linear_dynamic(x: torch.Tensor, w_packed: torch.Tensor, w_col_sums: torch.Tensor,
                   w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   relu: bool = False, reduce_range: bool = False) -> torch.Tensor:
    """Dynamic int8 Linear: float ``x`` [..., K] is quantized per row on the fly (as
    ``quantize_rowwise``), multiplied with the packed int8 weight in int32, and dequantized
    to float32 [..., N] with bias and optional ReLU fused. ``reduce_range``: the rows are
    quantized to 7-bit codes, [0, 127] (``quantize_rowwise(x, 0, 127)``; torch.ao's x86 dynamic
    range, faster on CPUs without VNNI and less exact).

    >>> w = torch.randint(-128, 128, (4, 8), dtype=torch.int8)
    >>> wp, cs = torchquant.pack_weight(w)
    >>> torchquant.linear_dynamic(torch.randn(5, 8), wp, cs, torch.full((4,), 0.01)).shape
    torch.Size([5, 4])
    """
    args = (x, w_packed, w_col_sums, w_scale, bias)
    typed = (type(relu) is bool and type(reduce_range) is bool
             and _fastcall.usable_all(args[:4], args[4:]))  # as in linear_int8
    f = _fastcall.linear_dynamic if typed else ops.linear_dynamic
    return f(*args, relu, reduce_range)
