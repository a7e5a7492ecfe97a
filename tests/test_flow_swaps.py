"""Swaps after a swap: a converted model's float modules (with the hooks convert gave them)
swapped again by quantize_dynamic / swap_module / a second convert, the user's QAT classes
in prepare_qat's mapping, and what quantize_dynamic says of containers and name specs."""
import copy
import warnings

import pytest
import torch
import torch.ao.quantization as aoq
from torch import nn
import torch.nn.functional as F

import torchquant as tq
from torchquant import QTensor


def _messages(w):
    return [str(a.message) for a in w]


class _CellModel(nn.Module):
    """A GRUCell (no int8 version: float inside the int8 part) between two int8 Linears."""

    def __init__(self):
        super().__init__()
        self.q = tq.QuantStub()
        self.fc = nn.Linear(8, 8)
        self.cell = nn.GRUCell(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.dq = tq.DeQuantStub()

    def forward(self, x):
        return self.dq(self.fc2(self.cell(self.fc(self.q(x)))))


def _converted_cell_model(remove_qconfig=True):
    torch.manual_seed(0)
    m = _CellModel().eval()
    m.qconfig = tq.default_qconfig
    x = torch.randn(16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m)
        p(x)
        c = tq.convert(p, remove_qconfig=remove_qconfig)
    return m, c, x


def _fc2_input(model, x):
    seen = []
    handle = model.fc2.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            y = model(x)
    finally:
        handle.remove()
    return y, seen[0], _messages(w)


def _check_dynamic_cell(m, c, d, x):
    # the dynamic cell takes the dequantized input and its output is quantized again with the
    # qparams the static model uses there: the int8 fc2 gets a QTensor as in the static model
    y_static, into_fc2_static, _ = _fc2_input(c, x)
    y, into_fc2, msgs = _fc2_input(d, x)
    assert isinstance(into_fc2_static, QTensor) and isinstance(into_fc2, QTensor)
    assert into_fc2.scale == into_fc2_static.scale and into_fc2.zero_point == into_fc2_static.zero_point
    ref = m(x)  # the float model
    assert (y - ref).abs().max() <= 2 * (y_static - ref).abs().max() + 4 * c.fc2.scale
    assert not any("has no int8 implementation" in s for s in msgs if "DynamicQuantized" in s), msgs
    assert any("DynamicQuantizedGRUCell" in s and "takes float input" in s for s in msgs), msgs


def test_quantize_dynamic_after_convert_keeps_the_float_fallback_of_a_cell():
    m, c, x = _converted_cell_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = tq.quantize_dynamic(c, {nn.GRUCell})
    assert type(d.cell) is tq.nn.quantized.dynamic.GRUCell
    _check_dynamic_cell(m, c, d, x)
    # the dynamic cell alone gives what torchquant's dynamic GRUCell of the float cell gives on
    # the dequantized input (its output then quantized with the static model's qparams)
    h = c.fc(c.q(x))
    ref_cell = tq.quantize_dynamic(nn.Sequential(copy.deepcopy(m.cell)), {nn.GRUCell})[0]
    expect = torch.quantize_per_tensor(ref_cell(h.dequantize()), float(c.cell.output_quant.scale),
                                       int(c.cell.output_quant.zero_point), torch.quint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = d.cell(h)
    assert torch.equal(got.dequantize(), expect.dequantize())


def test_swap_module_after_convert_keeps_the_float_fallback_of_a_cell():
    m, c, x = _converted_cell_model(remove_qconfig=False)
    c.cell.qconfig = tq.default_dynamic_qconfig
    d = copy.deepcopy(c)
    d.cell = tq.swap_module(d.cell, {nn.GRUCell: tq.nn.quantized.dynamic.GRUCell})
    assert type(d.cell) is tq.nn.quantized.dynamic.GRUCell
    _check_dynamic_cell(m, c, d, x)


class _LSTMModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = tq.QuantStub()
        self.fc = nn.Linear(8, 8)
        self.lstm = nn.LSTM(8, 8)
        self.fc2 = nn.Linear(8, 8)
        self.dq = tq.DeQuantStub()

    def forward(self, x):
        return self.dq(self.fc2(self.lstm(self.fc(self.q(x)))[0]))


def test_quantize_dynamic_after_convert_says_the_dynamic_lstm_takes_float_input():
    torch.manual_seed(0)
    m = _LSTMModel().eval()
    m.qconfig = tq.default_qconfig
    x = torch.randn(5, 2, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m)
        p(x)
        c = tq.convert(p)
        y_static = c(x)
        d = tq.quantize_dynamic(c, {nn.LSTM})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        y = d(x)
    msgs = _messages(w)
    assert not any("DynamicQuantizedLSTM has no int8 implementation" in s for s in msgs), msgs
    assert any("DynamicQuantizedLSTM" in s and "takes float input" in s for s in msgs), msgs
    ref = m(x)
    assert (y - ref).abs().max() <= 2 * (y_static - ref).abs().max() + 4 * c.fc2.scale


def test_a_second_convert_adds_no_second_float_fallback_hook():
    torch.manual_seed(0)
    m = _LSTMModel().eval()
    m.qconfig = tq.default_qconfig
    x = torch.randn(5, 2, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m)
        p(x)
        c = tq.convert(p, remove_qconfig=False)
        c2 = tq.convert(c, remove_qconfig=False)
        assert torch.equal(c2(x), c(x))
    names = [h.__name__ for h in c2.lstm._forward_pre_hooks.values()]
    assert names.count("_float_fallback_hook") == 1, names


# ---------------------------------------------------------------- prepare_qat with the user's QAT classes
def _qat_pair(lib_qat_linear):
    return type("MyQATLinear", (lib_qat_linear,), {})


def _train(p, xs):
    for x in xs:
        p(x)
    return p.eval()


def test_prepare_qat_observes_the_output_of_a_users_qat_subclass_as_torch_ao():
    torch.manual_seed(0)
    qc = aoq.get_default_qat_qconfig("x86")
    m = nn.Sequential(aoq.QuantStub(), nn.Linear(4, 4), nn.ReLU(), aoq.DeQuantStub()).train()
    xs = [torch.randn(8, 4) for _ in range(3)]
    x = torch.randn(8, 4)
    outs = {}
    for lib, qat_base, q_cls, static in [
            (tq, tq.nn.qat.Linear, tq.nn.quantized.Linear, tq.get_default_static_quant_module_mappings()),
            (aoq, torch.ao.nn.qat.Linear, torch.ao.nn.quantized.Linear,
             aoq.quantization_mappings.get_default_static_quant_module_mappings())]:
        my = _qat_pair(qat_base)
        model = copy.deepcopy(m)
        model.qconfig = qc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = lib.prepare_qat(model, mapping={nn.Linear: my})
            assert type(p[1]) is my and hasattr(p[1], "activation_post_process")
            _train(p, xs)
            c = lib.convert(p, mapping={**static, my: q_cls})
            assert type(c[1]) is q_cls
            outs[lib] = (c(x), float(c[1].scale))
    (y, step), (y_ao, step_ao) = outs[tq], outs[aoq]
    assert step == pytest.approx(step_ao, rel=1e-6)
    assert (y - y_ao).abs().max() <= step * 1.001


class _MyQAT(nn.Linear):
    """A QAT Linear of the user's own (not a subclass of a QAT class)."""

    @classmethod
    def from_float(cls, mod):
        new = cls(mod.in_features, mod.out_features)
        new.weight, new.bias = mod.weight, mod.bias
        new.qconfig = mod.qconfig
        new.weight_fake_quant = mod.qconfig.weight()
        return new

    def forward(self, x):
        return F.linear(x, self.weight_fake_quant(self.weight), self.bias)


class _MyQ(nn.Module):
    def __init__(self, lin, scale, zero_point):
        super().__init__()
        self.lin, self.scale, self.zero_point = lin, scale, zero_point

    @classmethod
    def from_float(cls, mod):
        scale, zero_point = mod.activation_post_process.calculate_qparams()
        lin = nn.Linear(mod.in_features, mod.out_features)
        lin.weight, lin.bias = mod.weight, mod.bias
        return cls(lin, float(scale), int(zero_point))

    def forward(self, x):
        return self.lin(x)


def test_prepare_qat_observes_a_standalone_users_qat_class_as_torch_ao():
    torch.manual_seed(0)
    qc = aoq.get_default_qat_qconfig("x86")
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).train()
    xs = [torch.randn(8, 4) for _ in range(3)]
    got = {}
    for lib in (tq, aoq):
        model = copy.deepcopy(m)
        model.qconfig = qc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = _train(lib.prepare_qat(model, mapping={nn.Linear: _MyQAT}), xs)
            got[lib] = p(xs[0])
            c = lib.convert(p, mapping={_MyQAT: _MyQ})
        assert type(c[0]) is _MyQ
        got[lib, "qparams"] = (c[0].scale, c[0].zero_point)
    assert torch.equal(got[tq], got[aoq])
    assert got[tq, "qparams"] == got[aoq, "qparams"]


# ---------------------------------------------------------------- smaller ones
def test_convert_hooks_nothing_inside_a_lookup_activation():
    torch.manual_seed(0)
    x = torch.randn(8, 4)
    m = nn.Sequential(tq.QuantStub(), nn.Linear(4, 4), nn.Tanh(), nn.GELU(), nn.Linear(4, 2),
                      tq.DeQuantStub()).eval()
    m.qconfig = tq.default_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(m)
        p(x)
        c = tq.convert(p)
    hooked = [n for n, mm in c.named_modules() if mm._forward_hooks or mm._forward_pre_hooks]
    assert hooked == []
    assert (c(x) - m(x)).abs().max() < 0.05


class _Containers(nn.Module):
    def __init__(self):
        super().__init__()
        self.seq = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
        self.lst = nn.ModuleList([nn.Linear(4, 4)])
        self.dct = nn.ModuleDict({"a": nn.Linear(4, 4)})
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.dct["a"](self.lst[0](self.seq(x))))


