"""Layers whose weight is re-parametrized (weight norm, spectral norm, a custom parametrization;
torch.nn.utils's module-parametrization API and its older hook-based one): the flow quantizes
their effective weight, on its own copy, and leaves the given model as it was."""
import copy
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize

import torchquant as tq
import torchquant.nn.quantized as nnq


class _Scale(nn.Module):
    def forward(self, w):
        return w * 3.0 + 0.01


def _reparametrize(mod, kind):
    if kind == "weight_norm":
        return parametrizations.weight_norm(mod)
    if kind == "spectral_norm":
        return parametrizations.spectral_norm(mod)
    if kind == "custom":
        parametrize.register_parametrization(mod, "weight", _Scale())
        return mod
    if kind == "old_weight_norm":
        return torch.nn.utils.weight_norm(mod)
    return torch.nn.utils.spectral_norm(mod)  # old_spectral_norm


KINDS = ["weight_norm", "spectral_norm", "custom", "old_weight_norm", "old_spectral_norm"]


def _sqnr(ref, y):
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - y).pow(2).mean()))


@pytest.mark.parametrize("kind", KINDS)
def test_static_flow_quantizes_the_effective_weight(kind):
    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), _reparametrize(nn.Conv1d(8, 16, 5, padding=2), kind), nn.ReLU(),
                      _reparametrize(nn.ConvTranspose1d(16, 8, 4, stride=2, padding=1), kind), nn.Flatten(),
                      _reparametrize(nn.Linear(8 * 40, 10), kind), tq.DeQuantStub()).eval()
    x = torch.randn(4, 8, 20)
    with torch.no_grad():
        ref = m(x)
    m.qconfig = tq.get_default_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays in float
        p = tq.prepare(m)
        for batch in [x] + [torch.randn(4, 8, 20) for _ in range(3)]:
            p(batch)
        q = tq.convert(p)
    assert [type(c) for c in q] == [nnq.Quantize, nnq.Conv1d, nnq.ReLU, nnq.ConvTranspose1d, nnq.Flatten,
                                    nnq.Linear, nnq.DeQuantize]
    with torch.no_grad():
        assert _sqnr(ref, q(x)) > 25
        assert torch.equal(m(x), ref)  # the given model keeps its parametrizations and outputs
    if kind in ("weight_norm", "spectral_norm", "custom"):
        assert parametrize.is_parametrized(m[1])
    r = tq.report(m, q, x)
    assert r["1"].sqnr_db > 25


@pytest.mark.parametrize("kind", KINDS)
def test_dynamic_and_fusion(kind):
    torch.manual_seed(1)
    m = nn.Sequential(_reparametrize(nn.Linear(16, 32), kind), nn.ReLU(), _reparametrize(nn.Linear(32, 4), kind)).eval()
    x = torch.randn(8, 16)
    with torch.no_grad():
        ref = m(x)
        d = tq.quantize_dynamic(m, {nn.Linear})
        assert all(type(d[i]) is nnq.DynamicLinear for i in (0, 2)) and _sqnr(ref, d(x)) > 30
        assert torch.equal(m(x), ref)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.relu = nn.Conv1d(8, 16, 3, padding=1), nn.BatchNorm1d(16), nn.ReLU()

        def forward(self, x):
            return self.relu(self.bn(self.conv(x)))

    b = Block()
    with torch.no_grad():
        b.bn.running_mean.normal_()
        b.bn.running_var.uniform_(0.5, 2)
    _reparametrize(b.conv, kind)
    b.eval()
    assert tq.find_fusable_modules(b) == [["conv", "bn", "relu"]]
    fused = tq.fuse_modules(b, [["conv", "bn", "relu"]])
    xc = torch.randn(2, 8, 30)
    with torch.no_grad():
        assert torch.allclose(fused(xc), b(xc), atol=1e-5)


def test_qat_names_the_layers_whose_parametrization_it_replaces():
    m = nn.Sequential(tq.QuantStub(), parametrizations.weight_norm(nn.Linear(8, 8)), tq.DeQuantStub()).train()
    m.qconfig = tq.get_default_qat_qconfig("x86")
    with pytest.warns(UserWarning, match=r"prepare_qat: the weight re-parametrizations .* of \['1'\]"):
        p = tq.prepare_qat(m)
    assert type(p[1]) is tq.nn.qat.Linear
    p(torch.randn(4, 8)).sum().backward()
    assert parametrize.is_parametrized(m[1])


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "custom"])
def test_dynamic_flow_quantizes_parametrized_recurrent_and_embedding_layers(kind):
    # A parametrized class (ParametrizedLSTM, ...) matched no qconfig type and stayed in float
    # without a word, where the same parametrization on a Linear was quantized.
    torch.manual_seed(2)

    def reparametrize(mod, name):
        if kind == "custom":
            parametrize.register_parametrization(mod, name, _Scale())
            return mod
        return getattr(parametrizations, kind)(mod, name=name)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = reparametrize(nn.LSTM(8, 12), "weight_hh_l0")
            self.cell = reparametrize(nn.GRUCell(8, 12), "weight_ih")
            self.emb = reparametrize(nn.EmbeddingBag(10, 12, mode="sum"), "weight")
            self.fc = reparametrize(nn.Linear(12, 4), "weight")

        def forward(self, x, i):
            return self.fc(self.rnn(x)[0] + self.cell(x[0]) + self.emb(i))

    m = M().eval()
    x, i = torch.randn(5, 3, 8), torch.randint(0, 10, (3, 4))
    spec = {nn.LSTM: tq.default_dynamic_qconfig, nn.GRUCell: tq.default_dynamic_qconfig,
            nn.Linear: tq.default_dynamic_qconfig, nn.EmbeddingBag: tq.float_qparams_weight_only_qconfig}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = tq.quantize_dynamic(m, spec)
    assert {n: type(c).__module__ + "." + type(c).__name__ for n, c in q.named_children()} == {
        "rnn": "torchquant.nn.quantized_dynamic_rnn.LSTM", "cell": "torchquant.nn.quantized_dynamic_rnn.GRUCell",
        "emb": "torchquant.nn.quantized_embedding.EmbeddingBag", "fc": "torchquant.nn.quantized.DynamicLinear"}
    with torch.no_grad():
        ref = m(x, i)
        assert _sqnr(ref, q(x, i)) > 25
        assert torch.equal(m(x, i), ref) and parametrize.is_parametrized(m.rnn)
