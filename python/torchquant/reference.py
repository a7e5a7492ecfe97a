"""Pure-PyTorch reference implementations: the oracle every kernel is tested against.

Each function computes what the matching ``torch.ops.torchquant`` op must return, bit for bit,
with plain torch ops (float32 where the contract says float32, int64/float64 where exactness
needs the room). Nothing here is fast; everything here is obvious.

Example::

    >>> x = torch.tensor([0.004, 0.007, -1.0])
    >>> reference.quantize(x, torch.tensor([0.004]), torch.tensor([0]), None, -128, 127, torch.int8)
    tensor([   1,    2, -128], dtype=torch.int8)
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = [
    "quantize",
    "dequantize",
    "fake_quantize",
    "fake_quantize_backward",
    "fake_quantize_learnable",
    "fake_quantize_learnable_backward",
    "choose_qparams",
    "aminmax",
    "observe_minmax_",
    "histogram_bins",
    "histogram_rebin",
    "histogram_",
    "conv_int8",
    "conv_transpose_int8",
]


def _bcast(t: torch.Tensor, x: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    if axis is None:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return t.reshape(shape)


def _quantized_float(x, scale, zero_point, axis, qmin, qmax):
    """The quantized value as float32: clamp(round_half_even(x * (1/scale)) + zp, qmin, qmax);
    NaN gives zero_point."""
    s = _bcast(scale.float(), x, axis)
    zp = _bcast(zero_point.to(torch.int64), x, axis).float()
    inv = torch.reciprocal(s)  # float32 1/scale
    t = torch.round(x.float() * inv) + zp
    t = torch.where(torch.isnan(t), zp.expand_as(t), t)
    return t.clamp(qmin, qmax), s, zp, inv


def quantize(x, scale, zero_point, axis, qmin, qmax, dtype) -> torch.Tensor:
    t, *_ = _quantized_float(x, scale, zero_point, axis, qmin, qmax)
    # clamped again in float64: a float32 bound past 2^24 rounds (2^31 - 1 to 2^31, which int32 wraps)
    return t.double().clamp(qmin, qmax).to(torch.int64).to(dtype)


def dequantize(q, scale, zero_point, axis, out_dtype=None) -> torch.Tensor:
    s = _bcast(scale.float(), q, axis)
    zp = _bcast(zero_point.to(torch.int64), q, axis)
    return ((q.to(torch.int64) - zp).float() * s).to(out_dtype or torch.float32)


def fake_quantize(x, scale, zero_point, axis, qmin, qmax) -> torch.Tensor:
    t, s, zp, _ = _quantized_float(x, scale, zero_point, axis, qmin, qmax)
    y = (t - zp) * s
    return torch.where(torch.isnan(x), x.float(), y).to(x.dtype)


def fake_quantize_backward(grad, x, scale, zero_point, axis, qmin, qmax) -> torch.Tensor:
    s = _bcast(scale.float(), x, axis)
    zp = _bcast(zero_point.to(torch.int64), x, axis).float()
    t = torch.round(x.float() * torch.reciprocal(s)) + zp
    inside = (t >= qmin) & (t <= qmax)
    return torch.where(inside, grad.float(), torch.zeros_like(grad, dtype=torch.float32)).to(grad.dtype)


def fake_quantize_learnable(x, scale, zero_point, axis, qmin, qmax, grad_factor=1.0):
    zp = zero_point.float().round().clamp(qmin, qmax).to(torch.int32)
    return fake_quantize(x, scale, zp, axis, qmin, qmax)


def fake_quantize_learnable_backward(grad, x, scale, zero_point, axis, qmin, qmax, grad_factor=1.0):
    """LSQ gradients (Esser et al. 2020), in float64 for the reductions."""
    xf = x.double()
    s = _bcast(scale.float(), x, axis)
    zp = _bcast(zero_point.float().round().clamp(qmin, qmax), x, axis)
    inv = torch.reciprocal(s)
    t = (torch.round(x.float() * inv) + zp).double()
    below, above, nan = t < qmin, t > qmax, torch.isnan(t)  # a NaN element: no gradient anywhere
    inside = ~(below | above | nan)
    g = grad.double()
    gx = torch.where(inside, g, torch.zeros_like(g))
    xfq = (t.clamp(qmin, qmax) - zp.double()) * s.double()
    ds = torch.where(inside, (xfq - xf) * inv.double(), torch.where(below, qmin - zp.double(), qmax - zp.double())) * g * grad_factor
    dz = torch.where(inside, torch.zeros_like(g), -s.double().expand_as(g)) * g * grad_factor
    ds, dz = torch.where(nan, 0.0, ds), torch.where(nan, 0.0, dz)
    if axis is None:
        ds, dz = ds.sum(), dz.sum()
    else:
        dims = [d for d in range(x.dim()) if d != axis]
        ds, dz = (ds.sum(dims), dz.sum(dims)) if dims else (ds, dz)
    return gx.to(x.dtype), ds.reshape(scale.shape).to(scale.dtype), dz.reshape(zero_point.shape).to(zero_point.dtype)


def choose_qparams(min_val, max_val, qmin, qmax, symmetric=False, eps=torch.finfo(torch.float32).eps,
                   symmetric_zero_point=0) -> Tuple[torch.Tensor, torch.Tensor]:
    """torch.ao's MinMaxObserver._calculate_qparams, with non-finite statistics made finite."""
    big = torch.finfo(torch.float32).max
    lo = torch.nan_to_num(min_val.float(), 0.0, big, -big)
    hi = torch.nan_to_num(max_val.float(), 0.0, big, -big)
    min_neg = torch.minimum(lo, torch.zeros_like(lo))
    max_pos = torch.maximum(hi, torch.zeros_like(hi))
    eps_t = torch.tensor(eps, dtype=torch.float32, device=lo.device)
    if symmetric:
        max_pos = torch.maximum(-min_neg, max_pos)
        scale = torch.maximum(max_pos / (float(qmax - qmin) / 2), eps_t)
        scale = torch.nan_to_num(scale, eps, big, eps)
        zp = torch.full_like(lo, symmetric_zero_point, dtype=torch.int32)
    else:
        scale = torch.maximum((max_pos - min_neg) / float(qmax - qmin), eps_t)
        scale = torch.nan_to_num(scale, eps, big, eps)
        # int64: for int32-wide ranges round(min_neg / scale) can pass 2^31 (torch.ao's int32 wraps).
        zp = (qmin - torch.round(min_neg / scale).to(torch.int64)).clamp(qmin, qmax).to(torch.int32)
    return scale, zp


