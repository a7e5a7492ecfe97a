"""QTensor edge cases: cat of 7-bit inputs traced and eager, scalar codes inside the
quantization range, upsampling against torch.ao's and float's, dtype casts, torch.dequantize,
torch.stack's size check, ``in``, and the conjugate transposes."""
import warnings

import pytest
import torch
import torch.nn.functional as F

import torchquant
from torchquant import QTensor
from torchquant import _qfunctions
from torchquant.qtensor import _WARNED


def _seven_bit(codes, scale, zero_point):
    """A quint8 QTensor in the 7-bit range [0, 127] (what reduce_range observers give)."""
    return QTensor(torch.tensor(codes, dtype=torch.uint8), torch.tensor([scale]),
                   torch.tensor([zero_point], dtype=torch.int32), None, 0, 127)


def test_cat_traced_equals_eager_codes_and_range_for_seven_bit_inputs():
    a = _seven_bit([[100, 120], [0, 5]], 0.1, 10)
    b = _seven_bit([[110, 127], [3, 64]], 0.2, 20)  # other qparams: requantized
    c = _seven_bit([[1, 2], [3, 4]], 0.1, 10)  # a's qparams in other tensors: copied
    full = torchquant.quantize_per_tensor(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), 0.1, 10, torch.quint8)

    def f(u, v):
        return torch.cat([u, v], 1)

    torch._dynamo.reset()
    compiled = torch.compile(f, fullgraph=True, backend="eager")
    for u, v, qrange in ((a, b, (0, 127)), (a, c, (0, 127)), (a, full, (0, 255))):
        # (ranges that differ take no traced selection: eager's path, traced as it is)
        e, t = f(u, v), (compiled(u, v) if qrange == (0, 127) else f(u, v))
        assert (e.qmin, e.qmax) == (t.qmin, t.qmax) == qrange
        assert torch.equal(e.data, t.data) and torch.equal(e.scale, t.scale) and torch.equal(e.zero_point, t.zero_point)
        assert int(e.data.max()) <= qrange[1]
        want = torch.cat([u.dequantize(), v.dequantize()], 1)
        assert float((e.dequantize() - want).abs().max()) <= e.q_scale() / 2 + 1e-6
    # an op after cat that uses its range: the float result, not values clipped at half of it
    e = torch.cat([a, b], 1).clamp(min=0.5)
    assert torch.allclose(e.dequantize(), torch.cat([a.dequantize(), b.dequantize()], 1).clamp(min=0.5),
                          atol=torch.cat([a, b], 1).q_scale() / 2 + 1e-6)


def test_scalar_codes_lie_in_the_quantization_range_and_nan_is_the_zero_point():
    r = _seven_bit([[0, 64, 127]], 0.1, 64)
    p = F.pad(r, (1, 1), value=10.0)  # past the range: its top code, not 164
    assert p.data.tolist() == [[127, 0, 64, 127, 127]] and (p.qmin, p.qmax) == (0, 127)
    assert F.pad(r, (1, 1), value=-10.0).data.tolist() == [[0, 0, 64, 127, 0]]
    assert F.pad(r, (1, 1), value=float("nan")).data.tolist() == [[64, 0, 64, 127, 64]]  # not code 0
    assert F.pad(r, (1, 1), value=float("nan")).dequantize()[0, 0].item() == 0.0
    # a signed range inside int8's: [-64, 63]
    s = QTensor(torch.tensor([-64, 0, 63], dtype=torch.int8), torch.tensor([0.5]), torch.tensor([0], dtype=torch.int32),
                None, -64, 63)
    assert F.pad(s, (1, 1), value=1000.0).data.tolist() == [63, -64, 0, 63, 63]
    assert F.pad(s, (1, 1), value=-1000.0).data.tolist() == [-64, -64, 0, 63, -64]
    # clamp / hardtanh in place clamp the codes to the bounds' codes: inside the range, NaN at the zero point
    x = _seven_bit([[0, 64, 127]], 0.1, 64)
    torch.clamp_(x, max=float("nan"))
    assert x.data.tolist() == [[0, 64, 64]]
    y = _seven_bit([[0, 64, 127]], 0.1, 64)
    F.hardtanh(y, -100.0, 100.0, inplace=True)
    assert y.data.tolist() == [[0, 64, 127]]
    assert _qfunctions._quantize_value(r, 10.0).item() == 127 and _qfunctions._quantize_value(r, float("nan")).item() == 64


