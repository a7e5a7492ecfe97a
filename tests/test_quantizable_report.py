"""make_quantizable (keyword-only and optional parameters, the training mode of the trace, shared
children), find_fusable_modules' [Linear, BatchNorm1d] check, and report's FloatFunctional rows and
non-finite SQNR."""
import copy
import inspect
import io
import math
import warnings

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import torchquant as tq  # noqa: E402
from torchquant.report import LayerError, QuantReport  # noqa: E402


# ---------------------------------------------------------------- make_quantizable


class _KwOnly(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x, *, scale: float = 1.0):
        return self.conv(x) * scale + x


class _KwOnlyRequired(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x, *, gate):
        return self.conv(x) * gate + x


def test_make_quantizable_passes_keyword_only_parameters_by_keyword():
    torch.manual_seed(0)
    x = torch.randn(1, 4, 8, 8)
    model = _KwOnly().eval()
    gm = tq.make_quantizable(model, (x,), example_kwargs={"scale": 2.0})
    # the result is called as the model is, and computes the same
    assert torch.equal(gm(x, scale=2.0), model(x, scale=2.0))
    assert torch.equal(gm(x), model(x))
    assert [n.target for n in gm.graph.nodes if n.op == "call_method"] == ["add"]
    # a keyword-only parameter without default, a tensor
    model = _KwOnlyRequired().eval()
    g = torch.rand(1, 4, 8, 8)
    gm = tq.make_quantizable(model, (x,), example_kwargs={"gate": g})
    assert torch.equal(gm(x, gate=g), model(x, gate=g))
    assert sorted(n.target for n in gm.graph.nodes if n.op == "call_method") == ["add", "mul"]


class _TrainingOnly(nn.Module):
    """What reads self.training in Python: a functional dropout, stochastic depth, a branch."""

    def __init__(self):
        super().__init__()
        from torchvision.ops import StochasticDepth

        self.a, self.b = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)
        self.depth = StochasticDepth(0.5, "row")  # (ConvNeXt's: torch.fx records its function call)
        self.drop = nn.Dropout(0.5)  # a module: keeps following .train()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        h = F.dropout(self.a(x), 0.5, self.training)
        h = x + self.depth(self.b(h))
        if self.training:
            h = h * 3.0
        return self.drop(self.bn(h))


def test_make_quantizable_traces_the_eval_mode_forward_and_restores_the_modes():
    pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = _TrainingOnly().train()
    model.bn.eval()  # a mode of its own, kept
    stats = model.bn.running_mean.clone()
    x = torch.randn(4, 4, 6, 6)
    gm = tq.make_quantizable(model, x)  # traced in train mode, the eval check disagreed: a RuntimeError
    assert gm.training and model.training and gm.drop.training and not gm.bn.training and not model.bn.training
    assert torch.equal(gm.bn.running_mean, stats)
    depth = [n for n in gm.graph.nodes if getattr(n.target, "__name__", "") == "stochastic_depth"]
    assert len(depth) == 1 and False in list(depth[0].args) + list(depth[0].kwargs.values())
    gm.eval()
    model.eval()
    with torch.no_grad():
        want = model(x)
        assert torch.equal(gm(x), want) and torch.equal(gm(x), want)  # nothing random left in eval
    # the dropout module follows .train() (for QAT); the functional ones were fixed off
    gm.train()
    torch.manual_seed(1)
    with torch.no_grad():
        assert not torch.equal(gm(x), gm(x))
        gm.drop.eval()
        assert torch.equal(gm(x), gm(x))


def test_make_quantizable_of_an_efficientnet_in_training_mode():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.efficientnet_b0().train()
    x = torch.randn(1, 3, 32, 32)
    gm = tq.make_quantizable(model, x)  # was: "an in-place op (a += b ...)" RuntimeError
    assert gm.training and model.training
    gm.eval()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), rtol=1e-5, atol=1e-6)


class _Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(8, 8)
        self.dec = self.enc  # the same layer under two names (weight sharing)
        self.c = nn.Linear(8, 8)
        self.inner = nn.Module()
        self.inner.p = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
        self.inner.q = self.inner.p  # a nested alias
        self.register_module("none", None)  # a registered empty slot, kept too

    def forward(self, x):
        h = self.dec(self.c(self.enc(x))) + x
        return self.inner.q(self.inner.p(h)) + h


def test_make_quantizable_keeps_every_name_of_a_shared_child():
    torch.manual_seed(0)
    model = _Shared().eval()
    x = torch.randn(2, 8)
    gm = tq.make_quantizable(model, x)
    assert gm.dec is gm.enc and gm.inner.q is gm.inner.p
    assert "none" in gm._modules and gm.none is None
    assert sorted(gm.state_dict()) == sorted(model.state_dict())
    gm.load_state_dict(model.state_dict(), strict=True)
    assert torch.equal(gm(x), model(x))