# ---- int8 GEMM
# The int8 GEMM contract (docs/quantization.md, "Requantization"). Products are summed in
# float64, exact here: every partial sum is an integer below K * 255 * 128 < 2^31 < 2^53.
__all__ += ["int8_mm", "linear_int8", "quantize_rowwise", "linear_dynamic"]


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x [..., K] as [rows, K] (reshape(-1, K) is ambiguous when K = 0)."""
    rows = 1
    for d in x.shape[:-1]:
        rows *= d
    return x.reshape(rows, x.shape[-1])


def _per_row(t: torch.Tensor) -> torch.Tensor:
    """An activation qparam as [] (one element, per tensor) or [rows, 1] (per row)."""
    return t.reshape(()) if t.numel() == 1 else t.reshape(-1, 1)


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 [M, K] x int8 [K, N] -> exact int32 [M, N]."""
    return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int32)


def _requantize(corr, a_scale, w_scale, bias, relu, out_scale, out_zero_point, out_dtype):
    """corr: int32 [M, N]; a_scale: float32 [] or [M, 1]. Float32 steps in the contract's order."""
    y = corr.to(torch.float32) * (a_scale * w_scale.float().reshape(1, -1))
    if bias is not None:
        y = y + bias.float().reshape(1, -1)
    if relu:
        y = torch.where(y < 0, torch.zeros_like(y), y)  # NaN and -0 pass through
    if out_dtype in (torch.int8, torch.uint8):
        qmin, qmax = (-128, 127) if out_dtype == torch.int8 else (0, 255)
        t, *_ = _quantized_float(y, out_scale.reshape(1), out_zero_point.reshape(1), None, qmin, qmax)
        return t.to(torch.int64).to(out_dtype)
    return y.to(out_dtype or torch.float32)


def linear_int8(x, x_scale, x_zero_point, w, w_scale, bias=None, out_scale=None, out_zero_point=None,
                relu=False, out_dtype=None) -> torch.Tensor:
    """Static int8 Linear from the unpacked int8 weight w [N, K] (what linear_int8 computes
    from pack_weight(w)). x_scale / x_zero_point hold one element (per tensor) or one per row
    of x (per row, in the order of x.reshape(-1, K))."""
    K, N = x.shape[-1], w.shape[0]
    x2 = _rows(x)
    acc = (x2.to(torch.float64) @ w.to(torch.float64).t()).to(torch.int64)
    col_sums = w.to(torch.int64).sum(1)
    corr = (acc - _per_row(x_zero_point.to(torch.int64)) * col_sums).to(torch.int32)
    out = _requantize(corr, _per_row(x_scale.float()), w_scale, bias, relu, out_scale, out_zero_point, out_dtype)
    return out.reshape(*x.shape[:-1], N)


