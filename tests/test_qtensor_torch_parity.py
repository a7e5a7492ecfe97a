"""QTensor and QFunctional behaviour checked against torch.ao / float torch: QFunctional.matmul,
storage and type queries on the codes, pooling / interpolate argument errors, mul_scalar's
output qparams, int_repr as a copy, NumPy scalar qparams."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchquant as tq
from torchquant import QTensor
from torchquant.nn.quantized_ops import QFunctional


def _both(x, scale, zp, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated
        return tq.quantize_per_tensor(x, scale, zp, dtype), torch.quantize_per_tensor(x, scale, zp, dtype)


# ---------------------------------------------------------------- QFunctional.matmul
@pytest.mark.parametrize("dtype, zp", [(torch.quint8, 128), (torch.qint8, -3)])
def test_qfunctional_matmul_equals_torch_ao(dtype, zp):
    torch.manual_seed(0)
    qa, ra = _both(torch.randn(2, 4, 5), 0.03, zp, dtype)
    qb, rb = _both(torch.randn(5, 3), 0.02, zp, dtype)
    f = QFunctional(0.05, zp, dtype)
    out = f.matmul(qa, qb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.ops.quantized.matmul(ra, rb, 0.05, zp)
    assert isinstance(out, QTensor) and out.dtype == dtype
    assert torch.equal(out.int_repr(), ref.int_repr())
    assert out.q_zero_point() == zp and out.q_scale() == pytest.approx(0.05)
    # a float operand takes part as it is (as the other QFunctional methods take one)
    y = torch.randn(5, 3)
    got = f.matmul(qa, y)
    assert torch.equal(got.data, tq.quantize_per_tensor(qa.dequantize() @ y, 0.05, zp, dtype).data)


def test_converted_float_functional_matmul():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
            self.ff = tq.nn.quantized.FloatFunctional()

        def forward(self, x, y):
            return self.dequant(self.ff.matmul(self.quant(x), self.quant(y)))

    torch.manual_seed(1)
    x, y = torch.randn(4, 5), torch.randn(5, 3)
    m = M().eval()
    m.qconfig = tq.get_default_qconfig()
    p = tq.prepare(m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p(x, y)
        q = tq.convert(p)
        out = q(x, y)
    assert float((out - x @ y).abs().max()) < 0.1


# ---------------------------------------------------------------- storage and type queries
def test_storage_queries_answer_for_the_codes():
    q, r = _both(torch.randn(4, 6), 0.05, 128, torch.quint8)
    assert q.itemsize == r.itemsize == 1 == q.element_size()
    assert q.untyped_storage().nbytes() == q.data.untyped_storage().nbytes() == 24
    assert torch.is_floating_point(q) is False and torch.is_floating_point(r) is False
    assert torch.is_complex(q) is False
    assert q.is_pinned() is False
    data = q.data
    assert q.share_memory_() is q
    assert q.data is data and data.is_shared() and q.is_shared()
    assert q.scale.is_shared() and q.zero_point.is_shared()
    # the values are kept
    assert torch.equal(q.dequantize(), r.dequantize())
    q2, _ = _both(torch.randn(3), 0.05, 128, torch.quint8)
    assert torch.Tensor.share_memory_(q2) is q2 and q2.data.is_shared()


# ---------------------------------------------------------------- pooling / interpolate arguments
def _error_type(fn, t):
    try:
        fn(t)
    except Exception as e:  # noqa: BLE001
        return type(e)
    return None


@pytest.mark.parametrize("call, arg", [
    (lambda t: F.max_pool2d(t, (2.5, 2)), "kernel_size"),
    (lambda t: F.max_pool2d(t, 2, (1, 1.5)), "stride"),
    (lambda t: F.max_pool2d(t, 2, 2, (0.5, 0)), "padding"),
    (lambda t: F.max_pool2d(t, 2, 2, 0, (1.5, 1)), "dilation"),
    (lambda t: F.max_pool1d(t.flatten(2), (2.5,)), "kernel_size"),
    (lambda t: F.avg_pool2d(t, (2.5, 2)), "kernel_size"),
    (lambda t: F.adaptive_avg_pool2d(t, (2.7, 3)), "output_size"),
    (lambda t: F.adaptive_avg_pool2d(t, (None, 2.5)), "output_size"),
    (lambda t: F.adaptive_avg_pool3d(t.unsqueeze(2), (1, 2.5, 2)), "output_size"),
    (lambda t: F.interpolate(t, scale_factor=2, mode="nearest", align_corners=True), "align_corners"),
    (lambda t: F.interpolate(t, scale_factor=2, mode="nearest", align_corners=False), "align_corners"),
    (lambda t: F.interpolate(t, scale_factor=2, mode="nearest-exact", align_corners=True), "align_corners"),
    (lambda t: F.interpolate(t, scale_factor=2, mode="nearest", antialias=True), "antialias"),
])
def test_pooling_and_interpolate_refuse_what_torch_refuses(call, arg):
    x = torch.randn(1, 2, 8, 8)
    q, _ = _both(x, 0.05, 128, torch.quint8)
    want = _error_type(call, x)
    assert want is not None
    with pytest.raises(want, match=arg):
        call(q)


# ---------------------------------------------------------------- mul_scalar
@pytest.mark.parametrize("dtype, zp", [(torch.quint8, 128), (torch.qint8, 3)])
@pytest.mark.parametrize("c", [1e-40, -1e-40, 1e-30, -2.5, 3.0, 0.0, 1e30])
def test_mul_scalar_equals_torch_ao(dtype, zp, c):
    q, r = _both(torch.tensor([0.1, -0.3, 0.45, -0.05, 2.0]), 0.05, zp, dtype)
    out = QFunctional(0.1, 0, dtype).mul_scalar(q, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.ops.quantized.mul_scalar(r, c)
    assert torch.equal(out.int_repr(), ref.int_repr())
    assert out.q_zero_point() == ref.q_zero_point()
    assert out.q_scale() == torch.tensor(ref.q_scale(), dtype=torch.float32).item()
    assert torch.equal(out.dequantize(), ref.dequantize())


def test_mul_scalar_refuses_what_it_cannot_represent():
    q, _ = _both(torch.tensor([0.1, -0.3]), 0.05, 128, torch.quint8)
    f = QFunctional(0.1, 0)
    for c in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(ValueError, match="argument 'c' must be finite"):
            f.mul_scalar(q, c)
    for c in (1e-50, -1e-50, 1e45):  # output scale 0 or inf in float32
        with pytest.raises(ValueError, match="argument 'c'"):
            f.mul_scalar(q, c)


# ---------------------------------------------------------------- int_repr
def test_int_repr_is_a_copy():
    q, r = _both(torch.tensor([0.1, -0.3, 0.45]), 0.05, 128, torch.quint8)
    before = q.dequantize().clone()
    rep = q.int_repr()
    assert torch.equal(rep, r.int_repr()) and rep.dtype == torch.uint8
    rep.zero_()
    r.int_repr().zero_()
    assert torch.equal(q.dequantize(), before) and torch.equal(q.dequantize(), r.dequantize())
    cl = tq.quantize_per_tensor(torch.randn(1, 3, 4, 4).contiguous(memory_format=torch.channels_last), 0.05, 128,
                                torch.quint8)
    assert cl.int_repr().is_contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- NumPy scalar qparams
@pytest.mark.parametrize("scale, zp", [(np.float32(0.1), 3), (0.1, np.int64(3)), (np.float64(0.1), np.int32(3)),
                                       (np.float32(0.1), np.int64(3))])
def test_numpy_scalar_qparams(scale, zp):
    x = torch.randn(16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = torch.quantize_per_tensor(x, scale, zp, torch.quint8)
    q = tq.quantize_per_tensor(x, scale, zp, torch.quint8)
    assert torch.equal(q.int_repr(), ref.int_repr())
    got = tq.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255)
    assert torch.equal(got, torch.fake_quantize_per_tensor_affine(x, scale, zp, 0, 255))


def test_bool_qparams_still_refused():
    x = torch.randn(4)
    for scale, zp, name in ((True, 0, "scale"), (np.bool_(True), 0, "scale"), (0.1, True, "zero_point"),
                            (0.1, np.bool_(False), "zero_point"), (0.1, np.float32(3.0), "zero_point")):
        with pytest.raises(TypeError, match=f"argument '{name}'"):
            tq.quantize_per_tensor(x, scale, zp, torch.quint8)