class _Optional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x, mask=None, flag: bool = False):
        h = self.conv(x)
        if mask is not None:
            h = h * mask
        if flag:
            h = h * 2.0
        return h + x


def test_make_quantizable_takes_concrete_args_and_names_the_parameters_traced_as_tensors():
    torch.manual_seed(0)
    model = _Optional().eval()
    x = torch.randn(1, 4, 8, 8)
    assert "concrete_args" in inspect.signature(tq.make_quantizable).parameters
    # `if flag:` on a Proxy: the trace fails; `mask` is taken as a tensor: the error names both
    with pytest.raises(RuntimeError, match=r"could not trace.*'mask', 'flag'.*"
                                           r"concrete_args=\{\"mask\": None, \"flag\": False\}"):
        tq.make_quantizable(model, x)
    gm = tq.make_quantizable(model, x, concrete_args={"mask": None, "flag": False})
    assert torch.equal(gm(x), model(x))
    assert torch.equal(gm(x, mask=None, flag=False), model(x))  # the parameters keep their names
    assert [n.target for n in gm.graph.nodes if n.op == "call_method"] == ["add"]
    with pytest.raises(AssertionError, match="mask has been specialized to have value None"):
        gm(x, mask=torch.ones(1))
    buf = io.BytesIO()
    torch.save(gm, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x, mask=None), model(x))
    # the other branch, fixed for the trace and the example runs alike
    gm = tq.make_quantizable(model, x, concrete_args={"mask": None, "flag": True})
    assert torch.equal(gm(x, flag=True), model(x, flag=True))
    assert sorted(n.target for n in gm.graph.nodes if n.op == "call_method") == ["add", "mul_scalar"]
    # a mask given as a tensor: traced as one, the flag fixed
    m = torch.rand(1, 4, 8, 8)
    gm = tq.make_quantizable(model, (x,), example_kwargs={"mask": m}, concrete_args={"flag": False})
    assert torch.equal(gm(x, m), model(x, m))
    # the run of the trace fails (mask None multiplied): the error says why
    with pytest.raises(RuntimeError, match=r"(?s)running the traced model.*'mask'.*concrete_args=\{\"mask\": None\}"):
        tq.make_quantizable(model, x, concrete_args={"flag": False})
    with pytest.raises(TypeError, match="'concrete_args' must be a dict"):
        tq.make_quantizable(model, x, concrete_args=[None])
    with pytest.raises(TypeError, match=r"'concrete_args' names \['mas'\]"):
        tq.make_quantizable(model, x, concrete_args={"mas": None})
    with pytest.raises(TypeError, match=r"\['mask'\] given both in 'concrete_args'"):
        tq.make_quantizable(model, x, example_kwargs={"mask": None}, concrete_args={"mask": None})


# ---------------------------------------------------------------- find_fusable_modules


def _linear_bn(L, C):
    m = nn.Sequential(nn.Linear(C, C), nn.BatchNorm1d(L))
    m[1].running_mean.uniform_(-1, 1)
    m[1].running_var.uniform_(0.5, 2)
    return m


def test_find_fusable_modules_proposes_linear_batchnorm1d_only_where_it_folds():
    torch.manual_seed(0)
    # [N, L, C] with L != C: the BatchNorm normalizes L, fuse_modules would raise
    m = _linear_bn(10, 16).eval()
    assert tq.find_fusable_modules(m) == []
    assert tq.find_fusable_modules(m, example_inputs=torch.randn(2, 10, 16)) == []
    # L == C: only the example inputs tell (without, it would fold into the wrong dimension)
    m = _linear_bn(16, 16).train()
    assert tq.find_fusable_modules(m, example_inputs=torch.randn(2, 16, 16)) == []
    assert m.training and m[1].training and int(m[1].num_batches_tracked) == 0  # the run changed nothing
    assert tq.find_fusable_modules(m) == [["0", "1"]]
    # a 2-D input: the pair folds, with example inputs or without
    m = nn.Sequential(_linear_bn(16, 16), nn.ReLU()).eval()
    x = torch.randn(4, 16)
    for kwargs in ({}, {"example_inputs": x}, {"example_inputs": (x,)}):
        groups = tq.find_fusable_modules(m, **kwargs)
        assert groups == [["0.0", "0.1"]]
        with torch.no_grad():
            assert torch.allclose(tq.fuse_modules(m, groups)(x), m(x), atol=1e-5)
    assert tq.find_fusable_modules(m, qat=True, example_inputs=x) == [["0.0", "0.1"]]
    with pytest.raises(TypeError, match="'qat' must be a bool, got Tensor.*example_inputs"):
        tq.find_fusable_modules(m, x)
    with pytest.raises(TypeError, match="'example_inputs' must be a tensor or a tuple"):
        tq.find_fusable_modules(m, example_inputs={"x": x})
    with pytest.raises(RuntimeError, match="find_fusable_modules: running the model on 'example_inputs' failed"):
        tq.find_fusable_modules(m, example_inputs=torch.randn(4, 5))