def quantize_rowwise(x, qmin=-128, qmax=127) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.ao's affine choose_qparams per row of x [..., K], then quantize. NaN elements count
    as 0 (ignored by min/max, quantized to the zero point)."""
    K = x.shape[-1]
    xf = _rows(x.float())
    rows = xf.shape[0]
    zero = torch.zeros(rows, dtype=torch.float32)
    if K > 0:
        xz = torch.nan_to_num(xf, nan=0.0, posinf=float("inf"), neginf=float("-inf"))
        mn, mx = torch.minimum(xz.amin(1), zero), torch.maximum(xz.amax(1), zero)
    else:
        mn, mx = zero, zero.clone()
    scale = (mx - mn) / torch.full_like(mx, float(qmax - qmin))
    eps = torch.full_like(scale, torch.finfo(torch.float32).eps)
    scale = torch.where(scale > eps, scale, eps)
    z = float(qmin) - torch.round(mn / scale)
    z = torch.where(z > qmin, z, torch.full_like(z, qmin))  # NaN (a row holding -inf) -> qmin
    z = torch.where(z < qmax, z, torch.full_like(z, qmax))
    zp = z.to(torch.int32)
    t, *_ = _quantized_float(xf, scale, zp, 0, qmin, qmax)
    return t.to(torch.int64).to(torch.int8).reshape(x.shape), scale, zp


def linear_dynamic(x, w, w_scale, bias=None, relu=False, reduce_range=False) -> torch.Tensor:
    """Dynamic int8 Linear from the unpacked int8 weight w [N, K]: per-row quantization of x
    (to [-128, 127], or [0, 127] with reduce_range), exact int8 GEMM, float32 out."""
    K, N = x.shape[-1], w.shape[0]
    q, scale, zp = quantize_rowwise(x, 0 if reduce_range else -128, 127)
    acc = (_rows(q).to(torch.float64) @ w.to(torch.float64).t()).to(torch.int64)
    corr = (acc - zp.to(torch.int64).reshape(-1, 1) * w.to(torch.int64).sum(1)).to(torch.int32)
    out = _requantize(corr, scale.reshape(-1, 1), w_scale, bias, relu, None, None, None)
    return out.reshape(*x.shape[:-1], N)

# ---- observers
_INF = float("inf")


def _per_channel_rows(x: torch.Tensor, axis: Optional[int]) -> torch.Tensor:
    x = x.float()
    if axis is None:
        return x.reshape(1, -1)
    c = x.shape[axis]
    return x.movedim(axis, 0).reshape(c, x.numel() // c if c else 0)


def _masked_minmax(rows: torch.Tensor, skip: torch.Tensor):
    if rows.numel() == 0:
        n = rows.shape[0]
        return torch.full((n,), _INF), torch.full((n,), -_INF)
    return (torch.where(skip, torch.full_like(rows, _INF), rows).amin(1),
            torch.where(skip, torch.full_like(rows, -_INF), rows).amax(1))


def aminmax(x: torch.Tensor, axis: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of x with NaN left out; (+inf, -inf) where nothing is left."""
    rows = _per_channel_rows(x, axis)
    mn, mx = _masked_minmax(rows, torch.isnan(rows))
    return (mn.reshape(()), mx.reshape(())) if axis is None else (mn, mx)


def observe_minmax_(running_min, running_max, nonfinite_count, x, axis=None, averaging_constant=None) -> None:
    """In place, like the op: running min/max (or moving average) of the finite values of x."""
    rows = _per_channel_rows(x, axis)
    nan, inf = torch.isnan(rows), torch.isinf(rows)
    nonfinite_count += torch.stack([nan.sum(), inf.sum()]).reshape(nonfinite_count.shape)
    cmn, cmx = _masked_minmax(rows, nan | inf)
    rmn, rmx = running_min.reshape(-1), running_max.reshape(-1)
    for c in range(cmn.numel()):
        if not bool(cmn[c] <= cmx[c]):
            continue
        if bool(rmn[c] == _INF) and bool(rmx[c] == -_INF):
            rmn[c], rmx[c] = cmn[c], cmx[c]
        elif averaging_constant is None:
            rmn[c], rmx[c] = torch.minimum(rmn[c], cmn[c]), torch.maximum(rmx[c], cmx[c])
        else:
            rmn[c] = rmn[c] + averaging_constant * (cmn[c] - rmn[c])
            rmx[c] = rmx[c] + averaging_constant * (cmx[c] - rmx[c])


