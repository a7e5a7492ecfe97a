"""prepare_qat's fixed-qparams output fake-quants (torch.ao's rule): nn.Sigmoid, nn.Softmax and
nn.Hardsigmoid train on scale 1/256 over [0, 1), nn.Tanh on 2/256 over [-1, 1), whatever the
qconfig; a torch.ao QAT state dict of such a model loads strictly and gives torch.ao's outputs,
and convert gives those modules the same qparams."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn

import torchquant as tq

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated
    taq = pytest.importorskip("torch.ao.quantization")


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecations; the "stays in float" warning of Softmax
        yield


class _Net(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.quant = taq.QuantStub()
        self.fc1 = nn.Linear(6, 6)
        self.act = act
        self.fc2 = nn.Linear(6, 6)
        self.dequant = taq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc2(self.act(self.fc1(self.quant(x)))))


def _qint8_qat_qconfig():
    # activations qint8 (affine), weights torch.ao's default
    act = taq.FakeQuantize.with_args(observer=taq.MovingAverageMinMaxObserver, quant_min=-128, quant_max=127,
                                     dtype=torch.qint8, qscheme=torch.per_tensor_affine)
    return taq.QConfig(activation=act, weight=taq.default_weight_fake_quant)


_QCONFIGS = {"x86": lambda: taq.get_default_qat_qconfig("x86"), "qint8": _qint8_qat_qconfig}
_ACTS = {"Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "Softmax": lambda: nn.Softmax(dim=-1)}


def _x(seed=1):
    return 3 * torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(seed))


def _trained_pair(act, qconfig):
    """torch.ao's prepare_qat model after three steps, and torchquant's of the same float model
    with torch.ao's state dict loaded (strictly)."""
    torch.manual_seed(0)
    float_model = _Net(_ACTS[act]()).train()
    float_model.qconfig = _QCONFIGS[qconfig]()
    ao = taq.prepare_qat(copy.deepcopy(float_model))
    ours = tq.prepare_qat(copy.deepcopy(float_model))
    opt = torch.optim.SGD(ao.parameters(), lr=0.1)
    for seed in range(3):
        opt.zero_grad()
        ao(_x(seed)).pow(2).mean().backward()
        opt.step()
    opt.zero_grad()
    ours.load_state_dict(ao.state_dict())
    return ao, ours


@pytest.mark.parametrize("qconfig", sorted(_QCONFIGS))
@pytest.mark.parametrize("act", sorted(_ACTS))
def test_torch_ao_qat_state_dict_loads_and_trains_alike(act, qconfig):
    ao, ours = _trained_pair(act, qconfig)
    fq, ao_fq = ours.act.activation_post_process, ao.act.activation_post_process
    assert isinstance(fq, tq.FixedQParamsFakeQuantize) and isinstance(ao_fq, taq.FixedQParamsFakeQuantize)
    # torch.ao's fixed qparams and range, a qint8 qconfig's too
    assert torch.equal(fq.scale, ao_fq.scale) and torch.equal(fq.zero_point, ao_fq.zero_point)
    assert (fq.dtype, fq.quant_min, fq.quant_max) == (ao_fq.dtype, ao_fq.quant_min, ao_fq.quant_max)
    x = _x(7)
    y_ao, y = ao(x), ours(x)
    assert torch.equal(y, y_ao)
    y_ao.pow(2).mean().backward()
    y.pow(2).mean().backward()
    for name in ("fc1.weight", "fc1.bias", "fc2.weight"):
        assert torch.equal(ours.get_parameter(name).grad, ao.get_parameter(name).grad), name
    ao.eval()
    ours.eval()
    with torch.no_grad():
        assert torch.equal(ours(x), ao(x))


@pytest.mark.parametrize("act", ["Sigmoid", "Tanh"])
def test_convert_gives_the_fixed_qparams_and_torch_ao_outputs(act):
    ao, ours = _trained_pair(act, "x86")
    ao.eval()
    ours.eval()
    ao_fq = ao.act.activation_post_process
    q = tq.convert(copy.deepcopy(ours))
    assert torch.equal(q.act.scale, ao_fq.scale.float()) and torch.equal(q.act.zero_point, ao_fq.zero_point.int())
    ao_q = taq.convert(copy.deepcopy(ao))
    x = _x(9)
    with torch.no_grad():
        assert torch.equal(q(x), ao_q(x))
        # the int8 activation's own output: torch.ao's quantized op's values and qparams
        h = q.fc1(q.quant(x))
        out = q.act(h)
        ao_out = ao_q.act(ao_q.fc1(ao_q.quant(x)))
        assert float(out.scale) == ao_out.q_scale() and int(out.zero_point) == ao_out.q_zero_point()
        assert torch.equal(out.dequantize(), ao_out.dequantize())


