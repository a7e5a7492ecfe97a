"""torch.ao.quantization's eager names on torchquant: each one behaves as torch.ao's (same
qparams, same fake-quant output on the same data), and the names torchquant leaves out are
exactly the ones docs/eager_api.md lists as not provided."""
import copy
import pathlib
import re
import typing
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchquant as tq
from torchquant.nn import intrinsic, qat
from torchquant.nn import quantized as nnq

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated
    taq = pytest.importorskip("torch.ao.quantization")

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "eager_api.md"


@pytest.fixture(autouse=True)
def _quiet_torch_ao():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*")
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated.*")
        yield


def _documented_not_provided():
    text = DOC.read_text()
    section = text.split("## Not provided", 1)[1].split("\n## ", 1)[0]
    names = []
    for line in section.splitlines():
        if not line.startswith("- `"):
            continue
        listed, sep, reason = line[2:].partition(": ")
        assert sep and reason.strip(), f"no reason given on: {line}"
        names += re.findall(r"`([A-Za-z_0-9]+)`", listed)
    return names


def _torch_ao_public_names():
    """torch.ao.quantization's __all__, and the named qconfigs and module-mapping dicts it exports
    outside __all__ (code imports them by name: ``tq.per_channel_dynamic_qconfig``)."""
    extra = {n for n in dir(taq) if not n.startswith("_") and not isinstance(getattr(taq, n), type(taq))
             and (n.endswith("_qconfig") or "_qconfig_" in n or n.endswith("_MAPPINGS")
                  or n == "DEFAULT_MODULE_TO_ACT_POST_PROCESS")}
    return set(taq.__all__) | extra


def test_torch_ao_names_torchquant_lacks_are_the_documented_list():
    missing = {n for n in _torch_ao_public_names() if not hasattr(tq, n)}
    documented = _documented_not_provided()
    assert len(documented) == len(set(documented)), "a name is listed twice"
    assert missing == set(documented), (sorted(missing - set(documented)), sorted(set(documented) - missing))


def _data(seed, shape=(6, 37), offset=0.0, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g) * spread + offset


def _same_qparams(ours, theirs):
    (s1, z1), (s2, z2) = ours, theirs
    assert torch.equal(s1.float(), s2.float()), (s1, s2)
    assert torch.equal(z1.to(z2.dtype), z2), (z1, z2)


@pytest.mark.parametrize("name", [
    "weight_observer_range_neg_127_to_127",
    "per_channel_weight_observer_range_neg_127_to_127",
    "default_float_qparams_observer",
    "default_float_qparams_observer_4bit",
    "default_fixed_qparams_range_0to1_observer",
    "default_fixed_qparams_range_neg1to1_observer",
    "default_symmetric_fixed_qparams_observer",
    "default_affine_fixed_qparams_observer",
])
def test_default_observers_give_torch_ao_qparams(name):
    ours, theirs = getattr(tq, name)(), getattr(taq, name)()
    assert isinstance(ours, tq.ObserverBase) and not isinstance(ours, taq.ObserverBase)
    for attr in ("dtype", "qscheme", "quant_min", "quant_max"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    for seed in range(3):
        x = _data(seed, offset=seed - 1.0)
        ours(x)
        theirs(x)
    _same_qparams(ours.calculate_qparams(), theirs.calculate_qparams())


@pytest.mark.parametrize("name", ["default_placeholder_observer", "default_dynamic_quant_observer",
                                  "default_reuse_input_observer", "default_debug_observer"])
def test_placeholder_observers_match_torch_ao(name):
    ours, theirs = getattr(tq, name)(), getattr(taq, name)()
    for attr in ("dtype", "is_dynamic", "quant_min", "quant_max", "qscheme"):
        assert getattr(ours, attr, None) == getattr(theirs, attr, None), attr
    x = _data(0)
    assert ours(x) is x and theirs(x) is x
    if name == "default_debug_observer":
        assert [torch.equal(a, b) for a, b in zip(ours.get_tensor_value(), theirs.get_tensor_value())] == [True]
        return
    for obs in (ours, theirs):
        with pytest.raises(Exception, match="calculate_qparams should not be called"):
            obs.calculate_qparams()


def test_reuse_input_observer_is_torchquants():
    assert tq.default_reuse_input_observer is tq.ReuseInputObserver
    assert isinstance(tq.ReuseInputObserver(), tq.ObserverBase)


def test_uniform_quantization_observer_base_is_exported_with_torch_ao_hierarchy():
    assert tq.UniformQuantizationObserverBase is tq.observer.UniformQuantizationObserverBase
    for name in ("MinMaxObserver", "MovingAverageMinMaxObserver", "PerChannelMinMaxObserver",
                 "MovingAveragePerChannelMinMaxObserver", "HistogramObserver", "FixedQParamsObserver",
                 "PlaceholderObserver", "NoopObserver", "RecordingObserver", "ReuseInputObserver"):
        assert issubclass(getattr(tq, name), tq.UniformQuantizationObserverBase) == \
            issubclass(getattr(taq, name), taq.UniformQuantizationObserverBase), name


# ---------------------------------------------------------------- fake-quants
FUSED = ["default_fused_act_fake_quant", "default_fused_wt_fake_quant", "default_fused_per_channel_wt_fake_quant",
         "fused_wt_fake_quant_range_neg_127_to_127", "fused_per_channel_wt_fake_quant_range_neg_127_to_127"]


@pytest.mark.parametrize("name", FUSED)
def test_fused_fake_quants_train_on_the_qparams_torch_ao_converts_with(name):
    ours, theirs_fused = getattr(tq, name)(), getattr(taq, name)()
    # torch.ao's FakeQuantize with the same observer: what the fused module computes here.
    theirs = taq.FakeQuantize(**getattr(taq, name).p.keywords)
    assert type(ours) is tq.FusedMovingAvgObsFakeQuantize
    assert ours.fake_quant_enabled.dtype == theirs_fused.fake_quant_enabled.dtype == torch.long
    for attr in ("dtype", "qscheme", "quant_min", "quant_max", "ch_axis", "is_per_channel", "is_symmetric_quant"):
        assert getattr(ours, attr) == getattr(theirs_fused, attr), attr
    for seed in range(6):
        x = _data(seed, offset=0.5 * seed if "act" in name else 0.0).requires_grad_()
        x2 = x.detach().clone().requires_grad_()
        y = ours(x)
        y_ref = theirs(x2)
        theirs_fused(x.detach())
        assert torch.equal(y, y_ref)
        y.sum().backward()
        y_ref.sum().backward()
        assert torch.equal(x.grad, x2.grad)
        app, fapp = ours.activation_post_process, theirs_fused.activation_post_process
        assert torch.equal(app.min_val, fapp.min_val) and torch.equal(app.max_val, fapp.max_val)
        _same_qparams(ours.calculate_qparams(), theirs_fused.calculate_qparams())
        _same_qparams((ours.scale, ours.zero_point), theirs_fused.calculate_qparams())


def test_fused_fake_quant_accepts_moving_average_observers_only():
    with pytest.raises(ValueError, match="observer.*MovingAverageMinMaxObserver.*got MinMaxObserver"):
        tq.FusedMovingAvgObsFakeQuantize(observer=tq.MinMaxObserver)
    with pytest.raises(AssertionError):
        taq.FusedMovingAvgObsFakeQuantize(observer=taq.MinMaxObserver)
    fq = tq.FusedMovingAvgObsFakeQuantize()
    assert (fq.quant_min, fq.quant_max, fq.dtype) == (0, 255, torch.quint8)


def test_fake_quantize_checks_its_range_against_the_dtype_as_torch_ao():
    for kwargs in (dict(quant_min=0, quant_max=255, dtype=torch.qint8),
                   dict(observer=tq.MovingAverageMinMaxObserver.with_args(dtype=torch.qint8), quant_min=-128,
                        quant_max=128),
                   dict(quant_min=5, quant_max=4)):
        with pytest.raises(ValueError, match="quant_m"):
            tq.FakeQuantize(**kwargs)
        theirs = dict(kwargs)
        if "observer" in theirs:
            theirs["observer"] = taq.MovingAverageMinMaxObserver.with_args(dtype=torch.qint8)
        with pytest.raises(AssertionError):
            taq.FakeQuantize(**theirs)


def test_dynamic_fake_quant_matches_torch_ao():
    ours, theirs = tq.default_dynamic_fake_quant(), taq.default_dynamic_fake_quant()
    assert ours.is_dynamic and theirs.is_dynamic
    assert ours.activation_post_process.averaging_constant == theirs.activation_post_process.averaging_constant == 1
    for seed in range(4):
        x = _data(seed, offset=seed)
        assert torch.equal(ours(x), theirs(x))
        _same_qparams((ours.scale, ours.zero_point), (theirs.scale, theirs.zero_point))


def test_histogram_fake_quant_uses_the_full_range():
    ours = tq.default_histogram_fake_quant()
    # torch.ao's default halves the range (reduce_range=True); the same observer at full range:
    theirs = taq.FakeQuantize(observer=taq.HistogramObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                              qscheme=torch.per_tensor_affine, reduce_range=False)
    assert (taq.default_histogram_fake_quant().quant_max, ours.quant_max, theirs.quant_max) == (127, 255, 255)
    for seed in range(3):
        x = _data(seed, shape=(64, 32), offset=0.3)
        y = ours(x)
        theirs(x)
        assert torch.equal(y, torch.fake_quantize_per_tensor_affine(x, float(ours.scale), int(ours.zero_point), 0, 255))
        torch.testing.assert_close(ours.scale, theirs.scale, rtol=0.01, atol=0)


@pytest.mark.parametrize("name", ["default_fixed_qparams_range_0to1_fake_quant",
                                  "default_fixed_qparams_range_neg1to1_fake_quant",
                                  "default_affine_fixed_qparams_fake_quant",
                                  "default_symmetric_fixed_qparams_fake_quant"])
def test_fixed_qparams_fake_quants_match_torch_ao(name):
    ours, theirs = getattr(tq, name)(), getattr(taq, name)()
    assert type(ours) is tq.FixedQParamsFakeQuantize
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    x = torch.linspace(-1.5, 1.5, 1001)
    assert torch.equal(ours(x), theirs(x))
    _same_qparams(ours.calculate_qparams(), theirs.calculate_qparams())
    assert ours.scale is ours.activation_post_process.scale
    # torch.ao's state_dict loads unchanged.
    fresh = getattr(tq, name)()
    fresh.load_state_dict(theirs.state_dict())
    assert torch.equal(fresh(x), theirs(x))


def test_fixed_qparams_fake_quant_needs_a_fixed_qparams_observer():
    with pytest.raises(ValueError, match="FixedQParamsObserver, got MovingAverageMinMaxObserver"):
        tq.FixedQParamsFakeQuantize(observer=tq.MovingAverageMinMaxObserver)


def _spec(ctr):
    """A with_args constructor of either library as (class name, keywords), classes by name."""
    if hasattr(ctr, "p"):
        cls, kwargs = ctr.p.func, ctr.p.keywords
    elif hasattr(ctr, "cls"):
        cls, kwargs = ctr.cls, ctr.kwargs
    else:
        return ctr.__name__
    return cls.__name__, {k: _spec(v) if callable(v) else v for k, v in kwargs.items()}


class QATNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant = tq.QuantStub()
        self.fc1 = nn.Linear(32, 64)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 4)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc2(self.relu1(self.fc1(self.quant(x)))))