@pytest.mark.parametrize("kind", [nn.Sequential, nn.ModuleList, nn.ModuleDict])
def test_quantize_dynamic_does_not_warn_that_a_container_stays_float(kind):
    torch.manual_seed(0)
    model = _Containers().eval()
    x = torch.randn(3, 4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        q = tq.quantize_dynamic(model, {kind})
    assert not any("no dynamic int8 module" in s for s in _messages(w)), _messages(w)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = aoq.quantize_dynamic(model, {kind})
    assert [type(mm).__name__ for mm in q.modules()].count("DynamicLinear") == 1
    assert sum(isinstance(mm, torch.ao.nn.quantized.dynamic.Linear) for mm in ref.modules()) == 1
    assert (q(x) - ref(x)).abs().max() < 0.02
    # a type with no dynamic module is still named
    with pytest.warns(UserWarning, match=r"\['Conv2d'\] in argument 'qconfig_spec' have no dynamic int8 module"):
        tq.quantize_dynamic(model, {kind, nn.Conv2d})


class _Tables(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.enc = nn.Sequential(nn.Linear(8, 8))
        self.fc = nn.Linear(8, 4)

    def forward(self, i):
        return self.fc(self.enc(self.emb(i).sum(1)))


@pytest.mark.parametrize("dtype", [torch.quint8, torch.quint4x2])
def test_quantize_dynamic_names_with_a_table_dtype_are_checked_as_types(dtype):
    torch.manual_seed(0)
    model = _Tables().eval()
    with pytest.raises(ValueError, match=rf"dtype={dtype} quantizes the rows.*'fc' \(Linear\) named in argument "
                                         r"'qconfig_spec'.*need dtype=torch.qint8"):
        tq.quantize_dynamic(model, {"fc", "emb"}, dtype=dtype)
    with pytest.raises(ValueError, match=r"'enc.0' \(Linear\) named in argument 'qconfig_spec'"):
        tq.quantize_dynamic(model, ["enc"], dtype=dtype)
    # a name of a table alone quantizes it as its type does
    idx = torch.randint(0, 10, (3, 5))
    by_name = tq.quantize_dynamic(model, {"emb"}, dtype=dtype)
    by_type = tq.quantize_dynamic(model, {nn.Embedding}, dtype=dtype)
    assert type(by_name.emb) is type(by_type.emb)
    assert torch.equal(by_name(idx), by_type(idx))


def test_a_named_modules_own_qconfig_wins_over_the_table_dtype_check():
    # propagate_qconfig_ lets a module's own qconfig win over the spec (as torch.ao's), so a layer
    # given its own dynamic qconfig under a name is quantized, not refused
    torch.manual_seed(0)
    m = _Tables().eval()
    m.enc[0].qconfig = tq.default_dynamic_qconfig
    q = tq.quantize_dynamic(m, ["enc", "emb"], dtype=torch.quint8)
    assert type(q.enc[0]).__name__ == "DynamicLinear"
    assert type(q.emb) is not nn.Embedding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = aoq.quantize_dynamic(m, {"enc", "emb"}, dtype=torch.quint8)
    assert isinstance(ref.enc[0], torch.ao.nn.quantized.dynamic.Linear)
    idx = torch.randint(0, 10, (3, 5))
    assert (q(idx) - ref(idx)).abs().max() < 0.02



class _Experts(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.ParameterList([nn.Parameter(torch.randn(4, 4)) for _ in range(2)])

    def forward(self, x):
        return sum(x @ w for w in self.w)


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


class _Proj(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return x @ self.weight


@pytest.mark.parametrize("kind", ["parameter_list", "parametrized"])
def test_quantize_dynamic_warns_for_a_type_whose_weights_are_in_a_parameter_list_or_parametrized(kind):
    from torch.nn.utils import parametrize
    if kind == "parameter_list":
        first = _Experts()
    else:
        first = _Proj()
        parametrize.register_parametrization(first, "weight", _Double())
    model = nn.Sequential(first, nn.Linear(4, 4)).eval()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        tq.quantize_dynamic(model, {type(first), nn.Linear})
    assert any(type(first).__name__ in msg and "stay in float" in msg for msg in _messages(w)), _messages(w)


class _OutputQuantNone(nn.Module):
    output_quant = None

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    @classmethod
    def from_float(cls, mod):
        return cls(mod)

    def forward(self, x):
        return self.cell(x)


def test_swap_onto_a_module_whose_output_quant_is_none_keeps_it_and_runs():
    _, c, x = _converted_cell_model(remove_qconfig=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c.cell = tq.swap_module(c.cell, {nn.GRUCell: _OutputQuantNone})
        c(x)
    assert type(c.cell) is _OutputQuantNone and c.cell.output_quant is None


class _Block(nn.Module):
    """A user type that only holds layers (its qconfig in the spec goes to them)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.b = nn.Linear(4, 4)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


@pytest.mark.parametrize("parametrized_layer", [False, True])
def test_quantize_dynamic_does_not_warn_for_a_user_type_that_only_holds_layers(parametrized_layer):
    from torch.nn.utils import parametrize
    torch.manual_seed(0)
    model = nn.Sequential(_Block(), nn.Linear(4, 4)).eval()
    if parametrized_layer:  # (a layer of its own, quantized as its type before the parametrization)
        parametrize.register_parametrization(model[0].a, "weight", _Double())
    x = torch.randn(3, 4)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        q = tq.quantize_dynamic(model, {_Block})
    assert not any("no dynamic int8 module" in s for s in _messages(w)), _messages(w)
    plain = copy.deepcopy(model)
    if parametrized_layer:  # (torch.ao swaps no parametrized layer: its weight as a plain one)
        parametrize.remove_parametrizations(plain[0].a, "weight", leave_parametrized=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = aoq.quantize_dynamic(plain, {_Block})
    assert [type(mm).__name__ for mm in (q[0].a, q[0].b, q[1])] == ["DynamicLinear", "DynamicLinear", "Linear"]
    assert [isinstance(mm, torch.ao.nn.quantized.dynamic.Linear) for mm in (ref[0].a, ref[0].b, ref[1])] == \
        [True, True, False]
    assert (q(x) - ref(x)).abs().max() < 0.02


def test_quantize_dynamic_warns_for_a_user_type_with_its_weights_in_a_parameter_dict():
    class _Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.ParameterDict({"a": nn.Parameter(torch.randn(4, 4))})
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x @ self.w["a"])

    model = nn.Sequential(_Heads()).eval()
    with pytest.warns(UserWarning, match=r"\['_Heads'\] in argument 'qconfig_spec' have no dynamic int8 module"):
        q = tq.quantize_dynamic(model, {_Heads})
    assert type(q[0].fc).__name__ == "DynamicLinear"


class _OutputQuantNoneInInit(_OutputQuantNone):
    def __init__(self, cell):
        super().__init__(cell)
        self.output_quant = None


@pytest.mark.parametrize("cls", [_OutputQuantNone, _OutputQuantNoneInInit])
def test_swap_onto_a_module_with_output_quant_none_computes_as_before(cls):
    _, c, x = _converted_cell_model(remove_qconfig=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = c(x)
        c.cell = tq.swap_module(c.cell, {nn.GRUCell: cls})
        after = c(x)
    assert type(c.cell) is cls and c.cell.output_quant is None and "output_quant" not in c.cell._modules
    assert torch.equal(after, before)
