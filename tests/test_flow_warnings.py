"""Warnings and rewrites of the eager flow: calibrate's training-mode warning with fixed-qparams
fake-quants, make_quantizable with results written in place, and the run-time warning of a module
left float because calibration never ran it."""
import operator
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import torchquant as tq
from torchquant.nn.quantized import FloatFunctional


def _sqnr(ref: torch.Tensor, out: torch.Tensor) -> float:
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean()))


# ---------------------------------------------------------------- calibrate in training mode
def _hardsigmoid_cnn():
    torch.manual_seed(0)
    return nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Hardsigmoid(), tq.DeQuantStub())


def test_calibrate_warns_for_a_static_model_in_training_mode_holding_a_hardsigmoid():
    m = _hardsigmoid_cnn().train()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    # (torch.ao's rule: a Hardsigmoid in training mode gets its fixed output qparams as a fake-quant)
    assert type(p[3].activation_post_process).__name__ == "FixedQParamsFakeQuantize"
    with pytest.warns(UserWarning, match=r"calibrate: the model is in training mode, so its BatchNorm layers update "
                                         r"their running statistics .*\(2 \(BatchNorm2d\)\)"):
        tq.calibrate(p, [torch.randn(2, 3, 8, 8)], progress=False)


def test_calibrate_says_nothing_for_a_qat_model_holding_a_hardsigmoid():
    m = _hardsigmoid_cnn().train()
    m.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tq.calibrate(p, [torch.randn(2, 3, 8, 8)], progress=False)


def test_calibrate_says_nothing_for_a_model_prepared_by_torch_ao_qat():
    ao = pytest.importorskip("torch.ao.quantization")
    m = nn.Sequential(ao.QuantStub(), nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Hardsigmoid(),
                      ao.DeQuantStub()).train()
    m.qconfig = ao.get_default_qat_qconfig("x86")
    p = ao.prepare_qat(m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tq.calibrate(p, [torch.randn(2, 3, 8, 8)], progress=False)


# ---------------------------------------------------------------- make_quantizable and in-place writes
class _PosEnc(nn.Module):
    """torchvision MViT's positional encoding: a cat whose result is then added to in place."""

    def __init__(self, c=16, n=8):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, c))
        self.pos = nn.Parameter(torch.randn(1, n + 1, c) * 3)

    def forward(self, x):
        x = torch.cat((self.cls.expand(x.size(0), -1, -1), x), dim=1)
        x.add_(self.pos)
        return x


class _PosNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 16)
        self.pe = _PosEnc()
        self.out = nn.Linear(16, 16)

    def forward(self, x):
        return self.out(self.pe(self.inp(x)))


def _functionals(gm):
    return sorted(n for n, m in gm.named_modules() if isinstance(m, FloatFunctional))


def _activations(gm):
    return sorted(n for n, _ in gm.named_modules()
                  if n.split(".")[-1].startswith("activation_") and not n.endswith("activation_post_process"))


def _float_writes(gm):
    """The values make_quantizable dequantizes before they are written into in place."""
    return sum(1 for n in gm.graph.nodes
               if n.op == "call_function" and getattr(n.target, "__name__", None) == "_float_for_in_place")


def _int8(model, xs, gm=None):
    """(SQNR of the converted make_quantizable(model) against the float model on xs[-1], the
    warnings of that run): calibrated on xs[:-1], run in eval mode."""
    gm = gm if gm is not None else tq.make_quantizable(model, xs[0])
    w = nn.Sequential(tq.QuantStub(), gm, tq.DeQuantStub()).eval()
    w.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the float fallbacks, named at prepare)
        p = tq.prepare(w)
        tq.calibrate(p, xs[:-1], progress=False)
        q = tq.convert(p)
    with torch.no_grad(), warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = q(xs[-1].clone())
        ref = model(xs[-1].clone())
    return _sqnr(ref, out), [str(w.message) for w in rec]


