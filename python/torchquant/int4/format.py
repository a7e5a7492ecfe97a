"""The int4 weight format: 4-bit values in groups along K, asymmetric or symmetric.

A weight ``w [N, K]`` is cut into ``G = ceil(K / group_size)`` groups of ``group_size``
consecutive input channels per output channel; the last group is shorter when ``group_size``
does not divide K (no padding is stored, nothing is rejected). Each group has a float32 scale
``s`` and an integer zero point ``z`` in ``[0, 15]``::

    q = clamp(nearbyint(w * (1 / s)) + z, 0, 15)          (uint4)
    w ~ s * (q - z)

with ``s = max((max(w_g, 0) - min(w_g, 0)) / 15, eps)`` and ``z = clamp(-nearbyint(min(w_g, 0) / s), 0, 15)``
for round-to-nearest (torch.ao's affine ``choose_qparams`` on each group; GPTQ and AWQ choose the
values of ``q`` differently but store them the same way). ``symmetric=True`` (GPTQ's ``sym=True``)
fixes ``z = 8`` and takes ``s = max(2 * max|w_g| / 15, eps)``: the grid ``s * [-8, 7]``, whose top
code clips ``+max|w_g|`` by half a step; the stored format is the same.

Storage (the state dict, portable across devices): ``qweight`` uint8 ``[N, ceil(K / 2)]`` with
``k`` even in the low nibble and ``k + 1`` in the high nibble (0 past K), ``weight_scale``
float32 ``[N, G]``, ``weight_zero_point`` uint8 ``[N, G]``; the module adds ``weight_format`` int32
``[2]``, its ``(group_size, K)``, which the shapes alone do not determine.
"""
from typing import Tuple

import torch

__all__ = ["num_groups", "choose_group_qparams", "quantize_groups", "dequantize_groups", "pack_int4",
           "unpack_int4", "check_group_size", "check_bits", "check_symmetric", "QMAX", "SYMMETRIC_ZERO_POINT"]

QMAX = 15
# the zero point of the symmetric mode: the middle of [0, 15], as GPTQ's (maxq + 1) / 2
SYMMETRIC_ZERO_POINT = 8
_EPS = torch.finfo(torch.float32).eps


def check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in (4, 8):
        raise ValueError(f"argument 'bits' must be 4 or 8, got {bits!r}")
    return bits


def check_symmetric(symmetric) -> bool:
    if not isinstance(symmetric, bool):  # (a string "no" would be true)
        raise TypeError(f"argument 'symmetric' must be True or False, got {symmetric!r}")
    return symmetric


def check_group_size(group_size) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 8 or group_size > 2048 \
            or group_size % 8:
        raise ValueError(f"argument 'group_size' must be a multiple of 8 in [8, 2048] (32, 64 and 128 are the "
                         f"usual ones), got {group_size!r}")
    return group_size


def num_groups(in_features: int, group_size: int) -> int:
    return (in_features + group_size - 1) // group_size


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """w [N, K] as [N, G, group_size], the last group padded with NaN (ignored by the min/max)."""
    N, K = w.shape
    G = num_groups(K, group_size)
    pad = G * group_size - K
    if pad:
        w = torch.cat([w, w.new_full((N, pad), float("nan"))], 1)
    return w.reshape(N, G, group_size)


