"""Every Python-side registration of torchquant's ops, in one place: for each op a fake
(meta) kernel for torch.compile / torch.export and, where it has gradients, its autograd
formula, whose backward calls other torchquant ops so that it stays traceable.

The schemas are in csrc/torchquant.cpp; the ops are reached as ``torch.ops.torchquant.<name>``.
"""
from typing import Optional

import torch

from . import _load  # noqa: F401  (loads the op library before anything is registered)

ops = torch.ops.torchquant


def _check_qrange(qmin, qmax):
    torch._check(qmin < qmax, lambda: f"argument 'qmin' must be < qmax, got qmin={qmin} qmax={qmax}")


# ---------------------------------------------------------------- quantize / dequantize
@torch.library.register_fake("torchquant::quantize")
def _quantize_fake(x, scale, zero_point, axis, qmin, qmax, dtype):
    torch._check(x.is_floating_point(), lambda: f"argument 'x' must be a floating-point tensor, got {x.dtype}")
    _check_qrange(qmin, qmax)
    return torch.empty_like(x, dtype=dtype, memory_format=torch.contiguous_format)


@torch.library.register_fake("torchquant::dequantize")
def _dequantize_fake(q, scale, zero_point, axis, out_dtype=None):
    torch._check(q.dtype in (torch.int8, torch.uint8), lambda: f"argument 'q' must be int8 or uint8, got {q.dtype}")
    return torch.empty_like(q, dtype=out_dtype or torch.float32, memory_format=torch.contiguous_format)


# ---------------------------------------------------------------- fake quantize
@torch.library.register_fake("torchquant::fake_quantize")
def _fake_quantize_fake(x, scale, zero_point, axis, qmin, qmax):
    torch._check(x.is_floating_point(), lambda: f"argument 'x' must be a floating-point tensor, got {x.dtype}")
    _check_qrange(qmin, qmax)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("torchquant::fake_quantize_backward")
def _fake_quantize_backward_fake(grad, x, scale, zero_point, axis, qmin, qmax):
    torch._check(grad.shape == x.shape, lambda: f"argument 'grad' must have the shape of x {tuple(x.shape)}")
    return torch.empty_like(grad, memory_format=torch.contiguous_format)


def _fake_quantize_setup_context(ctx, inputs, output):
    x, scale, zero_point, axis, qmin, qmax = inputs
    ctx.save_for_backward(x, scale, zero_point)
    ctx.axis, ctx.qmin, ctx.qmax = axis, qmin, qmax


def _fake_quantize_backward(ctx, grad):
    # Straight-through estimator: pass grad where the rounded value lies in [qmin, qmax].
    x, scale, zero_point = ctx.saved_tensors
    gx = ops.fake_quantize_backward(grad, x, scale, zero_point, ctx.axis, ctx.qmin, ctx.qmax)
    return gx, None, None, None, None, None


torch.library.register_autograd(
    "torchquant::fake_quantize", _fake_quantize_backward, setup_context=_fake_quantize_setup_context
)


def _learnable_setup_context(ctx, inputs, output):
    x, scale, zero_point, axis, qmin, qmax, grad_factor = inputs
    ctx.save_for_backward(x, scale, zero_point)
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

# ---------------------------------------------------------------- int8 GEMM
# GEMM-FAKES-BEGIN
# GEMM-FAKES-END

# ---------------------------------------------------------------- observers
# OBSERVER-FAKES-BEGIN
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
    _check_float(x, "x")
    c = _channels(x, axis)
    torch._check(running_min.numel() == (1 if c is None else c),
                 lambda: f"argument 'running_min' must have {1 if c is None else c} element(s), got {running_min.numel()}")
    return None


@torch.library.register_fake("torchquant::histogram_")
def _histogram_fake(hist, min_val, max_val, nonfinite_count, x, upsample_rate=16):
    _check_float(x, "x")
    torch._check(hist.dim() == 1, lambda: f"argument 'hist' must be 1-D, got shape {tuple(hist.shape)}")
    return None


@torch.library.register_fake("torchquant::histogram_rebin")
def _histogram_rebin_fake(hist, min_val, max_val, new_min, new_max, upsample_rate=16):
    torch._check(hist.dim() == 1, lambda: f"argument 'hist' must be 1-D, got shape {tuple(hist.shape)}")
    return torch.empty_like(hist)
# OBSERVER-FAKES-END