def test_upsampling_is_float_interpolate_of_the_codes_and_the_docstring_says_so():
    x = torch.arange(11 * 8, dtype=torch.float32).reshape(1, 1, 11, 8) * 0.01
    q = torchquant.quantize_per_tensor(x, 0.01, 0, torch.quint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's quantized tensors are deprecated
        r = torch.quantize_per_tensor(x, 0.01, 0, torch.quint8)
        sf = (2.078322172164917, 1.7734365463256836)
        ao = F.interpolate(r, scale_factor=sf, mode="nearest").int_repr()
        ao_bilinear = F.interpolate(r, scale_factor=2, mode="bilinear", align_corners=False).int_repr()
    got = F.interpolate(q, scale_factor=sf, mode="nearest").data
    assert torch.equal(got, F.interpolate(q.data.float(), scale_factor=sf, mode="nearest").to(torch.uint8))
    assert not torch.equal(got, ao)  # torch.ao's nearest picks other source pixels here
    bilinear = F.interpolate(q, scale_factor=2, mode="bilinear", align_corners=False).data
    assert int((bilinear.int() - ao_bilinear.int()).abs().max()) <= 1
    doc = " ".join(_qfunctions.__doc__.split())
    assert "upsample, hardtanh, hardsigmoid, cat) the results equal its results" not in doc
    assert "non-integer scale factor" in doc and "within one code of torch.ao's" in doc


@pytest.mark.parametrize("name, dtype", [("byte", torch.uint8), ("char", torch.int8), ("short", torch.int16),
                                         ("int", torch.int32), ("long", torch.int64)])
def test_integer_casts_raise_as_to_does(name, dtype):
    q = torchquant.quantize_per_tensor(torch.tensor([[0.5, -1.0, 2.2]]), 0.1, 10, torch.qint8)
    method = getattr(torch.Tensor, name)
    for cast in (lambda: getattr(q, name)(), lambda: QTensor.__torch_function__(method, (QTensor,), (q,))):
        with pytest.raises(TypeError, match=rf"QTensor\.{name}\(\) would cast a QTensor to {dtype}; use \.int_repr\(\)"):
            cast()
    with pytest.raises(TypeError, match=r"\.int_repr\(\)"):
        q.to(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float casts: the values, through the float fallback
        assert torch.equal(q.float(), q.dequantize()) and q.double().dtype == torch.float64


def test_torch_dequantize_is_the_qtensors_own():
    q = torchquant.quantize_per_tensor(torch.tensor([[0.5, -1.0], [2.2, 0.3]]), 0.1, 10, torch.qint8)
    f = torch.tensor([1.0, 2.0])
    for name in ("dequantize", "Tensor.dequantize"):
        _WARNED.discard(name)  # the float fallback warns once per process
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(torch.dequantize(q), q.dequantize())
        # torch.Tensor.dequantize as torch's dispatch hands it over
        assert torch.equal(QTensor.__torch_function__(torch.Tensor.dequantize, (QTensor,), (q,)), q.dequantize())
        got = torch.dequantize([q, f])
    assert isinstance(got, list) and torch.equal(got[0], q.dequantize()) and torch.equal(got[1], f)


def test_stack_of_mismatched_qtensors_raises_torchs_stack_message():
    q = torchquant.quantize_per_tensor(torch.zeros(2, 3), 0.1, 10, torch.qint8)
    b = torchquant.quantize_per_tensor(torch.zeros(2, 4), 0.1, 10, torch.qint8)
    msg = r"stack expects each tensor to be equal size, but got \[2, 3\] at entry 0 and \[2, 4\] at entry 1"
    with pytest.raises(RuntimeError, match=msg):
        torch.stack([q, b])
    with pytest.raises(RuntimeError, match=msg):
        torch.stack([q.dequantize(), b.dequantize()])
    with pytest.raises(RuntimeError, match=r"\[2, 3\] at entry 0 and \[2, 4\] at entry 2"):
        torch.stack([q, q, b], 1)


def test_contains_as_torch_tensor():
    q = torchquant.quantize_per_tensor(torch.tensor([[0.5, -1.0, 2.2], [0.1, 0.2, 0.3]]), 0.1, 10, torch.qint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reads the values: no float fallback
        assert 0.5 in q and 2.2 in q.dequantize() and -1 in q
        assert 0.7 not in q and 7 not in q
        assert torch.tensor(0.3) in q and q[0, 1] in q
    with pytest.raises(RuntimeError, match="Tensor.__contains__ only supports Tensor or scalar"):
        "a" in q  # noqa: B015


def test_conjugate_transposes_and_real_stay_qtensors():
    q = torchquant.quantize_per_tensor(torch.randn(2, 3), 0.1, 10, torch.qint8)
    q3 = torchquant.quantize_per_tensor(torch.randn(4, 2, 3), 0.1, 10, torch.qint8)
    for got, want in ((q.H, q.T), (q.mH, q.mT), (q3.mH, q3.mT), (q.adjoint(), q.mT), (torch.adjoint(q3), q3.mT)):
        assert isinstance(got, QTensor) and torch.equal(got.data, want.data)
        assert got.scale is q.scale or got.scale is q3.scale
    assert q.real is q
    with pytest.raises(RuntimeError, match="tensor.H is only supported on matrices"):
        q3.H