def test_qat_with_torch_aos_default_qat_qconfig_trains_and_converts():
    # torch.ao's get_default_qat_qconfig("x86") (version 1), spelled with torchquant's names.
    qconfig = tq.QConfig(
        activation=tq.FusedMovingAvgObsFakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0,
                                                              quant_max=255, reduce_range=True),
        weight=tq.default_fused_per_channel_wt_fake_quant)
    ao = taq.get_default_qat_qconfig("x86")
    assert _spec(qconfig.activation) == _spec(ao.activation) and _spec(qconfig.weight) == _spec(ao.weight)

    torch.manual_seed(0)
    m = QATNet().train()
    m.qconfig = qconfig
    m = tq.fuse_modules_qat(m, [["fc1", "relu1"]])
    p = tq.prepare_qat(m)
    assert type(p.fc1) is qat.LinearReLU and type(p.fc2) is qat.Linear
    assert type(p.fc1.weight_fake_quant) is tq.FusedMovingAvgObsFakeQuantize
    x = torch.randn(256, 32)
    target = x[:, :4].argmax(1)
    opt = torch.optim.SGD(p.parameters(), lr=0.2)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(p(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    p.eval()
    p.apply(tq.disable_observer)
    q = tq.convert(p)
    assert type(q.fc1) is nnq.LinearReLU and type(q.fc2) is nnq.Linear and type(q.quant) is nnq.Quantize
    assert torch.equal(q.fc2.scale, p.fc2.activation_post_process.calculate_qparams()[0])
    assert torch.equal(q.fc1.weight_scale, p.fc1.weight_fake_quant.calculate_qparams()[0])
    with torch.no_grad():
        # The QAT model fake-quantizes with the qparams convert uses, so the outputs agree to
        # within a step (float vs int32 accumulation) once the int8 output is clipped to the
        # fake-quant's range: with reduce_range=True that is [0, 127], while the quint8 output
        # keeps [0, 255], as torch.ao's quantized Linear does.
        fq = p.fc2.activation_post_process
        lo, hi = ((torch.tensor([fq.quant_min, fq.quant_max]) - fq.zero_point) * fq.scale).tolist()
        diff = (q(x[:64]).clamp(lo, hi) - p(x[:64])).abs().max()
    assert (fq.quant_min, fq.quant_max) == (0, 127)
    assert diff <= 1.01 * q.fc2.scale.item(), diff


class _LinearBnNet(nn.Module):
    def __init__(self, lib):
        super().__init__()
        self.quant, self.fc1, self.bn1 = lib.QuantStub(), nn.Linear(16, 32), nn.BatchNorm1d(32)
        self.fc2, self.dequant = nn.Linear(32, 4), lib.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.fc2(self.bn1(self.fc1(self.quant(x)))))


def test_qat_linear_bn_trains_as_torch_aos_and_converts_with_the_batchnorm_folded():
    # fuse_modules_qat [Linear, BatchNorm1d] -> LinearBn1d -> QAT LinearBn1d -> int8 Linear.
    def run(lib, steps=6):
        torch.manual_seed(0)
        m = _LinearBnNet(lib).train()
        m = lib.fuse_modules_qat(m, [["fc1", "bn1"]])
        # The same qconfig spelled with each library's names (FakeQuantize, not the fused one,
        # whose qparams rule differs on purpose: docs/eager_api.md).
        m.qconfig = lib.QConfig(
            activation=lib.FakeQuantize.with_args(observer=lib.MovingAverageMinMaxObserver, quant_min=0,
                                                  quant_max=255),
            weight=lib.default_weight_fake_quant)
        p = lib.prepare_qat(m)
        opt = torch.optim.SGD(p.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(1)
        outs = []
        for i in range(steps):
            if i == steps - 2:
                p.apply(lib.disable_observer if lib is tq else taq.disable_observer)
                p.fc1.freeze_bn_stats()  # torch.ao's freeze_bn_stats function skips LinearBn1d
            x = torch.randn(64, 16, generator=g)
            y = p(x)
            outs.append(y.detach())
            loss = y.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return p, outs

    p, ours = run(tq)
    p_ao, theirs = run(taq)
    assert type(p.fc1) is qat.LinearBn1d and type(p_ao.fc1).__name__ == "LinearBn1d"
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert p.fc1.freeze_bn and not p.fc1.bn.training
    p.fc1.update_bn_stats()
    p.apply(qat.freeze_bn_stats)  # torchquant's function covers it
    assert p.fc1.freeze_bn and not p.fc1.bn.training
    p.eval()
    q = tq.convert(p)
    assert type(q.fc1) is nnq.Linear
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = p(x)
        got = q(x)
    assert (got - want).abs().max() <= 2.01 * q.fc2.scale.item()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q_ao = taq.convert(p_ao.eval())
    # The folded weight, quantized on the observer's range as torch.ao's convert does (within a
    # step: the two trainings agree to float rounding, not bit for bit).
    step = q.fc1.weight_scale.max().item()
    torch.testing.assert_close(q.fc1.weight.dequantize(), q_ao.fc1.weight().dequantize(), atol=1.01 * step, rtol=0)
    torch.testing.assert_close(q.fc1.bias, q_ao.fc1.bias().detach(), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------- qconfig helpers
def _pairs(lib):
    o = lib
    fq = lib.FakeQuantize.with_args(observer=o.MovingAverageMinMaxObserver.with_args(averaging_constant=0.1),
                                    quant_min=0, quant_max=255)
    fq_same = lib.FakeQuantize.with_args(observer=o.MovingAverageMinMaxObserver.with_args(averaging_constant=0.1),
                                         quant_min=0, quant_max=255)
    fq_other = lib.FakeQuantize.with_args(observer=o.MovingAverageMinMaxObserver.with_args(averaging_constant=0.2),
                                          quant_min=0, quant_max=255)
    act = o.MinMaxObserver.with_args(dtype=torch.quint8)
    act_same = o.MinMaxObserver.with_args(dtype=torch.quint8)
    act_other = o.MinMaxObserver.with_args(dtype=torch.qint8)
    w = o.default_per_channel_weight_observer
    Q = lib.QConfig
    return [
        (Q(act, w), Q(act_same, w)),
        (Q(act, w), Q(act_other, w)),
        (Q(act, w), Q(act, o.default_weight_observer)),
        (Q(fq, w), Q(fq_same, w)),
        (Q(fq, w), Q(fq_other, w)),
        (Q(o.MinMaxObserver, w), Q(o.MinMaxObserver, w)),
        (Q(act, w), None),
        (None, None),
    ]


def test_qconfig_equals_answers_as_torch_ao():
    ours = [tq.qconfig_equals(a, b) for a, b in _pairs(tq)]
    theirs = [taq.qconfig_equals(a, b) for a, b in _pairs(taq)]
    assert ours == theirs == [True, False, False, True, False, True, False, True]
    assert tq.qconfig_equals(tq.get_default_qat_qconfig("x86"), tq.default_qat_qconfig)
    assert not tq.qconfig_equals(tq.get_default_qat_qconfig("qnnpack"), tq.default_qat_qconfig)


def test_type_aliases_and_quant_type():
    assert typing.get_args(tq.QConfigAny) == (tq.QConfig, type(None))
    assert set(typing.get_args(tq.ObserverOrFakeQuantize)) == {tq.ObserverBase, tq.FakeQuantizeBase}
    assert [(t.name, int(t)) for t in tq.QuantType] == [(t.name, int(t)) for t in taq.QuantType]


# ---------------------------------------------------------------- model-level helpers
class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(32, 8)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def test_add_quant_dequant_wraps_leaves_as_torch_ao():
    torch.manual_seed(1)
    base = Plain().eval()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    ours.qconfig = tq.default_qconfig
    theirs.qconfig = taq.default_qconfig
    tq.propagate_qconfig_(ours)
    taq.propagate_qconfig_(theirs)
    ours.relu.qconfig = theirs.relu.qconfig = None
    ours = tq.add_quant_dequant(ours)
    theirs = taq.add_quant_dequant(theirs)
    structure = lambda m: [(n, type(c).__name__) for n, c in m.named_modules()]  # noqa: E731
    assert structure(ours) == structure(theirs)
    assert type(ours.fc1) is tq.QuantWrapper and type(ours.relu) is nn.ReLU
    prepared = tq.prepare(ours)
    x = torch.randn(64, 16)
    prepared(x)
    q = tq.convert(prepared)
    assert type(q.fc1.module) is nnq.Linear and type(q.fc1.quant) is nnq.Quantize
    y = q(x)
    assert type(y) is torch.Tensor
    torch.testing.assert_close(y, base(x), atol=0.05, rtol=0)
    # A leaf with a qconfig comes back wrapped.
    leaf = nn.Linear(4, 4)
    leaf.qconfig = tq.default_qconfig
    assert type(tq.add_quant_dequant(leaf)) is tq.QuantWrapper


def _prepared(seed=2, qconfig=None):
    torch.manual_seed(seed)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4), tq.DeQuantStub()).eval()
    m.qconfig = qconfig or tq.default_qconfig
    p = tq.prepare(m)
    p(torch.randn(32, 16))
    return p


def test_swap_module_is_converts_step_and_keeps_user_hooks():
    p = _prepared()
    calls = []
    p[3].register_forward_hook(lambda mod, inp, out: calls.append(type(mod).__name__))
    mapping = tq.get_default_static_quant_module_mappings()
    new = tq.swap_module(p[3], mapping, {})
    assert type(new) is nnq.Linear
    q = tq.convert(p)
    h = q[2](q[1](q[0](torch.randn(5, 16))))
    assert torch.equal(new(h).dequantize(), q[3](h).dequantize())
    # The user's hook moved to both int8 modules (swap_module's and convert's); the observer's did not.
    assert calls == ["Linear", "Linear"]
    relu = nn.ReLU()
    assert tq.swap_module(relu, mapping, {}) is relu  # no qconfig
    conv = nn.GRU(2, 2)  # a module type with no int8 version
    conv.qconfig = tq.default_qconfig
    assert tq.swap_module(conv, mapping, {}) is conv  # nothing to swap it for

    class Custom(nn.Module):
        @classmethod
        def from_observed(cls, mod):
            out = cls()
            out.source = mod
            return out

    conv_out = tq.swap_module(conv, mapping, {nn.GRU: Custom})
    assert type(conv_out) is Custom and conv_out.source is conv


@pytest.mark.cuda
def test_swap_module_keeps_the_device_and_refuses_two():
    p = _prepared().to("cuda")
    new = tq.swap_module(p[3], tq.get_default_static_quant_module_mappings(), {})
    assert type(new) is nnq.Linear and new.qweight.device.type == "cuda"
    p[3].bias.data = p[3].bias.data.cpu()
    with pytest.raises(ValueError, match=r"several devices \['cpu', 'cuda:0'\]"):
        tq.swap_module(p[3], tq.get_default_static_quant_module_mappings(), {})


def test_default_eval_fn_calibrates_as_a_loop():
    torch.manual_seed(3)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).eval()
    m.qconfig = tq.default_qconfig
    batches = [(torch.randn(8, 16), torch.zeros(8)) for _ in range(3)]
    a = tq.quantize(m, tq.default_eval_fn, [batches])
    p = tq.prepare(m)
    for x, _ in batches:
        p(x)
    b = tq.convert(p)
    x = torch.randn(4, 16)
    assert torch.equal(a(x), b(x))
    seen_ours, seen_theirs = [], []
    tq.default_eval_fn(seen_ours.append, batches)
    taq.default_eval_fn(seen_theirs.append, batches)
    assert len(seen_ours) == len(seen_theirs) == 3 and all(s is t for s, t in zip(seen_ours, seen_theirs))


