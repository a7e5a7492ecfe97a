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


def test_make_quantizable_leaves_a_cat_written_in_place_float():
    torch.manual_seed(0)
    model = _PosNet().eval()
    xs = [torch.randn(4, 8, 16) for _ in range(3)]
    gm = tq.make_quantizable(model, xs[0])
    assert _functionals(gm) == []  # the cat stays torch.cat
    with torch.no_grad():
        ref = model(xs[2])
        assert torch.equal(gm(xs[2]), ref)
    w = nn.Sequential(tq.QuantStub(), gm, tq.DeQuantStub()).eval()
    w.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the float fallbacks)
        p = tq.prepare(w)
        tq.calibrate(p, xs[:2], progress=False)
        q = tq.convert(p)
        with torch.no_grad():
            out = q(xs[2])
    assert _sqnr(ref, out) > 30  # a QFunctional cat saturated the add_: under 5 dB


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


@pytest.mark.parametrize("how", ["view_method", "getitem_method", "function", "inplace_kwarg", "inplace_positional",
                                 "out", "chunk", "activation", "add_relu_then_write"])
def test_make_quantizable_leaves_results_written_in_place_float(how):
    torch.manual_seed(0)
    model = _Writes(how).eval()
    x = torch.randn(2, 4, 5, 5)
    gm = tq.make_quantizable(model, x)
    assert _functionals(gm) == []
    assert not any(n.startswith("activation_") for n, _ in gm.named_modules())
    with torch.no_grad():
        assert torch.equal(gm(x), model(x))


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