def test_make_quantizable_writes_into_a_cat_result_in_float():
    torch.manual_seed(0)
    model = _PosNet().eval()
    xs = [torch.randn(4, 8, 16) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    # the cat (of a parameter expanded to the batch size, and an activation) is rewritten; its
    # result is dequantized before the add_
    assert _functionals(gm) == ["pe.functional_cat"] and _float_writes(gm) == 1
    with torch.no_grad():
        ref = model(xs[2])
        assert torch.equal(gm(xs[2]), ref)
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 30  # the add_ into the int8 cat saturated: under 5 dB


class _Writes(nn.Module):
    """One add, mul, cat or activation per branch, each result written in place some way."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.conv, self.conv2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a, b = self.conv(x), self.conv2(x)
        how = self.how
        if how == "view_method":
            y = a + b
            y.view(-1).mul_(2.0)
        elif how == "getitem_method":
            y = a * b
            y[:, 0].add_(1.0)
        elif how == "function":
            y = torch.cat((a, b), 1)
            torch.relu_(y)
        elif how == "inplace_kwarg":
            y = a + 1.0
            F.hardtanh(y, -0.5, 0.5, inplace=True)
        elif how == "inplace_positional":
            y = a * 2.0
            F.relu6(y, True)
        elif how == "out":
            y = a + b
            torch.mul(a, b, out=y)
        elif how == "chunk":
            y = torch.cat((a, b), 1)
            y.chunk(2, 1)[1].clamp_(max=0.1)
        elif how == "activation":
            y = F.silu(a)
            y.sub_(b)
        elif how == "add_relu_then_write":
            y = F.relu(a + b)
            y.mul_(3.0)
        return self.conv(y[:, :4])


# how: (the FloatFunctionals, the activation modules, whether the result is dequantized before
# the write: not where int8 codes run the write exactly, keeping their range)
_WRITES = {
    "view_method": (["functional_add"], [], 1),
    "getitem_method": (["functional_mul"], [], 1),
    "function": (["functional_cat"], [], 0),  # torch.relu_
    "inplace_kwarg": (["functional_add_scalar"], [], 0),  # hardtanh within (-0.5, 0.5)
    "inplace_positional": (["functional_mul_scalar"], [], 0),  # relu6
    "out": (["functional_add"], [], 1),
    "chunk": (["functional_cat"], [], 0),  # clamp_(max=0.1)
    "activation": ([], ["activation_silu"], 1),
    "add_relu_then_write": (["functional_add_relu"], [], 1),
}


@pytest.mark.parametrize("how", list(_WRITES))
def test_make_quantizable_rewrites_results_written_in_place(how):
    torch.manual_seed(0)
    model = _Writes(how).eval()
    xs = [torch.randn(2, 4, 5, 5) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    functionals, activations, dequantized = _WRITES[how]
    assert (_functionals(gm), _activations(gm), _float_writes(gm)) == (functionals, activations, dequantized)
    with torch.no_grad():
        assert torch.equal(gm(xs[2]), model(xs[2]))
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 25


class _Untouched(nn.Module):
    """Results read, not written, by in-place ops elsewhere; and an add's only ReLU in place."""

    def __init__(self):
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        a, b = self.conv(x), self.conv2(x)
        s = F.relu(a + b, inplace=True)  # add_relu
        c = torch.cat((a, b), 1)
        t = self.conv(x).mul_(2.0)  # writes into a conv output, reading nothing rewritten
        t.add_(c[:, :4])  # c is read by the write, not written
        return self.conv(s + t)


def test_make_quantizable_still_rewrites_results_only_read_by_in_place_ops():
    torch.manual_seed(0)
    model = _Untouched().eval()
    x = torch.randn(2, 4, 5, 5)
    gm = tq.make_quantizable(model, x)
    assert _functionals(gm) == ["functional_add", "functional_add_relu", "functional_cat"]
    assert _float_writes(gm) == 1  # the conv output t, an int8 QTensor once converted
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x))


def test_make_quantizable_in_place_operator_counts_as_a_write():
    import torch.fx

    from torchquant.quantizable import _changed_in_place

    g = torch.fx.Graph()
    a, b = g.placeholder("a"), g.placeholder("b")
    s = g.call_function(operator.add, (a, b))
    g.call_function(operator.iadd, (s, b))
    t = g.call_function(operator.add, (a, b))
    g.call_method("__setitem__", (t, 0, b))
    u = g.call_function(operator.add, (a, b))
    g.call_method("requires_grad_", (u,))
    g.call_method("__invert__", (u,))
    g.output((s, t, u))
    assert _changed_in_place(s) and _changed_in_place(t) and not _changed_in_place(u)