def test_observer_state_dict_round_trips_and_reads_torch_aos():
    ours = _prepared(qconfig=tq.QConfig(activation=tq.MinMaxObserver.with_args(eps=2**-12),
                                        weight=tq.default_weight_observer))
    # The same model and data through torch.ao.
    torch.manual_seed(2)
    m = nn.Sequential(taq.QuantStub(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4), taq.DeQuantStub()).eval()
    m.qconfig = taq.QConfig(activation=taq.MinMaxObserver.with_args(eps=2**-12), weight=taq.default_weight_observer)
    theirs = taq.prepare(m)
    theirs(torch.randn(32, 16))

    sd = tq.get_observer_state_dict(ours)
    ao_sd = taq.get_observer_state_dict(theirs)
    # (beside torch.ao's entries: the float-input range each future int8 layer saw)
    ranges = {f"{n}.input_range.{k}" for n, m in ours.named_modules() if "_tq_input_range" in m.__dict__
              for k in ("min_val", "max_val")}
    assert ranges and set(sd) == set(ao_sd) | ranges | {k.replace("min_val", "nonfinite_count") for k in ao_sd
                                                         if k.endswith("min_val")}
    assert all(torch.equal(sd[k], ao_sd[k]) for k in ao_sd)

    kept = {k: v.clone() for k, v in sd.items()}
    fresh = tq.prepare(_unprepared())
    tq.load_observer_state_dict(fresh, sd)
    assert all(torch.equal(sd[k], kept[k]) for k in kept)  # the dict is not written to
    assert float(fresh[1].activation_post_process.eps) == 2**-12
    _same_qparams(fresh[3].activation_post_process.calculate_qparams(),
                  ours[3].activation_post_process.calculate_qparams())

    from_ao = tq.prepare(_unprepared())
    tq.load_observer_state_dict(from_ao, ao_sd)
    for i in (0, 1, 3):
        _same_qparams(from_ao[i].activation_post_process.calculate_qparams(),
                      theirs[i].activation_post_process.calculate_qparams())

    partial = {k: v for k, v in sd.items() if not k.startswith("3.")}
    with pytest.raises(RuntimeError, match=r"missing keys.*3\.activation_post_process\.min_val"):
        tq.load_observer_state_dict(tq.prepare(_unprepared()), partial)
    extra = {**sd, "1.activation_post_process.bogus": torch.zeros(1)}
    with pytest.raises(RuntimeError, match=r"unexpected keys.*1\.activation_post_process\.bogus"):
        tq.load_observer_state_dict(tq.prepare(_unprepared()), extra)
    # a dict from a model with more observers (another layer): its entries are named, not dropped
    more = {**sd, "5.activation_post_process.min_val": torch.zeros(())}
    with pytest.raises(RuntimeError, match=r"observers the model does not have: \['5\.activation_post_process\.min_val'\]"):
        tq.load_observer_state_dict(tq.prepare(_unprepared()), more)


