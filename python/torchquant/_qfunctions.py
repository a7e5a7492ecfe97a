"""torch functions on QTensors that keep them int8: what the forward of a torchvision
quantizable model (and torch.ao's eager flow generally) applies to activations between modules.

Each function works on the int8/uint8 data of a per-tensor QTensor and returns a QTensor.
Pooling runs torchquant's int8 pooling ops (max, average, adaptive average; 1-d to 3-d), whose
results keep the input's memory format. Pooling, shape functions, nearest upsampling, relu and hardtanh keep the qparams (torch.ao's
semantics); cat requantizes when its inputs' qparams differ. Where torch.ao has a quantized
kernel, tests/test_qtensor_ops.py compares with it on the same int data: max/avg/adaptive
pooling, hardtanh, hardsigmoid, nearest upsampling to a size or by an integer scale factor, and
cat of inputs with equal qparams give its results; the averaging rounds as torch's
channels-last kernels do: ``nearbyint(float(sum(q - zp)) * float32(1 / count)) + zp``
(sums exact in integers). Nearest upsampling is float ``F.interpolate`` on the codes, exactly:
with a non-integer scale factor torch.ao's kernel picks other source pixels, and torchquant's
results are float ``F.interpolate``'s. Bilinear (and the other interpolating modes) runs in
float and requantizes with the input's qparams: within one code of torch.ao's. cat of inputs
with different qparams requantizes them onto qparams covering them all (torch.ao requantizes
onto the first input's).
"""
import math
import operator
import weakref
from typing import List, Sequence

import torch
import torch.nn.functional as F

from . import _fastcall
from .qtensor import QTensor, _QRANGE, _INT8_FUNCTIONS, _run_in_float

__all__: List[str] = []

_ops = torch.ops.torchquant


def _per_tensor(q: QTensor, name: str) -> QTensor:
    if q.axis is not None:
        raise NotImplementedError(f"{name} on a QTensor is defined for per-tensor quantization (this one is per "
                                  f"channel along axis {q.axis}); call .dequantize() first")
    return q


def _wrap_dim(dim: int, n: int) -> int:
    """dim counted from the front for n dimensions; outside [-n, n - 1] torch's IndexError."""
    if not -n <= dim < n:
        raise IndexError(f"Dimension out of range (expected to be in range of [{-n}, {n - 1}], but got {dim})")
    return dim + n if dim < 0 else dim


def _zp(q: QTensor) -> int:
    return int(q.zero_point.reshape(()))


def _as_float_codes(q: QTensor) -> torch.Tensor:
    """The int8 codes as float32 (exact), in the data's memory format."""
    return q.data.to(torch.float32)


def _back(q: QTensor, codes: torch.Tensor) -> QTensor:
    """float codes (integers inside the storage range) -> a QTensor with q's qparams."""
    return q._same_qparams(codes.to(q.data.dtype))


# ---------------------------------------------------------------- pooling
# The int8 pooling ops (csrc/cpu/pool*.cpp, csrc/cuda/pool.cu) on the codes; their plain-torch
# oracles are reference.max_pool_int8 / avg_pool_int8 / adaptive_avg_pool_int8.
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _int_element(e, i: int, name: str, fn_name: str, bool_ok: bool = True) -> int:
    """e as an int; a float (which int() would truncate) or anything else is torch's TypeError
    (a bool too where not bool_ok: torch's adaptive pooling refuses one). Outside int64 (what
    the ops take) a RuntimeError, alike whichever way the op is called."""
    try:
        if not bool_ok and type(e) is bool:
            raise TypeError
        v = operator.index(e)
    except TypeError:
        raise TypeError(f"{fn_name}(): argument '{name}' must be an int or a tuple of ints, but found element of "
                        f"type {type(e).__name__} at pos {i}: {e!r}") from None
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise RuntimeError(f"{fn_name}(): argument '{name}' must hold int64 values, got {v} at pos {i}")
    return v


def _not_bool(v, name: str, fn_name: str) -> None:
    """torch's pooling functions refuse a bool where they take an int or a tuple of ints."""
    if type(v) is bool:
        raise TypeError(f"{fn_name}(): argument '{name}' must be an int or a tuple of ints, not bool: {v!r}")


def _elements(v) -> list:
    """The elements of a sequence argument; a single value (2.5) as a list of itself."""
    try:
        return list(v)
    except TypeError:
        return [v]


def _ints(v, n: int, name: str, fn_name: str) -> List[int]:
    """An int or a sequence of 1 or n ints as a list of n ints (torch's pooling arguments)."""
    if type(v) is int and _INT64_MIN <= v <= _INT64_MAX:
        return [v] * n
    _not_bool(v, name, fn_name)
    v = [_int_element(e, i, name, fn_name) for i, e in enumerate(_elements(v))]
    if len(v) == 1:
        return v * n
    if len(v) != n:
        raise RuntimeError(f"{fn_name}: argument '{name}' must be a single int or a tuple of {n} ints, got {v}")
    return v


def _stride(v, nsp: int, fn_name: str) -> List[int]:
    """The pooling ops' stride: [] (the kernel size) for None or an empty sequence, as torch's
    pooling functions take them; else :func:`_ints`."""
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        return []
    return _ints(v, nsp, "stride", fn_name)