# ---------------------------------------------------------------- report


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(x) + self.c1(x)


class _AoRes(nn.Module):
    def __init__(self):
        super().__init__()
        from torch.ao.nn.quantized import FloatFunctional

        self.c1, self.c2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.skip = FloatFunctional()

    def forward(self, x):
        return self.skip.add_relu(self.c2(x), self.c1(x))


@pytest.mark.parametrize("kind", ["make_quantizable", "torch.ao"])
def test_report_has_a_row_for_each_float_functional(kind):
    torch.manual_seed(0)
    if kind == "make_quantizable":
        inner, name = tq.make_quantizable(_Res().eval(), torch.randn(1, 4, 8, 8)), "1.functional_add"
    else:
        inner, name = _AoRes().eval(), "1.skip"
    fm = nn.Sequential(tq.QuantStub(), inner, tq.DeQuantStub()).eval()
    fm.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(copy.deepcopy(fm))
    data = [torch.randn(2, 4, 8, 8) for _ in range(2)]
    for d in data:
        p(d)
    q = tq.convert(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for float_side in (fm, p):  # the float model, or the prepared one
            r = tq.report(float_side, q, data, show_size=True)
            row = r[name]
            assert row.float_type == "FloatFunctional" and row.quantized_type == "QFunctional"
            assert 20 < row.sqnr_db < math.inf and row.numel == 2 * 2 * 4 * 8 * 8
            assert "FloatFunctional  QFunctional" in str(r)
            if float_side is fm:  # (no state in the float FloatFunctional: no size ratio)
                assert [line.split()[-1] for line in str(r).splitlines() if line.startswith(name)] == ["-"]
    # the methods are the class's again
    for model in (fm, p, q):
        assert not {"add", "add_relu", "cat", "mul"} & set(model.get_submodule(name).__dict__)
    with torch.no_grad():
        assert torch.equal(q(data[0]), q(data[0]))


def test_report_tells_minus_inf_from_inf():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fm = nn.Sequential(tq.QuantStub(), nn.Hardshrink(0.5), tq.DeQuantStub()).eval()
        fm.qconfig = tq.get_default_qconfig("x86")
        p = tq.prepare(copy.deepcopy(fm))
        p(torch.linspace(-1.0, 1.0, 101))
        q = tq.convert(p)
        # the float output: all in the dead zone, zeros; the int8 one rounds past it
        r = tq.report(fm, q, torch.full((64,), 0.499))
    assert r["1"].sqnr_db == -math.inf
    line = next(line for line in str(r).splitlines() if line.startswith("1 "))
    assert line.split()[3] == "-inf"

    rows = [LayerError("fc", "Linear", "Linear", 30.0, 0.01, 10, 100, 25),
            LayerError("zero", "Hardshrink", "LookupActivation", -math.inf, 0.5, 10, 0, 0),
            LayerError("same", "ReLU", "ReLU", math.inf, 0.0, 10, 0, 0),
            LayerError("ff", "FloatFunctional", "QFunctional", 35.0, 0.1, 10, 0, 16)]
    rep = QuantReport(rows, show_size=True)
    table = {line.split()[0]: line.split() for line in str(rep).splitlines()[2:]}
    assert table["zero"][3] == "-inf" and table["same"][3] == "inf" and table["fc"][3] == "30.0"
    assert table["fc"][-1] == "4.00x" and table["ff"][-1] == "-" and table["zero"][-1] == "-"
    fig = rep.plot()
    ax = fig.axes[0]
    heights = [b.get_height() for b in ax.patches]
    labels = [t.get_text() for t in ax.texts]
    # -inf at the bottom, below every finite bar and 0 dB, labelled with its max |err|; +inf on top
    assert heights[1] < min(0.0, heights[0], heights[3]) and heights[2] > max(heights[0], heights[3])
    assert labels[1].startswith("0.5") and "-inf" in labels[1] and labels[2] == "exact"
    assert ax.patches[1].get_facecolor() != ax.patches[0].get_facecolor()
    import matplotlib.pyplot as plt

    plt.close(fig)