def _unprepared():
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.QConfig(activation=tq.MinMaxObserver.with_args(eps=2**-12), weight=tq.default_weight_observer)
    return m


def test_observer_state_dict_of_a_qat_model_loads():
    torch.manual_seed(4)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).train()
    m.qconfig = tq.get_default_qat_qconfig("x86")
    a, b = tq.prepare_qat(m), tq.prepare_qat(m)
    a(torch.randn(8, 16))
    tq.load_observer_state_dict(b, tq.get_observer_state_dict(a))
    for name in ("0.activation_post_process", "1.activation_post_process", "1.weight_fake_quant"):
        ma, mb = a.get_submodule(name), b.get_submodule(name)
        _same_qparams(mb.calculate_qparams(), ma.calculate_qparams())


def test_module_class_getters():
    assert tq.get_static_quant_module_class(nn.Linear) is nnq.Linear
    assert tq.get_static_quant_module_class(tq.QuantStub) is nnq.Quantize
    assert tq.get_static_quant_module_class(intrinsic.LinearReLU) is nnq.LinearReLU
    assert tq.get_dynamic_quant_module_class(nn.Linear) is nnq.DynamicLinear

    class MyLinear(nn.Linear):
        pass

    assert tq.get_static_quant_module_class(MyLinear, {MyLinear: nnq.Linear}) is nnq.Linear
    with pytest.raises(ValueError, match="float_module_class.*LSTM"):
        tq.get_static_quant_module_class(nn.LSTM)
    with pytest.raises(ValueError, match="float_module_class.*MyLinear"):
        tq.get_dynamic_quant_module_class(MyLinear)
    with pytest.raises(NotImplementedError, match="is_reference"):
        tq.get_static_quant_module_class(nn.Linear, is_reference=True)
    # torch.ao's answer for the same float class has the same role.
    assert taq.get_static_quant_module_class(nn.Linear).__name__ == "Linear"
    with pytest.raises(AssertionError):
        taq.get_static_quant_module_class(MyLinear)


def test_combined_dict_propagation_list_and_no_observer_set():
    d, extra = {1: "a", 2: "b"}, {2: "c", 3: "d"}
    from torch.ao.quantization.utils import get_combined_dict  # in torch.ao's __all__, not its namespace

    assert tq.get_combined_dict(d, extra) == get_combined_dict(d, extra) == {1: "a", 2: "c", 3: "d"}
    assert d == {1: "a", 2: "b"}
    ours = tq.get_default_qconfig_propagation_list()
    assert {nn.Linear, nn.Sequential, tq.QuantStub, tq.DeQuantStub, intrinsic.LinearReLU} <= ours
    assert {nn.Linear, nn.Sequential} <= taq.get_default_qconfig_propagation_list()
    assert tq.no_observer_set() == set()
    # Empty is the truth: torchquant swaps none of the modules torch.ao lets observe themselves.
    mapped = set(tq.get_default_static_quant_module_mappings()) | set(tq.get_default_qat_module_mappings()) \
        | set(tq.get_default_dynamic_quant_module_mappings())
    assert taq.no_observer_set() and not (taq.no_observer_set() & mapped)


def test_fuse_modules_qat_as_torch_ao():
    torch.manual_seed(5)
    base = Plain().train()
    ours = tq.fuse_modules_qat(base, [["fc1", "relu"]])
    theirs = taq.fuse_modules_qat(base, [["fc1", "relu"]])
    assert type(base.fc1) is nn.Linear  # not in place
    assert [type(c).__name__ for c in ours.children()] == [type(c).__name__ for c in theirs.children()]
    assert type(ours.fc1) is intrinsic.LinearReLU and ours.fc1.training
    x = torch.randn(4, 16)
    assert torch.equal(ours(x), theirs(x))
    ours.qconfig = tq.default_qat_qconfig
    p = tq.prepare_qat(ours)
    assert type(p.fc1) is qat.LinearReLU


def test_fake_quantize_with_float_qparams_observer_matches_torch_ao():
    # torch.ao's embedding fake-quant: per-row float scale and zero point.
    x = _data(11, (10, 6)) * 2
    kw = dict(qscheme=torch.per_channel_affine_float_qparams, dtype=torch.quint8, quant_min=0, quant_max=255,
              ch_axis=0)
    ours = tq.FakeQuantize(observer=tq.PerChannelMinMaxObserver, **kw)
    theirs = taq.FakeQuantize(observer=taq.PerChannelMinMaxObserver, **kw)
    assert torch.equal(ours(x), theirs(x))
    assert ours.zero_point.dtype == theirs.zero_point.dtype == torch.float32
    assert torch.equal(ours.zero_point, theirs.zero_point) and torch.equal(ours.scale, theirs.scale.float())


@pytest.mark.parametrize("name", [
    "default_symmetric_qnnpack_qconfig",
    "default_per_channel_symmetric_qnnpack_qconfig",
    "default_symmetric_qnnpack_qat_qconfig",
    "default_per_channel_symmetric_qnnpack_qat_qconfig",
    "per_channel_dynamic_qconfig",
])
def test_named_qconfigs_observe_as_torch_aos(name):
    ours, theirs = getattr(tq, name), getattr(taq, name)
    fields = ("weight",) if name == "per_channel_dynamic_qconfig" else ("activation", "weight")
    for field in fields:
        a, b = getattr(ours, field)(), getattr(theirs, field)()
        x = _data(3, (8, 37), spread=2.0)
        a(x)
        b(x)
        _same_qparams(a.calculate_qparams(), b.calculate_qparams())


def test_named_qconfigs_with_deliberate_differences():
    # Full 8-bit activations and per-channel weights, as torchquant's default_qconfig / default_qat_qconfig.
    x = _data(4, (8, 37), spread=2.0)
    act = tq.default_per_channel_qconfig.activation()
    act(x)
    assert (act.quant_min, act.quant_max) == (0, 255)
    assert tq.default_per_channel_qconfig.weight().qscheme == torch.per_channel_symmetric
    assert tq.default_qat_qconfig_v2.weight().qscheme == torch.per_channel_symmetric
    assert isinstance(tq.default_qat_qconfig_v2.activation(), tq.FusedMovingAvgObsFakeQuantize)
    assert tq.DEFAULT_STATIC_QUANT_MODULE_MAPPINGS[nn.Linear] is nnq.Linear
    assert tq.DEFAULT_DYNAMIC_QUANT_MODULE_MAPPINGS[nn.LSTM] is tq.nn.quantized.dynamic.LSTM
    assert tq.DEFAULT_QAT_MODULE_MAPPINGS[nn.Linear] is qat.Linear
    emb = tq.get_embedding_static_quant_module_mappings()  # torch.ao's: the static mapping plus the QAT tables
    assert emb[nn.Linear] is nnq.Linear and emb[nn.Embedding] is tq.nn.quantized.Embedding
    assert emb[qat.Embedding] is tq.nn.quantized.Embedding and emb[qat.EmbeddingBag] is tq.nn.quantized.EmbeddingBag


@pytest.mark.parametrize("fuser", ["torchquant", "torch.ao"])
def test_linear_bn_fused_for_qat_but_prepared_static_folds_its_running_statistics(fuser):
    import torch.ao.quantization as ao

    torch.manual_seed(0)
    m = _LinearBnNet(tq)
    m.train()
    m(torch.randn(32, 16))  # running statistics away from their initial values
    m.eval()
    f = (tq if fuser == "torchquant" else ao).fuse_modules_qat(m, [["fc1", "bn1"]])
    assert type(f.fc1).__module__.startswith("torch.ao" if fuser == "torch.ao" else "torchquant")
    f.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no module left in float
        p = tq.prepare(f)
    tq.calibrate(p, [torch.randn(64, 16)], progress=False)
    q = tq.convert(p)
    assert type(q.fc1) is nnq.Linear
    folded = tq.fuse_modules(m, [["fc1", "bn1"]])
    x = torch.randn(8, 16)
    with torch.no_grad():
        assert (q(x) - folded(x)).abs().max() < 0.1
    assert m.fc1.training is False and m.bn1.training is False


