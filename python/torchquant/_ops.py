"""Every Python-side registration of torchquant's ops, in one place: for each op a fake
(meta) kernel for torch.compile / torch.export and, where it has gradients, its autograd
formula, whose backward calls other torchquant ops so that it stays traceable.

The schemas are in csrc/torchquant.cpp; the ops are reached as ``torch.ops.torchquant.<name>``.
"""
import math
from typing import Optional

import torch

from . import _load  # noqa: F401  (loads the op library before anything is registered)

ops = torch.ops.torchquant


def _check_qrange(qmin, qmax):
    torch._check(qmin < qmax, lambda: f"argument 'qmin' must be < qmax, got qmin={qmin} qmax={qmax}")


def _check_devices(ref_name, ref, **tensors):
    """Every tensor argument lies on ref's device, as the real kernels require. A fake kernel
    also runs when one meta tensor sits among CPU ones (Meta outranks CPU in dispatch): without
    this check it would hand back an uninitialized CPU tensor, or update nothing in place."""
    for name, t in tensors.items():
        if t is not None:
            torch._check(t.device == ref.device,
                         lambda: f"argument '{name}' is on {t.device} but '{ref_name}' is on {ref.device}; "
                                 "they must be on the same device")


# ---------------------------------------------------------------- quantize / dequantize
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols  # noqa: E402


def _keeps_strides(x, axis) -> bool:
    """Whether the quantize / dequantize / fake-quantize kernels give x's strides to their output
    (csrc/common/checks.h keeps_strides): per tensor, x not empty, not contiguous, and dense (its
    memory a permutation of a contiguous layout: channels-last). Else the output is contiguous."""
    if axis is not None:
        return False
    if free_unbacked_symbols(x):
        # a size known only at run time (after a data-dependent op: t[t > 0]) cannot be decided
        # on without a guard: such tensors come contiguous from the ops that make them
        return False
    if x.numel() == 0 or x.is_contiguous():
        return False
    # c10's compute_non_overlapping_and_dense: dims of size >= 2 by stride, each stride the
    # product of the sizes below it
    need = 1
    for d in sorted((d for d in range(x.dim()) if x.size(d) >= 2), key=x.stride):
        if x.stride(d) != need:
            return False
        need *= x.size(d)
    return True


def _same_layout(a, b) -> bool:
    """csrc/common/checks.h same_layout: equal strides on every dimension of size > 1 (a and b of
    one shape); False where a size is known only at run time."""
    if free_unbacked_symbols(a) or free_unbacked_symbols(b):
        return False
    return all(b.size(d) <= 1 or a.stride(d) == b.stride(d) for d in range(b.dim()))


def _elementwise_out(x, axis, dtype):
    if _keeps_strides(x, axis):
        return x.new_empty_strided(x.shape, x.stride(), dtype=dtype)
    return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)


@torch.library.register_fake("torchquant::quantize")
def _quantize_fake(x, scale, zero_point, axis, qmin, qmax, dtype):
    _check_devices("x", x, scale=scale, zero_point=zero_point)
    torch._check(x.is_floating_point(), lambda: f"argument 'x' must be a floating-point tensor, got {x.dtype}")
    # As the kernels' check_qrange (csrc/common/checks.cpp): the same errors under tracing.
    torch._check(dtype in (torch.int8, torch.uint8),
                 lambda: f"argument 'dtype' must be torch.int8 or torch.uint8, got {dtype}")
    lo, hi = (-128, 127) if dtype == torch.int8 else (0, 255)
    for name, v in (("qmin", qmin), ("qmax", qmax)):
        torch._check(lo <= v <= hi, lambda: f"argument '{name}' must lie in [{lo}, {hi}] for {dtype}, got {v}")
    _check_qrange(qmin, qmax)
    return _elementwise_out(x, axis, dtype)


@torch.library.register_fake("torchquant::dequantize")
def _dequantize_fake(q, scale, zero_point, axis, out_dtype=None):
    _check_devices("q", q, scale=scale, zero_point=zero_point)
    torch._check(q.dtype in (torch.int8, torch.uint8), lambda: f"argument 'q' must be int8 or uint8, got {q.dtype}")
    torch._check(out_dtype is None or out_dtype.is_floating_point,
                 lambda: f"argument 'out_dtype' must be a floating-point dtype, got {out_dtype}")
    return _elementwise_out(q, axis, out_dtype or torch.float32)


# ---------------------------------------------------------------- fake quantize
@torch.library.register_fake("torchquant::fake_quantize")
def _fake_quantize_fake(x, scale, zero_point, axis, qmin, qmax):
    _check_devices("x", x, scale=scale, zero_point=zero_point)
    torch._check(x.is_floating_point(), lambda: f"argument 'x' must be a floating-point tensor, got {x.dtype}")
    _check_qrange(qmin, qmax)
    return _elementwise_out(x, axis, x.dtype)


@torch.library.register_fake("torchquant::fake_quantize_backward")
def _fake_quantize_backward_fake(grad, x, scale, zero_point, axis, qmin, qmax):
    _check_devices("x", x, grad=grad, scale=scale, zero_point=zero_point)
    torch._check(grad.shape == x.shape, lambda: f"argument 'grad' must have the shape of x {tuple(x.shape)}")
    if _same_layout(grad, x):
        return _elementwise_out(x, axis, grad.dtype)
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _fake_quantize_setup_context(ctx, inputs, output):
    x, scale, zero_point, axis, qmin, qmax = inputs
    # The backward passes no gradient to the qparams: one that requires grad would get none,
    # and never train, without a word. torch's fake_quantize_per_*_affine refuse it too. (The
    # kernel takes integer zero points only, which cannot require grad: checked all the same.)
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        if t.requires_grad:
            learnable = "per_tensor" if axis is None else "per_channel"
            raise RuntimeError(
                f"torchquant::fake_quantize is not differentiable with respect to argument '{name}'. "
                f"This input cannot have requires_grad True; for a trainable scale and zero point use "
                f"torchquant.fake_quantize_learnable_{learnable}_affine (LSQ), or detach '{name}'")
    # Copies of the qparams: they are a FakeQuantize's buffers, which its next call (a module
    # run twice in one forward) updates in place before this backward runs.
    ctx.save_for_backward(x, scale.clone(), zero_point.clone())
    ctx.axis, ctx.qmin, ctx.qmax = axis, qmin, qmax


def _fake_quantize_backward(ctx, grad):
    # Straight-through estimator: pass grad where the rounded value lies in [qmin, qmax].
    x, scale, zero_point = ctx.saved_tensors
    if grad.dtype == torch.float64:
        # The kernel passes float32 gradients (exact for float16 / bfloat16 ones); a float64
        # gradient goes through as it is where the mask lets it (1e300 stayed 1e300, not inf).
        mask = ops.fake_quantize_backward(torch.ones_like(grad, dtype=torch.float32), x, scale, zero_point, ctx.axis,
                                          ctx.qmin, ctx.qmax)
        gx = torch.where(mask != 0, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))
        return gx.contiguous(), None, None, None, None, None
    gx = ops.fake_quantize_backward(grad, x, scale, zero_point, ctx.axis, ctx.qmin, ctx.qmax)
    return gx, None, None, None, None, None