def _max_pool(fn, nsp: int, name: str):
    def impl(q, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        """torch's max pooling on the int8 codes (exact), qparams and memory format kept.
        return_indices=True runs torch's float pooling on the codes (the indices need it)."""
        _per_tensor(q, name)
        if return_indices:
            out, idx = fn(_as_float_codes(q), kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                          return_indices=True)
            return _back(q, out), idx
        d = q.data
        args = (d, _ints(kernel_size, nsp, "kernel_size", name),
                _stride(stride, nsp, name),
                _ints(padding, nsp, "padding", name), _ints(dilation, nsp, "dilation", name), bool(ceil_mode))
        f = _fastcall.max_pool_int8 if _fastcall.usable_all((d,), ()) else _ops.max_pool_int8.default
        return q._same_qparams(f(*args))

    impl.__name__ = name
    return impl


def _with_indices(fn, name: str):
    def impl(q, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=True):
        """max pooling with indices: torch's float pooling on the codes (exact values)."""
        _per_tensor(q, name)
        out, idx = fn(_as_float_codes(q), kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                      return_indices=True)
        return _back(q, out), idx

    return impl


def _divisor(v, fn_name: str) -> int:
    """divisor_override as an int in int64, as torch takes it (int() would truncate 2.5)."""
    if type(v) is not bool:
        try:
            v = operator.index(v)
        except TypeError:
            pass
    if type(v) is not int:
        raise TypeError(f"{fn_name}(): argument 'divisor_override' must be int, not {type(v).__name__}")
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise RuntimeError(f"{fn_name}(): argument 'divisor_override' must be an int64, got {v}")
    return v


def _avg_pool(nsp: int, name: str):
    def impl(q, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
        """torch's average pooling on the int8 codes, qparams and memory format kept, rounded as
        torch's quantized kernels: ``nearbyint(float(sum(q - zp)) * float32(1 / count)) + zp``."""
        _per_tensor(q, name)
        d, z = q.data, q.zero_point
        args = (d, z, _ints(kernel_size, nsp, "kernel_size", name),
                _stride(stride, nsp, name),
                _ints(padding, nsp, "padding", name), bool(ceil_mode), bool(count_include_pad),
                None if divisor_override is None else _divisor(divisor_override, name))
        f = _fastcall.avg_pool_int8 if _fastcall.usable_all((d, z), ()) else _ops.avg_pool_int8.default
        return q._same_qparams(f(*args))

    impl.__name__ = name
    return impl


def _adaptive_avg_pool(q, output_size, nsp: int, name: str):
    """torch's adaptive average pooling on the int8 codes, rounded as :func:`_avg_pool`."""
    _per_tensor(q, name)
    d, z = q.data, q.zero_point
    _not_bool(output_size, "output_size", name)
    if isinstance(output_size, int):
        size = [_int_element(output_size, 0, "output_size", name)] * nsp
    else:
        size = _elements(output_size)
        if len(size) == 1:
            size = size * nsp
        if len(size) != nsp:
            raise RuntimeError(f"{name}: argument 'output_size' must be a single int or a tuple of {nsp} ints, "
                               f"got {size}")
        spatial = d.shape[-nsp:]
        size = [spatial[i] if o is None else _int_element(o, i, "output_size", name, False)
                for i, o in enumerate(size)]
    f = _fastcall.adaptive_avg_pool_int8 if _fastcall.usable_all((d, z), ()) else _ops.adaptive_avg_pool_int8.default
    return q._same_qparams(f(d, z, size))


def _adaptive_avg_pool1d(q, output_size):
    return _adaptive_avg_pool(q, output_size, 1, "adaptive_avg_pool1d")


def _is_global_2d(output_size) -> bool:
    """output_size is 1, or a tuple or list of two 1s, as ints (not 1.0 or True, which torch
    refuses, nor an array, whose == is elementwise)."""
    t = type(output_size)
    if t is int:
        return output_size == 1
    return ((t is tuple or t is list) and len(output_size) == 2 and type(output_size[0]) is int
            and type(output_size[1]) is int and output_size[0] == 1 and output_size[1] == 1)


def _adaptive_avg_pool2d(q, output_size):
    # The global average of a classifier's head (nn.AdaptiveAvgPool2d(1) / (1, 1) at batch 1)
    # costs little more than the Python around it: the common case takes the shortest path.
    d, z = q.data, q.zero_point
    if q.axis is None and _is_global_2d(output_size) and _fastcall.usable(d, z, z):
        return QTensor._make(_fastcall.adaptive_avg_pool_int8(d, z, [1, 1]), q.scale, z, None, q.qmin, q.qmax)
    return _adaptive_avg_pool(q, output_size, 2, "adaptive_avg_pool2d")


def _adaptive_avg_pool3d(q, output_size):
    return _adaptive_avg_pool(q, output_size, 3, "adaptive_avg_pool3d")


def _mean(q, dim=None, keepdim=False, *, dtype=None, axis=None, out=None):
    """mean over dims, qparams kept. Over all the spatial dimensions of a 3-d to 5-d tensor
    (``x.mean((2, 3))``, a classifier head) it is the int8 global average pool, rounded as
    torch's quantized average pooling: ``nearbyint(float(sum(q - zp)) * float32(1 / count)) + zp``.
    Other dims, and a QTensor with no values: dequantize, float mean, quantize (torch.ao's
    quantized mean does that; its float summation order may differ, by one code at a rounding tie)."""
    _per_tensor(q, "mean")
    if dtype is not None:
        raise TypeError("mean of a QTensor takes no dtype (argument 'dtype'); call .dequantize() first")
    if out is not None:
        raise TypeError("mean of a QTensor takes no 'out' argument")
    if axis is not None:  # numpy's name for dim, as torch.mean takes it (dim=None is every dim)
        dim = _dim_or_axis("mean", dim, axis)
    n = q.data.dim()
    # (an empty QTensor, no channels or an empty spatial dimension, takes the float path: the int8
    # pooling needs values, and float gives the empty result, or NaN, the zero point's code)
    if dim is not None and 3 <= n <= 5 and q.data.numel() > 0:
        dims = [dim] if isinstance(dim, int) else list(dim)
        # dims counted from the front; one out of range (or repeated) takes the float path, which
        # raises torch's error
        if sorted(d + n if d < 0 else d for d in dims) == list(range(2, n)) and len(dims) == n - 2:
            out = _adaptive_avg_pool(q, [1] * (n - 2), n - 2, "mean")
            return out if keepdim else out._same_qparams(out.data.reshape(out.data.shape[:2]))
    x = q.dequantize()
    y = x.mean() if dim is None and not keepdim else x.mean(dim=tuple(range(x.dim())) if dim is None else dim,
                                                             keepdim=keepdim)
    data = torch.ops.torchquant.quantize(y, q.scale, q.zero_point, None, q.qmin, q.qmax, q.data.dtype)
    return q._same_qparams(data)


# ---------------------------------------------------------------- upsampling (exact)
def _interpolate(q, size=None, scale_factor=None, mode="nearest", align_corners=None, recompute_scale_factor=None,
                 antialias=False):
    _per_tensor(q, "interpolate")
    if mode == "bicubic":
        # Its cubic weights overshoot the input's range (up to about 1.25x), where the input's
        # qparams would saturate silently (torch.ao has no quantized bicubic): computed in float,
        # a float result, with the float fallback's warning; the next int8 module quantizes it.
        return _run_in_float(F.interpolate, (q,), dict(size=size, scale_factor=scale_factor, mode=mode,
                                                       align_corners=align_corners,
                                                       recompute_scale_factor=recompute_scale_factor,
                                                       antialias=antialias),
                             label="interpolate(mode='bicubic')", stacklevel=3)
    if mode not in ("nearest", "nearest-exact"):
        # Interpolating modes: in float, requantized with the input's qparams (torch.ao's quantized
        # bilinear upsampling keeps them too: linear and area weights stay inside the input's range).
        y = F.interpolate(q.dequantize(), size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                          recompute_scale_factor=recompute_scale_factor, antialias=antialias)
        return q._same_qparams(torch.ops.torchquant.quantize(y, q.scale, q.zero_point, None, q.qmin, q.qmax,
                                                             q.data.dtype))
    # (torch refuses the interpolating modes' options for nearest, with a ValueError)
    if align_corners is not None:
        raise ValueError(f"interpolate: argument 'align_corners' can only be set with the interpolating modes "
                         f"(linear, bilinear, bicubic, trilinear), got align_corners={align_corners} with mode "
                         f"'{mode}'")
    if antialias:
        raise ValueError(f"interpolate: argument 'antialias' is restricted to the bilinear and bicubic modes, got "
                         f"antialias={antialias} with mode '{mode}'")
    out = F.interpolate(_as_float_codes(q), size=size, scale_factor=scale_factor, mode=mode,
                        recompute_scale_factor=recompute_scale_factor)
    return _back(q, out)


# ---------------------------------------------------------------- activations
def _quantize_value(q: QTensor, v: float) -> torch.Tensor:
    """The code of the number v in q's qparams, a 0-dim tensor of q's code dtype on q's device, as
    the quantize formula gives it: clamped into q's quantization range [qmin, qmax], NaN to the
    zero point (tensor arithmetic, no host read: torch.compile and torch.export trace it)."""
    v = float(v)
    zp = q.zero_point.reshape(()).float()
    if v != v:  # NaN
        return zp.clamp(q.qmin, q.qmax).to(q.data.dtype)
    inv = torch.reciprocal(q.scale.reshape(()).float())
    t = torch.round(torch.tensor(v, dtype=torch.float32, device=inv.device) * inv)
    return (t + zp).clamp(q.qmin, q.qmax).to(q.data.dtype)


def _onto_output_range(q: QTensor, fn, y: torch.Tensor) -> QTensor:
    """y, the elementwise fn of q's values, as a QTensor: with q's qparams where fn's range over q's
    range [x_min, x_max] lies inside it, else with qparams covering fn's range (choose_qparams, as
    torch.ao's observers, over q's quantization range), so that no value saturates. fn is monotone
    on each side of 0: its range is spanned by fn(x_min), fn(0) and fn(x_max). Tensor arithmetic
    on the qparams' device (no host read: torch.compile and torch.export trace it)."""
    s = q.scale.reshape(1).float()
    z = q.zero_point.reshape(1).to(torch.int32)
    ends = (torch.tensor([q.qmin, q.qmax], dtype=torch.float32, device=s.device) - z) * s
    f = fn(torch.cat([ends, ends.new_zeros(1)]))
    lo, hi = f.min().reshape(1), f.max().reshape(1)
    inside = (lo >= ends[0]) & (hi <= ends[1])
    cs, cz = torch.ops.torchquant.choose_qparams(lo, hi, q.qmin, q.qmax)
    scale = torch.where(inside, s, cs.reshape(1).float())
    zero_point = torch.where(inside, z, cz.reshape(1).to(torch.int32))
    data = torch.ops.torchquant.quantize(y.float(), scale, zero_point, None, q.qmin, q.qmax, q.data.dtype)
    return QTensor._make(data, scale, zero_point, None, q.qmin, q.qmax)


def _clamped(q: QTensor, lo, hi, fn_name: str, lo_name: str, hi_name: str) -> QTensor:
    """clamp with a bound on the far side of 0 (a range that may lie outside q's): in float, onto
    qparams covering the result (q's own where it lies inside q's range). Bounds that make the
    float result NaN or infinite everywhere (a NaN bound, an upper one of -inf, a lower one of
    +inf with no finite upper one), which no qparams hold, are a ValueError naming the bound (an
    infinite bound on its own side, -inf below or +inf above, bounds nothing and is taken)."""
    for arg, v in ((lo_name, lo), (hi_name, hi)):
        if v is not None and v != v:
            raise ValueError(f"{fn_name}: argument '{arg}' must not be NaN on a QTensor (the result would be NaN "
                             f"everywhere, which a QTensor cannot hold), got {v}")
    if hi is not None and hi == -math.inf:
        raise ValueError(f"{fn_name}: argument '{hi_name}' must not be -inf on a QTensor (the result would be -inf "
                         f"everywhere, which a QTensor cannot hold), got {hi}")
    if lo is not None and lo == math.inf and (hi is None or hi == math.inf):
        raise ValueError(f"{fn_name}: argument '{lo_name}' must not be inf on a QTensor (the result would be inf "
                         f"everywhere, which a QTensor cannot hold), got {lo}")
    return _onto_output_range(q, lambda x: x.clamp(lo, hi), q.dequantize().clamp(lo, hi))


def _hardtanh(q, min_val=-1.0, max_val=1.0, inplace=False, _in_place=False):
    """clamp of the codes to the quantized bounds; qparams kept (torch.ao's quantized hardtanh).
    Bounds that do not hold 0 between them: :func:`_clamped` (not in place, where the qparams
    stay the QTensor's: the codes clamped, exact while the bounds lie inside its range)."""
    _per_tensor(q, "hardtanh")
    if min_val > max_val:
        raise ValueError("min_val cannot be greater than max_val")
    if not min_val <= 0.0 <= max_val and not (_in_place or inplace):
        return _clamped(q, min_val, max_val, "hardtanh", "min_val", "max_val")
    return q._same_qparams(q.data.clamp(_quantize_value(q, min_val), _quantize_value(q, max_val)))


def _hardtanh_(q, min_val=-1.0, max_val=1.0):
    return _hardtanh(q, min_val, max_val, _in_place=True)


def _relu6(q, inplace=False):
    return _hardtanh(q, 0.0, 6.0)


def _relu(q, inplace=False):
    zp = q.zero_point.reshape([-1 if d == q.axis else 1 for d in range(q.dim())]) if q.axis is not None \
        else q.zero_point.reshape(())
    return q._same_qparams(torch.maximum(q.data, zp.to(q.data.dtype)))


# input scale tensor -> {function name: (zero point tensor, versions, table, out scale, out zero
# point)}: the tables of _fixed_output, held as long as the scale tensor lives (a module's buffer:
# the model's life) and no longer.
_FIXED_TABLES = None


def _fixed_output(fn, name, takes_inplace=False):
    """Functions with a fixed output range (sigmoid, hardsigmoid: [0, 1]): torch.ao's fixed qparams,
    scale 1/256 with zero point 0 (quint8) or -128 (qint8); the float function quantized, as one
    lookup per element in a table of the 256 codes' results (built once per input qparams).
    ``takes_inplace``: fn's one other argument is ``inplace`` (F.hardsigmoid(x, False)), dropped
    whether given by keyword or by position (in place, the caller writes the result into x)."""
    def fixed_qparams(dtype, device):
        zp = 0 if dtype == torch.uint8 else -128
        scale = torch.full((1,), 1.0 / 256.0, dtype=torch.float32, device=device)
        return scale, torch.full((1,), zp, dtype=torch.int32, device=device)

    def in_float(q, *args, **kwargs):
        y = fn(q.dequantize(), *args, **kwargs)
        lo, hi = _QRANGE[q.data.dtype]
        scale, zero_point = fixed_qparams(q.data.dtype, y.device)
        data = torch.ops.torchquant.quantize(y, scale, zero_point, None, lo, hi, q.data.dtype)
        return QTensor._make(data, scale, zero_point, None, lo, hi)

    def impl(q, *args, **kwargs):
        kwargs.pop("inplace", None)
        if takes_inplace and len(args) == 1:
            args = ()
        if args or kwargs or q.axis is not None or torch.compiler.is_compiling():
            return in_float(q, *args, **kwargs)
        s, z = q.scale, q.zero_point
        try:
            versions = (s._version, s.data_ptr(), z._version, z.data_ptr(), q.data.dtype)
        except RuntimeError:  # inference tensors: no version counter to tell a change by
            return in_float(q)
        global _FIXED_TABLES
        if _FIXED_TABLES is None:
            from torch.utils.weak import WeakIdKeyDictionary
            _FIXED_TABLES = WeakIdKeyDictionary()
        per_scale = _FIXED_TABLES.get(s)
        hit = per_scale.get(name) if per_scale is not None else None
        if hit is None or hit[0]() is not z or hit[1] != versions:
            lo = _QRANGE[q.data.dtype][0]
            codes = torch.arange(lo, lo + 256, dtype=torch.int16, device=q.data.device).to(q.data.dtype)
            table = in_float(QTensor._make(codes, s, z, None, q.qmin, q.qmax))
            hit = (weakref.ref(z), versions, table.data, table.scale, table.zero_point)
            if per_scale is None:
                per_scale = {}
                _FIXED_TABLES[s] = per_scale
            per_scale[name] = hit
        lo, hi = _QRANGE[q.data.dtype]
        return QTensor._make(torch.ops.torchquant.lookup_table(q.data, hit[2]), hit[3], hit[4], None, lo, hi)

    return impl


# ---------------------------------------------------------------- shape functions (exact)
def _shape_fn(fn, name):
    def impl(q, *args, **kwargs):
        _per_tensor(q, name)
        # a QTensor as a shape template (expand_as): its codes have its shape
        args = tuple(a.data if isinstance(a, QTensor) else a for a in args)
        out = fn(q.data, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return q._same_qparams(out)
        return type(out)(q._same_qparams(t) for t in out)

    return impl


def _clone(q: QTensor, memory_format=torch.preserve_format) -> QTensor:
    """A copy of the codes and of the qparams (per channel too: the axis does not move)."""
    return QTensor._make(q.data.clone(memory_format=memory_format), q.scale.clone(), q.zero_point.clone(), q.axis,
                         q.qmin, q.qmax)


# ---------------------------------------------------------------- cat
def cat(tensors: Sequence[QTensor], dim: int = 0) -> QTensor:
    """torch.cat of per-tensor QTensors: with equal qparams and dtype, the codes concatenated;
    otherwise each is requantized onto qparams covering all their ranges (torch.ao requantizes
    every input onto the first one's qparams instead), in the inputs' quantization range where
    they share one (7-bit inputs give 7-bit codes), else in the first one's dtype's full range.
    Eager and traced (torch.compile, torch.export) give the same codes, qparams and range."""
    tensors = list(tensors)
    if any(isinstance(t, torch.Tensor) for t in tensors):
        # QTensors with float tensors (a class token before patch embeddings): all in float.
        return _run_in_float(torch.cat, (tensors, dim), {}, label="cat of QTensors and float tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, QTensor):
            raise TypeError(f"torch.cat of QTensors: element {i} of argument 'tensors' is a {type(t).__name__}, "
                            "not a tensor")
        _per_tensor(t, "cat")
    valued, same_kind, shared = _kinds(tensors)
    if same_kind and not shared and torch.compiler.is_compiling():
        return _cat_traced(tensors, dim, valued)
    if same_kind and _equal_qparams(valued):
        return valued[0]._same_qparams(torch.cat([t.data for t in tensors], dim))
    return _cat_requantized(tensors, dim, valued, same_kind)


def _kinds(tensors: List[QTensor]):
    """(the inputs with values, whether all the inputs share one code dtype and quantization range,
    whether those with values share the first one's qparams tensors). An empty input adds no
    values: its qparams take no part (a cache that starts empty)."""
    valued = [t for t in tensors if t.data.numel() > 0] or tensors[:1]
    first = valued[0]
    same_kind = all(t.data.dtype == first.data.dtype and t.qmin == first.qmin and t.qmax == first.qmax
                    for t in tensors)
    shared = all(t.scale is first.scale and t.zero_point is first.zero_point for t in valued[1:])
    return valued, same_kind, shared


def _equal_qparams(valued: List[QTensor]) -> bool:
    """Whether the inputs' qparams equal the first one's (read on the host)."""
    first = valued[0]
    return all(
        (t.scale is first.scale or torch.equal(t.scale.reshape(()), first.scale.reshape(())))
        and (t.zero_point is first.zero_point or torch.equal(t.zero_point.reshape(()), first.zero_point.reshape(())))
        for t in valued[1:])


def _cat_requantized(tensors: List[QTensor], dim: int, valued: List[QTensor], same_kind: bool) -> QTensor:
    """cat onto qparams covering every non-empty input's range (each input requantized), in the
    inputs' quantization range [qmin, qmax] when they all have the same (``same_kind``), else in
    the full range of the first one's dtype."""
    first = tensors[0]
    storage_lo, storage_hi = _QRANGE[first.data.dtype]
    lo, hi = (first.qmin, first.qmax) if same_kind else (storage_lo, storage_hi)
    mins = torch.stack([((t.qmin - t.zero_point.reshape(()).float()) * t.scale.reshape(()).float()) for t in valued])
    maxs = torch.stack([((t.qmax - t.zero_point.reshape(()).float()) * t.scale.reshape(()).float()) for t in valued])
    scale, zero_point = torch.ops.torchquant.choose_qparams(mins.min().reshape(1), maxs.max().reshape(1), lo, hi)
    scale, zero_point = scale.reshape(1).float(), zero_point.reshape(1).to(torch.int32)
    data = torch.ops.torchquant.cat([t.data for t in tensors], [t.scale for t in tensors],
                                    [t.zero_point for t in tensors], dim, scale, zero_point, first.data.dtype)
    if (lo, hi) != (storage_lo, storage_hi):
        # the op clamps into the dtype's range; its codes clamped into [lo, hi], which lies inside
        # it, are the quantize formula's clamp into [lo, hi]
        data = data.clamp(lo, hi)
    return QTensor._make(data, scale, zero_point, None, lo, hi)


def _cat_traced(tensors: List[QTensor], dim: int, valued: List[QTensor]) -> QTensor:
    """cat as torch.compile and torch.export trace it: whether the qparams are equal is a tensor
    (eager reads it on the host), so both results are computed and one is selected, codes and
    qparams: the eager results, element for element."""
    first = valued[0]
    equal = torch.stack([torch.ones((), dtype=torch.bool, device=first.data.device)] +
                        [(t.scale.reshape(()) == first.scale.reshape(())) &
                         (t.zero_point.reshape(()) == first.zero_point.reshape(())) for t in valued[1:]]).all()
    copied = torch.cat([t.data for t in tensors], dim)
    # the inputs share one quantization range (the caller's condition): so do both results
    requantized = _cat_requantized(tensors, dim, valued, True)
    data = torch.where(equal, copied, requantized.data)
    scale = torch.where(equal, first.scale.reshape(1).float(), requantized.scale)
    zero_point = torch.where(equal, first.zero_point.reshape(1).to(torch.int32), requantized.zero_point)
    return QTensor._make(data, scale, zero_point, None, first.qmin, first.qmax)


def _torch_cat(tensors, dim=None, *, axis=None, out=None):
    if out is not None:
        raise TypeError("torch.cat of QTensors takes no 'out' argument")
    return cat(tensors, _dim_or_axis("cat", dim, axis))


def stack(tensors: Sequence[QTensor], dim: int = 0) -> QTensor:
    """torch.stack of per-tensor QTensors: with equal qparams and dtype, torch.stack of the codes;
    otherwise :func:`cat` of them each unsqueezed at ``dim`` (requantized onto qparams covering
    them all). Either way the codes have the strides of float's torch.stack of the same inputs
    (channels-last inputs give a channels-last result)."""
    tensors = list(tensors)
    if any(isinstance(t, torch.Tensor) for t in tensors):
        return _run_in_float(torch.stack, (tensors, dim), {}, label="stack of QTensors and float tensors")
    for i, t in enumerate(tensors):
        if not isinstance(t, QTensor):
            raise TypeError(f"torch.stack of QTensors: element {i} of argument 'tensors' is a {type(t).__name__}, "
                            "not a tensor")
    if not tensors:
        raise RuntimeError("stack expects a non-empty TensorList")
    d = _wrap_dim(dim, tensors[0].dim() + 1)
    for i, t in enumerate(tensors[1:], 1):
        if t.shape != tensors[0].shape:  # torch's check (cat's message would name another dimension)
            raise RuntimeError(f"stack expects each tensor to be equal size, but got {list(tensors[0].shape)} at "
                               f"entry 0 and {list(t.shape)} at entry {i}")
    for t in tensors:
        _per_tensor(t, "stack")
    valued, same_kind, shared = _kinds(tensors)
    if same_kind and (shared or (not torch.compiler.is_compiling() and _equal_qparams(valued))):
        return valued[0]._same_qparams(torch.stack([t.data for t in tensors], d))
    out = cat([t.unsqueeze(d) for t in tensors], d)
    # cat's codes are contiguous where torch.stack keeps the inputs' memory format: the strides
    # torch.stack gives these inputs, found on the meta device (no data)
    strides = torch.stack([torch.empty_strided(t.data.shape, t.data.stride(), dtype=t.data.dtype, device="meta")
                           for t in tensors], d).stride()
    if out.data.stride() == strides:
        return out
    data = torch.empty_strided(out.data.shape, strides, dtype=out.data.dtype, device=out.data.device)
    return out._same_qparams(data.copy_(out.data))


def _dim_or_axis(fn_name, dim, axis):
    """torch.cat's / stack's / mean's dim, also taken as numpy's name ``axis`` (as torch takes it)."""
    if axis is None:
        return 0 if dim is None else dim
    if dim is not None:
        raise TypeError(f"{fn_name}() got both argument 'dim' and its alias 'axis'")
    return axis


def _torch_stack(tensors, dim=None, *, axis=None, out=None):
    if out is not None:
        raise TypeError("torch.stack of QTensors takes no 'out' argument")
    return stack(tensors, _dim_or_axis("stack", dim, axis))


def _pad(q, pad, mode="constant", value=None):
    """F.pad on the codes, qparams kept: a constant pad is the code of ``value`` (0: the zero
    point), reflect / replicate / circular copy codes (exact)."""
    _per_tensor(q, "pad")
    if mode == "constant":
        # F.pad takes its value as a number: pad the codes' offset from the value's code with 0.
        c = _quantize_value(q, 0.0 if value is None else value).to(torch.int16)
        return q._same_qparams((F.pad(q.data.to(torch.int16) - c, pad, mode, 0) + c).to(q.data.dtype))
    return _back(q, F.pad(_as_float_codes(q), pad, mode))


def _clamp(q, min=None, max=None, _in_place=False):
    """clamp of the codes to the quantized bounds; qparams kept (torch.ao's quantized clamp)."""
    _per_tensor(q, "clamp")
    if isinstance(min, torch.Tensor) or isinstance(max, torch.Tensor):
        raise NotImplementedError("clamp of a QTensor takes number bounds; call .dequantize() for tensor bounds")
    if ((min is not None and min > 0.0) or (max is not None and max < 0.0)) and not _in_place:
        # the result may lie outside q's range (clamp(q, min=5) of values in [-1, 1] is all 5)
        return _clamped(q, min, max, "clamp", "min", "max")
    lo = _quantize_value(q, min) if min is not None else None
    hi = _quantize_value(q, max) if max is not None else None
    return q._same_qparams(q.data.clamp(lo, hi))


def _clamp_(q, min=None, max=None):
    """clamp in place: the codes clamped, the QTensor's qparams kept (a bound past its range
    saturates, as every in-place function's result does)."""
    return _clamp(q, min, max, _in_place=True)


def _requantized(fn, name, keeps_range):
    """Functions computed in float on the dequantized values and quantized back with the
    input's qparams (torch.ao's quantized leaky_relu and elu keep them too) where their settings
    keep every value inside the input's range (``keeps_range(name, *args, **kwargs)``:
    leaky_relu's slope in [0, 1], elu's alpha in [0, 1]; a setting that is not finite is a
    ValueError); other settings (elu with alpha 2, leaky_relu with slope -0.5) may map values
    outside it: :func:`_onto_output_range`."""
    def impl(q, *args, **kwargs):
        _per_tensor(q, name)
        kwargs.pop("inplace", None)
        keeps = keeps_range(name, *args, **kwargs)  # (first: it refuses settings that are not finite)
        y = fn(q.dequantize(), *args, **kwargs)
        if keeps:
            return q._same_qparams(torch.ops.torchquant.quantize(y, q.scale, q.zero_point, None, q.qmin, q.qmax,
                                                                 q.data.dtype))
        return _onto_output_range(q, lambda x: fn(x, *args, **kwargs), y)

    return impl


def _finite(fn_name: str, **settings) -> None:
    """A ValueError naming the first setting that is not a finite number: an infinite or NaN slope
    or alpha makes values infinite or NaN, which no qparams hold (as QFunctional.add_scalar)."""
    for arg, v in settings.items():
        if not math.isfinite(v):
            raise ValueError(f"{fn_name}: argument '{arg}' must be finite on a QTensor, got {v}")


def _leaky_relu_keeps_range(fn_name, negative_slope=0.01, inplace=False):
    _finite(fn_name, negative_slope=negative_slope)
    return 0.0 <= negative_slope <= 1.0


def _elu_keeps_range(fn_name, alpha=1.0, inplace=False):
    _finite(fn_name, alpha=alpha)
    return 0.0 <= alpha <= 1.0


def _elu_in_place_keeps_range(fn_name, alpha=1.0, scale=1.0, input_scale=1.0):
    # torch._C._nn.elu_'s settings: scale * (x > 0 ? x : alpha * (exp(input_scale * x) - 1))
    _finite(fn_name, alpha=alpha, scale=scale, input_scale=input_scale)
    return scale == 1.0 and 0.0 <= alpha <= 1.0 and 0.0 <= input_scale <= 1.0


def _tanh(q):
    """tanh with torch.ao's fixed qparams for [-1, 1]: scale 2/256, zero point 128 (quint8) or 0
    (qint8); computed in float."""
    y = torch.tanh(q.dequantize())
    zp = 128 if q.data.dtype == torch.uint8 else 0
    lo, hi = _QRANGE[q.data.dtype]
    scale = torch.full((1,), 2.0 / 256.0, dtype=torch.float32, device=y.device)
    zero_point = torch.full((1,), zp, dtype=torch.int32, device=y.device)
    data = torch.ops.torchquant.quantize(y, scale, zero_point, None, lo, hi, q.data.dtype)
    return QTensor._make(data, scale, zero_point, None, lo, hi)


def _values_indices(fn, name):
    """max / min / topk / sort: the values a QTensor with the same qparams (order is the same on
    the codes, the scale being positive), the indices as they are."""
    def impl(q, *args, **kwargs):
        if not isinstance(q, QTensor) or any(isinstance(a, (torch.Tensor, QTensor)) for a in
                                             list(args) + list(kwargs.values())):
            # the elementwise forms (torch.max(a, b), torch.min(q, other=t)): in float
            return _run_in_float(fn, (q,) + args, kwargs, label=f"{name} of two tensors", stacklevel=3)
        _per_tensor(q, name)
        out = fn(q.data, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return q._same_qparams(out)
        return type(out)((q._same_qparams(out[0]), out[1]))

    return impl


_FUNCTIONS = {
    F.max_pool1d: _max_pool(F.max_pool1d, 1, "max_pool1d"),
    F.max_pool2d: _max_pool(F.max_pool2d, 2, "max_pool2d"),
    F.max_pool3d: _max_pool(F.max_pool3d, 3, "max_pool3d"),
    # F.max_poolNd(..., return_indices=True) reaches __torch_function__ as these.
    F.max_pool1d_with_indices: _with_indices(F.max_pool1d, "max_pool1d"),
    F.max_pool2d_with_indices: _with_indices(F.max_pool2d, "max_pool2d"),
    F.max_pool3d_with_indices: _with_indices(F.max_pool3d, "max_pool3d"),
    F.avg_pool1d: _avg_pool(1, "avg_pool1d"),
    F.avg_pool2d: _avg_pool(2, "avg_pool2d"),
    F.avg_pool3d: _avg_pool(3, "avg_pool3d"),
    F.adaptive_avg_pool1d: _adaptive_avg_pool1d,
    F.adaptive_avg_pool2d: _adaptive_avg_pool2d,
    F.adaptive_avg_pool3d: _adaptive_avg_pool3d,
    torch.mean: _mean,
    F.interpolate: _interpolate,
    F.upsample_nearest: lambda q, size=None, scale_factor=None: _interpolate(q, size, scale_factor, "nearest"),
    F.hardtanh: _hardtanh,
    F.relu6: _relu6,
    torch.relu: _relu,
    torch.relu_: _relu,
    torch.Tensor.relu_: _relu,
    F.relu: _relu,
    torch._C._nn.hardtanh_: _hardtanh_,
    F.hardsigmoid: _fixed_output(F.hardsigmoid, "hardsigmoid", takes_inplace=True),
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
    # Data movement (exact, qparams kept).
    torch.flip: _shape_fn(torch.flip, "flip"),
    torch.roll: _shape_fn(torch.roll, "roll"),
    torch.movedim: _shape_fn(torch.movedim, "movedim"),
    torch.unbind: _shape_fn(torch.unbind, "unbind"),
    torch.select: _shape_fn(torch.select, "select"),
    torch.t: _shape_fn(torch.t, "t"),
    torch.tile: _shape_fn(torch.tile, "tile"),
    torch.unflatten: _shape_fn(torch.unflatten, "unflatten"),
    torch.clone: lambda q, *, memory_format=torch.preserve_format: _clone(q, memory_format),
    torch.swapaxes: _shape_fn(torch.swapaxes, "swapaxes"),
    # the conjugate transpose of real values: the transpose
    torch.adjoint: _shape_fn(torch.adjoint, "adjoint"),
    torch.swapdims: _shape_fn(torch.swapdims, "swapdims"),
    F.pixel_shuffle: _shape_fn(F.pixel_shuffle, "pixel_shuffle"),
    F.pixel_unshuffle: _shape_fn(F.pixel_unshuffle, "pixel_unshuffle"),
    F.channel_shuffle: _shape_fn(F.channel_shuffle, "channel_shuffle"),
    torch.channel_shuffle: _shape_fn(torch.channel_shuffle, "channel_shuffle"),
    torch.stack: _torch_stack,
    F.pad: _pad,
    torch.clamp: _clamp,
    torch.clip: _clamp,
    torch.clamp_: _clamp_,
    torch.clip_: _clamp_,
    torch.Tensor.clamp_: _clamp_,
    torch.Tensor.clip_: _clamp_,
    F.leaky_relu: _requantized(F.leaky_relu, "leaky_relu", _leaky_relu_keeps_range),
    F.elu: _requantized(F.elu, "elu", _elu_keeps_range),
    # their in-place forms (the input's qparams kept: exact in place; settings that map values
    # outside the input's range take the in-place float path, which warns that they saturate)
    torch._C._nn.leaky_relu_: _requantized(F.leaky_relu, "leaky_relu_", _leaky_relu_keeps_range),
    torch._C._nn.elu_: _requantized(torch._C._nn.elu, "elu_", _elu_in_place_keeps_range),
    torch.tanh: _tanh,
    F.tanh: _tanh,
    torch.max: _values_indices(torch.max, "max"),
    torch.min: _values_indices(torch.min, "min"),
    torch.topk: _values_indices(torch.topk, "topk"),
    torch.sort: _values_indices(torch.sort, "sort"),
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
              "flip", "roll", "movedim", "unbind", "select", "t", "tile", "unflatten", "swapaxes",
              "swapdims", "unfold", "expand_as", "adjoint"):
    setattr(QTensor, _name, _method(getattr(torch.Tensor, _name), _name))


def _bound(impl, name, doc):
    def method(self, *args, **kwargs):
        return impl(self, *args, **kwargs)

    method.__name__, method.__doc__ = name, doc
    return method


for _name, _impl, _doc in (
        ("clamp", _clamp, "torch.clamp: the codes clamped to the quantized bounds; qparams kept."),
        ("clip", _clamp, "torch.clip: as clamp."),
        ("sigmoid", _FUNCTIONS[torch.sigmoid], "torch.sigmoid with torch.ao's fixed qparams for [0, 1]."),
        ("tanh", _tanh, "torch.tanh with torch.ao's fixed qparams for [-1, 1]."),
        ("max", _FUNCTIONS[torch.max], "torch.max: values keep the qparams; indices as they are."),
        ("min", _FUNCTIONS[torch.min], "torch.min: values keep the qparams; indices as they are."),
        ("topk", _FUNCTIONS[torch.topk], "torch.topk: values keep the qparams; indices as they are."),
        ("sort", _FUNCTIONS[torch.sort], "torch.sort: values keep the qparams; indices as they are."),
        # a method, not a lambda of (dim, keepdim): axis= and dtype= reach _mean, which takes or refuses them
        ("mean", _mean, "torch.mean with torch's quantized averaging: nearbyint(sum * float32(1/count)) + zp."),
):
    setattr(QTensor, _name, _bound(_impl, _name, _doc))
QTensor.clone = lambda self, *, memory_format=torch.preserve_format: _clone(self, memory_format)
QTensor.relu = lambda self: _relu(self)
# In place, as torch's relu_ / clamp_: the codes change, the QTensor and its qparams stay.
QTensor.relu_ = lambda self: QTensor.__torch_function__(torch.Tensor.relu_, (QTensor,), (self,))
QTensor.clamp_ = lambda self, min=None, max=None: QTensor.__torch_function__(torch.Tensor.clamp_, (QTensor,), (self, min, max))
QTensor.clip_ = QTensor.clamp_