@pytest.mark.parametrize("cls", [tq.MinMaxObserver, tq.HistogramObserver])
@pytest.mark.parametrize("dtype,qmin,qmax", [(torch.quint8, 0, 1023), (torch.qint8, 0, 255), (torch.qint8, -200, 50),
                                             (torch.quint4x2, 0, 255)])
def test_observer_refuses_a_range_its_dtype_cannot_hold(cls, dtype, qmin, qmax):
    # torch.ao accepts these and the int8 model saturates (or fails at its first call)
    if cls is tq.HistogramObserver and dtype == torch.quint4x2:
        pytest.skip("the histogram observer is for activations")
    with pytest.raises(ValueError, match=rf"quant_min={qmin}, quant_max={qmax} do not fit dtype {dtype}"):
        cls(dtype=dtype, quant_min=qmin, quant_max=qmax)


def test_per_channel_observer_refuses_statistics_of_mismatched_shapes():
    o = tq.PerChannelMinMaxObserver()
    o(torch.randn(3, 4))
    for key, bad, match in (("min_val", torch.zeros(6), "min_val has 6 channels and max_val 3"),
                            ("max_val", torch.zeros(3, 1), r"max_val has shape \(3, 1\)")):
        sd = o.state_dict()
        sd[key] = bad
        fresh = tq.PerChannelMinMaxObserver()
        with pytest.raises(RuntimeError, match=match):
            fresh.load_state_dict(sd)
        assert fresh.min_val.numel() == 0  # left as it was


def test_learnable_fake_quant_holds_a_symmetric_zero_point_and_converts():
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).train()
    m.qconfig = tq.learnable_qat_qconfig
    p = tq.prepare_qat(m)
    opt = torch.optim.Adam(p.parameters(), lr=0.05)
    x, t = torch.randn(64, 16), torch.randn(64, 8)
    p(x)
    p.apply(tq.disable_observer)
    first = float(((p(x) - t) ** 2).mean())
    for _ in range(100):
        opt.zero_grad()
        ((p(x) - t) ** 2).mean().backward()
        opt.step()
    assert float(((p(x) - t) ** 2).mean()) < first
    wfq = p[1].weight_fake_quant
    assert wfq.qscheme == torch.per_channel_symmetric and torch.equal(wfq.zero_point.detach(), torch.zeros(8))
    assert wfq.zero_point.grad is None  # not trained
    assert p[0].activation_post_process.zero_point.grad is not None  # the affine one is
    q = tq.convert(copy.deepcopy(p).eval())
    assert isinstance(q[1], tq.nn.quantized.Linear)
    # a checkpoint of the trained (per-channel) model loads into a freshly prepared one
    torch.manual_seed(0)
    fresh = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).train()
    fresh.qconfig = tq.learnable_qat_qconfig
    fresh = tq.prepare_qat(fresh)
    fresh.load_state_dict(p.state_dict())
    assert torch.equal(fresh(x), p(x))


def test_torch_ao_qat_qconfig_in_torchquant_prepare_qat():
    # torch.ao's fake-quants are not walked into (no observer on their observer) and
    # torchquant's switches reach them.
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).train()
    m.qconfig = taq.get_default_qat_qconfig("x86")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = tq.prepare_qat(m)
    assert not [w for w in caught if "no int8 implementation" in str(w.message)]
    assert not [k for k in p.state_dict() if "weight_fake_quant.activation_post_process.activation_post_process" in k]
    p(torch.randn(4, 16))
    p.apply(tq.disable_observer)
    p.apply(tq.disable_fake_quant)
    for fq in (p[0].activation_post_process, p[1].weight_fake_quant):
        assert int(fq.observer_enabled) == 0 and int(fq.fake_quant_enabled) == 0
    p.apply(tq.enable_fake_quant)
    assert int(p[1].weight_fake_quant.fake_quant_enabled) == 1
    assert isinstance(tq.convert(p.eval())[1], tq.nn.quantized.Linear)


def test_fake_quant_with_args_takes_positional_and_callable_arguments():
    fq = tq.FakeQuantize.with_args(quant_min=0, quant_max=255)(tq.MinMaxObserver)
    assert isinstance(fq.activation_post_process, tq.MinMaxObserver) and fq.quant_max == 255
    calls = []
    ctr = tq.FakeQuantize.with_args(observer=tq.MinMaxObserver).with_callable_args(
        quant_min=lambda: calls.append(1) or 0, quant_max=lambda: 127)
    assert ctr().quant_max == 127 and ctr(quant_max=63).quant_max == 63 and len(calls) == 2
    assert tq.FakeQuantize.with_callable_args(quant_min=lambda: 0, quant_max=lambda: 15)().quant_max == 15


def _ao_qat_qconfig():
    """torch.ao's fake-quants with torchquant's default QAT recipe (full-range uint8 activations,
    per-channel symmetric int8 weights): the same arithmetic step for step."""
    return taq.QConfig(
        activation=taq.FakeQuantize.with_args(observer=taq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                                              dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                                              reduce_range=False),
        weight=taq.FakeQuantize.with_args(observer=taq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                          quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                          ch_axis=0))


class _Reused(nn.Module):
    """One activation module called three times and one conv called twice in a forward (a
    fake-quant runs again before the backward of its first call)."""

    def __init__(self, lib):
        super().__init__()
        self.quant, self.dequant = lib.QuantStub(), lib.DeQuantStub()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1)
        self.act = nn.Hardswish()

    def forward(self, x):
        x = self.act(self.conv1(self.quant(x)))
        x = self.act(self.conv2(x))
        return self.dequant(self.act(self.conv2(x)))


