"""int8 convolution ops (1-d, 2-d, 3-d; any stride, padding, dilation and groups), the
functions behind torchquant.nn.quantized.Conv1d/2d/3d.

    >>> w = torch.randint(-128, 128, (8, 3, 3, 3), dtype=torch.int8)
    >>> w_packed, w_col_sums = torchquant.pack_conv_weight(w)          # once, at convert time
    >>> x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    >>> y = torchquant.conv_int8(x, 0.02, 128, w_packed, w_col_sums, torch.full((8,), 0.01), [3, 3], padding=1)
    >>> y.shape, y.is_contiguous(memory_format=torch.channels_last)
    (torch.Size([1, 8, 16, 16]), True)

The contract (padding, layout, epilogue) is in docs/quantization.md, "Convolution".
"""
from typing import Optional, Sequence, Tuple, Union

import torch

from . import _ops  # noqa: F401  (registers the fake kernels)
from ._ops import conv_output_size, conv_packed_weight_shape
from .gemm import _qparam_tensors

__all__ = ["pack_conv_weight", "conv_int8", "conv_packed_weight_shape", "conv_output_size"]

ops = torch.ops.torchquant
IntOrSeq = Union[int, Sequence[int]]


def _ints(v: IntOrSeq, name: str):
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]
    try:
        out = [int(e) for e in v]
    except TypeError:
        raise TypeError(f"argument '{name}' must be an int or a sequence of ints, got {v!r}") from None
    return out


def _kernel_size(kernel_size: IntOrSeq, x):
    """kernel_size as a list; an int means the same size along each of x's spatial dimensions."""
    kernel_size = _ints(kernel_size, "kernel_size")
    if isinstance(x, torch.Tensor) and len(kernel_size) == 1 and x.dim() > 3:
        kernel_size = kernel_size * (x.dim() - 2)
    return kernel_size


def pack_conv_weight(w: torch.Tensor, groups: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Packs an int8 conv weight [Cout, Cin / groups, *kernel_size] for :func:`conv_int8` on w's
    device. Returns ``(packed, col_sums)`` with col_sums[n] = sum of w[n] (int32). Call it once
    when a model is converted.

    >>> packed, col_sums = torchquant.pack_conv_weight(torch.ones(32, 1, 3, 3, dtype=torch.int8), groups=32)
    >>> packed.shape, col_sums[:2]                     # depthwise: [*kernel_size, C]
    (torch.Size([3, 3, 32]), tensor([9, 9], dtype=torch.int32))
    """
    return ops.pack_conv_weight(w, groups)


def conv_int8(x: torch.Tensor, x_scale: Union[torch.Tensor, float], x_zero_point: Union[torch.Tensor, int],
              w_packed: torch.Tensor, w_col_sums: torch.Tensor, w_scale: torch.Tensor,
              kernel_size: IntOrSeq, bias: Optional[torch.Tensor] = None, stride: IntOrSeq = 1,
              padding: IntOrSeq = 0, dilation: IntOrSeq = 1, groups: int = 1,
              out_scale: Optional[Union[torch.Tensor, float]] = None,
              out_zero_point: Optional[Union[torch.Tensor, int]] = None, relu: bool = False,
              out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Static int8 convolution: ``x`` int8/uint8 [N, Cin, *spatial] (1 to 3 spatial
    dimensions, as many as ``kernel_size`` has; an int ``kernel_size`` means the same size along
    each of x's spatial dimensions) with per-tensor ``x_scale`` / ``x_zero_point``;
    the weight packed by :func:`pack_conv_weight` with symmetric per-output-channel ``w_scale``
    [Cout]; zero padding (a padded position holds ``x_zero_point``, i.e. the real value 0);
    optional float ``bias`` [Cout] and fused ReLU. Returns float32 by default, or int8/uint8
    requantized with ``out_scale`` / ``out_zero_point``, with the arithmetic of
    :func:`torchquant.linear_int8`. The output's memory is channels-last (as is what the
    kernels read best: a channels-last ``x`` is used in place, any other layout is copied).
    """
    x_scale, x_zero_point, out_scale, out_zero_point = _qparam_tensors(x, x_scale, x_zero_point, out_scale,
                                                                       out_zero_point)
    kernel_size = _kernel_size(kernel_size, x)
    return ops.conv_int8(x, x_scale, x_zero_point, w_packed, w_col_sums, w_scale, bias, kernel_size, _ints(stride, "stride"), _ints(padding, "padding"),
                         _ints(dilation, "dilation"), groups, out_scale, out_zero_point, relu, out_dtype)
