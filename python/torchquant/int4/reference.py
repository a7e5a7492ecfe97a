"""Plain-torch oracles of the int4 weight-only ops (the kernels are tested against them).

- :func:`linear_int4` is what the CPU kernels compute, step for step: per-row int8 activations
  (the dynamic path's qparams, :func:`torchquant.reference.quantize_rowwise`), exact integer
  group sums, then the float32 group loop of docs/quantization.md ("int4 weight-only"). The
  scalar, AVX2 and AVX-512 VNNI kernels agree with it bit for bit.
- :func:`linear_int4_dequant` is dequantize-then-matmul in float64: the meaning of the format,
  which every kernel (CPU and CUDA) matches within :func:`error_bound`.
"""
from typing import Optional

import torch

from .. import reference as _ref
from .format import dequantize_groups, num_groups, unpack_int4

__all__ = ["linear_int4", "linear_int4_dequant", "error_bound"]


def _rows(x):
    return x.reshape(-1, x.shape[-1])


def linear_int4(x, qweight, scale, zero_point, bias: Optional[torch.Tensor], in_features: int, group_size: int):
    """The CPU kernels' result for float x [..., K] and the portable weight (qweight uint8
    [N, ceil(K/2)], scale [N, G], zero_point [N, G]); output in x's dtype."""
    K, N = in_features, qweight.shape[0]
    G = num_groups(K, group_size)
    q = unpack_int4(qweight, K).to(torch.float64)
    xq, xs, xz = _ref.quantize_rowwise(x, -128, 127)
    xr = _rows(xq).to(torch.float64) - xz.to(torch.float64).reshape(-1, 1)
    z = zero_point.to(torch.float64)
    s = scale.float()
    y = torch.zeros(xr.shape[0], N, dtype=torch.float32)
    for g in range(G):
        k0, k1 = g * group_size, min(K, (g + 1) * group_size)
        # Exact in float64 (|corr| < 2^24): sum_k (xq - x_zp) * (q - z).
        corr = xr[:, k0:k1] @ (q[:, k0:k1] - z[:, g:g + 1]).t()
        y = y + corr.float() * s[:, g]
    y = y * xs.reshape(-1, 1)
    if bias is not None:
        y = y + bias.float()
    return y.reshape(*x.shape[:-1], N).to(x.dtype)


def linear_int4_dequant(x, qweight, scale, zero_point, bias: Optional[torch.Tensor], in_features: int,
                        group_size: int) -> torch.Tensor:
    """float64 ``x @ dequantize(w).T + bias`` (the format's meaning), shaped [..., N]."""
    w = dequantize_groups(unpack_int4(qweight, in_features), scale, zero_point, group_size).double()
    y = _rows(x).double() @ w.t()
    if bias is not None:
        y = y + bias.double()
    return y.reshape(*x.shape[:-1], w.shape[0])


def error_bound(x, qweight, scale, zero_point, in_features: int, group_size: int, cpu: bool = True) -> torch.Tensor:
    """Per-output bound on |kernel - linear_int4_dequant| (float64, shaped [..., N]).

    The float32 rounding term is ``r * 2^-24 * sum_k |x_k w_k|`` with r the number of float32
    roundings an output's sum goes through, at least 16 (each rounding of a partial sum errs by
    at most 2^-24 of a magnitude that never exceeds ``sum_k |x_k w_k|``).
    CPU: exact integer sums per group, then a product and a sum per group: r = 2 G + 4; plus the
    per-row int8 activation rounding, ``x_scale / 2 * sum_k |w_k|``.
    CUDA (float activations): the float rounding term only, r = K + 2 (the tiled kernel's single
    chain of fused multiply-adds over K, and the dequantized weight's own rounding), and
    ``2^-7`` relative for bfloat16/float16 outputs. Add the output's own rounding for
    bfloat16/float16 (one unit in the last place of the result).
    """
    w = dequantize_groups(unpack_int4(qweight, in_features), scale, zero_point, group_size).double().abs()
    xr = _rows(x).double()
    mag = xr.abs() @ w.t()
    groups = -(-in_features // group_size)
    roundings = 2 * groups + 4 if cpu else in_features + 2
    bound = mag * (max(16, roundings) * 2.0 ** -24)
    if cpu:
        _, xs, _ = _ref.quantize_rowwise(x, -128, 127)
        bound = bound + xs.double().reshape(-1, 1) / 2 * w.sum(1)
    return bound.reshape(*x.shape[:-1], w.shape[0])
