"""Regression tests for defects found reviewing the eager API: each failed before its fix."""
import warnings

import pytest
import torch
from torch import nn

import torchquant as tq
import torchquant.nn.quantized as nnq
from torchquant.quantize import _observer_hook


def _static_model():
    torch.manual_seed(0)
    return nn.Sequential(tq.QuantStub(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2), tq.DeQuantStub())


def _converted(model=None):
    model = model or _static_model()
    model.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(model)
    prepared(torch.randn(64, 4))
    return tq.convert(prepared)


# ---------------------------------------------------------------- hooks survive the swap
def test_convert_keeps_user_hooks_on_swapped_modules():
    calls = []
    model = _static_model()
    model[1].register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__)))
    model[1].register_forward_hook(lambda m, args, out: calls.append(("post", type(m).__name__)))
    model[3].register_forward_hook(lambda m, args, kwargs, out: calls.append(("kw", type(m).__name__)),
                                   with_kwargs=True)
    q = _converted(model)
    calls.clear()
    q(torch.randn(2, 4))
    # torch.ao's convert keeps them too (its swap_module copies them onto the new module).
    assert calls == [("pre", "LinearReLU"), ("post", "LinearReLU"), ("kw", "Linear")]
    assert all(h is not _observer_hook for h in q[1]._forward_hooks.values())


def test_quantize_dynamic_keeps_user_hooks():
    calls = []
    model = nn.Sequential(nn.Linear(4, 3))
    model[0].register_forward_pre_hook(lambda m, args: calls.append("pre"))
    model[0].register_forward_hook(lambda m, args, out: calls.append("post"))
    q = tq.quantize_dynamic(model)
    calls.clear()
    q(torch.randn(2, 4))
    assert isinstance(q[0], nnq.DynamicLinear) and calls == ["pre", "post"]


# ---------------------------------------------------------------- QTensor.to
def test_qtensor_to_dtype_is_a_clear_error():
    q = tq.quantize_per_tensor(torch.tensor([0.1, -0.5]), 0.01, 0, torch.qint8)
    for dt in (torch.float32, torch.float64, torch.int32, torch.uint8):
        with pytest.raises(TypeError, match=r"argument 'device'.*dequantize"):
            q.to(dt)
    moved = q.to(torch.device("cpu"))
    assert torch.equal(moved.int_repr(), q.int_repr()) and moved.dtype == torch.qint8
    assert q.to("cpu").device == torch.device("cpu")


# ---------------------------------------------------------------- dtype casts of observers
_OBSERVERS = [tq.MinMaxObserver, tq.MovingAverageMinMaxObserver, tq.PerChannelMinMaxObserver,
              tq.MovingAveragePerChannelMinMaxObserver, tq.HistogramObserver]