def test_qat_modules_called_twice_in_one_forward_train_as_torch_aos():
    # The backward of a fake-quant read its module's scale buffer, which the next call had
    # updated in place: "modified by an inplace operation" at the first backward().
    results = []
    for lib, qconfig in ((taq, _ao_qat_qconfig()), (tq, tq.get_default_qat_qconfig("x86"))):
        torch.manual_seed(0)
        model = _Reused(lib).train()
        model.qconfig = qconfig
        p = lib.prepare_qat(model)
        opt = torch.optim.SGD(p.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(1)
        for _ in range(3):
            opt.zero_grad()
            y = p(torch.randn(2, 3, 8, 8, generator=gen))
            y.pow(2).mean().backward()
            opt.step()
        results.append((y.detach(), p.conv1.weight.grad, p.conv2.weight.grad, p.conv2.weight.detach()))
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_learnable_fake_quant_called_twice_in_one_forward_backpropagates():
    torch.manual_seed(0)
    fq = tq.LearnableFakeQuantize(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    x1, x2 = torch.randn(64, requires_grad=True), 3 * torch.randn(64)
    y1 = fq(x1)
    s1 = fq.scale.detach().clone()
    y2 = fq(x2)  # the observer step moves the scale (through .data) before the first backward
    assert not torch.equal(s1, fq.scale.detach())
    y1.sum().backward()
    # the gradients are those of the first call alone, on its own qparams
    ref = tq.LearnableFakeQuantize(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255)
    xr = x1.detach().clone().requires_grad_(True)
    ref(xr).sum().backward()
    assert torch.equal(x1.grad, xr.grad)
    assert torch.isfinite(fq.scale.grad).all() and torch.equal(fq.scale.grad, ref.scale.grad)
    del y2


class _PreActivation(nn.Module):
    def __init__(self, lib):
        super().__init__()
        self.quant, self.dequant = lib.QuantStub(), lib.DeQuantStub()
        self.bn, self.relu, self.conv = nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        return self.dequant(self.conv(self.relu(self.bn(self.quant(x)))))


@pytest.mark.parametrize("fuser", ["torchquant", "torch.ao"])
def test_bn_relu_fused_for_qat_fake_quantizes_once_as_it_converts(fuser):
    # The fused [BatchNorm, ReLU] (an nn.Sequential) ran its observer child as a third part and
    # again from the hook, and its BatchNorm had a fake-quant of its own that convert never has.
    torch.manual_seed(0)
    model = _PreActivation(tq).train()
    assert tq.find_fusable_modules(model, qat=True) == [["bn", "relu"]]
    fused = (tq.fuse_modules_qat if fuser == "torchquant" else taq.fuse_modules_qat)(model, [["bn", "relu"]])
    fused.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(fused)
    assert type(p.bn) is tq.nn.intrinsic.BNReLU2d and not hasattr(p.bn[0], "activation_post_process")
    calls = []
    p.bn.activation_post_process.register_forward_hook(lambda *a: calls.append(1))
    opt = torch.optim.SGD(p.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        p(torch.randn(2, 4, 8, 8)).pow(2).mean().backward()
        opt.step()
    assert len(calls) == 3
    p.apply(tq.disable_observer)
    p.eval()
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        want = p(x)
        got = tq.convert(copy.deepcopy(p))(x)
    assert torch.equal(got, want)


def test_torch_aos_fused_linear_relu_prepares_and_converts_as_torchquants():
    # torch.ao's LinearReLU stayed an nn.Sequential: observed before its ReLU (zero point ~142
    # after convert, half the codes unused) and, for QAT, not mapped (keys "1.0.weight").
    def net():
        torch.manual_seed(0)
        return nn.Sequential(tq.QuantStub(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4), tq.DeQuantStub())

    calib = [torch.randn(16, 8) for _ in range(3)]
    x = torch.randn(5, 8)
    outs = []
    for fuse in (tq.fuse_modules, taq.fuse_modules):
        f = fuse(net().eval(), [["1", "2"]])
        f.qconfig = tq.get_default_qconfig("x86")
        p = tq.prepare(f)
        for c in calib:
            p(c)
        q = tq.convert(p)
        assert type(q[1]) is nnq.LinearReLU and int(q[1].zero_point) == 0
        outs.append(q(x))
    assert torch.equal(*outs)
    f = taq.fuse_modules_qat(net().train(), [["1", "2"]])
    f.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(f)
    assert type(p[1]) is qat.LinearReLU and "1.weight" in p.state_dict()


@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_qat_conv_bn_and_linear_bn_with_a_non_affine_batchnorm(kind):
    # torch.ao refuses to fuse a BatchNorm with affine=False; torchquant folds it as weight 1,
    # bias 0 (the first forward raised a TypeError on None / Tensor).
    torch.manual_seed(0)
    if kind == "conv":
        model = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False), nn.ReLU(),
                              tq.DeQuantStub())
        shape = (4, 3, 8, 8)
    else:
        model = nn.Sequential(tq.QuantStub(), nn.Linear(6, 4), nn.BatchNorm1d(4, affine=False), tq.DeQuantStub())
        shape = (16, 6)
    groups = tq.find_fusable_modules(model.train(), qat=True)
    assert groups == ([["1", "2", "3"]] if kind == "conv" else [["1", "2"]])
    model = tq.fuse_modules_qat(model, groups)
    model.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(model)
    for _ in range(3):
        p(torch.randn(*shape)).pow(2).mean().backward()
    assert p[1].bn.weight is None and torch.isfinite(p[1].weight.grad).all()
    p.apply(tq.disable_observer)
    p.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        want = p(x)
        got = tq.convert(copy.deepcopy(p))(x)
    step = float(p[1].activation_post_process.scale)
    assert (got - want).abs().max() <= 1.01 * step


def test_hardsigmoid_trains_on_the_fixed_qparams_it_converts_with():
    torch.manual_seed(0)
    model = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.Hardsigmoid(), tq.DeQuantStub()).train()
    model.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(model)
    fq = p[2].activation_post_process
    assert isinstance(fq, tq.FixedQParamsFakeQuantize)
    assert float(fq.scale) == 1 / 256 and int(fq.zero_point) == 0
    for _ in range(3):
        p(3 * torch.randn(2, 3, 8, 8)).pow(2).mean().backward()
    p.apply(tq.disable_observer)
    p.eval()
    x = 3 * torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(tq.convert(copy.deepcopy(p))(x), p(x))
    # static prepare of an eval-mode model: nothing to observe, as before
    q = tq.prepare(copy.deepcopy(model).eval())
    assert not hasattr(q[2], "activation_post_process")


def test_torch_ao_fused_namespaces_port_by_a_name_swap():
    # torch.ao.nn.intrinsic.qat / .quantized / .quantized.dynamic: the same modules as
    # torchquant.nn.qat / .quantized / .quantized.dynamic, importable under torch.ao's paths
    import importlib

    import torch.ao.nn.intrinsic.qat as ao_iqat
    import torch.ao.nn.intrinsic.quantized as ao_iq

    iqat = importlib.import_module("torchquant.nn.intrinsic.qat")
    iq = importlib.import_module("torchquant.nn.intrinsic.quantized")
    iqd = importlib.import_module("torchquant.nn.intrinsic.quantized.dynamic")
    assert iqat is tq.nn.qat and tq.nn.intrinsic.qat is tq.nn.qat
    assert iq is tq.nn.quantized and tq.nn.intrinsic.quantized is tq.nn.quantized
    assert iqd is tq.nn.quantized.dynamic
    assert [n for n in dir(ao_iqat) if n[0].isupper() or n.endswith("_stats") if not hasattr(iqat, n)] == []
    missing = {n for n in ao_iq.__all__ if not hasattr(iq, n)}
    assert missing == {"LinearLeakyReLU", "LinearTanh", "ConvAdd2d", "ConvAddReLU2d"}
    # the static tutorial's QAT loop, with the paths swapped
    model = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), tq.DeQuantStub())
    tq.fuse_modules_qat(model.train(), [["1", "2", "3"]], inplace=True)
    model.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(model)
    p(torch.randn(2, 3, 8, 8))
    p.apply(iqat.freeze_bn_stats)
    mean = p[1].bn.running_mean.clone()
    p(torch.randn(2, 3, 8, 8))
    assert torch.equal(p[1].bn.running_mean, mean)
    assert type(tq.convert(p.eval())[1]) is iq.ConvReLU2d


