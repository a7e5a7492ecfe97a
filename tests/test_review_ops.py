"""Edge cases of the CPU ops found by review: each test failed before its fix."""
import pytest
import torch

import torchquant  # noqa: F401  (loads the ops)
from torchquant import reference

ops = torch.ops.torchquant
INT32_MAX = 2 ** 31 - 1


def _expected_zero_point(min_neg, scale, qmin, qmax):
    """qmin - round(min_neg / scale), clamped, with the quotient rounded in float32 as the op
    does but the subtraction in Python integers (no wrap)."""
    q = torch.round(torch.tensor([min_neg], dtype=torch.float32) / scale)
    return max(qmin, min(qmax, qmin - int(q.item())))


@pytest.mark.parametrize("lo,qmin,qmax", [
    (-1e6, 0, INT32_MAX),              # min / scale rounds to -2^31 in float32
    (-1000.0, -2 ** 31, INT32_MAX),    # min / scale is about -2^32
    (-3.0, -2 ** 31 + 5, INT32_MAX - 7),
    (-1.0, -128, 127),
])
def test_choose_qparams_zero_point_of_wide_int32_ranges(lo, qmin, qmax):
    # The zero point's integer steps were made in int32, where round(min / scale) can reach
    # 2^31 or more for ranges wider than int32's half: it wrapped to a wrong zero point (0).
    mn, mx = torch.tensor([lo]), torch.tensor([0.0])
    for fn in (ops.choose_qparams, reference.choose_qparams):
        s, z = fn(mn, mx, qmin, qmax)
        assert z.dtype == torch.int32
        assert z.item() == _expected_zero_point(lo, s, qmin, qmax), (fn, s, z)
    assert torch.equal(ops.choose_qparams(mn, mx, qmin, qmax)[1], reference.choose_qparams(mn, mx, qmin, qmax)[1])


@pytest.mark.parametrize("eps", [1e-50, 5e-46])
def test_choose_qparams_rejects_eps_that_is_zero_in_float32(eps):
    # eps > 0 as a double but 0 in float32 gave a zero scale (and a -0.0 one, symmetric).
    with pytest.raises(RuntimeError, match=r"argument 'eps' must be > 0 and finite in float32, got "):
        ops.choose_qparams(torch.tensor([0.0]), torch.tensor([0.0]), -128, 127, False, eps)
    with pytest.raises(RuntimeError, match=r"argument 'eps'"):
        ops.choose_qparams(torch.tensor([0.0]), torch.tensor([0.0]), -128, 127, True, eps)


def test_choose_qparams_smallest_float32_eps_gives_positive_scale():
    s, _ = ops.choose_qparams(torch.tensor([0.0]), torch.tensor([0.0]), -128, 127, True, 1.4e-45)
    assert s.item() > 0 and not torch.signbit(s).item()


def _packed(n=3, k=4):
    return ops.pack_weight(torch.zeros(n, k, dtype=torch.int8))


F64 = torch.float64


@pytest.mark.parametrize("call,match", [
    (lambda: ops.quantize(torch.randn(3), torch.tensor([1e-200], dtype=F64), torch.tensor([0]), None, -128, 127, torch.int8),
     r"argument 'scale' must be > 0 and finite, got 1e-200 \(0 in float32\)"),
    (lambda: ops.dequantize(torch.zeros(3, dtype=torch.int8), torch.tensor([1e40], dtype=F64), torch.tensor([0]), None),
     r"argument 'scale' must be > 0 and finite, got 1e\+40 \(inf in float32\)"),
    (lambda: ops.fake_quantize(torch.randn(3, 2), torch.tensor([0.1, 1e40], dtype=F64), torch.tensor([0, 0]), 1, -128, 127),
     r"got 1e\+40 \(inf in float32\) at channel 1"),
    (lambda: ops.fake_quantize_learnable(torch.randn(3), torch.tensor([1e-200], dtype=F64), torch.tensor([0.0]), None, -128, 127),
     r"argument 'scale' must be > 0 and finite, got 1e-200 \(0 in float32\)"),
    (lambda: ops.linear_int8(torch.zeros(2, 4, dtype=torch.int8), torch.tensor([1e-200], dtype=F64), torch.tensor([0]), *_packed(), torch.ones(3), None, None, None, False, None),
     r"argument 'x_scale' must be > 0 and finite, got 1e-200 \(0 in float32\)"),
    (lambda: ops.linear_int8(torch.zeros(2, 4, dtype=torch.int8), torch.tensor([1.0, 1e-200], dtype=F64), torch.tensor([0]), *_packed(), torch.ones(3), None, None, None, False, None),
     r"argument 'x_scale' must be > 0 and finite, got 1e-200 \(0 in float32\) at row 1"),
    (lambda: ops.linear_int8(torch.zeros(2, 4, dtype=torch.int8), torch.tensor([1.0]), torch.tensor([0]), *_packed(), torch.tensor([1, 1, 1e39], dtype=F64), None, None, None, False, None),
     r"argument 'w_scale' must be > 0 and finite, got 1e\+39 \(inf in float32\) at channel 2"),
    (lambda: ops.linear_int8(torch.zeros(2, 4, dtype=torch.int8), torch.tensor([1.0]), torch.tensor([0]), *_packed(), torch.ones(3), None, torch.tensor([1e39], dtype=F64), torch.tensor([0]), False, torch.int8),
     r"argument 'out_scale' must be > 0 and finite, got 1e\+39 \(inf in float32\)"),
    # float32 values, and float64 ones that float32 shows alike, are shown as they are
    (lambda: ops.quantize(torch.randn(3), torch.tensor([-0.2], dtype=F64), torch.tensor([0]), None, -128, 127, torch.int8),
     r"argument 'scale' must be > 0 and finite, got -0.2$"),
    (lambda: ops.quantize(torch.randn(3), torch.tensor([-2.5]), torch.tensor([0]), None, -128, 127, torch.int8),
     r"argument 'scale' must be > 0 and finite, got -2.5$"),
])
def test_scale_errors_show_the_value_given_not_its_float32_rounding(call, match):
    # A float64 scale out of float32's range was reported as the converted value ("got 0",
    # "got inf"), which is not what the caller passed.
    with pytest.raises(RuntimeError, match=match):
        call()


def test_fake_kernels_check_dtype_and_qrange_as_the_kernels_do():
    """Under tracing (fake tensors) quantize / dequantize raise where the real kernels raise."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(4, 3)
    s, z = torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32)
    q = torch.zeros(4, 3, dtype=torch.int8)
    cases = [
        (torch.ops.torchquant.quantize, (x, s, z, None, 0, 255, torch.float32), "argument 'dtype' must be torch.int8 or torch.uint8"),
        (torch.ops.torchquant.quantize, (x, s, z, None, -129, 127, torch.int8), r"argument 'qmin' must lie in \[-128, 127\]"),
        (torch.ops.torchquant.quantize, (x, s, z, None, 0, 256, torch.uint8), r"argument 'qmax' must lie in \[0, 255\]"),
        (torch.ops.torchquant.dequantize, (q, s, z, None, torch.int32), "argument 'out_dtype' must be a floating-point dtype"),
    ]
    for op, args, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            op(*args)
        with FakeTensorMode() as mode:
            fargs = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            with pytest.raises(RuntimeError, match=msg):
                op(*fargs)