torch.library.register_autograd(
    "torchquant::fake_quantize", _fake_quantize_backward, setup_context=_fake_quantize_setup_context
)


def _learnable_setup_context(ctx, inputs, output):
    x, scale, zero_point, axis, qmin, qmax, grad_factor = inputs
    # Copies, as above: the observer step of a second call writes the parameters through .data,
    # which no version counter sees (the backward would use the new values without a word).
    ctx.save_for_backward(x, scale.detach().clone(), zero_point.detach().clone())
    ctx.axis, ctx.qmin, ctx.qmax, ctx.grad_factor = axis, qmin, qmax, grad_factor


def _learnable_backward(ctx, grad):
    x, scale, zero_point = ctx.saved_tensors
    gx, gs, gz = ops.fake_quantize_learnable_backward(
        grad, x, scale, zero_point, ctx.axis, ctx.qmin, ctx.qmax, ctx.grad_factor
    )
    return gx, gs, gz, None, None, None, None


torch.library.register_autograd(
    "torchquant::fake_quantize_learnable", _learnable_backward, setup_context=_learnable_setup_context
)


# The learnable ops have one CompositeExplicitAutograd kernel (csrc/composite.cpp), which reads
# sizes as plain integers (x.size(axis), scale.numel()): with symbolic sizes (torch.compile's
# dynamic shapes) it fails. These fake kernels (registered for Meta, which takes precedence over
# the composite kernel there) do its checks on shapes only, with SymInt-safe comparisons; the
# value checks (a zero or NaN scale, a NaN zero point) stay with the real kernel.
_INTEGER_DTYPES = tuple(getattr(torch, n) for n in ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32",
                                                    "uint64") if hasattr(torch, n))


def _check_learnable_args(x, scale, zero_point, axis, qmin, qmax, grad_factor):
    _check_float(x, "x")
    _check_float(scale, "scale")
    zt = zero_point.dtype
    torch._check(zt.is_floating_point or zt in _INTEGER_DTYPES,
                 lambda: f"argument 'zero_point' must be a floating-point or integer tensor, got {zt}")
    _check_devices("x", x, scale=scale, zero_point=zero_point)
    _check_qrange(qmin, qmax)
    torch._check(qmin >= -(1 << 23) and qmax <= (1 << 23),
                 lambda: f"arguments 'qmin'/'qmax' must lie in [-2^23, 2^23], got [{qmin}, {qmax}]")
    torch._check(math.isfinite(grad_factor), lambda: f"argument 'grad_factor' must be finite, got {grad_factor}")
    if axis is None:
        channels = 1
    else:
        d = x.dim()
        torch._check(d > 0 and -d <= axis < d,
                     lambda: f"argument 'axis' must lie in [{-d}, {d - 1}] for 'x' with {d} dimensions, got {axis}")
        channels = x.shape[axis]
    for name, t in (("scale", scale), ("zero_point", zero_point)):
        torch._check(t.numel() == channels,
                     lambda: f"argument '{name}' must have {channels} element(s), got {t.numel()}")


@torch.library.register_fake("torchquant::fake_quantize_learnable")
def _fake_quantize_learnable_fake(x, scale, zero_point, axis, qmin, qmax, grad_factor=1.0):
    _check_learnable_args(x, scale, zero_point, axis, qmin, qmax, grad_factor)
    return _elementwise_out(x, axis, x.dtype)  # the kernel returns fake_quantize(x, ...)


def _learnable_broadcastable(t, x, axis):
    # csrc/composite.cpp broadcastable
    if axis is None:
        return t.reshape(())
    shape = [1] * x.dim()
    shape[axis] = x.shape[axis]
    return t.reshape(shape)


@torch.library.register_fake("torchquant::fake_quantize_learnable_backward")
def _fake_quantize_learnable_backward_fake(grad, x, scale, zero_point, axis, qmin, qmax, grad_factor=1.0):
    _check_learnable_args(x, scale, zero_point, axis, qmin, qmax, grad_factor)
    _check_float(grad, "grad")
    torch._check(grad.shape == x.shape,
                 lambda: f"argument 'grad' must have the shape of x {tuple(x.shape)}, got {tuple(grad.shape)}")
    _check_devices("x", x, grad=grad)
    a = None if axis is None else axis % x.dim()
    # grad_x: the kernel's elementwise steps that decide its layout, replayed on the fake tensors
    # (where(inside, grad, zeros) takes its strides from all three), so the strides are the kernel's.
    xf, g = x.to(torch.float32), grad.to(torch.float32)
    s = _learnable_broadcastable(scale.to(torch.float32), xf, a)
    zp = _learnable_broadcastable(zero_point.to(torch.float32).round().clamp(qmin, qmax), xf, a)
    t = torch.round(xf * torch.reciprocal(s)) + zp
    inside = torch.logical_not(torch.logical_or(torch.logical_or(t < qmin, t > qmax), torch.isnan(t)))
    gx = torch.where(inside, g, torch.zeros_like(xf)).to(x.dtype)
    # grad_scale / grad_zero_point: float64 row sums [channels], reshaped and cast like the qparams.
    channels = 1 if a is None else x.shape[a]
    gs = x.new_empty((channels,), dtype=torch.float64).reshape(scale.shape).to(scale.dtype)
    gz = x.new_empty((channels,), dtype=torch.float64).reshape(zero_point.shape).to(zero_point.dtype)
    return gx, gs, gz

# ---------------------------------------------------------------- int8 GEMM
PANEL = 16  # output channels per packed panel (kPanel in csrc/cpu/gemm_kernels.h)


CUDA_K_ALIGN = 16  # kKAlign in csrc/cuda/gemm.cu


