"""int8 transposed convolution ops (1-d, 2-d, 3-d; any stride, padding, output_padding,
dilation and groups), the functions behind torchquant.nn.quantized.ConvTranspose1d/2d/3d.

    >>> w = torch.randint(-128, 128, (16, 8, 4, 4), dtype=torch.int8)  # [Cin, Cout / groups, kH, kW]
    >>> w_packed, w_col_sums = torchquant.pack_conv_transpose_weight(w)  # once, at convert time
    >>> x = torch.randint(0, 256, (1, 16, 8, 8), dtype=torch.uint8)
    >>> y = torchquant.conv_transpose_int8(x, 0.02, 128, w_packed, w_col_sums, torch.full((8,), 0.01), 4,
    ...                                    stride=2, padding=1)
    >>> y.shape
    torch.Size([1, 8, 16, 16])

The contract is in docs/quantization.md, "Transposed convolution".
"""
from typing import Optional, Tuple, Union

import torch

from . import _ops  # noqa: F401  (registers the fake kernels)
from ._ops import conv_transpose_output_size, conv_transpose_packed_weight_shape
from .conv import IntOrSeq, _ints, _kernel_size
from .gemm import _qparam_tensors

__all__ = ["pack_conv_transpose_weight", "conv_transpose_int8", "conv_transpose_packed_weight_shape",
           "conv_transpose_output_size"]

ops = torch.ops.torchquant


def pack_conv_transpose_weight(w: torch.Tensor, groups: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Packs an int8 transposed-conv weight [Cin, Cout / groups, *kernel_size] (the layout of
    nn.ConvTranspose*d's weight) for :func:`conv_transpose_int8` on w's device. Returns
    ``(packed, col_sums)``, col_sums int32 [groups * taps * Cout / groups] (sums over the
    input channels of a group, per tap and output channel). Call it once when a model is
    converted."""
    return ops.pack_conv_transpose_weight(w, groups)


def conv_transpose_int8(x: torch.Tensor, x_scale: Union[torch.Tensor, float], x_zero_point: Union[torch.Tensor, int],
                        w_packed: torch.Tensor, w_col_sums: torch.Tensor, w_scale: torch.Tensor,
                        kernel_size: IntOrSeq, bias: Optional[torch.Tensor] = None, stride: IntOrSeq = 1,
                        padding: IntOrSeq = 0, output_padding: IntOrSeq = 0, dilation: IntOrSeq = 1,
                        groups: int = 1, out_scale: Optional[Union[torch.Tensor, float]] = None,
                        out_zero_point: Optional[Union[torch.Tensor, int]] = None, relu: bool = False,
                        out_dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Static int8 transposed convolution (torch's ``conv_transpose1d/2d/3d`` on quantized
    values): ``x`` int8/uint8 [N, Cin, *spatial] with per-tensor ``x_scale`` /
    ``x_zero_point``; the weight packed by :func:`pack_conv_transpose_weight` with symmetric
    per-output-channel ``w_scale`` [Cout]; optional float ``bias`` [Cout] and fused ReLU. The
    output has torch's size, (in - 1) * stride - 2 * padding + dilation * (kernel - 1) +
    output_padding + 1. The integer sums are exact; returns float32 by default, or int8/uint8
    requantized with ``out_scale`` / ``out_zero_point``, with the arithmetic of
    :func:`torchquant.conv_int8`. The output's memory is channels-last.
    """
    x_scale, x_zero_point, out_scale, out_zero_point = _qparam_tensors(x, x_scale, x_zero_point, out_scale,
                                                                       out_zero_point)
    kernel_size = _kernel_size(kernel_size, x)
    return ops.conv_transpose_int8(x, x_scale, x_zero_point, w_packed, w_col_sums, w_scale, bias, kernel_size,
                                   _ints(stride, "stride"), _ints(padding, "padding"),
                                   _ints(output_padding, "output_padding"), _ints(dilation, "dilation"), groups,
                                   out_scale, out_zero_point, relu, out_dtype)