@pytest.mark.parametrize("inplace", [False, True])
def test_hardsigmoid_converts_with_the_fixed_qparams_whatever_inplace(inplace):
    # nn.Hardsigmoid(inplace=True): the int8 module still returns the fixed scale 1/256 (written
    # into its input, the result kept the input's qparams: about 10 codes over [0, 1])
    torch.manual_seed(0)
    model = nn.Sequential(tq.QuantStub(), nn.Hardsigmoid(inplace=inplace), tq.DeQuantStub()).eval()
    model.qconfig = tq.get_default_qconfig("x86")
    x = 4 * torch.randn(2, 3, 5, 6)
    p = tq.prepare(model)
    p(x)
    c = tq.convert(p)
    q = c[0](x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = c[1](q)
    assert float(out.scale) == 1 / 256 and int(out.zero_point) == 0
    assert torch.equal(out.dequantize(), torch.fake_quantize_per_tensor_affine(F.hardsigmoid(q.dequantize()), 1 / 256, 0, 0, 255))
    assert out is not q


def test_fake_quantize_refuses_an_observer_that_is_not_one():
    with pytest.raises(ValueError, match=r"argument 'observer' of FakeQuantize must make an observer .*got 'ReLU'"):
        tq.FakeQuantize(observer=nn.ReLU)
    # A class that cannot be built from the observer's arguments, and an instance, name it too.
    with pytest.raises(ValueError, match=r"argument 'observer' of FakeQuantize must make an observer, got 'Linear'"):
        tq.FakeQuantize(observer=nn.Linear)
    with pytest.raises(ValueError, match=r"argument 'observer' .* not an instance, got MinMaxObserver\(\)"):
        tq.FakeQuantize(observer=tq.MinMaxObserver())
    # An observer given an argument it does not take keeps Python's error, as torch.ao's.
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        tq.FakeQuantize(observer=tq.MinMaxObserver.with_args(foo=1))


def test_star_import_brings_the_public_names_and_no_submodule():
    import types
    public = {n for n, v in vars(tq).items() if not n.startswith("_") and not isinstance(v, types.ModuleType)}
    assert set(tq.__all__) == public
    ns = {"nn": nn}
    exec("from torchquant import *", ns)
    assert ns["nn"] is nn and ns["prepare"] is tq.prepare and ns["QuantStub"] is tq.QuantStub


def test_convert_after_a_qat_step_observes_the_final_weights_as_torch_ao():
    # converting right after an optimizer step (observers on): each QAT Conv / ConvReLU / Linear
    # takes its weight scales from the weights as they are now, as torch.ao's convert does
    import copy

    import torch.ao.quantization as aq

    from conftest import SUPPORTED_ISAS

    # The outputs are compared bit for bit: full 8-bit activations where torch.ao's fbgemm kernels
    # are exact (VNNI); without VNNI they multiply with vpmaddubsw, whose int16 pair sums saturate
    # on 8-bit activations, so both take 7-bit ones there (torch.ao's x86 default range).
    qmax = 255 if "avx512vnni" in SUPPORTED_ISAS else 127
    ao_qc = aq.QConfig(activation=aq.FakeQuantize.with_args(observer=aq.MovingAverageMinMaxObserver, quant_min=0,
                                                            quant_max=qmax, dtype=torch.quint8,
                                                            qscheme=torch.per_tensor_affine, reduce_range=False),
                       weight=aq.default_per_channel_weight_fake_quant)
    tq_qc = tq.QConfig(activation=tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0,
                                                            quant_max=qmax, dtype=torch.quint8,
                                                            qscheme=torch.per_tensor_affine),
                       weight=tq.get_default_qat_qconfig("x86").weight)

    def build(lib, qc):
        torch.manual_seed(0)
        m = nn.Sequential(lib.QuantStub(), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(),
                          nn.Linear(8 * 16, 6), lib.DeQuantStub()).train()
        m.qconfig = qc
        return lib.prepare_qat(lib.fuse_modules_qat(m, [["1", "2"]]))

    ma, mt = build(aq, ao_qc), build(tq, tq_qc)
    oa, ot = (torch.optim.SGD(m.parameters(), lr=0.5) for m in (ma, mt))
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 6, (8,), generator=g)
        for m, o in ((ma, oa), (mt, ot)):
            loss = nn.functional.cross_entropy(m(x), y)
            o.zero_grad()
            loss.backward()
            o.step()
    ma.eval()
    mt.eval()
    ca, ct = aq.convert(copy.deepcopy(ma)), tq.convert(copy.deepcopy(mt))
    for i in (1, 3, 5):
        assert torch.equal(ct[i].weight.scale.float().reshape(-1), ca[i].weight().q_per_channel_scales().float()), i
    x = torch.randn(8, 3, 8, 8, generator=g)
    assert torch.equal(ct(x), ca(x))


@pytest.mark.parametrize("pool", [nn.AvgPool1d(2), nn.AdaptiveAvgPool1d(3)])
def test_1d_average_pools_run_on_qtensors_unobserved(pool):
    # as their 2d / 3d forms: no observer, no warning, int8 through (the pooled codes keep the qparams)
    m = nn.Sequential(tq.QuantStub(), nn.Conv1d(2, 4, 3), pool, tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = tq.prepare(m)
        assert not hasattr(p[2], "activation_post_process")
        x = torch.randn(3, 2, 12)
        p(x)
        q = tq.convert(p)
        y = q[2](q[1](q[0](x)))
    assert isinstance(y, tq.QTensor)
    assert torch.equal(y.scale, q[1].scale)


def test_learnable_fake_quant_clamps_a_negative_scale_to_eps_as_torch_ao():
    from torch.ao.quantization import _learnable_fake_quantize as alfq

    x = torch.linspace(-1.3, 1.3, 64)
    mods = [tq.LearnableFakeQuantize(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255),
            alfq._LearnableFakeQuantize(observer=torch.ao.quantization.MovingAverageMinMaxObserver, quant_min=0,
                                        quant_max=255)]
    outs = []
    for fq in mods:
        fq(x)  # observes: scale from the range
        fq.disable_observer() if hasattr(fq, "disable_observer") else fq.toggle_observer_update(False)
        with torch.no_grad():
            fq.scale.fill_(-0.01)  # an optimizer step past zero
        outs.append(fq(x))
        assert float(fq.scale) == torch.finfo(torch.float32).eps
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("kind", ["conv-bn", "linear-bn"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_qat_training_through_a_folded_batchnorm_matches_eager(kind, backend):
    # the fake-quant splits the compiled graph between the BatchNorm's running_std and its
    # in-place update of running_var: backward must not find a saved running_var changed.
    # inductor: the folded weight's fake-quant, traced, shared a recompiled (dynamic-size) frame
    # with the QuantStub's; its sizes reached the convolution and the training BatchNorm, whose
    # backward inductor failed to compile ("Cannot convert expression to float")
    import copy

    torch._dynamo.reset()
    torch.manual_seed(0)
    layers = ([nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)] if kind == "conv-bn"
              else [nn.Flatten(), nn.Linear(48, 8), nn.BatchNorm1d(8)])
    m = nn.Sequential(tq.QuantStub(), *layers, tq.DeQuantStub()).train()
    m.qconfig = tq.get_default_qat_qconfig("x86")
    m = tq.prepare_qat(tq.fuse_modules_qat(m, [["1", "2"]] if kind == "conv-bn" else [["2", "3"]]))
    eager = copy.deepcopy(m)
    compiled = torch.compile(m, backend=backend)
    for i in range(2):
        x = torch.randn(4, 3, 4, 4)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled(x).square().mean().backward()
        eager(x).square().mean().backward()
    for (n, a), (_, b) in zip(m.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=n)
    for (n, a), (_, b) in zip(m.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6, msg=n)


def test_compiled_qat_training_runs_its_fake_quants_inside_one_graph():
    # A FakeQuantize's forward branches on its enable flags and on what its observer has seen;
    # traced by Dynamo, every fake-quant broke the graph several times, and the resume functions
    # all of them share were recompiled for each one's shapes until the recompile limit (27
    # graphs and 42 recompiles for this model). Under torch.compile a torchquant fake-quant is
    # one op, run eagerly by the graph: the whole model is one graph (N = 1: no graph break is
    # left), compiled once, and switching the observers or the fake-quant off needs no
    # recompile (the op reads the flags when it runs).
    import copy

    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                      tq.DeQuantStub()).train()
    m.qconfig = tq.get_default_qat_qconfig("x86")
    m = tq.prepare_qat(tq.fuse_modules_qat(m, [["1", "2", "3"]]))
    eager = copy.deepcopy(m)
    graphs = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def counting(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)

    compiled = torch.compile(m, backend=counting)
    for step in range(3):
        if step == 1:
            for model in (m, eager):
                model.apply(tq.disable_observer)
        if step == 2:
            for model in (m, eager):
                model.apply(tq.enable_observer)
                model.apply(tq.disable_fake_quant)
        x = torch.randn(2, 3, 8, 8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = compiled(x)
        y_eager = eager(x)
        torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
        y.square().mean().backward()
        y_eager.square().mean().backward()
    assert len(graphs) == 1, f"{len(graphs)} graphs"
    assert not counters["graph_break"], dict(counters["graph_break"])
    for (n, a), (_, b) in zip(m.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=n)
    for (n, a), (_, b) in zip(m.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-5, atol=1e-6, msg=n)


def test_fake_quants_tell_torch_compile_from_torch_export():
    # Under torch.compile a FakeQuantize is one opaque op; under torch.export it traces its
    # forward. The Dynamo of torch 2.11 folds torch.compiler.is_exporting() to True in every
    # graph: read that way, every compiled fake-quant traced its forward (graph breaks, recompiles
    # and other weight gradients than eager's). Checked on the torch installed.
    from torchquant import fake_quantize as tqfq

    seen = {}

    class Probe(nn.Module):
        def forward(self, x):
            seen[torch.compiler.is_compiling()] = tqfq._exporting()
            return x + 1

    probe = Probe()
    # As that Dynamo sees it: is_exporting() True inside every compiled graph.
    real = torch.compiler.is_exporting
    torch.compiler.is_exporting = lambda: torch.compiler._is_exporting_flag or torch.compiler.is_compiling()
    try:
        torch._dynamo.reset()
        torch.compile(probe, backend="eager")(torch.ones(2))
    finally:
        torch.compiler.is_exporting = real
    assert seen == {True: False}, "torch.compile taken for an export where Dynamo folds is_exporting()"
    seen.clear()
    torch._dynamo.reset()
    torch.compile(probe, backend="eager")(torch.ones(2))
    assert seen == {True: False}, "torch.compile taken for an export"
    seen.clear()
    torch.export.export(probe, (torch.ones(2),))
    assert seen == {True: True}, "torch.export not seen"
    assert not tqfq._exporting()


def test_compiled_fake_quant_calls_differ_in_their_arguments():
    # Two fake-quant calls on one tensor must stay two graph nodes: marked as having side effects,
    # and, for the graph passes that ignore the mark (torch 2.11's AOTAutograd CSE merged them),
    # each with its own call index.
    fq = tq.default_fake_quant()
    calls = []

    def backend(gm, example_inputs):
        calls.extend(n.args for n in gm.graph.nodes if n.target is torch.ops.torchquant._fake_quantize_module.default)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(lambda h: fq(h) + fq(h) + fq(h * 2), backend=backend)(torch.randn(3, 4))
    assert len(calls) == 3
    assert len({args[3] for args in calls}) == 3, calls


def test_compiled_fake_quants_run_every_call_as_eager_does():
    # The fake-quant op changes its module's state, which its schema cannot say: a graph merged
    # two calls on one tensor (the observer saw one batch where eager saw two) and dropped a call
    # whose output was unused (that observer saw nothing).
    import copy

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.fq, self.side = tq.default_fake_quant(), tq.default_fake_quant()

        def forward(self, x):
            h = self.lin(x)
            self.side(x * 2)  # (output unused)
            return self.fq(h) + self.fq(h)

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = M()
    eager = copy.deepcopy(m)
    compiled = torch.compile(m, backend="aot_eager")
    for step in range(3):
        x = torch.randn(3, 4) * (step + 1)
        y, ye = compiled(x), eager(x)
        y.sum().backward()
        ye.sum().backward()
        assert torch.equal(y, ye), step
    for (n, a), (_, b) in zip(m.named_buffers(), eager.named_buffers()):
        assert torch.equal(a, b), n
    torch.testing.assert_close(m.lin.weight.grad, eager.lin.weight.grad)


def test_compiled_calibration_keeps_the_running_float_input_range():
    # The range of a float input that prepare records for an int8 Linear (its qparams for float
    # inputs) was traced once and then stored each batch's range alone when compiled.
    import copy

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.a, self.b, self.dq = tq.QuantStub(), nn.Linear(4, 4), nn.Linear(4, 4), tq.DeQuantStub()

        def forward(self, x):
            return self.dq(self.b(torch.sin(self.a(self.q(x))) * 3))  # (sin runs in float)

    torch._dynamo.reset()
    torch.manual_seed(0)
    m = M().eval()
    m.qconfig = tq.get_default_qconfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m)
        eager = copy.deepcopy(p)
        compiled = torch.compile(p, backend="aot_eager")
        with torch.no_grad():
            for i in range(3):
                x = torch.randn(8, 4) * (3 - i)  # the widest batch first
                compiled(x)
                eager(x)
        qc, qe = tq.convert(p), tq.convert(eager)
    assert torch.equal(qc.b.float_input_scale, qe.b.float_input_scale)
    assert torch.equal(qc.b.float_input_zero_point, qe.b.float_input_zero_point)


def test_float_input_range_in_and_out_of_inference_mode():
    # the range is widened in place, in inference mode or out of it (prepare's tensors are
    # normal ones even when prepare runs under inference_mode)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4)).eval()
    m.qconfig = tq.get_default_qconfig()
    with torch.inference_mode():
        p = tq.prepare(m)
        p(torch.full((2, 4), 5.0))
    assert not p[0].__dict__["_tq_input_range"][0].is_inference()
    p = tq.prepare(m)
    with torch.inference_mode():
        p(torch.full((2, 4), 5.0))
    with torch.no_grad():
        p(torch.full((2, 4), -7.0))
    lo, hi = p[0].__dict__["_tq_input_range"]
    assert float(lo) == -7.0 and float(hi) == 5.0


def _calibrated(prepare, qconfig, model):
    torch.manual_seed(0)
    p = prepare(model, inplace=False)
    for _ in range(3):
        p(torch.randn(4, 16))
    return p


def test_a_model_prepared_by_torch_ao_converts_and_runs_without_its_observer_hooks():
    torch.manual_seed(1)
    m = nn.Sequential(taq.QuantStub(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4), taq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = tq.convert(_calibrated(taq.prepare, m.qconfig, m))
        x = torch.randn(5, 16)
        y = q(x)  # (torch.ao's observer hooks were carried over and called observers convert removed)
    hooks = [h for mod in q.modules() for h in list(mod._forward_hooks.values()) + list(mod._forward_pre_hooks.values())]
    assert not [h for h in hooks if h.__module__.startswith("torch.ao")], hooks
    assert not any(hasattr(mod, "activation_post_process") for mod in q.modules() if not isinstance(mod, taq.FakeQuantizeBase))
    assert isinstance(q[1], nnq.Linear) and isinstance(q[3], nnq.Linear)
    assert (y - m(x)).abs().max() < 0.05


def test_a_user_class_given_to_convert_by_mapping_gets_no_observer_hook():
    # torch.ao's way to add a module: allow_list at prepare, {float: quantized} at convert
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.full((16,), 0.5))

        def forward(self, x):
            return x * self.w

    class QuantScale(nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = w

        @classmethod
        def from_float(cls, mod):
            return cls(mod.w.detach())

        def forward(self, x):
            return x.dequantize() * self.w if isinstance(x, tq.QTensor) else x * self.w

    torch.manual_seed(2)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 16), tq.DeQuantStub(), Scale()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m, allow_list=tq.get_default_qconfig_propagation_list() | {Scale})
        p(torch.randn(4, 16))
        q = tq.convert(p, mapping={**tq.get_default_static_quant_module_mappings(), Scale: QuantScale})
    assert type(q[3]) is QuantScale and not q[3]._forward_hooks and not q[3]._forward_pre_hooks
    x = torch.randn(3, 16)
    assert torch.equal(q(x), q[2](q[1](q[0](x))) * q[3].w)