@pytest.mark.parametrize("cls", _OBSERVERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_observer_statistics_stay_float32_under_a_dtype_cast(cls, dtype):
    torch.manual_seed(0)
    x1, x2 = torch.randn(4, 6) * 3, torch.randn(4, 6)
    cast, plain = cls(), cls()
    cast(x1), plain(x1)
    cast.to(dtype)  # used to turn the buffers into `dtype`, after which forward raised
    for name, buf in cast.named_buffers():
        assert buf.dtype == dict(plain.named_buffers())[name].dtype, name
        assert torch.equal(buf, dict(plain.named_buffers())[name]), name  # no rounding through `dtype`
    cast(x2), plain(x2)
    for a, b in zip(cast.calculate_qparams(), plain.calculate_qparams()):
        assert torch.equal(a, b)


def test_prepared_model_cast_to_float64_calibrates_and_converts():
    model = _static_model()
    model.qconfig = tq.get_default_qconfig("x86")
    prepared = tq.prepare(model).double()
    x = torch.randn(32, 4, dtype=torch.float64)
    prepared(x)
    q = tq.convert(prepared)
    assert q(x).dtype == torch.float32


def test_qat_model_cast_to_float64_trains():
    model = _static_model().train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    prepared = tq.prepare_qat(model).double()
    assert prepared[1].weight_fake_quant.scale.dtype == torch.float32
    y = prepared(torch.randn(8, 4, dtype=torch.float64))
    y.sum().backward()
    assert y.dtype == torch.float64 and prepared[1].weight.grad is not None
    g = prepared[1].weight.grad
    assert g.dtype == torch.float64 and torch.isfinite(g).all() and g.abs().sum() > 0


# ---------------------------------------------------------------- dtype casts of int8 modules
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_converted_model_cast_keeps_its_qparams_and_output(dtype):
    q = _converted()
    d = tq.quantize_dynamic(_static_model()[1:4])
    x = torch.randn(5, 4)
    before, before_d = q(x), d(x)
    q.to(dtype), d.to(dtype)
    for name, buf in list(q.named_buffers()) + list(d.named_buffers()):
        assert buf is None or buf.dtype != dtype, name
    # .half() used to round the scales and bias through float16: a different output.
    assert torch.equal(q(x), before)
    assert torch.equal(d(x), before_d)


# ---------------------------------------------------------------- custom weight ranges
def _four_bit_weight_model():
    model = nn.Sequential(tq.QuantStub(), nn.Linear(3, 2, bias=False), tq.DeQuantStub())
    with torch.no_grad():
        # Channel 0's largest magnitude is positive: its symmetric level is 1.5 / (1.5 / 7.5) = 7.5,
        # which rounds to 8 unless clamped to the 4-bit range [-8, 7].
        model[1].weight.copy_(torch.tensor([[1.5, -0.2, 0.1], [-1.0, 0.3, 0.5]]))
    return model


def test_convert_clamps_weights_to_the_weight_observers_range():
    model = _four_bit_weight_model()
    model.qconfig = tq.QConfig(tq.MinMaxObserver, tq.PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-8, quant_max=7))
    prepared = tq.prepare(model)
    prepared(torch.randn(8, 3))
    q = tq.convert(prepared)
    assert int(q[1].qweight.max()) == 7 and int(q[1].qweight.min()) >= -8
    d = tq.quantize_dynamic(_four_bit_weight_model(), {nn.Linear: model.qconfig})
    assert torch.equal(d[1].qweight, q[1].qweight)


def test_qat_model_and_its_conversion_use_the_same_weights():
    model = _four_bit_weight_model().train()
    model.qconfig = tq.QConfig(tq.default_fake_quant, tq.FakeQuantize.with_args(
        observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-8, quant_max=7, dtype=torch.qint8,
        qscheme=torch.per_channel_symmetric))
    prepared = tq.prepare_qat(model)
    prepared(torch.randn(8, 3))
    prepared.apply(tq.disable_observer)
    lin = prepared[1]
    trained = lin.weight_fake_quant(lin.weight).detach()
    q = tq.convert(prepared.eval())
    assert torch.equal(q[1].qweight.float() * q[1].weight_scale[:, None], trained)


def test_weight_observer_range_outside_int8_is_a_clear_error():
    model = nn.Sequential(tq.QuantStub(), nn.Linear(3, 2), tq.DeQuantStub())
    model.qconfig = tq.QConfig(tq.MinMaxObserver, tq.MinMaxObserver.with_args(
        dtype=torch.qint32, qscheme=torch.per_tensor_symmetric))
    prepared = tq.prepare(model)
    prepared(torch.randn(8, 3))
    with pytest.raises(ValueError, match=r"1: the weight observer MinMaxObserver has quant_min=-2147483648, quant_max=2147483647"):
        tq.convert(prepared)


# ---------------------------------------------------------------- quantize_dynamic's qconfig_spec
@pytest.mark.parametrize("spec", [nn.Linear, "fc", 3])
def test_quantize_dynamic_rejects_a_bare_type_or_name(spec):
    # A bare type used to raise "'type' object is not iterable"; a bare string was read as a set
    # of one-letter module names, silently quantizing nothing.
    with pytest.raises(TypeError, match="argument 'qconfig_spec'"):
        tq.quantize_dynamic(nn.Sequential(nn.Linear(4, 4)), spec)