# ---------------------------------------------------------------- writes into QTensors
class _CatOfInt8(nn.Module):
    """A cat of two int8 Linear outputs, then added to in place."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 16)
        self.pos = nn.Parameter(torch.randn(1, 16, 16) * 3)

    def forward(self, x):
        y = torch.cat((self.a(x), self.b(x)), dim=1)
        y.add_(self.pos)
        return y


def test_make_quantizable_dequantizes_an_int8_cat_before_an_in_place_add():
    torch.manual_seed(0)
    model = _CatOfInt8().eval()
    xs = [torch.randn(4, 8, 16) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    sqnr, rec = _int8(model, xs, gm)
    assert sqnr > 30, sqnr  # a torch.cat of the two QTensors, left as it is, was int8: 4.8 dB
    assert not any("works in place on a QTensor" in m for m in rec), rec
    assert _functionals(gm) == ["functional_cat"] and _float_writes(gm) == 1


class _SigmoidScaled(nn.Module):
    def __init__(self, view):
        super().__init__()
        self.view = view
        self.a = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = torch.sigmoid(self.a(x))
        if self.view:
            y = y.view(-1)
        y.mul_(3.0)
        return y


@pytest.mark.parametrize("view", [False, True])
def test_make_quantizable_dequantizes_an_activation_before_an_in_place_mul(view):
    torch.manual_seed(0)
    model = _SigmoidScaled(view).eval()
    xs = [torch.randn(8, 4, 8, 8) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 30, sqnr  # the int8 sigmoid (fixed range [0, 1)) saturated the mul_: 7.8 dB
    assert _activations(gm) == ["activation_sigmoid"] and _float_writes(gm) == 1


class _RangeKept(nn.Module):
    """An add, mul or cat whose result is written in place by a write that stays in its range."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        a, b = self.c1(x), self.c2(x)
        how = self.how
        if how == "relu_":
            y = a + b
            y.relu_()
        elif how == "F.relu(inplace)":
            y = a + b
            F.relu(y, inplace=True)
        elif how == "nn.ReLU(inplace)":
            y = a + b
            self.relu(y)
        elif how == "clamp_(min=0)":
            y = a * b
            y.clamp_(min=0)
        else:  # cat, relu_
            y = torch.cat((a, b), 1)[:, :8]
            y.relu_()
        return self.c3(y)


@pytest.mark.parametrize("how", ["relu_", "F.relu(inplace)", "nn.ReLU(inplace)", "clamp_(min=0)", "cat"])
def test_make_quantizable_keeps_int8_results_written_within_their_range(how):
    torch.manual_seed(0)
    model = _RangeKept(how).eval()
    xs = [torch.randn(4, 8, 12, 12) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    kind = {"relu_": "add", "F.relu(inplace)": "add", "nn.ReLU(inplace)": "add", "clamp_(min=0)": "mul",
            "cat": "cat"}[how]
    sqnr, rec = _int8(model, xs, gm)
    assert sqnr > 30, sqnr
    assert rec == []  # (left float, the add ran on dequantized QTensors and c3 took a float input)
    assert _functionals(gm) == [f"functional_{kind}"] and _float_writes(gm) == 0


# ---------------------------------------------------------------- aliases and writes seen
class _PosEncThrough(nn.Module):
    """_PosEnc with modules between the cat and the add_ that return their input or a view of it."""

    def __init__(self, between, c=16, n=8):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(1, 1, c))
        self.pos = nn.Parameter(torch.randn(1, n + 1, c) * 3)
        self.between = nn.Sequential(*between)  # (traced through: one call_module each)

    def forward(self, x):
        x = torch.cat((self.cls.expand(x.size(0), -1, -1), x), dim=1)
        self.between(x).add_(self.pos)
        return x


