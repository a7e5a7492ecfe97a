"""torch functions on QTensors that keep them int8: what the forward of a torchvision
quantizable model (and torch.ao's eager flow generally) applies to activations between modules.

Each function works on the int8/uint8 data of a per-tensor QTensor and returns a QTensor.
Pooling, shape functions, nearest upsampling, relu and hardtanh keep the qparams (torch.ao's
semantics); cat requantizes when its inputs' qparams differ. Where torch.ao has a quantized
kernel (max/avg/adaptive pooling, upsample, hardtanh, hardsigmoid, cat) the results equal its
results on the same int data (tests/test_qtensor_ops.py); the averaging rounds as torch's
channels-last kernels do: ``nearbyint(float(sum(q - zp)) * float32(1 / count)) + zp``.
"""
import math
from typing import List, Sequence

import torch
import torch.nn.functional as F

from .qtensor import QTensor, _QRANGE, _INT8_FUNCTIONS

__all__: List[str] = []


def _per_tensor(q: QTensor, name: str) -> QTensor:
    if q.axis is not None:
        raise NotImplementedError(f"{name} on a QTensor is defined for per-tensor quantization (this one is per "
                                  f"channel along axis {q.axis}); call .dequantize() first")
    return q


def _zp(q: QTensor) -> int:
    return int(q.zero_point.reshape(()))


def _as_float_codes(q: QTensor) -> torch.Tensor:
    """The int8 codes as float32 (exact), in the data's memory format."""
    return q.data.to(torch.float32)


def _back(q: QTensor, codes: torch.Tensor) -> QTensor:
    """float codes (integers inside the storage range) -> a QTensor with q's qparams."""
    return q._same_qparams(codes.to(q.data.dtype))


# ---------------------------------------------------------------- max pooling (exact)
def _max_pool(fn, name):
    def impl(q, *args, return_indices=False, **kwargs):
        _per_tensor(q, name)
        if return_indices:
            out, idx = fn(_as_float_codes(q), *args, return_indices=True, **kwargs)
            return _back(q, out), idx
        # On float codes: torch's uint8 max_pool2d rejects channels-last input (an index-type
        # check that fails for every size), and CUDA has no integer max pooling.
        return _back(q, fn(_as_float_codes(q), *args, **kwargs))

    return impl


# ---------------------------------------------------------------- average pooling
def _round_average(q: QTensor, sums: torch.Tensor, counts: torch.Tensor) -> QTensor:
    """nearbyint(sum * float32(1/count)) + zp, clamped: torch's quantized average rounding."""
    lo, hi = _QRANGE[q.data.dtype]
    inv = torch.reciprocal(counts.to(torch.float32))
    t = torch.round(sums * inv) + _zp(q)
    return _back(q, t.clamp_(lo, hi))


def _avg_pool(fn, name):
    def impl(q, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
        _per_tensor(q, name)
        centered = _as_float_codes(q) - _zp(q)  # exact: |value| <= 255
        kw = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                  count_include_pad=count_include_pad)
        # Window sums, exact in float32 (at most 255 * window < 2^24).
        sums = fn(centered, divisor_override=1, **kw)
        if divisor_override is not None:
            counts = torch.tensor(float(divisor_override))
        else:
            # The divisor per window, as torch's kernel takes it: counted from a tensor of ones.
            ones = torch.ones_like(centered[:1, :1])
            covered = fn(ones, divisor_override=1, **kw)
            counts = torch.round(covered / fn(ones, **kw))
        return _round_average(q, sums, counts)

    return impl