def choose_group_qparams(w: torch.Tensor, group_size: int, symmetric: bool = False
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest qparams of each group of w [N, K]: (scale float32 [N, G], zero_point
    int64 [N, G]); the range is widened to contain 0, as torch.ao's (and GPTQ's) affine one.
    ``symmetric``: zero point 8 and ``s = max(2 * max|w_g| / 15, eps)`` (GPTQ's ``sym=True``)."""
    check_symmetric(symmetric)
    wg = _grouped(w.detach().float(), group_size)
    if symmetric:
        amax = torch.nan_to_num(wg.abs(), nan=0.0).amax(-1)
        # GPTQ's reference halves the scale of a group with no negative weight (its range stays
        # [0, max], while z = 8 still spends half the codes below 0), clipping the group's upper
        # half; here every group takes the scale of its largest magnitude. 2 * amax / 15 is
        # rounded once as amax / 7.5 (7.5 is exact): no overflow for amax past half the float32
        # range (an inf weight's, made finite above), where 2 * amax would give an inf scale
        scale = amax / torch.full_like(amax, QMAX / 2)
        scale = torch.where(scale > _EPS, scale, torch.full_like(scale, _EPS))
        return scale, torch.full(scale.shape, SYMMETRIC_ZERO_POINT, dtype=torch.int64, device=scale.device)
    zero = torch.zeros((), dtype=torch.float32, device=w.device)
    mn = torch.minimum(torch.nan_to_num(wg, nan=float("inf")).amin(-1), zero)
    mx = torch.maximum(torch.nan_to_num(wg, nan=float("-inf")).amax(-1), zero)
    # (mx - mn) / 15 as (mx / 2 - mn / 2) / 7.5: the same rounding (halving is exact, 7.5 too;
    # inexact only on subnormals, whose scale is eps below), without the overflow of mx - mn
    # past the float32 range (weights of both signs beyond 1.7e38, or an inf of each sign)
    scale = (mx / 2 - mn / 2) / torch.full_like(mx, QMAX / 2)
    scale = torch.where(scale > _EPS, scale, torch.full_like(scale, _EPS))
    z = torch.clamp(-torch.round(mn / scale), 0, QMAX)
    return scale, z.to(torch.int64)


def _expand(t: torch.Tensor, K: int, group_size: int) -> torch.Tensor:
    """Group values t [..., G] per input channel, [..., K]. A gather by each channel's group:
    torch.compile's inductor drops the channels past the last whole group of the equivalent
    ``t.repeat_interleave(group_size, -1)[..., :K]`` (and of a grouped [..., G, group_size] result
    reshaped and cut to K) when group_size does not divide K, leaving them uninitialized. Eager
    keeps that expression, a plain copy (the gather is 2-10x slower on the CPU, and runs in
    every backward through an int4 layer and every AWQ grid step); the same values."""
    if torch.compiler.is_compiling():
        return t.index_select(-1, torch.arange(K, device=t.device) // group_size)
    return t.repeat_interleave(group_size, -1)[..., :K]


def _row_blocks(n: int, K: int):
    """Slices of about 4 MB of float32 rows [K] covering n rows: quantize_groups and
    dequantize_groups work a block at a time (whole, their float32 temporaries took about three
    times the layer's float weight at once: a 125 MB LM head peaked 391 MB above it)."""
    rows = max(1, (1 << 20) // max(K, 1))
    return [slice(i, i + rows) for i in range(0, n, rows)]


def quantize_groups(w: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int) -> torch.Tensor:
    """uint4 values (as uint8 [N, K]) of w with the given group qparams:
    ``clamp(nearbyint(w * (1 / s)) + z, 0, 15)`` in float32."""
    K = w.shape[-1]
    out = torch.empty(w.shape, dtype=torch.uint8, device=w.device)
    if not out.numel():  # (K = 0: no groups, and reshape(-1, 0) is ambiguous)
        return out
    w2, s2, z2, o2 = (t.reshape(-1, t.shape[-1]) for t in (w, scale, zero_point, out))
    for r in _row_blocks(w2.shape[0], K):
        inv = torch.ones_like(s2[r]) / s2[r]
        q = torch.round(w2[r].float() * _expand(inv, K, group_size))
        q += _expand(z2[r].float(), K, group_size)
        o2[r] = torch.clamp(torch.nan_to_num(q, nan=0.0), 0, QMAX)
    return out


def dequantize_groups(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, group_size: int) -> torch.Tensor:
    """float32 ``s * (q - z)`` of uint4 values q [N, K]."""
    K = q.shape[-1]
    if q.dim() != 2 or scale.shape[0] != q.shape[0] or zero_point.shape[0] != q.shape[0]:
        # (qparams broadcast over other shapes: at once)
        return (q.float() - _expand(zero_point.float(), K, group_size)) * _expand(scale.float(), K, group_size)
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    if not out.numel():  # (K = 0: no groups, and reshape(-1, 0) is ambiguous)
        return out
    q2, s2, z2, o2 = (t.reshape(-1, t.shape[-1]) for t in (q, scale, zero_point, out))
    for r in _row_blocks(q2.shape[0], K):
        o2[r] = (q2[r].float() - _expand(z2[r].float(), K, group_size)) * _expand(s2[r].float(), K, group_size)
    return out


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint4 values [N, K] (uint8 0..15) -> two per byte, uint8 [N, ceil(K / 2)], k even low."""
    N, K = q.shape
    if K % 2:
        q = torch.cat([q, q.new_zeros(N, 1)], 1)
    q = q.to(torch.uint8)
    return q[:, 0::2] | (q[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, in_features: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 [N, ceil(K / 2)] -> uint8 values [N, K]."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], -1).reshape(packed.shape[0], 2 * packed.shape[1])[:, :in_features]
