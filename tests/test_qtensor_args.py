"""Arguments of torch functions on QTensors at their edges: settings and bounds that are not
finite, an empty stride for pooling, means of QTensors with no values, the Hardsigmoid module's
positional ``inplace``, and the strides of torch.stack."""
import math

import pytest
import torch
import torch.nn.functional as F

import torchquant
from torchquant import QTensor
from torchquant.nn import quantized as nnq

NAN, INF = math.nan, math.inf
CL = torch.channels_last


def _q(x, scale=0.05, zero_point=64, dtype=torch.quint8):
    return torchquant.quantize_per_tensor(x, scale, zero_point, dtype)


@pytest.mark.parametrize("call, match", [
    (lambda q: F.leaky_relu(q, INF), r"leaky_relu: argument 'negative_slope' must be finite on a QTensor, got inf"),
    (lambda q: F.leaky_relu(q, NAN), r"leaky_relu: argument 'negative_slope' must be finite on a QTensor, got nan"),
    (lambda q: F.leaky_relu(q, -INF), r"leaky_relu: argument 'negative_slope' must be finite on a QTensor, got -inf"),
    (lambda q: F.leaky_relu(q, INF, True), r"argument 'negative_slope' must be finite on a QTensor, got inf"),
    (lambda q: F.elu(q, INF), r"elu: argument 'alpha' must be finite on a QTensor, got inf"),
    (lambda q: F.elu(q, alpha=NAN), r"elu: argument 'alpha' must be finite on a QTensor, got nan"),
    (lambda q: torch._C._nn.elu_(q, 1.0, INF), r"elu_: argument 'scale' must be finite on a QTensor, got inf"),
    (lambda q: F.hardtanh(q, NAN, 1.0), r"hardtanh: argument 'min_val' must not be NaN on a QTensor .*got nan"),
    (lambda q: F.hardtanh(q, -1.0, NAN), r"hardtanh: argument 'max_val' must not be NaN on a QTensor .*got nan"),
    (lambda q: F.hardtanh(q, INF, INF), r"hardtanh: argument 'min_val' must not be inf on a QTensor .*got inf"),
    (lambda q: F.hardtanh(q, -INF, -INF), r"hardtanh: argument 'max_val' must not be -inf on a QTensor .*got -inf"),
    (lambda q: torch.clamp(q, min=INF), r"clamp: argument 'min' must not be inf on a QTensor .*got inf"),
    (lambda q: torch.clamp(q, max=-INF), r"clamp: argument 'max' must not be -inf on a QTensor .*got -inf"),
    (lambda q: q.clamp(1.0, NAN), r"clamp: argument 'max' must not be NaN on a QTensor .*got nan"),
])
def test_settings_and_bounds_that_make_every_value_nan_or_infinite_are_a_value_error(call, match):
    # in float these give NaN or infinite values, which no qparams hold: they lost every value
    # (degenerate qparams chosen from infinite ends) instead of raising
    q = _q(torch.tensor([-1.0, 0.5, 2.0]))
    codes = q.data.clone()
    with pytest.raises(ValueError, match=match):
        call(q)
    assert torch.equal(q.data, codes)  # an in-place call leaves the codes as they were


def test_bounds_that_bound_nothing_and_finite_settings_still_work():
    x = torch.tensor([-1.0, 0.5, 2.0])
    q = _q(x)
    for f in (lambda t: torch.clamp(t, min=-INF), lambda t: torch.clamp(t, max=INF),
              lambda t: torch.clamp(t, 1.0, INF), lambda t: torch.clamp(t, -INF, -0.5),
              lambda t: torch.clamp(t, INF, 1.5),  # min above max: max everywhere, as torch
              lambda t: F.hardtanh(t, -INF, INF), lambda t: F.hardtanh(t, 0.5, INF),
              lambda t: F.leaky_relu(t, -2.0), lambda t: F.elu(t, 2.0)):
        got = f(q)
        assert isinstance(got, QTensor)
        torch.testing.assert_close(got.dequantize(), f(q.dequantize()), atol=got.q_scale() / 2 + 1e-6, rtol=0)
    # a NaN bound on the side of 0 of the code clamp: the zero point's code, as before
    assert torch.clamp(q, max=NAN).dequantize().tolist() == [-1.0, 0.0, 0.0]
    y = _q(x)
    F.hardtanh(y, NAN, 1.0, inplace=True)  # in place: the codes clamped to the bounds' codes
    assert y.dequantize().tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("shape, dims", [((2, 0, 4, 5), (2, 3)), ((2, 0, 3, 4, 5), (2, 3, 4)), ((2, 0, 7), (2,)),
                                         ((2, 3, 0, 5), (2, 3)), ((2, 3, 4, 0), (-1, -2)), ((2, 3, 0), (2,))])