def test_convert_keeping_qconfigs_runs_as_convert_removing_them():
    torch.manual_seed(3)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 16), nn.Softmax(-1), nn.Linear(16, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = _calibrated(tq.prepare, m.qconfig, m)
        a, b = tq.convert(p), tq.convert(p, remove_qconfig=False)
        x = torch.randn(6, 16)
        ya, yb = a(x), b(x)
        yb2 = b(3 * x)  # an observer left running would change the next call's
        assert torch.equal(ya, yb) and torch.equal(a(3 * x), yb2)
    assert not any(hasattr(mod, "activation_post_process") for mod in b.modules())
    assert not any(hasattr(mod, "qconfig") for mod in a.modules())
    assert b[2].qconfig is not None and not hasattr(b[2], "activation_post_process")


def test_convert_and_propagate_qconfig_take_torch_aos_arguments():
    torch.manual_seed(4)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 4), tq.DeQuantStub()).eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = _calibrated(tq.prepare, m.qconfig, m)
    # torch.ao's positional order: mapping, inplace, remove_qconfig, is_reference, convert_custom_config_dict
    q = tq.convert(p, None, False, True, False, None, use_precomputed_fake_quant=False)
    assert isinstance(q[1], nnq.Linear)
    for kw in ({"is_reference": True}, {"use_precomputed_fake_quant": True}):
        with pytest.raises(NotImplementedError, match=next(iter(kw))):
            tq.convert(p, **kw)
    f = nn.Sequential(nn.Linear(4, 4))
    f.qconfig = tq.get_default_qconfig("x86")
    with pytest.warns(UserWarning, match="prepare_custom_config_dict"):
        tq.propagate_qconfig_(f, None, {"float_to_observed_custom_module_class": {}})
    tq.propagate_qconfig_(f, None, None)
    assert f[0].qconfig is f.qconfig


def test_prepare_qat_with_torch_aos_qat_mapping_trains_and_converts_as_with_its_own():
    def run(mapping):
        torch.manual_seed(5)
        m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4), tq.DeQuantStub()).train()
        m.qconfig = tq.get_default_qat_qconfig("x86")
        p = tq.prepare_qat(m, mapping=mapping)
        opt = torch.optim.SGD(p.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            p(torch.randn(8, 16)).pow(2).sum().backward()
            opt.step()
        q = tq.convert(p.eval())
        return p, q(torch.randn(5, 16))

    (pa, ya), (pt, yt) = run(taq.get_default_qat_module_mappings()), run(None)
    assert type(pa[1]) is type(pt[1]) is qat.Linear and hasattr(pa[1], "activation_post_process")
    assert torch.equal(ya, yt)