def histogram_bins(x: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
    """Counts (float32 [bins]) of the finite values of x over [lo, hi]: bin
    (int)clamp((x - lo) * inv, 0, bins - 1) in float32 with inv = float32(bins / (hi - lo)); a
    one-point range puts everything in the middle bin, as torch.histc does."""
    xf = x.float().reshape(-1)
    xf = xf[torch.isfinite(xf)]
    if lo == hi:
        out = torch.zeros(bins)
        out[min(bins // 2, bins - 1)] = xf.numel()
        return out
    inv = torch.tensor(bins / (float(hi) - float(lo)), dtype=torch.float32)
    # nan_to_num: a NaN product (0 * inf, a range too narrow for float32's inv) goes to bin 0.
    t = ((xf - torch.tensor(lo, dtype=torch.float32)) * inv).nan_to_num(0.0).clamp(0, bins - 1)
    return torch.bincount(t.to(torch.int64), minlength=bins).float()


def histogram_rebin(hist, min_val, max_val, new_min, new_max, upsample_rate=16) -> torch.Tensor:
    """torch.ao HistogramObserver's _upscale_histogram, positions in float64: every bin split in
    upsample_rate parts, each part's count moved to the new bin holding its centre."""
    lo, hi, nlo, nhi = (float(t) for t in (min_val, max_val, new_min, new_max))
    bins = hist.numel()
    if lo == _INF or hi == -_INF:
        return torch.zeros_like(hist)
    if (lo, hi) == (nlo, nhi):
        return hist.clone()
    if lo == hi:
        out = torch.zeros(bins, dtype=torch.float64)
        b = int(histogram_bins(torch.tensor([lo]), nlo, nhi, bins).argmax())
        out[b] = hist.double().sum()
        return out.float()
    up = upsample_rate
    w = (hi - lo) / (bins * up)
    centre = lo + (torch.arange(bins * up, dtype=torch.float64) + 0.5) * w
    t = torch.floor((centre - nlo) * (bins / (nhi - nlo))).clamp(0, bins - 1).to(torch.int64)
    weights = hist.double().repeat_interleave(up) / up
    return torch.bincount(t, weights=weights, minlength=bins).float()


def histogram_(hist, min_val, max_val, nonfinite_count, x, upsample_rate=16) -> None:
    """In place, like the op: add x's finite values, growing the range to cover them."""
    xf = x.float().reshape(-1)
    nonfinite_count += torch.stack([torch.isnan(xf).sum(), torch.isinf(xf).sum()]).reshape(nonfinite_count.shape)
    fin = xf[torch.isfinite(xf)]
    if fin.numel() == 0:
        return
    xmn, xmx = float(fin.min()), float(fin.max())
    lo, hi = float(min_val), float(max_val)
    seen = not (lo == _INF or hi == -_INF)
    nlo, nhi = (min(lo, xmn), max(hi, xmx)) if seen else (xmn, xmx)
    if not seen:
        hist.zero_()
    elif (nlo, nhi) != (lo, hi):
        hist.copy_(histogram_rebin(hist, min_val, max_val, torch.tensor(nlo), torch.tensor(nhi), upsample_rate))
    hist += histogram_bins(fin, nlo, nhi, hist.numel())
    min_val.fill_(nlo)
    max_val.fill_(nhi)


# ---- conv
def conv_int8(x, x_scale, x_zero_point, w, w_scale, bias=None, stride=1, padding=0, dilation=1, groups=1,
              out_scale=None, out_zero_point=None, relu=False, out_dtype=None) -> torch.Tensor:
    """Static int8 convolution from the unpacked int8 weight w [Cout, Cin / groups, *kernel]
    (what ``conv_int8`` computes from ``pack_conv_weight(w, groups)``): zero padding, where a
    padded position holds x_zero_point; exact integer sums (float64 convolution of integers
    below 2^53), then linear_int8's epilogue. x_scale / x_zero_point hold one element."""
    nsp = w.dim() - 2
    conv = (torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d)[nsp - 1]

    def tup(v):
        return [v] * nsp if isinstance(v, int) else (list(v) * nsp if len(v) == 1 else list(v))

    zp = int(x_zero_point.reshape(-1)[0])
    pad = []
    for p in reversed(tup(padding)):
        pad += [p, p]
    xc = x.to(torch.float64) - zp
    xc = torch.nn.functional.pad(xc, pad)  # (x - zp) of a padded position is 0
    corr = conv(xc, w.to(torch.float64), None, tup(stride), 0, tup(dilation), groups).to(torch.int32)
    cout = w.shape[0]
    rows = corr.movedim(1, -1).reshape(-1, cout)
    out = _requantize(rows, x_scale.float().reshape(()), w_scale, bias, relu, out_scale, out_zero_point, out_dtype)
    shape = (corr.shape[0], *corr.shape[2:], cout)
    return out.reshape(shape).movedim(-1, 1)


def conv_transpose_int8(x, x_scale, x_zero_point, w, w_scale, bias=None, stride=1, padding=0, output_padding=0,
                        dilation=1, groups=1, out_scale=None, out_zero_point=None, relu=False,
                        out_dtype=None) -> torch.Tensor:
    """Static int8 transposed convolution from the unpacked int8 weight w [Cin, Cout / groups,
    *kernel] (what ``conv_transpose_int8`` computes from ``pack_conv_transpose_weight(w,
    groups)``): exact integer sums of (x - x_zero_point) * w (float64 transposed convolution
    of integers below 2^53), then linear_int8's epilogue. x_scale / x_zero_point hold one
    element."""
    nsp = w.dim() - 2
    conv = (torch.nn.functional.conv_transpose1d, torch.nn.functional.conv_transpose2d,
            torch.nn.functional.conv_transpose3d)[nsp - 1]

    def tup(v):
        return [v] * nsp if isinstance(v, int) else (list(v) * nsp if len(v) == 1 else list(v))

    zp = int(x_zero_point.reshape(-1)[0])
    xc = x.to(torch.float64) - zp
    corr = conv(xc, w.to(torch.float64), None, tup(stride), tup(padding), tup(output_padding), groups,
                tup(dilation)).to(torch.int32)
    cout = corr.shape[1]
    rows = corr.movedim(1, -1).reshape(-1, cout)
    out = _requantize(rows, x_scale.float().reshape(()), w_scale, bias, relu, out_scale, out_zero_point, out_dtype)
    shape = (corr.shape[0], *corr.shape[2:], cout)
    return out.reshape(shape).movedim(-1, 1)
# ---- elementwise
# The elementwise contract (docs/quantization.md, "Elementwise ops"): float32 steps in a fixed
# order, then the quantize formula with the output's qparams over its dtype's full range.
__all__ += ["add", "mul", "add_scalar", "mul_scalar", "cat", "lookup_table"]

_EW_FULL = {torch.int8: (-128, 127), torch.uint8: (0, 255)}


def _ew_centered(q, zero_point):
    return q.to(torch.int64) - zero_point.reshape(()).to(torch.int64)


def _ew_requantize(y, out_scale, out_zero_point, out_dtype, relu=False):
    if relu:
        y = torch.where(y < 0, torch.zeros_like(y), y)
    lo, hi = _EW_FULL[out_dtype]
    return quantize(y, out_scale.reshape(1), out_zero_point.reshape(1), None, lo, hi, out_dtype)


def add(a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale, out_zero_point, relu=False,
        out_dtype=None) -> torch.Tensor:
    y = _ew_centered(a, a_zero_point).float() * a_scale.float().reshape(()) + \
        _ew_centered(b, b_zero_point).float() * b_scale.float().reshape(())
    return _ew_requantize(y, out_scale, out_zero_point, out_dtype or a.dtype, relu)


def mul(a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale, out_zero_point, relu=False,
        out_dtype=None) -> torch.Tensor:
    m = a_scale.float().reshape(()) * b_scale.float().reshape(())  # rounded to float32 first
    y = (_ew_centered(a, a_zero_point) * _ew_centered(b, b_zero_point)).float() * m
    return _ew_requantize(y, out_scale, out_zero_point, out_dtype or a.dtype, relu)


def add_scalar(a, a_scale, a_zero_point, other, out_scale, out_zero_point, out_dtype=None) -> torch.Tensor:
    c = torch.tensor(other, dtype=torch.float32)
    y = _ew_centered(a, a_zero_point).float() * a_scale.float().reshape(()) + c
    return _ew_requantize(y, out_scale, out_zero_point, out_dtype or a.dtype)


def mul_scalar(a, a_scale, a_zero_point, other, out_scale, out_zero_point, out_dtype=None) -> torch.Tensor:
    m = a_scale.float().reshape(()).cpu() * torch.tensor(other, dtype=torch.float32)
    y = _ew_centered(a, a_zero_point).float() * m.to(a.device)
    return _ew_requantize(y, out_scale, out_zero_point, out_dtype or a.dtype)


def cat(tensors, scales, zero_points, dim, out_scale, out_zero_point, out_dtype=None) -> torch.Tensor:
    out_dtype = out_dtype or tensors[0].dtype
    parts = [_ew_requantize(_ew_centered(x, z).float() * s.float().reshape(()), out_scale, out_zero_point, out_dtype)
             for x, s, z in zip(tensors, scales, zero_points)]
    return torch.cat(parts, dim)
# ---------------------------------------------------------------- sequence models
__all__ += ["lstm_cell_update", "gru_cell_update", "CELL_UPDATE_ATOL", "CELL_UPDATE_RTOL"]

# The fused cell updates compute sigmoid and tanh with their own approximations (the C
# library's expf / tanhf on the scalar CPU path and on CUDA, Cephes polynomials on AVX2), not
# torch's; everything else rounds as written here. Each output element lies within
# CELL_UPDATE_ATOL + CELL_UPDATE_RTOL * |ref| of this reference (tests/test_rnn.py).
CELL_UPDATE_ATOL = 2e-6
CELL_UPDATE_RTOL = 2e-6


def lstm_cell_update(igates, hgates, c) -> Tuple[torch.Tensor, torch.Tensor]:
    """(h', c') of one LSTM step from the gate pre-activations [B, 4H] (gates i, f, g, o)."""
    g = igates.float() + hgates.float()
    i, f, gg, o = g.chunk(4, 1)
    cy = torch.sigmoid(f) * c.float() + torch.sigmoid(i) * torch.tanh(gg)
    return torch.sigmoid(o) * torch.tanh(cy), cy


def gru_cell_update(igates, hgates, h) -> torch.Tensor:
    """h' of one GRU step from the gate pre-activations [B, 3H] (gates r, z, n)."""
    ir, iz, in_ = igates.float().chunk(3, 1)
    hr, hz, hn = hgates.float().chunk(3, 1)
    r = torch.sigmoid(ir + hr)
    z = torch.sigmoid(iz + hz)
    n = torch.tanh(in_ + r * hn)
    return (h.float() - n) * z + n


# ---------------------------------------------------------------- pooling
__all__ += ["max_pool_int8", "avg_pool_int8", "adaptive_avg_pool_int8"]

_Q8_RANGE = {torch.int8: (-128, 127), torch.uint8: (0, 255)}


def _pool_args(x: torch.Tensor, nsp: int):
    """x as a batched float64 tensor of 2 or 3 spatial dimensions (1-d pooling as 2-d with a
    unit height), and the function that undoes it."""
    unbatched = x.dim() == nsp + 1
    t = (x.unsqueeze(0) if unbatched else x).to(torch.float64)
    if nsp == 1:
        t = t.unsqueeze(-2)

    def back(y):
        y = y.squeeze(-2) if nsp == 1 else y
        return y.squeeze(0) if unbatched else y

    return t, back


def _pool_list(v, nsp, fallback=None, unit=1):
    v = list(v) if v is not None else []
    if not v:
        v = list(fallback)
    v = v * nsp if len(v) == 1 else v
    return [unit] + v if nsp == 1 else v


def _round_average(sums: torch.Tensor, counts: torch.Tensor, zp: int, dtype: torch.dtype) -> torch.Tensor:
    """nearbyint(float32(sum) * float32(1 / count)) + zp, clamped to the dtype: torch's quantized
    average rounding, every step in float32."""
    lo, hi = _Q8_RANGE[dtype]
    inv = torch.reciprocal(counts.to(torch.float32))
    t = torch.round(sums.to(torch.float32) * inv) + zp
    return t.clamp_(lo, hi).to(dtype)


def max_pool_int8(x, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False) -> torch.Tensor:
    """torch's float max pooling of the codes (exact); a window of padding only (possible with
    dilation) gives the dtype's minimum, as torch.ao's quantized kernel."""
    nsp = len(kernel_size)
    t, back = _pool_args(x, nsp)
    fn = F.max_pool3d if nsp == 3 else F.max_pool2d
    y = fn(t, _pool_list(kernel_size, nsp), _pool_list(stride, nsp, kernel_size), _pool_list(padding, nsp, unit=0),
           _pool_list(dilation, nsp), ceil_mode)
    lo, hi = _Q8_RANGE[x.dtype]
    return back(y.clamp(lo, hi).to(x.dtype))


def avg_pool_int8(x, zero_point, kernel_size, stride=(), padding=(0,), ceil_mode=False, count_include_pad=True,
                  divisor_override=None) -> torch.Tensor:
    """Window sums of (q - zero_point) (float64: exact) and torch's divisors, rounded by
    :func:`_round_average`."""
    nsp = len(kernel_size)
    zp = int(zero_point.reshape(()))
    t, back = _pool_args(x, nsp)
    fn = F.avg_pool3d if nsp == 3 else F.avg_pool2d
    kw = dict(kernel_size=_pool_list(kernel_size, nsp), stride=_pool_list(stride, nsp, kernel_size),
              padding=_pool_list(padding, nsp, unit=0), ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    sums = fn(t - zp, divisor_override=1, **kw)
    if divisor_override is not None:
        counts = torch.tensor(float(divisor_override), dtype=torch.float64)
    else:
        # The divisor per window, as torch's kernel takes it: counted from a tensor of ones.
        ones = torch.ones_like(t[:1, :1])
        counts = torch.round(fn(ones, divisor_override=1, **kw) / fn(ones, **kw))
    return back(_round_average(sums, counts.to(sums.device), zp, x.dtype))


def adaptive_avg_pool_int8(x, zero_point, output_size) -> torch.Tensor:
    """Sums of (q - zero_point) over torch's adaptive windows (floor(i * n / out) to
    ceil((i + 1) * n / out)) from an integral image (float64: exact), rounded by
    :func:`_round_average`."""
    nsp = len(output_size)
    zp = int(zero_point.reshape(()))
    centered = x.to(torch.float64) - zp
    spatial = x.shape[-nsp:]
    if all(o == 1 for o in output_size):
        sums = centered.sum(dim=tuple(range(-nsp, 0)), keepdim=True)
        return _round_average(sums, torch.tensor(float(math.prod(spatial)), dtype=torch.float64), zp, x.dtype)
    integral = centered
    for d in range(-nsp, 0):
        integral = F.pad(integral.cumsum(d), [0, 0] * (-d - 1) + [1, 0])
    sums, counts = integral, torch.ones((), dtype=torch.float64)
    for k, d in enumerate(range(-nsp, 0)):
        size, out = spatial[k], int(output_size[k])
        s = torch.tensor([(i * size) // out for i in range(out)], dtype=torch.long, device=x.device)
        e = torch.tensor([-((-(i + 1) * size) // out) for i in range(out)], dtype=torch.long, device=x.device)
        sums = sums.index_select(d, e) - sums.index_select(d, s)
        shape = [1] * nsp
        shape[k] = out
        counts = counts * (e - s).to(torch.float64).cpu().reshape(shape)
    return _round_average(sums, counts.to(x.device), zp, x.dtype)


# ---------------------------------------------------------------- embedding
__all__ += ["fma32", "embedding_row_values", "embedding_bag_rowwise"]


def fma32(a, b, c) -> torch.Tensor:
    """``a * b + c`` of float32 tensors (broadcast), rounded once to float32 (round to nearest
    even), as C's ``fmaf`` / ``_mm512_fmadd_ps`` / CUDA's ``__fmaf_rn``; for finite results.

    The product of two float32 values is exact in float64 (24 + 24 significant bits), and
    TwoSum gives ``r = fl64(p + c)`` and its exact error ``e``. Rounding ``r`` to float32 is then
    right except when ``r`` lies exactly halfway between two float32 values and ``e != 0``: the
    exact sum is past the halfway point on the side of ``e``, so the neighbour on that side is
    the answer (a plain ``.float()`` would round the tie to even)."""
    a, b, c = (torch.as_tensor(t, dtype=torch.float32) for t in (a, b, c))
    a, b, c = torch.broadcast_tensors(a, b, c)
    p = a.double() * b.double()
    cd = c.double()
    r = p + cd
    bv = r - p
    e = (p - (r - bv)) + (cd - bv)
    r32 = r.float()
    rd = r32.double()
    inf = torch.full_like(r32, math.inf)
    other = torch.nextafter(r32, torch.where(rd < r, inf, -inf))  # the float32 on r's other side
    tie = (rd != r) & ((rd + other.double()) * 0.5 == r) & (e != 0)
    fixed = torch.where(e > 0, torch.maximum(r32, other), torch.minimum(r32, other))
    return torch.where(tie, fixed, r32)


def _embedding_unpack(packed, bits, dim):
    """(values float32 [N, dim], scale [N], zero point [N], 8-bit bias -(z * s) [N])."""
    from .nn.quantized_embedding import unpack_rowwise

    q, s, z = unpack_rowwise(packed.cpu(), bits, dim)
    return q.float(), s, z, -(z * s)


def embedding_row_values(packed, bits: int, embedding_dim: int) -> torch.Tensor:
    """The value of each table element as ``embedding_bag_rowwise`` defines it (max mode, and
    the plain Embedding lookup), float32 [N, embedding_dim]: 8-bit rows fma(q, s, -(z * s)),
    4-bit rows (q - z) * s."""
    q, s, z, b = _embedding_unpack(packed, bits, embedding_dim)
    if bits == 8:
        return fma32(q, s[:, None], b[:, None])
    return (q - z[:, None]) * s[:, None]


def _embedding_bag_checks(n_rows: int, idx: torch.Tensor, off: Optional[torch.Tensor], include_last_offset: bool,
                          padding_idx: Optional[int]) -> None:
    """The op's checks of its values, in its order and with its errors (RuntimeError, the same
    messages): include_last_offset's one offset, padding_idx in [0, n_rows), the offsets (start
    at 0, never decrease, stay within the indices), then every index in [0, n_rows)."""
    op = "embedding_bag_rowwise"
    if off is not None and include_last_offset and off.numel() < 1:
        raise RuntimeError(f"{op}: argument 'offsets' must hold at least one element with include_last_offset=True")
    if padding_idx is not None and not 0 <= padding_idx < n_rows:
        raise RuntimeError(f"{op}: argument 'padding_idx' must lie in [0, {n_rows}) (the table's rows), got "
                           f"{padding_idx}")
    n = idx.numel()
    if off is not None:
        o = off.tolist()
        if o and o[0] != 0:
            raise RuntimeError(f"{op}: offsets[0] has to be 0, i.e., the first sequence in the mini-batch has to "
                               f"start from position 0. However, got {o[0]}")
        for b in range(1, len(o)):
            if o[b] < o[b - 1]:
                raise RuntimeError(f"{op}: argument 'offsets' must be non-decreasing, got offsets[{b - 1}]={o[b - 1]}"
                                   f" > offsets[{b}]={o[b]}")
        if o and o[-1] > n:
            raise RuntimeError(f"{op}: argument 'offsets' holds {o[-1]} at position {len(o) - 1}, past the {n} "
                               "indices")
    flat = idx.reshape(-1)
    bad = ((flat < 0) | (flat >= n_rows)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise RuntimeError(f"{op}: argument 'indices' holds {int(flat[i])} at position {i}, outside [0, {n_rows}) "
                           "(the table's rows)")


def embedding_bag_rowwise(packed, bits: int, embedding_dim: int, indices, offsets=None, mode: int = 0,
                          per_sample_weights=None, include_last_offset: bool = False,
                          padding_idx: Optional[int] = None) -> torch.Tensor:
    """``embedding_bag_rowwise``: bags of a packed row-wise quantized table (contract in
    csrc/cpu/embedding_kernels.h). Entry k of every bag at once, k in order, so each output
    element sees the same float32 operations in the same order as in the kernels.

    8-bit sum / mean: acc = fma(q, s', acc) and, apart, B = B + b' (s' = s * w, b' = -(z * s) * w
    with a per-sample weight w), the bag's sum acc + B; max: max of fma(q, s, -(z * s)).
    4-bit: v = (q - z) * s, acc + v (or acc + v * w), max of v. Mean: the sum / the count.
    Offsets and indices the op refuses (a negative index, offsets[0] != 0, decreasing offsets,
    an offset past the indices) are refused with its RuntimeError and message."""
    q, s, z, bias_row = _embedding_unpack(packed, bits, embedding_dim)
    values = embedding_row_values(packed, bits, embedding_dim)
    idx = indices.cpu().long()
    _embedding_bag_checks(packed.shape[0], idx, None if offsets is None else offsets.cpu().long(),
                          include_last_offset, padding_idx)
    psw = per_sample_weights.cpu().float() if per_sample_weights is not None else None
    if offsets is None:
        nb, per = idx.shape
        starts = torch.arange(nb) * per
        ends = starts + per
        idx = idx.reshape(-1)
        psw = psw.reshape(-1) if psw is not None else None
    else:
        off = offsets.cpu().long()
        nb = off.numel() - 1 if include_last_offset else off.numel()
        starts = off[:nb]
        ends = torch.cat([off[1:], torch.tensor([idx.numel()])])[:nb]
    lengths = ends - starts
    acc = torch.zeros(nb, embedding_dim)
    bias = torch.zeros(nb)
    count = torch.zeros(nb, dtype=torch.long)
    split_bias = bits == 8 and mode != 2
    for k in range(int(lengths.max()) if nb else 0):
        bags = (lengths > k).nonzero().squeeze(1)
        pos = starts[bags] + k
        r = idx[pos]
        if padding_idx is not None:
            keep = r != padding_idx
            bags, pos, r = bags[keep], pos[keep], r[keep]
        if split_bias:
            si, bi = s[r], bias_row[r]
            if psw is not None:
                si, bi = si * psw[pos], bi * psw[pos]
            acc[bags] = fma32(q[r], si[:, None], acc[bags])
            bias[bags] = bias[bags] + bi
        elif mode == 2:
            v, cur = values[r], acc[bags]
            acc[bags] = torch.where((count[bags] == 0)[:, None] | (v > cur), v, cur)
        else:
            v = values[r]
            acc[bags] = acc[bags] + (v * psw[pos][:, None] if psw is not None else v)
        count[bags] += 1
    if split_bias:
        acc = acc + bias[:, None]
    if mode == 1:
        acc = torch.where(count[:, None] > 0, acc / count.clamp(min=1)[:, None].float(), acc)
    return acc


def lookup_table(a: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """torchquant::lookup_table: ``table[a - qmin]`` (qmin -128 for int8, 0 for uint8), the
    output in table's dtype and a's shape."""
    idx = a.to(torch.int64) - (-128 if a.dtype == torch.int8 else 0)
    return table[idx]