@pytest.mark.parametrize("keepdim", [False, True])
def test_spatial_mean_of_a_qtensor_with_no_values(shape, dims, keepdim):
    # no channels: float's empty result; an empty spatial dimension: float's NaN, the zero point
    q = _q(torch.randn(shape), 0.05, 7)
    got = q.mean(dims, keepdim=keepdim)
    want = q.dequantize().mean(dims, keepdim=keepdim)
    assert isinstance(got, QTensor) and got.shape == want.shape
    assert torch.equal(got.scale, q.scale) and torch.equal(got.zero_point, q.zero_point)
    assert torch.equal(got.data, torch.full(want.shape, 7, dtype=torch.uint8))


@pytest.mark.parametrize("stride", [[], ()])
@pytest.mark.parametrize("fn, nsp", [(F.max_pool1d, 1), (F.max_pool2d, 2), (F.max_pool3d, 3),
                                     (F.avg_pool1d, 1), (F.avg_pool2d, 2), (F.avg_pool3d, 3)])
def test_pooling_takes_an_empty_stride_as_the_kernel_size(fn, nsp, stride):
    x = torch.randn((1, 2) + (4,) * nsp)
    q = _q(x, 0.05, 7)
    got = fn(q, 2, stride)
    want = fn(q, 2)  # torch's default: the kernel size
    assert got.shape == fn(x, 2, stride).shape == want.shape
    assert torch.equal(got.data, want.data)


def test_hardsigmoid_module_takes_the_lookup_table_path(monkeypatch):
    q = _q(torch.randn(2, 3, 5, 5) * 3, 0.05, 7)
    m = nnq.Hardsigmoid()
    want = F.hardsigmoid(q)
    looked_up = []
    lookup = torch.ops.torchquant.lookup_table
    monkeypatch.setattr(torch.ops.torchquant, "lookup_table", lambda *a: looked_up.append(1) or lookup(*a))
    got = m(q)
    assert looked_up == [1]  # not the float function on the dequantized values
    assert torch.equal(got.data, want.data) and torch.equal(got.scale, want.scale)
    assert torch.equal(got.zero_point, want.zero_point)
    # a positional inplace=False is the keyword's
    assert torch.equal(QTensor.__torch_function__(F.hardsigmoid, (QTensor,), (q, False), {}).data, want.data)
    assert looked_up == [1, 1]


@pytest.mark.parametrize("dim", [0, 1, 2, -1, 4])
@pytest.mark.parametrize("equal_qparams", [True, False])
def test_stack_of_channels_last_qtensors_has_floats_strides(dim, equal_qparams):
    x = torch.randn(2, 3, 6, 8).contiguous(memory_format=CL)
    a = _q(x, 0.05, 7)
    b = _q(x * 2, 0.05 if equal_qparams else 0.1, 7)
    got = torch.stack([a, b], dim)
    want = torch.stack([a.dequantize(), b.dequantize()], dim)
    assert got.shape == want.shape and got.data.stride() == want.stride()
    torch.testing.assert_close(got.dequantize(), want, atol=got.q_scale() / 2 + 1e-6, rtol=0)
    if equal_qparams:
        assert torch.equal(got.data, torch.stack([a.data, b.data], dim))