def test_quantize_dynamic_warns_for_types_it_leaves_in_float():
    model = nn.Sequential(nn.RNN(4, 4), nn.Linear(4, 4))
    with pytest.warns(UserWarning, match=r"\['RNN'\] in argument 'qconfig_spec' have no dynamic int8 module"):
        q = tq.quantize_dynamic(model, {nn.RNN, nn.Linear})
    assert type(q[0]) is nn.RNN and isinstance(q[1], nnq.DynamicLinear)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tq.quantize_dynamic(model, {nn.Linear})
        tq.quantize_dynamic(model, {"1"})


def test_unused_torch_ao_arguments_are_named_in_a_warning():
    def model():
        m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), nn.ReLU(), tq.DeQuantStub()).eval()
        m.qconfig = tq.get_default_qconfig("x86")
        return m

    with pytest.warns(UserWarning, match=r"prepare: argument\(s\) 'allow_list', 'prepare_custom_config_dict' are accepted"):
        p = tq.prepare(model(), allow_list={nn.Linear}, prepare_custom_config_dict={"a": 1})
    p(torch.randn(8, 4))
    with pytest.warns(UserWarning, match=r"convert: argument\(s\) 'convert_custom_config_dict'"):
        tq.convert(p, convert_custom_config_dict={"a": 1})
    with pytest.warns(UserWarning, match=r"fuse_modules: argument\(s\) 'fuser_func'"):
        tq.fuse_modules(model(), ["1", "2"], fuser_func=lambda *a: a)
    # None and empty values (what torch.ao code passes by default) say nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = tq.prepare(model(), allow_list=None, prepare_custom_config_dict={})
        p(torch.randn(8, 4))
        tq.convert(p, convert_custom_config_dict=None)
        tq.fuse_modules(model(), ["1", "2"], fuse_custom_config_dict={})


def test_qtensor_indexing_per_tensor_is_exact_and_per_channel_raises():
    data = torch.randint(0, 256, (4, 6), dtype=torch.uint8)
    q = tq.QTensor(data, torch.tensor([0.1]), torch.tensor([7], dtype=torch.int32), None, 0, 255)
    for index in (0, -1, slice(1, 3), (slice(None), 2), (slice(None), slice(1, None, 2)), torch.tensor([2, 0])):
        sub = q[index]
        assert isinstance(sub, tq.QTensor) and torch.equal(sub.int_repr(), data[index])
        assert torch.equal(sub.dequantize(), q.dequantize()[index])
    assert [torch.equal(row.int_repr(), data[i]) for i, row in enumerate(q)] == [True] * 4
    pc = tq.QTensor(data.to(torch.int8) // 2, torch.full((6,), 0.1), torch.zeros(6, dtype=torch.int32), 1, -128, 127)
    with pytest.raises(NotImplementedError, match="only defined for per-tensor quantization .* axis 1"):
        pc[0]


def test_qtensor_saves_and_loads_with_weights_only_through_its_checks():
    import io
    import pickle

    data = torch.randint(0, 256, (3, 4), dtype=torch.uint8)
    q = tq.QTensor(data, torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32), None, 2, 250)
    pc = tq.QTensor(data.to(torch.int8) // 2, torch.full((4,), 0.1), torch.zeros(4, dtype=torch.int32), 1)
    buf = io.BytesIO()
    torch.save({"q": q, "pc": pc}, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    for a, b in ((q, back["q"]), (pc, back["pc"])):
        assert isinstance(b, tq.QTensor) and (b.axis, b.qmin, b.qmax) == (a.axis, a.qmin, a.qmax)
        assert torch.equal(b.int_repr(), a.int_repr()) and torch.equal(b.dequantize(), a.dequantize())
    # unpickling runs the constructor's checks: a payload with float data is refused
    broken = tq.QTensor.__new__(tq.QTensor)
    for name in ("data", "scale", "zero_point", "axis", "qmin", "qmax"):
        setattr(broken, name, getattr(q, name))
    broken.data = torch.zeros(3)
    with pytest.raises(TypeError, match="QTensor data must be int8 or uint8"):
        pickle.loads(pickle.dumps(broken))