@pytest.mark.parametrize("between", ["identity", "dropout", "alpha_dropout", "flatten_unflatten"])
def test_make_quantizable_follows_modules_returning_their_input_or_a_view(between):
    modules = {"identity": [nn.Identity()], "dropout": [nn.Dropout(0.1)], "alpha_dropout": [nn.AlphaDropout(0.1)],
               "flatten_unflatten": [nn.Flatten(1), nn.Unflatten(1, (9, 16))]}[between]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = nn.Linear(16, 16), nn.Linear(16, 16)
            self.pe = _PosEncThrough(modules)

        def forward(self, x):
            return self.out(self.pe(self.inp(x)))

    torch.manual_seed(0)
    model = Net().eval()
    xs = [torch.randn(4, 8, 16) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 30, sqnr  # the write through the module was not seen: 4.6 dB
    assert _functionals(gm) == ["pe.functional_cat"] and _float_writes(gm) == 1


class _EluWritten(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.inp, self.out = nn.Linear(16, 16), nn.Linear(16, 16)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.act = nn.ELU(alpha=4.0, inplace=True)

    def forward(self, x):
        x = self.inp(x)
        y = torch.cat((self.cls.expand(x.size(0), -1, -1), x), 1)
        if self.how == "function":
            F.elu(y, 4.0, inplace=True)
        elif self.how == "module":
            self.act(y)
        else:  # torch.ops
            torch.ops.aten.add_.Tensor(y, self.cls)
            torch.ops.aten.mul_(torch.ops.aten.view.default(y, [-1]), 3.0)
        return self.out(y)


@pytest.mark.parametrize("how", ["function", "module", "torch.ops"])
def test_make_quantizable_sees_in_place_modules_and_torch_ops_writes(how):
    torch.manual_seed(0)
    model = _EluWritten(how).eval()
    xs = [torch.randn(4, 8, 16) * 2 for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    with torch.no_grad():
        torch.testing.assert_close(gm(xs[2].clone()), model(xs[2].clone()))
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 30, sqnr  # 7 dB: the ELU's write was lost (module) or saturated (function, torch.ops)
    assert _functionals(gm) == ["functional_cat"]


def test_make_quantizable_reads_writes_of_torch_ops_from_their_schema():
    import torch.fx

    from torchquant.quantizable import _changed_in_place

    aten = torch.ops.aten
    g = torch.fx.Graph()
    a, b = g.placeholder("a"), g.placeholder("b")
    s = g.call_function(aten.add.Tensor, (a, b))
    g.call_function(aten.add_.Tensor, (g.call_function(aten.view.default, (s, [-1])), 1.0))
    t = g.call_function(aten.add.Tensor, (a, b))
    g.call_function(aten.mul_, (t, 2.0))  # an OpOverloadPacket
    u = g.call_function(aten.add.Tensor, (a, b))
    g.call_function(aten.add.out, (a, b), {"out": u})
    v = g.call_function(aten.add.Tensor, (a, b))
    g.call_function(aten.add_.Tensor, (b, g.call_function(aten.view.default, (v, [-1]))))  # v read only
    g.output((s, t, u, v))
    assert _changed_in_place(s) and _changed_in_place(t) and _changed_in_place(u) and not _changed_in_place(v)


# ---------------------------------------------------------------- in-place activations
class _ActInPlace(nn.Module):
    """An in-place activation whose result is dropped: the model reads its input afterwards."""

    def __init__(self, act, view=False):
        super().__init__()
        self.act, self.view = act, view
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.c1(x)
        v = y[:, :4] if self.view else None  # a view made before the write, read after it
        if self.act == "leaky_relu":
            F.leaky_relu(y, 0.1, inplace=True)
        elif self.act == "silu":
            F.silu(y, inplace=True)
        elif self.act == "hardswish":
            F.hardswish(y, inplace=True)
        out = self.c2(y)
        return out if v is None else out + v.sum()


@pytest.mark.parametrize("act", ["leaky_relu", "silu", "hardswish"])
def test_make_quantizable_reads_the_result_of_an_in_place_activation(act):
    torch.manual_seed(0)
    model = _ActInPlace(act).eval()
    xs = [torch.randn(4, 8, 8, 8) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    with torch.no_grad():
        torch.testing.assert_close(gm(xs[2].clone()), model(xs[2].clone()))
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 30, sqnr  # the int8 module returned a new tensor and y stayed unactivated: 2.6-3.5 dB
    assert _activations(gm) == [f"activation_{act.replace('_', '')}"] and _float_writes(gm) == 0


@pytest.mark.parametrize("act", ["leaky_relu", "silu", "hardswish"])
def test_make_quantizable_leaves_an_in_place_activation_read_through_a_view_a_function(act):
    torch.manual_seed(0)
    model = _ActInPlace(act, view=True).eval()
    xs = [torch.randn(4, 8, 8, 8) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    with torch.no_grad():
        torch.testing.assert_close(gm(xs[2].clone()), model(xs[2].clone()))
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 30, sqnr
    assert _activations(gm) == []
    # leaky_relu with a slope in [0, 1] runs on the codes; the others are written in float
    assert _float_writes(gm) == (0 if act == "leaky_relu" else 1)


class _ShapeThenAct(nn.Module):
    """The batch size read from the activation's input before an in-place activation."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.c1, self.fc = nn.Conv2d(4, 8, 3, padding=1), nn.Linear(8 * 8 * 8, 10)
        self.act = nn.ELU(inplace=True)

    def forward(self, x):
        y = self.c1(x)
        n = y.shape[0] if self.how.startswith("shape") else y.size(0)
        if self.how.endswith("module"):
            self.act(y)  # (its result dropped)
        else:
            y = F.leaky_relu(y, 0.1, inplace=True)
        return self.fc(y.reshape(n, -1))


@pytest.mark.parametrize("how", ["shape, module", "size, module", "shape, function", "size, function"])
def test_make_quantizable_takes_a_shape_read_for_no_alias(how):
    torch.manual_seed(0)
    model = _ShapeThenAct(how).eval()
    xs = [torch.randn(4, 4, 8, 8) for _ in range(5)]
    gm = tq.make_quantizable(model, xs[0])
    with torch.no_grad():
        torch.testing.assert_close(gm(xs[4].clone()), model(xs[4].clone()))
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 25, sqnr  # y.shape counted as a view read after the write: the ELU's result was lost, 11.7 dB
    assert _float_writes(gm) == 0
    assert _activations(gm) == ([] if how.endswith("module") else ["activation_leakyrelu"])


class _ActOnView(nn.Module):
    """An in-place activation module applied to a view; the model reads the tensor it views."""

    def __init__(self, act):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.act = act

    def forward(self, x):
        y = self.c1(x)
        self.act(y[:, :4])
        return self.c2(y)


@pytest.mark.parametrize("act", ["elu", "leaky_relu", "celu", "hardswish", "silu"])
def test_make_quantizable_runs_an_in_place_activation_module_on_a_view_in_place(act):
    module = {"elu": nn.ELU(inplace=True), "leaky_relu": nn.LeakyReLU(0.1, inplace=True),
              "celu": nn.CELU(2.0, inplace=True), "hardswish": nn.Hardswish(inplace=True),
              "silu": nn.SiLU(inplace=True)}[act]
    torch.manual_seed(0)
    model = _ActOnView(module).eval()
    xs = [torch.randn(4, 8, 6, 6) for _ in range(4)]
    gm = tq.make_quantizable(model, xs[0])
    with torch.no_grad():
        torch.testing.assert_close(gm(xs[3].clone()), model(xs[3].clone()))
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 30, sqnr  # the int8 module returned a new tensor, y was read unactivated: 16.6 dB (ELU)
    # the module became its in-place function, as F.elu(v, inplace=True) stays one
    assert not any(n.op == "call_module" and n.target == "act" for n in gm.graph.nodes)
    assert _activations(gm) == []


class _DropoutThenWrite(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn
        self.c1, self.c2 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        z = torch.sigmoid(self.c1(x))
        self.fn(z, 0.1, self.training).mul_(5.0)
        return self.c2(z)


@pytest.mark.parametrize("fn", [F.dropout, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout])
def test_make_quantizable_follows_dropout_functions_in_inference(fn):
    torch.manual_seed(0)
    model = _DropoutThenWrite(fn).eval()
    xs = [torch.randn(4, 8, 6, 6) for _ in range(4)]
    gm = tq.make_quantizable(model, xs[0])
    with torch.no_grad():
        torch.testing.assert_close(gm(xs[3].clone()), model(xs[3].clone()))
    sqnr, _ = _int8(model, xs, gm)
    assert sqnr > 30, sqnr  # the write went into a dequantized copy of the dropout's result: 1.3 dB
    assert _activations(gm) == ["activation_sigmoid"] and _float_writes(gm) == 1


class _ReadBeforeWrite(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.how = how
        self.c1, self.c2, self.c3 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        v = y[:, :2]  # a view made before the read of y
        a = self.c2(y)  # reads y before the write
        if self.how == "base":
            y.add_(3.0)
            return a + self.c3(y)
        if self.how == "view written":
            v.add_(3.0)
            return a + self.c3(y)
        v.sum()  # (a read of the view before the write)
        y.add_(3.0)
        return a + self.c3(y) + v.mean()  # the view read after the write


@pytest.mark.parametrize("how", ["base", "view written", "view read after"])
def test_make_quantizable_dequantizes_a_value_from_the_way_to_its_write(how):
    torch.manual_seed(0)
    model = _ReadBeforeWrite(how).eval()
    xs = [torch.randn(2, 4, 8, 8) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    with torch.no_grad():
        torch.testing.assert_close(gm(xs[2].clone()), model(xs[2].clone()))
    sqnr, rec = _int8(model, xs, gm)
    assert sqnr > 30, sqnr
    assert _float_writes(gm) == 1
    # c2, before the write, reads the int8 value (it read the dequantized copy, and warned)
    assert not any("'1.c2' received a float tensor" in m for m in rec), rec
    (c2,) = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == "c2"]
    assert c2.args[0].op == "call_module" and c2.args[0].target == "c1"


def test_make_quantizable_result_written_in_place_retraces_pickles_and_compiles():
    import io

    torch.manual_seed(0)
    model = _CatOfInt8().eval()
    xs = [torch.randn(4, 8, 16) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    assert _float_writes(torch.fx.symbolic_trace(gm)) == 1  # (torch.fx.wrap: recorded as a call)
    assert _float_writes(tq.make_quantizable(gm, xs[0])) == 1  # not twice
    buf = io.BytesIO()
    torch.save(gm, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        assert torch.equal(loaded(xs[2]), gm(xs[2]))
    w = nn.Sequential(tq.QuantStub(), loaded, tq.DeQuantStub()).eval()
    w.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = tq.prepare(w)
        tq.calibrate(p, xs[:2], progress=False)
        q = tq.convert(p)
    with torch.no_grad():
        eager = q(xs[2])
        torch.testing.assert_close(torch.compile(q, fullgraph=True)(xs[2]), eager)


# ---------------------------------------------------------------- modules calibration never ran
class _Aux(nn.Module):
    def __init__(self):
        super().__init__()
        self.quant, self.dequant = tq.QuantStub(), tq.DeQuantStub()
        self.body = nn.Conv2d(3, 8, 3)
        self.head = nn.Sequential(nn.Conv2d(8, 4, 1))  # runs only in training mode
        self.soft = nn.Softmax(dim=1)  # so does this one, which has no int8 version

    def forward(self, x):
        x = self.body(self.quant(x))
        if self.training:
            return self.dequant(x), self.head(x), self.soft(x)
        return self.dequant(x)


def test_uncalibrated_module_warns_at_run_time_by_name_and_why():
    torch.manual_seed(0)
    m = _Aux().eval()
    m.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(m)
    tq.calibrate(p, [torch.randn(2, 3, 8, 8)], progress=False)
    with pytest.warns(UserWarning, match=r"never ran during calibration and stay in float: head\.0 \(Conv2d\)"):
        q = tq.convert(p)
    q.train()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = q(torch.randn(2, 3, 8, 8))
    messages = [str(w.message) for w in rec]
    assert any(msg.startswith("module 'head.0' (Conv2d) stayed float because it never ran during calibration")
               for msg in messages), messages
    assert not any("Conv2d has no int8 implementation" in msg for msg in messages), messages
    # a type with no int8 version keeps its own message
    assert any("Softmax has no int8 implementation" in msg for msg in messages), messages
    assert type(out[1]) is torch.Tensor
    # the prepared model is not marked (convert worked on a copy)
    assert not any("_tq_uncalibrated" in mod.__dict__ for mod in p.modules())