def packed_weight_shape(n: int, k: int, device="cpu"):
    """Shape of the packed weight that ``pack_weight`` returns for an int8 weight [n, k] on
    ``device``: on the CPU [ceil(n / 16), k, 16] (panels of 16 output channels, see
    csrc/cpu/gemm_kernels.h); on CUDA [n, round_up(k, 16)] (csrc/cuda/gemm.cu)."""
    if torch.device(device).type == "cuda":
        return (n, (k + CUDA_K_ALIGN - 1) // CUDA_K_ALIGN * CUDA_K_ALIGN)
    return ((n + PANEL - 1) // PANEL, k, PANEL)


def _check_packed(x, w_packed, w_col_sums):
    k = x.shape[-1]
    _check_devices("x", x, w_packed=w_packed, w_col_sums=w_col_sums)
    torch._check(w_col_sums.dim() == 1 and w_col_sums.dtype == torch.int32,
                 lambda: "argument 'w_col_sums' must be a 1-D int32 tensor")
    n = w_col_sums.shape[0]
    want = packed_weight_shape(n, k, x.device)
    torch._check(tuple(w_packed.shape) == want,
                 lambda: f"argument 'w_packed' has shape {tuple(w_packed.shape)}, but a weight [N={n}, K={k}] "
                         f"packed for {x.device.type} has shape {want}")
    return n


@torch.library.register_fake("torchquant::int8_mm")
def _int8_mm_fake(a, b):
    _check_devices("a", a, b=b)
    torch._check(a.dtype == torch.int8 and b.dtype == torch.int8,
                 lambda: f"arguments 'a' and 'b' must be int8, got {a.dtype} and {b.dtype}")
    torch._check(a.dim() == 2 and b.dim() == 2, lambda: "arguments 'a' and 'b' must be 2-D")
    torch._check(a.shape[1] == b.shape[0],
                 lambda: f"arguments 'a' and 'b' cannot be multiplied: {tuple(a.shape)} and {tuple(b.shape)}")
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.int32)


@torch.library.register_fake("torchquant::pack_weight")
def _pack_weight_fake(w):
    torch._check(w.dtype == torch.int8 and w.dim() == 2,
                 lambda: f"argument 'w' must be a 2-D int8 tensor, got {w.dtype} {tuple(w.shape)}")
    n, k = w.shape
    return w.new_empty(packed_weight_shape(n, k, w.device)), w.new_empty((n,), dtype=torch.int32)


@torch.library.register_fake("torchquant::linear_int8")
def _linear_int8_fake(x, x_scale, x_zero_point, w_packed, w_col_sums, w_scale, bias=None,
                      out_scale=None, out_zero_point=None, relu=False, out_dtype=None):
    torch._check(x.dtype in (torch.int8, torch.uint8), lambda: f"argument 'x' must be int8 or uint8, got {x.dtype}")
    n = _check_packed(x, w_packed, w_col_sums)
    _check_devices("x", x, x_scale=x_scale, x_zero_point=x_zero_point, w_scale=w_scale, bias=bias,
                   out_scale=out_scale, out_zero_point=out_zero_point)
    rows = 1
    for d in x.shape[:-1]:
        rows = rows * d
    for name, t in (("x_scale", x_scale), ("x_zero_point", x_zero_point)):
        torch._check(t.numel() == 1 or t.numel() == rows,
                     lambda: f"argument '{name}' must have 1 element (per tensor) or {rows} (per row), got {t.numel()}")
    odt = out_dtype or torch.float32
    torch._check(odt in (torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.uint8),
                 lambda: f"argument 'out_dtype' must be float32, bfloat16, float16, int8 or uint8, got {odt}")
    return x.new_empty((*x.shape[:-1], n), dtype=odt)


@torch.library.register_fake("torchquant::quantize_rowwise")
def _quantize_rowwise_fake(x, qmin=-128, qmax=127):
    torch._check(x.is_floating_point(), lambda: f"argument 'x' must be a floating-point tensor, got {x.dtype}")
    _check_qrange(qmin, qmax)
    rows = 1
    for d in x.shape[:-1]:
        rows = rows * d
    return (torch.empty_like(x, dtype=torch.int8, memory_format=torch.contiguous_format),
            x.new_empty((rows,), dtype=torch.float32), x.new_empty((rows,), dtype=torch.int32))


@torch.library.register_fake("torchquant::linear_dynamic")
def _linear_dynamic_fake(x, w_packed, w_col_sums, w_scale, bias=None, relu=False, reduce_range=False):
    torch._check(x.is_floating_point(), lambda: f"argument 'x' must be a floating-point tensor, got {x.dtype}")
    n = _check_packed(x, w_packed, w_col_sums)
    _check_devices("x", x, w_scale=w_scale, bias=bias)
    return x.new_empty((*x.shape[:-1], n), dtype=torch.float32)

# ---------------------------------------------------------------- observers
def _check_float(x, name):
    torch._check(x.is_floating_point(), lambda: f"argument '{name}' must be a floating-point tensor, got {x.dtype}")


def _channels(x, axis):
    if axis is None:
        return None
    torch._check(x.dim() > 0 and -x.dim() <= axis < x.dim(),
                 lambda: f"argument 'axis' must lie in [{-x.dim()}, {x.dim() - 1}] for 'x', got {axis}")
    return x.shape[axis]


@torch.library.register_fake("torchquant::aminmax")
def _aminmax_fake(x, axis=None):
    _check_float(x, "x")
    c = _channels(x, axis)
    shape = () if c is None else (c,)
    return x.new_empty(shape, dtype=torch.float32), x.new_empty(shape, dtype=torch.float32)


@torch.library.register_fake("torchquant::observe_minmax_")
def _observe_minmax_fake(running_min, running_max, nonfinite_count, x, axis=None, averaging_constant=None):
    _check_devices("x", x, running_min=running_min, running_max=running_max, nonfinite_count=nonfinite_count)
    _check_float(x, "x")
    c = _channels(x, axis)
    torch._check(running_min.numel() == (1 if c is None else c),
                 lambda: f"argument 'running_min' must have {1 if c is None else c} element(s), got {running_min.numel()}")
    return None


@torch.library.register_fake("torchquant::histogram_")
def _histogram_fake(hist, min_val, max_val, nonfinite_count, x, upsample_rate=16):
    _check_devices("x", x, hist=hist, min_val=min_val, max_val=max_val, nonfinite_count=nonfinite_count)
    _check_float(x, "x")
    torch._check(hist.dim() == 1, lambda: f"argument 'hist' must be 1-D, got shape {tuple(hist.shape)}")
    return None


@torch.library.register_fake("torchquant::histogram_rebin")
def _histogram_rebin_fake(hist, min_val, max_val, new_min, new_max, upsample_rate=16):
    _check_devices("hist", hist, min_val=min_val, max_val=max_val, new_min=new_min, new_max=new_max)
    torch._check(hist.dim() == 1, lambda: f"argument 'hist' must be 1-D, got shape {tuple(hist.shape)}")
    return torch.empty_like(hist)


# ---------------------------------------------------------------- conv
def conv_packed_weight_shape(w_shape, groups: int = 1, device="cpu"):
    """Shape of the packed weight that ``pack_conv_weight`` returns for an int8 conv weight of
    shape ``w_shape`` [Cout, Cin / groups, *kernel_size] on ``device``: depthwise (Cin / groups
    = 1, Cout = groups) [*kernel_size, Cout] everywhere; otherwise on the CPU 1-D, the panels
    [groups, ceil(Cout / groups / 16), K', 16] followed by a 32-byte record of the weight's shape
    and groups (which the op checks: some shapes pack to the same size), and on CUDA [groups,
    *kernel_size, Cin / groups, Cout / groups], with K = taps * Cin / groups. On the CPU, K' = K, except that a kernel row of
    KW * Cin / groups bytes that is not a multiple of 4 and under 64 is padded with zero weights
    to the next multiple of 4 when the kernel has more than one row (the 3-channel stems: 7 x 7
    x 3 is packed as 7 rows of 24)."""
    cout, cg = w_shape[0], w_shape[1]
    taps = 1
    for k in w_shape[2:]:
        taps = taps * k
    ng = cout // groups
    if cg == 1 and ng == 1:
        return (*w_shape[2:], cout)
    if torch.device(device).type == "cuda":
        return (groups, *w_shape[2:], cg, ng)
    row = w_shape[-1] * cg
    rows = taps // w_shape[-1]
    if row % 4 != 0 and row < 64 and rows > 1:
        row = (row + 3) // 4 * 4
    return (groups * ((ng + PANEL - 1) // PANEL) * rows * row * PANEL + CONV_PACKED_TRAILER,)


CONV_PACKED_TRAILER = 32  # bytes after the CPU (transposed) conv weight's panels: csrc/cpu/packed_record.h


@torch.library.register_fake("torchquant::pack_conv_weight")
def _pack_conv_weight_fake(w, groups=1):
    torch._check(w.dtype == torch.int8 and 3 <= w.dim() <= 5,
                 lambda: f"argument 'w' must be a 3-D, 4-D or 5-D int8 conv weight, got {w.dtype} {tuple(w.shape)}")
    for k in w.shape[2:]:
        torch._check(k >= 1, lambda: f"argument 'w' must have kernel sizes >= 1, got shape {tuple(w.shape)}")
    torch._check(groups >= 1 and w.shape[0] % groups == 0,
                 lambda: f"argument 'groups' ({groups}) must divide the output channels of 'w' ({w.shape[0]})")
    return (w.new_empty(conv_packed_weight_shape(tuple(w.shape), groups, w.device)),
            w.new_empty((w.shape[0],), dtype=torch.int32))


def _expand(v, n, name):
    v = [v] if isinstance(v, (int, torch.SymInt)) else list(v)
    torch._check(len(v) in (1, n), lambda: f"argument '{name}' must have 1 or {n} elements, got {v}")
    return v * n if len(v) == 1 else v


_INT64_MAX = (1 << 63) - 1


def _value_check(cond, message):
    """torch._check's contract for the public shape helpers: a ValueError, not a RuntimeError."""
    if not cond:
        raise ValueError(message())


def _past_int64(v):
    return isinstance(v, int) and v > _INT64_MAX  # a symbolic size is not bounded here


def _as_list(v):
    return [v] if isinstance(v, (int, torch.SymInt)) else list(v)


def _conv_list(v, n, name, low, op, check):
    """A geometry argument of n values, as csrc's conv_list_arg: one value means n of it, each
    must be >= low; the same messages."""
    v = _as_list(v)
    check(len(v) in (1, n), lambda: f"argument '{name}' must have 1 or {n} elements for a {n}-d {op}, got {v}")
    out = v * n if len(v) == 1 else v
    check(all(e >= low for e in out), lambda: f"argument '{name}' must hold values >= {low}, got {v}")
    return out


def _conv_lists(kernel_size, stride, padding, dilation, n, op, check):
    return (_conv_list(kernel_size, n, "kernel_size", 1, op, check), _conv_list(stride, n, "stride", 1, op, check),
            _conv_list(padding, n, "padding", 0, op, check), _conv_list(dilation, n, "dilation", 1, op, check))


def _conv_sizes(in_sizes, kernel_size, stride, padding, dilation, check, x_name):
    """The output sizes of a convolution, with csrc's checks (common/conv_checks.cpp) of the
    geometry and the same messages; check is torch._check or _value_check."""
    n = len(in_sizes)
    ks, st, pd, dl = _conv_lists(kernel_size, stride, padding, dilation, n, "convolution", check)
    kernel_size, padding, dilation = _as_list(kernel_size), _as_list(padding), _as_list(dilation)
    out = []
    for d, (i, k, s, p, r) in enumerate(zip(in_sizes, ks, st, pd, dl)):
        span, padded = r * (k - 1) + 1, i + 2 * p
        check(not _past_int64(span),
              lambda: f"argument 'dilation' is too large: the dilated kernel (dilation {r}, kernel size {k}) overflows "
                      f"int64 in spatial dimension {d}, got dilation={dilation} and kernel_size={kernel_size}")
        check(not _past_int64(padded), lambda: f"argument 'padding' is too large: the padded input overflows int64 in "
                                               f"spatial dimension {d}, got padding={padding}")
        check(padded >= span, lambda: f"the padded input of '{x_name}' (size {padded} in spatial dimension {d}) is "
                                      f"smaller than the dilated kernel (size {span})")
        out.append((padded - span) // s + 1)
    return out


def _in_sizes(in_sizes, kernel_size):
    """The public helpers' in_sizes and kernel_size as lists (an int kernel_size: that size
    along each input dimension)."""
    in_sizes = [in_sizes] if isinstance(in_sizes, int) else list(in_sizes)
    n = len(in_sizes)
    _value_check(1 <= n <= 3, lambda: f"argument 'in_sizes' must hold 1, 2 or 3 spatial sizes, got {in_sizes}")
    if not isinstance(kernel_size, int):
        kernel_size = list(kernel_size)
        _value_check(len(kernel_size) == n, lambda: f"argument 'kernel_size' must have one value per input size "
                                                    f"({n}), got {kernel_size}")
    return in_sizes, kernel_size


def conv_output_size(in_sizes, kernel_size, stride, padding, dilation):
    """The spatial output sizes of a convolution (torch's formula), each argument an int or one
    value per spatial dimension. Raises ValueError for a geometry that conv_int8 refuses (a
    stride or dilation below 1, a negative padding, a padded input smaller than the dilated
    kernel)."""
    in_sizes, kernel_size = _in_sizes(in_sizes, kernel_size)
    return _conv_sizes(in_sizes, kernel_size, stride, padding, dilation, _value_check, "in_sizes")


@torch.library.register_fake("torchquant::conv_int8")
def _conv_int8_fake(x, x_scale, x_zero_point, w_packed, w_col_sums, w_scale, bias, kernel_size, stride, padding,
                    dilation, groups, out_scale=None, out_zero_point=None, relu=False, out_dtype=None):
    torch._check(x.dtype in (torch.int8, torch.uint8), lambda: f"argument 'x' must be int8 or uint8, got {x.dtype}")
    nsp = len(kernel_size)
    # csrc/common/conv_checks.cpp's checks and messages: torch.compile and export refuse what the kernels refuse.
    torch._check(1 <= nsp <= 3, lambda: f"argument 'kernel_size' must have 1, 2 or 3 elements (conv1d, conv2d, "
                                        f"conv3d), got {list(kernel_size)}")
    torch._check(x.dim() == nsp + 2,
                 lambda: f"Expected {nsp + 2}D (batched) input to conv{nsp}d (argument 'x' [N, C, *spatial]), but got "
                         f"input of size: {list(x.shape)}")
    _conv_lists(kernel_size, stride, padding, dilation, nsp, "convolution", torch._check)
    torch._check(groups >= 1, lambda: f"argument 'groups' must be >= 1, got {groups}")
    _check_devices("x", x, x_scale=x_scale, x_zero_point=x_zero_point, w_packed=w_packed, w_col_sums=w_col_sums,
                   w_scale=w_scale, bias=bias, out_scale=out_scale, out_zero_point=out_zero_point)
    torch._check(groups >= 1 and x.shape[1] % groups == 0,
                 lambda: f"argument 'groups' ({groups}) must divide the input channels of 'x' ({x.shape[1]})")
    cout = w_col_sums.shape[0]
    torch._check(cout % groups == 0,
                 lambda: f"argument 'groups' ({groups}) must divide the output channels ({cout})")
    w_shape = (cout, x.shape[1] // groups, *kernel_size)
    want = conv_packed_weight_shape(w_shape, groups, x.device)
    torch._check(tuple(w_packed.shape) == want,
                 lambda: f"argument 'w_packed' has shape {tuple(w_packed.shape)}, but a weight {list(w_shape)} with "
                         f"groups={groups} packed for {x.device.type} has shape {want}")
    odt = out_dtype or torch.float32
    torch._check(odt in (torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.uint8),
                 lambda: f"argument 'out_dtype' must be float32, bfloat16, float16, int8 or uint8, got {odt}")
    out_sp = _conv_sizes(x.shape[2:], kernel_size, stride, padding, dilation, torch._check, "x")
    # Channels-last memory: [N, *out, Cout] contiguous, seen as [N, Cout, *out].
    y = x.new_empty((x.shape[0], *out_sp, cout), dtype=odt)
    return y.movedim(-1, 1)
# ---------------------------------------------------------------- elementwise
def _check_q8(name, t):
    torch._check(t.dtype in (torch.int8, torch.uint8), lambda: f"argument '{name}' must be an int8 or uint8 tensor, got dtype {t.dtype}")


def _ew_out_dtype(out_dtype, fallback):
    odt = fallback if out_dtype is None else out_dtype
    torch._check(odt in (torch.int8, torch.uint8), lambda: f"argument 'out_dtype' must be torch.int8 or torch.uint8, got {odt}")
    return odt


def _ew_binary_fake(a, a_scale, a_zero_point, b, b_scale, b_zero_point, out_scale, out_zero_point, relu=False,
                    out_dtype=None):
    _check_q8("a", a)
    _check_q8("b", b)
    _check_devices("a", a, b=b, a_scale=a_scale, a_zero_point=a_zero_point, b_scale=b_scale,
                   b_zero_point=b_zero_point, out_scale=out_scale, out_zero_point=out_zero_point)
    odt = _ew_out_dtype(out_dtype, a.dtype)
    shape = torch.broadcast_shapes(a.shape, b.shape)
    # The output follows the layout of the input that has the output's shape (channels-last kept).
    like = a if tuple(a.shape) == tuple(shape) else b if tuple(b.shape) == tuple(shape) else None
    if like is None:
        return a.new_empty(shape, dtype=odt)
    return torch.empty_like(like, dtype=odt)


torch.library.register_fake("torchquant::add")(_ew_binary_fake)
torch.library.register_fake("torchquant::mul")(_ew_binary_fake)


def _ew_scalar_fake(a, a_scale, a_zero_point, other, out_scale, out_zero_point, out_dtype=None):
    _check_q8("a", a)
    _check_devices("a", a, a_scale=a_scale, a_zero_point=a_zero_point, out_scale=out_scale,
                   out_zero_point=out_zero_point)
    return torch.empty_like(a, dtype=_ew_out_dtype(out_dtype, a.dtype))


torch.library.register_fake("torchquant::add_scalar")(_ew_scalar_fake)
torch.library.register_fake("torchquant::mul_scalar")(_ew_scalar_fake)


@torch.library.register_fake("torchquant::lookup_table")
def _lookup_table_fake(a, table):
    _check_q8("a", a)
    _check_q8("table", table)
    torch._check(table.dim() == 1 and table.numel() == 256,
                 lambda: f"argument 'table' must be 1-D with 256 elements (one per code), got shape {list(table.shape)}")
    _check_devices("a", a, table=table)
    return torch.empty_like(a, dtype=table.dtype)


@torch.library.register_fake("torchquant::cat")
def _cat_fake(tensors, scales, zero_points, dim, out_scale, out_zero_point, out_dtype=None):
    torch._check(len(tensors) > 0, lambda: "argument 'tensors' must hold at least one tensor, got none")
    torch._check(len(scales) == len(tensors) and len(zero_points) == len(tensors),
                 lambda: "arguments 'scales' and 'zero_points' must hold one tensor per input")
    ref = tensors[0]
    _check_devices("tensors[0]", ref, out_scale=out_scale, out_zero_point=out_zero_point,
                   **{f"tensors[{i}]": t for i, t in enumerate(tensors)},
                   **{f"scales[{i}]": t for i, t in enumerate(scales)},
                   **{f"zero_points[{i}]": t for i, t in enumerate(zero_points)})
    for i, t in enumerate(tensors):
        _check_q8(f"tensors[{i}]", t)
    odt = _ew_out_dtype(out_dtype, tensors[0].dtype)
    return torch.cat([torch.empty_like(t, dtype=odt) for t in tensors], dim)
# ---------------------------------------------------------------- sequence models
def _check_cell_update(igates, hgates, state, gates, state_name):
    _check_devices("igates", igates, hgates=hgates, **{state_name: state})
    for name, t in (("igates", igates), ("hgates", hgates), (state_name, state)):
        torch._check(t.dtype == torch.float32, lambda: f"argument '{name}' must be a float32 tensor, got {t.dtype}")
        torch._check(t.dim() == 2, lambda: f"argument '{name}' must be 2-D [batch, features], got shape {tuple(t.shape)}")
    b, h = state.shape
    torch._check(tuple(igates.shape) == (b, gates * h),
                 lambda: f"argument 'igates' must have shape [{b}, {gates * h}], got {tuple(igates.shape)}")
    torch._check(hgates.shape == igates.shape,
                 lambda: f"argument 'hgates' must have the shape of igates {tuple(igates.shape)}, got {tuple(hgates.shape)}")
    return b, h


@torch.library.register_fake("torchquant::lstm_cell_update")
def _lstm_cell_update_fake(igates, hgates, c):
    b, h = _check_cell_update(igates, hgates, c, 4, "c")
    return c.new_empty((b, h)), c.new_empty((b, h))


@torch.library.register_fake("torchquant::gru_cell_update")
def _gru_cell_update_fake(igates, hgates, h):
    b, hh = _check_cell_update(igates, hgates, h, 3, "h")
    return h.new_empty((b, hh))


def _check_layer(igates, h0, gates, op):
    torch._check(igates.dim() == 3, lambda: f"{op}: argument 'igates' must be 3-D [time, batch, {gates} * hidden], "
                 f"got shape {tuple(igates.shape)}")
    torch._check(h0.dim() == 2, lambda: f"{op}: argument 'h0' must be 2-D [batch, hidden], got shape {tuple(h0.shape)}")
    torch._check(igates.shape[1] == h0.shape[0],
                 lambda: f"{op}: argument 'igates' has batch {igates.shape[1]} but 'h0' has batch {h0.shape[0]}")


@torch.library.register_fake("torchquant::lstm_layer_dynamic")
def _lstm_layer_dynamic_fake(igates, h0, c0, hh_w, hh_col_sums, hh_scale, hh_bias, hr_w, hr_col_sums, hr_scale,
                             reverse=False, reduce_range=False):
    _check_devices("igates", igates, h0=h0, c0=c0, hh_w=hh_w, hh_col_sums=hh_col_sums, hh_scale=hh_scale,
                   hh_bias=hh_bias, hr_w=hr_w, hr_col_sums=hr_col_sums, hr_scale=hr_scale)
    _check_layer(igates, h0, 4, "lstm_layer_dynamic")
    t, b = igates.shape[0], igates.shape[1]
    out_h = h0.shape[1]
    return h0.new_empty((t, b, out_h)), h0.new_empty((b, out_h)), c0.new_empty((b, c0.shape[1]))


@torch.library.register_fake("torchquant::gru_layer_dynamic")
def _gru_layer_dynamic_fake(igates, h0, hh_w, hh_col_sums, hh_scale, hh_bias, reverse=False, reduce_range=False):
    _check_devices("igates", igates, h0=h0, hh_w=hh_w, hh_col_sums=hh_col_sums, hh_scale=hh_scale, hh_bias=hh_bias)
    _check_layer(igates, h0, 3, "gru_layer_dynamic")
    t, b = igates.shape[0], igates.shape[1]
    return h0.new_empty((t, b, h0.shape[1])), h0.new_empty((b, h0.shape[1]))


# ---------------------------------------------------------------- embedding
def embedding_row_stride(dim: int, bits: int) -> int:
    """Bytes per packed row (csrc's embedding_row_stride): the values, padded to 4 bytes, then
    the float32 scale and zero point."""
    data = (dim * bits + 7) // 8
    return (data + 3) // 4 * 4 + 8


@torch.library.register_fake("torchquant::embedding_bag_rowwise")
def _embedding_bag_rowwise_fake(packed, bits, embedding_dim, indices, offsets=None, mode=0, per_sample_weights=None,
                                include_last_offset=False, padding_idx=None):
    _check_devices("packed", packed, indices=indices, offsets=offsets, per_sample_weights=per_sample_weights)
    # As the kernels' check_embedding_bag_args (csrc/cpu/embedding.cpp): the same errors when traced.
    torch._check(bits in (8, 4), lambda: f"argument 'bits' must be 8 or 4, got {bits}")
    torch._check(0 <= embedding_dim <= 1 << 40,
                 lambda: f"argument 'embedding_dim' must lie in [0, 2^40], got {embedding_dim}")
    torch._check(mode in (0, 1, 2), lambda: f"argument 'mode' must be 0 (sum), 1 (mean) or 2 (max), got {mode}")
    torch._check(packed.dtype == torch.uint8 and packed.dim() == 2,
                 lambda: f"argument 'packed' must be a 2-D uint8 tensor, got {packed.dtype} {tuple(packed.shape)}")
    stride = embedding_row_stride(embedding_dim, bits)
    torch._check(packed.shape[1] == stride,
                 lambda: f"argument 'packed' has rows of {packed.shape[1]} bytes, but {bits}-bit rows of "
                         f"embedding_dim={embedding_dim} take {stride} (values, then float32 scale and zero point)")
    torch._check(indices.dtype in (torch.int64, torch.int32),
                 lambda: f"argument 'indices' must be an int64 or int32 tensor, got {indices.dtype}")
    if offsets is not None:
        torch._check(indices.dim() == 1,
                     lambda: f"argument 'indices' must be 1-D when offsets are given, got shape {tuple(indices.shape)}")
        torch._check(offsets.dtype in (torch.int64, torch.int32) and offsets.dim() == 1,
                     lambda: f"argument 'offsets' must be a 1-D int64 or int32 tensor, got {offsets.dtype} "
                             f"{tuple(offsets.shape)}")
        torch._check(not include_last_offset or offsets.shape[0] >= 1,
                     lambda: "argument 'offsets' must hold at least one element with include_last_offset=True")
        bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    else:
        torch._check(indices.dim() == 2, lambda: "argument 'indices' must be 2-D [bags, entries] without offsets")
        bags = indices.shape[0]
    if per_sample_weights is not None:
        torch._check(mode == 0, lambda: "per_sample_weights is only supported for mode='sum'")
        torch._check(per_sample_weights.dtype == torch.float32 and per_sample_weights.shape == indices.shape,
                     lambda: f"argument 'per_sample_weights' must be a float32 tensor of the shape of indices "
                             f"{tuple(indices.shape)}, got {per_sample_weights.dtype} {tuple(per_sample_weights.shape)}")
    return packed.new_empty((bags, embedding_dim), dtype=torch.float32)


@torch.library.register_fake("torchquant::streamed_copy")
def _streamed_copy_fake(x):
    return x.new_empty(x.shape)


# ---------------------------------------------------------------- int4
def _int4_dims(in_features, out_features, group_size):
    torch._check(group_size >= 8 and group_size <= 2048 and group_size % 8 == 0,
                 lambda: f"argument 'group_size' must be a multiple of 8 in [8, 2048], got {group_size}")
    G = (in_features + group_size - 1) // group_size
    return G, G * group_size, (out_features + 15) // 16


@torch.library.register_fake("torchquant::int4_pack_weight")
def _int4_pack_weight_fake(qweight, scale, zero_point, in_features, group_size):
    _check_devices("qweight", qweight, scale=scale, zero_point=zero_point)
    torch._check(qweight.dtype == torch.uint8 and qweight.dim() == 2,
                 lambda: f"argument 'qweight' must be a 2-D uint8 tensor, got {qweight.dtype} {tuple(qweight.shape)}")
    N = qweight.shape[0]
    G, Kp, P = _int4_dims(in_features, N, group_size)
    if qweight.device.type == "cuda":  # cuda/int4.cu: the portable layout padded to whole groups
        return (qweight.new_empty((N, Kp // 2)), qweight.new_empty((N, G), dtype=torch.int32),
                qweight.new_empty((N, G), dtype=torch.float32))
    # cpu/int4_kernels.h: one record of weights and qparams per (panel, group)
    return (qweight.new_empty((P, G, 8 * group_size + 128)), qweight.new_empty((0,), dtype=torch.int16),
            qweight.new_empty((0,), dtype=torch.float32))


@torch.library.register_fake("torchquant::linear_int4")
def _linear_int4_fake(x, w_packed, w_qp, w_scale, bias, in_features, out_features, group_size):
    _check_devices("x", x, w_packed=w_packed, w_qp=w_qp, w_scale=w_scale, bias=bias)
    torch._check(x.is_floating_point(), lambda: f"argument 'x' must be a floating-point tensor, got {x.dtype}")
    torch._check(x.dim() >= 1 and x.shape[-1] == in_features,
                 lambda: f"argument 'x' must have K = {in_features} in its last dimension, got shape {tuple(x.shape)}")
    _int4_dims(in_features, out_features, group_size)
    if bias is not None:
        torch._check(bias.is_floating_point() and bias.dim() == 1 and bias.shape[0] == out_features,
                     lambda: f"argument 'bias' must be a floating-point tensor of shape [{out_features}], got "
                             f"dtype {bias.dtype} and shape {list(bias.shape)}")
    return x.new_empty((*x.shape[:-1], out_features))


# ---------------------------------------------------------------- conv transpose
def conv_transpose_packed_weight_shape(w_shape, groups: int = 1, device="cpu"):
    """Shape of the packed weight that ``pack_conv_transpose_weight`` returns for an int8
    transposed-conv weight of shape ``w_shape`` [Cin, Cout / groups, *kernel_size] on
    ``device``: on the CPU 1-D, the panels [groups, kD, ceil(kH * kW * Cout / groups / 16), Cin /
    groups, 16] (kD = kH = 1 where the kernel has fewer dimensions) followed by a 32-byte record of
    the weight's shape and groups, which the op checks; on CUDA [groups, *kernel_size, Cin / groups,
    Cout / groups]."""
    cin, ng, ks = w_shape[0], w_shape[1], list(w_shape[2:])
    cg = cin // groups
    taps = 1
    for k in ks:
        taps = taps * k
    if torch.device(device).type == "cuda":
        return (groups, *ks, cg, ng)
    kd = ks[0] if len(ks) == 3 else 1
    khw = taps // kd
    return (groups * kd * ((khw * ng + PANEL - 1) // PANEL) * cg * PANEL + CONV_PACKED_TRAILER,)


def _conv_transpose_sizes(in_sizes, kernel_size, stride, padding, output_padding, dilation, check, x_name, x_sizes):
    """The output sizes of a transposed convolution, with csrc's checks
    (common/conv_transpose_checks.cpp) of the geometry and the same messages; check is
    torch._check or _value_check."""
    n = len(in_sizes)
    ks, st, pd, dl = _conv_lists(kernel_size, stride, padding, dilation, n, "transposed convolution", check)
    op = _conv_list(output_padding, n, "output_padding", 0, "transposed convolution", check)
    out = []
    for d, (i, k, s, p, o, r) in enumerate(zip(in_sizes, ks, st, pd, op, dl)):
        # torch's rule (conv_transpose*d): output_padding below stride or below dilation.
        check(o < s or o < r, lambda: f"argument 'output_padding' must be smaller than either stride or dilation, got "
                                      f"output_padding={_as_list(output_padding)}, stride={_as_list(stride)}, "
                                      f"dilation={_as_list(dilation)}")
        check(i >= 1, lambda: f"argument '{x_name}' must have non-zero spatial sizes (as torch's conv_transpose{n}d), "
                              f"got input of size: {list(x_sizes)}")
        size = (i - 1) * s - 2 * p + r * (k - 1) + o + 1
        where = (f"in spatial dimension {d} (input size {i}, kernel_size {k}, stride {s}, padding {p}, "
                 f"output_padding {o}, dilation {r})")
        check(not _past_int64(size + 2 * p) and not _past_int64(2 * p),
              lambda: f"the output of conv_transpose{n}d would have a size past int64 {where}: argument 'stride', "
                      "'padding' or 'dilation' is too large")
        check(size >= 1, lambda: f"the output of conv_transpose{n}d would have size {size} {where}: padding is too "
                                 "large")
        out.append(size)
    return out


def conv_transpose_output_size(in_sizes, kernel_size, stride, padding, output_padding, dilation):
    """The spatial output sizes of a transposed convolution (torch's formula), each argument an
    int or one value per spatial dimension. Raises ValueError for a geometry that
    conv_transpose_int8 refuses (a stride or dilation below 1, a negative padding or
    output_padding, an output_padding not below stride or dilation, an input size of 0, an
    output size below 1)."""
    in_sizes, kernel_size = _in_sizes(in_sizes, kernel_size)
    return _conv_transpose_sizes(in_sizes, kernel_size, stride, padding, output_padding, dilation, _value_check,
                                 "in_sizes", in_sizes)


@torch.library.register_fake("torchquant::pack_conv_transpose_weight")
def _pack_conv_transpose_weight_fake(w, groups=1):
    torch._check(w.dtype == torch.int8 and 3 <= w.dim() <= 5,
                 lambda: f"argument 'w' must be a 3-D, 4-D or 5-D int8 transposed conv weight, got {w.dtype} "
                         f"{tuple(w.shape)}")
    for k in w.shape[2:]:
        torch._check(k >= 1, lambda: f"argument 'w' must have kernel sizes >= 1, got shape {tuple(w.shape)}")
    torch._check(groups >= 1 and w.shape[0] % groups == 0,
                 lambda: f"argument 'groups' ({groups}) must divide the input channels of 'w' ({w.shape[0]}, its "
                         "first dimension)")
    taps = 1
    for k in w.shape[2:]:
        taps = taps * k
    return (w.new_empty(conv_transpose_packed_weight_shape(tuple(w.shape), groups, w.device)),
            w.new_empty((groups * taps * w.shape[1],), dtype=torch.int32))


@torch.library.register_fake("torchquant::conv_transpose_int8")
def _conv_transpose_int8_fake(x, x_scale, x_zero_point, w_packed, w_col_sums, w_scale, bias, kernel_size, stride,
                              padding, output_padding, dilation, groups, out_scale=None, out_zero_point=None,
                              relu=False, out_dtype=None):
    torch._check(x.dtype in (torch.int8, torch.uint8), lambda: f"argument 'x' must be int8 or uint8, got {x.dtype}")
    nsp = len(kernel_size)
    # csrc/common/conv_transpose_checks.cpp's checks and messages: torch.compile and export refuse what the
    # kernels refuse.
    torch._check(1 <= nsp <= 3, lambda: f"argument 'kernel_size' must have 1, 2 or 3 elements (conv_transpose1d, 2d, "
                                        f"3d), got {list(kernel_size)}")
    torch._check(x.dim() == nsp + 2,
                 lambda: f"Expected {nsp + 2}D (batched) input to conv_transpose{nsp}d (argument 'x' [N, C, "
                         f"*spatial]), but got input of size: {list(x.shape)}")
    _conv_lists(kernel_size, stride, padding, dilation, nsp, "transposed convolution", torch._check)
    torch._check(groups >= 1, lambda: f"argument 'groups' must be >= 1, got {groups}")
    _check_devices("x", x, x_scale=x_scale, x_zero_point=x_zero_point, w_packed=w_packed, w_col_sums=w_col_sums,
                   w_scale=w_scale, bias=bias, out_scale=out_scale, out_zero_point=out_zero_point)
    torch._check(groups >= 1 and x.shape[1] % groups == 0,
                 lambda: f"argument 'groups' ({groups}) must divide the input channels of 'x' ({x.shape[1]})")
    taps = 1
    for k in kernel_size:
        taps = taps * k
    torch._check(w_col_sums.shape[0] % (taps * groups) == 0,
                 lambda: f"argument 'w_col_sums' must have groups * taps * Cout / groups elements, got "
                         f"{w_col_sums.shape[0]}")
    ng = w_col_sums.shape[0] // (taps * groups)
    cout = ng * groups
    w_shape = (x.shape[1], ng, *kernel_size)
    want = conv_transpose_packed_weight_shape(w_shape, groups, x.device)
    torch._check(tuple(w_packed.shape) == want,
                 lambda: f"argument 'w_packed' has shape {tuple(w_packed.shape)}, but a weight {list(w_shape)} with "
                         f"groups={groups} packed for {x.device.type} has shape {want}")
    odt = out_dtype or torch.float32
    torch._check(odt in (torch.float32, torch.bfloat16, torch.float16, torch.int8, torch.uint8),
                 lambda: f"argument 'out_dtype' must be float32, bfloat16, float16, int8 or uint8, got {odt}")
    out_sp = _conv_transpose_sizes(x.shape[2:], kernel_size, stride, padding, output_padding, dilation, torch._check,
                                   "x", x.shape)
    # Channels-last memory: [N, *out, Cout] contiguous, seen as [N, Cout, *out].
    y = x.new_empty((x.shape[0], *out_sp, cout), dtype=odt)
    return y.movedim(-1, 1)


# ---- pooling ----
def pool_output_size(in_size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooled size of one spatial dimension (ceil_mode: the last window starts inside
    the input or its left padding)."""
    span = in_size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    out = span // s + 1
    if ceil_mode and out > 0 and (out - 1) * s >= in_size + p:
        out -= 1
    return out


def _pool_like(x, out_spatial):
    """An empty result of x's batch and channels with the given spatial sizes, in x's layout."""
    torch._check(x.dtype in (torch.int8, torch.uint8), lambda: f"argument 'x' must be int8 or uint8, got {x.dtype}")
    nsp = len(out_spatial)
    torch._check(x.dim() in (nsp + 1, nsp + 2),
                 lambda: f"argument 'x' must be {nsp + 1}-d (unbatched) or {nsp + 2}-d (batched), got shape "
                         f"{tuple(x.shape)}")
    unbatched = x.dim() == nsp + 1
    xb = x.unsqueeze(0) if unbatched else x
    shape = (xb.shape[0], xb.shape[1], *out_spatial)
    if xb.dim() in (4, 5) and xb.shape[1] > 1:
        from torch._prims_common import suggest_memory_format  # the rule of the C++ adapter
        y = torch.empty(shape, dtype=xb.dtype, device=xb.device, memory_format=suggest_memory_format(xb))
    elif xb.dim() == 3 and xb.shape[1] > 1 and xb.shape[2] > 1 and xb.stride(1) == 1 and xb.stride(2) == xb.shape[1]:
        y = xb.new_empty((shape[0], shape[2], shape[1])).transpose(1, 2)
    else:
        y = xb.new_empty(shape)
    return y.squeeze(0) if unbatched else y


def _pool_spatial(x, nsp):
    return x.shape[-nsp:]


@torch.library.register_fake("torchquant::max_pool_int8")
def _max_pool_int8_fake(x, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    nsp = len(kernel_size)
    torch._check(1 <= nsp <= 3, lambda: f"argument 'kernel_size' must hold 1, 2 or 3 values, got {kernel_size}")
    st = list(kernel_size) if len(stride) == 0 else _expand(stride, nsp, "stride")
    pd, dl = _expand(padding, nsp, "padding"), _expand(dilation, nsp, "dilation")
    return _pool_like(x, [pool_output_size(i, k, s, p, d, ceil_mode)
                          for i, k, s, p, d in zip(_pool_spatial(x, nsp), kernel_size, st, pd, dl)])


@torch.library.register_fake("torchquant::avg_pool_int8")
def _avg_pool_int8_fake(x, zero_point, kernel_size, stride=(), padding=(0,), ceil_mode=False, count_include_pad=True,
                        divisor_override=None):
    nsp = len(kernel_size)
    torch._check(1 <= nsp <= 3, lambda: f"argument 'kernel_size' must hold 1, 2 or 3 values, got {kernel_size}")
    _check_devices("x", x, zero_point=zero_point)
    st = list(kernel_size) if len(stride) == 0 else _expand(stride, nsp, "stride")
    pd = _expand(padding, nsp, "padding")
    return _pool_like(x, [pool_output_size(i, k, s, p, 1, ceil_mode)
                          for i, k, s, p in zip(_pool_spatial(x, nsp), kernel_size, st, pd)])


@torch.library.register_fake("torchquant::adaptive_avg_pool_int8")
def _adaptive_avg_pool_int8_fake(x, zero_point, output_size):
    torch._check(1 <= len(output_size) <= 3,
                 lambda: f"argument 'output_size' must hold 1, 2 or 3 values, got {output_size}")
    _check_devices("x", x, zero_point=zero_point)
    return _pool_like(x, list(output_size))


# ---------------------------------------------------------------- torch's quantized tensors
# A torch quantized tensor (torch.quantize_per_tensor's output, what torch.ao code holds) given
# to an op with CPU / CUDA kernels only reached torch's dispatcher error ("Could not run
# 'torchquant::dequantize' with arguments from the 'QuantizedCPU' backend"), which names no
# argument. Ops with a composite kernel (the observers, streamed_copy, which keeps a quantized
# tensor's qparams) already see such a tensor and are left as they are.
def _quantized_refusal(op_name, schema):
    names = [a.name for a in schema.arguments]

    def kernel(*args, **kwargs):
        given = list(zip(names, args)) + list(kwargs.items())
        for name, value in given:
            values = value if isinstance(value, (list, tuple)) else (value,)
            for v in values:
                if isinstance(v, torch.Tensor) and v.is_quantized:
                    raise TypeError(f"torchquant::{op_name}: argument '{name}' is a torch quantized tensor ({v.dtype}); "
                                    f"torchquant's ops take the integer codes and their qparams: pass "
                                    f"{name}.int_repr() with {name}.q_scale() / {name}.q_zero_point(), or "
                                    f"torchquant.quantize_per_tensor({name}.dequantize(), scale, zero_point, dtype) "
                                    f"for a QTensor")
        raise TypeError(f"torchquant::{op_name} was given a torch quantized tensor; it takes integer codes")

    return kernel


_QUANTIZED_LIB = torch.library.Library("torchquant", "IMPL")


def _register_quantized_refusals():
    # (dir(torch.ops.torchquant) lists only the ops looked up so far)
    names = {n.split("::", 1)[1].split(".", 1)[0] for n in torch._C._dispatch_get_all_op_names()
             if n.startswith("torchquant::")}
    for op_name in sorted(names):
        packet = getattr(ops, op_name)
        for overload in packet.overloads():
            opo = getattr(packet, overload)
            qualname = opo._schema.name + ("" if overload == "default" else f".{overload}")
            if any(torch._C._dispatch_has_kernel_for_dispatch_key(qualname, k)
                   for k in ("CompositeExplicitAutograd", "CompositeImplicitAutograd", "QuantizedCPU")):
                continue
            kernel = _quantized_refusal(op_name, opo._schema)
            for key in ("QuantizedCPU", "QuantizedCUDA"):
                _QUANTIZED_LIB.impl(qualname, kernel, key)


_register_quantized_refusals()