def test_converted_softmax_quantizes_its_output_with_the_fixed_qparams():
    # torch.ao has no quantized Softmax in eager mode (its converted model fails on it): the
    # reference is its QAT model's own output, in eval mode
    ao, ours = _trained_pair("Softmax", "x86")
    ao.eval()
    ours.eval()
    ao_fq = ao.act.activation_post_process
    q = tq.convert(copy.deepcopy(ours))
    assert torch.equal(q.act.output_quant.scale, ao_fq.scale.float())
    assert torch.equal(q.act.output_quant.zero_point, ao_fq.zero_point.int())
    x = _x(9)
    with torch.no_grad():
        h = q.fc1(q.quant(x))
        out = q.act(h)
        want = ao.act(h.dequantize())  # softmax, fake-quantized with the fixed qparams
        step = float(ao_fq.scale)
        assert float(out.scale) == step and int(out.zero_point) == int(ao_fq.zero_point)
        assert (out.dequantize() - want).abs().max().item() <= step
        assert (out.dequantize() - torch.softmax(h.dequantize(), -1)).abs().max().item() <= step / 2 + 1e-6


@pytest.mark.parametrize("act", sorted(_ACTS))
def test_qint8_activations_convert_on_the_fixed_qparams(act):
    # torch.ao's fixed fake-quants are quint8 whatever the qconfig: the converted activation
    # returns those codes (the values torch.ao's QAT model trained on), and the qint8 Linear after
    # it takes them
    ao, ours = _trained_pair(act, "qint8")
    ao.eval()
    ours.eval()
    ao_fq = ao.act.activation_post_process
    q = tq.convert(copy.deepcopy(ours))
    x = _x(9)
    with torch.no_grad():
        h = q.fc1(q.quant(x))
        assert h.dtype == torch.qint8
        out = q.act(h)
        assert (out.dtype, float(out.scale), int(out.zero_point)) == (ao_fq.dtype, float(ao_fq.scale), int(ao_fq.zero_point))
        torch.testing.assert_close(out.dequantize(), ao.act(h.dequantize()), rtol=0, atol=1e-6)
        y = q.fc2(out)
        assert y.dtype == torch.qint8
        assert (y.dequantize() - ao.fc2(out.dequantize())).abs().max().item() <= float(y.scale) * 1.001


def test_static_prepare_of_an_eval_model_still_calibrates():
    # prepare (eval mode): calibrated output observers, as before (torch.ao's rule is for training mode)
    model = _Net(nn.Sigmoid())
    model.act2 = nn.Tanh()
    model.eval()
    model.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(model)
    assert not isinstance(p.act.activation_post_process, tq.FixedQParamsFakeQuantize)
    assert not isinstance(p.act2.activation_post_process, tq.FixedQParamsFakeQuantize)
    assert hasattr(p.act.activation_post_process, "min_val")


def test_prepare_qat_still_names_softmax_as_staying_float():
    model = _Net(nn.Softmax(dim=-1)).train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tq.prepare_qat(model)
    assert any("act (Softmax)" in str(w.message) for w in caught)


@pytest.mark.parametrize("name", ["get_default_static_quant_module_mappings", "get_default_qat_module_mappings",
                                  "get_default_dynamic_quant_module_mappings"])
def test_default_mapping_getters_say_what_they_return(name):
    ours, theirs = getattr(tq, name), getattr(taq, name)
    assert ours.__doc__ and ours.__doc__.startswith(theirs.__doc__.strip())


class _AuxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.fc = nn.Linear(6, 6)
        self.aux = nn.Linear(6, 6)  # runs in training mode only
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        y = self.fc(self.quant(x))
        return self.dequant(self.aux(y) if self.training else y)


def test_a_qat_module_left_float_by_convert_keeps_its_weight_fake_quant():
    # the auxiliary head never ran (the model ran in eval mode only): convert leaves its QAT Linear
    # float, and it runs with its weight fake-quant as it trained (the fake-quant's own observer
    # was removed with the output observers, and the head failed at its first call)
    torch.manual_seed(0)
    model = _AuxHead().train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(model)
    p.eval()
    p(_x(1))
    weight_fq = copy.deepcopy(p.aux.weight_fake_quant)
    q = tq.convert(copy.deepcopy(p))
    assert type(q.aux) is type(p.aux)
    h = _x(2)
    with torch.no_grad():
        want = torch.nn.functional.linear(h, weight_fq(p.aux.weight), p.aux.bias)
        assert torch.equal(q.aux(h), want)
        q.train()
        assert q(_x(3)).shape == (4, 5, 6)