def _adaptive_bounds(size: int, out: int):
    starts = [(i * size) // out for i in range(out)]
    ends = [-((-(i + 1) * size) // out) for i in range(out)]
    return starts, ends


def _adaptive_avg_pool(q, output_size, dims: int, name: str):
    _per_tensor(q, name)
    spatial = q.data.shape[-dims:]
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size,) * dims
    output_size = [spatial[i] if o is None else int(o) for i, o in enumerate(output_size)]
    centered = _as_float_codes(q) - _zp(q)
    if all(o == 1 for o in output_size):
        sums = centered.sum(dim=tuple(range(-dims, 0)), keepdim=True)
        return _round_average(q, sums, torch.tensor(float(math.prod(spatial))))
    # Window sums from an integral image (float64: exact, whatever the plane size).
    integral = centered.to(torch.float64)
    for d in range(-dims, 0):
        integral = F.pad(integral.cumsum(d), [0, 0] * (-d - 1) + [1, 0])
    sums, counts = integral, torch.ones((), dtype=torch.float64)
    for k, d in enumerate(range(-dims, 0)):
        starts, ends = _adaptive_bounds(spatial[k], output_size[k])
        s = torch.tensor(starts, device=q.data.device)
        e = torch.tensor(ends, device=q.data.device)
        sums = sums.index_select(d, e) - sums.index_select(d, s)
        shape = [1] * dims
        shape[k] = output_size[k]
        counts = counts * (e - s).to(torch.float64).cpu().reshape(shape)
    out = _round_average(q, sums.to(torch.float32), counts.to(q.data.device))
    mf = torch.channels_last if dims == 2 and q.data.dim() == 4 and q.data.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format
    return out._same_qparams(out.data.contiguous(memory_format=mf))


def _adaptive_avg_pool2d(q, output_size):
    return _adaptive_avg_pool(q, output_size, 2, "adaptive_avg_pool2d")


def _adaptive_avg_pool3d(q, output_size):
    return _adaptive_avg_pool(q, output_size, 3, "adaptive_avg_pool3d")


def _mean(q, dim=None, keepdim=False, *, dtype=None):
    """mean over dims, qparams kept: dequantize, float mean, quantize (torch.ao's quantized mean
    does the same; its float summation order may differ, by one code at a rounding tie)."""
    _per_tensor(q, "mean")
    if dtype is not None:
        raise TypeError("mean of a QTensor takes no dtype (argument 'dtype'); call .dequantize() first")
    x = q.dequantize()
    y = x.mean() if dim is None and not keepdim else x.mean(dim=tuple(range(x.dim())) if dim is None else dim,
                                                             keepdim=keepdim)
    data = torch.ops.torchquant.quantize(y, q.scale, q.zero_point, None, q.qmin, q.qmax, q.data.dtype)
    return q._same_qparams(data)


# ---------------------------------------------------------------- upsampling (exact)
def _interpolate(q, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None,
                 antialias=False):
    _per_tensor(q, "interpolate")
    if mode not in ("nearest", "nearest-exact"):
        # Interpolating modes: in float, requantized with the input's qparams (torch.ao's quantized
        # bilinear upsampling keeps them too; a bicubic overshoot saturates).
        y = F.interpolate(q.dequantize(), size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                          recompute_scale_factor=recompute_scale_factor, antialias=antialias)
        return q._same_qparams(torch.ops.torchquant.quantize(y, q.scale, q.zero_point, None, q.qmin, q.qmax,
                                                             q.data.dtype))
    out = F.interpolate(_as_float_codes(q), size=size, scale_factor=scale_factor, mode=mode,
                        recompute_scale_factor=recompute_scale_factor)
    return _back(q, out)


# ---------------------------------------------------------------- activations
def _quantize_value(q: QTensor, v: float) -> int:
    lo, hi = _QRANGE[q.data.dtype]
    inv = torch.reciprocal(q.scale.reshape(()).float().cpu())
    t = float(torch.round(torch.tensor(v, dtype=torch.float32) * inv)) + _zp(q)
    return int(min(max(t, lo), hi))


def _hardtanh(q, min_val=-1.0, max_val=1.0, inplace=False):
    """clamp of the codes to the quantized bounds; qparams kept (torch.ao's quantized hardtanh)."""
    _per_tensor(q, "hardtanh")
    return q._same_qparams(q.data.clamp(_quantize_value(q, min_val), _quantize_value(q, max_val)))


def _relu6(q, inplace=False):
    return _hardtanh(q, 0.0, 6.0)


def _relu(q, inplace=False):
    zp = q.zero_point.reshape([-1 if d == q.axis else 1 for d in range(q.dim())]) if q.axis is not None \
        else q.zero_point.reshape(())
    return q._same_qparams(torch.maximum(q.data, zp.to(q.data.dtype)))


def _fixed_output(fn, name):
    """Functions with a fixed output range (sigmoid, hardsigmoid: [0, 1]): torch.ao's fixed qparams,
    scale 1/256 with zero point 0 (quint8) or -128 (qint8); computed in float."""
    def impl(q, *args, **kwargs):
        kwargs.pop("inplace", None)
        y = fn(q.dequantize(), *args, **kwargs)
        zp = 0 if q.data.dtype == torch.uint8 else -128
        lo, hi = _QRANGE[q.data.dtype]
        scale = torch.full((1,), 1.0 / 256.0, dtype=torch.float32, device=y.device)
        zero_point = torch.full((1,), zp, dtype=torch.int32, device=y.device)
        data = torch.ops.torchquant.quantize(y, scale, zero_point, None, lo, hi, q.data.dtype)
        return QTensor._make(data, scale, zero_point, None, lo, hi)

    return impl


# ---------------------------------------------------------------- shape functions (exact)
def _shape_fn(fn, name):
    def impl(q, *args, **kwargs):
        _per_tensor(q, name)
        out = fn(q.data, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return q._same_qparams(out)
        return type(out)(q._same_qparams(t) for t in out)

    return impl


# ---------------------------------------------------------------- cat
def cat(tensors: Sequence[QTensor], dim: int = 0) -> QTensor:
    """torch.cat of per-tensor QTensors: with equal qparams and dtype, the codes concatenated;
    otherwise each is requantized onto qparams covering all their ranges (torch.ao requires
    equal qparams and raises instead)."""
    tensors = list(tensors)
    for i, t in enumerate(tensors):
        if not isinstance(t, QTensor):
            raise TypeError(f"torch.cat of QTensors: element {i} of argument 'tensors' is a {type(t).__name__}; "
                            "quantize it first (or dequantize every element)")
        _per_tensor(t, "cat")
    first = tensors[0]
    same = all(t.data.dtype == first.data.dtype and t.qmin == first.qmin and t.qmax == first.qmax
               and (t.scale is first.scale or torch.equal(t.scale.reshape(()), first.scale.reshape(())))
               and (t.zero_point is first.zero_point or torch.equal(t.zero_point.reshape(()), first.zero_point.reshape(())))
               for t in tensors[1:])
    if same:
        return first._same_qparams(torch.cat([t.data for t in tensors], dim))
    lo, hi = _QRANGE[first.data.dtype]
    mins = torch.stack([((t.qmin - t.zero_point.reshape(()).float()) * t.scale.reshape(()).float()) for t in tensors])
    maxs = torch.stack([((t.qmax - t.zero_point.reshape(()).float()) * t.scale.reshape(()).float()) for t in tensors])
    scale, zero_point = torch.ops.torchquant.choose_qparams(mins.min().reshape(1), maxs.max().reshape(1), lo, hi)
    scale, zero_point = scale.reshape(1).float(), zero_point.reshape(1).to(torch.int32)
    data = torch.ops.torchquant.cat([t.data for t in tensors], [t.scale for t in tensors],
                                    [t.zero_point for t in tensors], dim, scale, zero_point, first.data.dtype)
    return QTensor._make(data, scale, zero_point, None, lo, hi)


def _torch_cat(tensors, dim=0, *, out=None):
    if out is not None:
        raise TypeError("torch.cat of QTensors takes no 'out' argument")
    return cat(tensors, dim)


_FUNCTIONS = {
    F.max_pool1d: _max_pool(F.max_pool1d, "max_pool1d"),
    F.max_pool2d: _max_pool(F.max_pool2d, "max_pool2d"),
    F.max_pool3d: _max_pool(F.max_pool3d, "max_pool3d"),
    F.avg_pool2d: _avg_pool(F.avg_pool2d, "avg_pool2d"),
    F.avg_pool3d: _avg_pool(F.avg_pool3d, "avg_pool3d"),
    F.adaptive_avg_pool2d: _adaptive_avg_pool2d,
    F.adaptive_avg_pool3d: _adaptive_avg_pool3d,
    torch.mean: _mean,
    F.interpolate: _interpolate,
    F.upsample_nearest: lambda q, size=None, scale_factor=None: _interpolate(q, size, scale_factor, "nearest"),
    F.hardtanh: _hardtanh,
    F.relu6: _relu6,
    torch.relu: _relu,
    torch.relu_: _relu,
    F.relu: _relu,
    F.hardsigmoid: _fixed_output(F.hardsigmoid, "hardsigmoid"),
    torch.sigmoid: _fixed_output(torch.sigmoid, "sigmoid"),
    F.sigmoid: _fixed_output(torch.sigmoid, "sigmoid"),
    torch.cat: _torch_cat,
    torch.concat: _torch_cat,
    torch.concatenate: _torch_cat,
    torch.transpose: _shape_fn(torch.transpose, "transpose"),
    torch.permute: _shape_fn(torch.permute, "permute"),
    torch.chunk: _shape_fn(torch.chunk, "chunk"),
    torch.split: _shape_fn(torch.split, "split"),
    torch.squeeze: _shape_fn(torch.squeeze, "squeeze"),
    torch.unsqueeze: _shape_fn(torch.unsqueeze, "unsqueeze"),
    torch.narrow: _shape_fn(torch.narrow, "narrow"),
}
_INT8_FUNCTIONS.update(_FUNCTIONS)


# QTensor methods with the same meaning as the functions (x.transpose(1, 2), x.chunk(2, 1), ...).
def _method(fn, name):
    impl = _shape_fn(fn, name)

    def method(self, *args, **kwargs):
        return impl(self, *args, **kwargs)

    method.__name__ = name
    method.__doc__ = f"``torch.Tensor.{name}`` on the int8 codes; qparams kept (per-tensor QTensors)."
    return method


for _name in ("transpose", "permute", "chunk", "split", "squeeze", "unsqueeze", "narrow", "expand", "repeat",
              ):
    setattr(QTensor, _name, _method(getattr(torch.Tensor, _name), _name))
QTensor.mean = lambda self, dim=None, keepdim=False: _mean(self, dim, keepdim)
QTensor.mean.__doc__ = "torch.mean with torch's quantized averaging: nearbyint(sum * float32(1/count)) + zp."
QTensor.relu = lambda self: _relu(self)
QTensor.relu_ = QTensor.relu
