"""Converted modules take the calls their float modules take: the forward's parameters have
torch.nn's names (``layer(input=x)``, ``bag(input=idx, offsets=off)``, ``lstm(input=x, hx=h)``),
and a call by keyword gives what the positional call gives."""
import inspect

import pytest
import torch
from torch import nn

import torchquant as tq
from torchquant import QTensor
from torchquant.nn.quantized_int4 import LinearWeightOnlyInt4

# Parameters a quantized module's forward may have after the float module's: torchquant's private
# keyword-only ones (the fused ReLU of a Linear / Conv), and torch.ao's quantized EmbeddingBag's
# compressed_indices_mapping.
_EXTRA_OK = {"compressed_indices_mapping"}


def _torch_nn_base(cls):
    """The torch.nn class whose forward ``cls`` stands for (cls itself, or the torch.nn class a
    QAT / fused module derives from); None for one that derives from nn.Module alone."""
    for c in cls.__mro__:
        if c is nn.Module:
            return None
        if c.__module__.startswith("torch.nn.modules."):
            return c
    return None


def _params(fn):
    return list(inspect.signature(fn).parameters.values())[1:]  # without self


def _check_signature(qcls, fcls):
    qp, fp = _params(qcls.forward), _params(fcls.forward)
    qn, fn = [p.name for p in qp], [p.name for p in fp]
    assert qn[:len(fn)] == fn, f"{qcls.__qualname__}.forward{tuple(qn)} vs {fcls.__name__}.forward{tuple(fn)}"
    for q, f in zip(qp, fp):
        assert q.kind == f.kind, (qcls.__qualname__, q.name)
        assert (q.default is inspect.Parameter.empty) == (f.default is inspect.Parameter.empty), \
            (qcls.__qualname__, q.name)
        if f.default is not inspect.Parameter.empty:
            assert q.default == f.default, (qcls.__qualname__, q.name, q.default, f.default)
    for p in qp[len(fp):]:
        assert p.default is not inspect.Parameter.empty, (qcls.__qualname__, p.name)
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.name.startswith("_") or p.name in _EXTRA_OK, \
            (qcls.__qualname__, p.name)


def _mapping_pairs():
    pairs = {}
    for mapping in (tq.get_default_static_quant_module_mappings(), tq.get_default_dynamic_quant_module_mappings()):
        for f, q in mapping.items():
            base = _torch_nn_base(f)
            if base is not None:
                pairs[(q, base)] = None
    pairs[(LinearWeightOnlyInt4, nn.Linear)] = None
    return sorted(pairs, key=lambda p: (p[0].__module__, p[0].__qualname__, p[1].__name__))


@pytest.mark.parametrize("qcls,fcls", _mapping_pairs(), ids=lambda c: c.__qualname__)
def test_forward_parameters_are_the_float_modules(qcls, fcls):
    _check_signature(qcls, fcls)


def _same(a, b):
    if isinstance(a, QTensor):
        assert isinstance(b, QTensor)
        assert torch.equal(a.data, b.data) and torch.equal(a.scale, b.scale) and \
            torch.equal(a.zero_point, b.zero_point)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and not isinstance(b, QTensor)
        assert torch.equal(a, b)
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _same(x, y)
    else:
        assert a == b


class _Wrap(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.quant, self.m, self.dequant = tq.QuantStub(), m, tq.DeQuantStub()

    def forward(self, x):
        return self.dequant(self.m(self.quant(x)))


# (float module, input shape, keyword arguments after the first beyond it)
_STATIC_CASES = [
    (lambda: nn.Linear(8, 4), (2, 8), {}),
    (lambda: nn.Conv2d(3, 4, 3), (1, 3, 6, 6), {}),
    (lambda: nn.ConvTranspose1d(3, 4, 3, stride=2), (1, 3, 5), {}),
    (lambda: nn.ConvTranspose2d(3, 4, 3, stride=2), (1, 3, 5, 5), {"output_size": [12, 12]}),
    (lambda: nn.ConvTranspose3d(3, 2, 2, stride=2), (1, 3, 2, 3, 3), {}),
    (lambda: nn.ReLU(), (2, 8), {}),
    (lambda: nn.Dropout(), (2, 8), {}),
    (lambda: nn.Flatten(), (2, 3, 4), {}),
    (lambda: nn.BatchNorm2d(3), (2, 3, 4, 4), {}),
    (lambda: nn.BatchNorm3d(3), (2, 3, 2, 2, 2), {}),
    (lambda: nn.ReLU6(), (2, 8), {}),
    (lambda: nn.Hardsigmoid(), (2, 8), {}),
    (lambda: nn.Hardswish(), (2, 8), {}),
    (lambda: nn.ELU(), (2, 8), {}),
    (lambda: nn.LeakyReLU(), (2, 8), {}),
    (lambda: nn.PReLU(), (2, 8), {}),
    (lambda: nn.PReLU(3), (2, 3, 4), {}),
    (lambda: nn.Sigmoid(), (2, 8), {}),
    (lambda: nn.SiLU(), (2, 8), {}),
    (lambda: nn.LayerNorm(8), (2, 8), {}),
    (lambda: nn.GroupNorm(2, 4), (2, 4, 3), {}),
    (lambda: nn.InstanceNorm1d(3), (2, 3, 5), {}),
    (lambda: nn.InstanceNorm2d(3), (2, 3, 4, 4), {}),
    (lambda: nn.InstanceNorm3d(3), (2, 3, 2, 2, 2), {}),
    (lambda: nn.Dropout2d(), (2, 3, 4, 4), {}),
    (lambda: nn.AlphaDropout(), (2, 8), {}),
]


@pytest.mark.parametrize("make,shape,kw", _STATIC_CASES, ids=lambda v: type(v()).__name__ if callable(v) else None)
def test_converted_module_takes_keywords(make, shape, kw):
    torch.manual_seed(0)
    fm = make().eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        fm(input=x, **kw)  # the float module's call
    model = _Wrap(fm).eval()
    model.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(model)
    with torch.no_grad():
        p(torch.randn(*shape))
    q = tq.convert(p)
    m = q.m
    assert type(m).__module__.startswith("torchquant"), type(m)
    _check_signature(type(m), _torch_nn_base(type(fm)))
    qx = q.quant(x)
    with torch.no_grad():
        _same(m(qx, *kw.values()), m(input=qx, **kw))
        if kw:
            _same(m(qx, *kw.values()), m(qx, **kw))


def _embedding_modules():
    torch.manual_seed(0)
    emb, bag = nn.Embedding(10, 4), nn.EmbeddingBag(10, 4, mode="sum")
    model = nn.ModuleDict({"emb": emb, "bag": bag})
    for m in model.values():
        m.qconfig = tq.float_qparams_weight_only_qconfig
    q = tq.convert(tq.prepare(model))
    return q["emb"], q["bag"]


def test_embedding_takes_input_keyword():
    emb, bag = _embedding_modules()
    _check_signature(type(emb), nn.Embedding)
    _check_signature(type(bag), nn.EmbeddingBag)
    idx = torch.tensor([[1, 2], [3, 9]])
    _same(emb(idx), emb(input=idx))
    flat, off, w = torch.tensor([1, 2, 3, 9, 0]), torch.tensor([0, 2]), torch.rand(5)
    _same(bag(flat, off), bag(input=flat, offsets=off))
    _same(bag(flat, off, w), bag(input=flat, offsets=off, per_sample_weights=w))
    _same(bag(idx), bag(input=idx))
    with pytest.raises(TypeError, match="argument 'input' must be a Tensor, got list"):
        emb([1, 2])
    with pytest.raises(TypeError, match="argument 'input' must be a Tensor, got list"):
        bag([1, 2], off)


def test_dynamic_modules_take_keywords():
    torch.manual_seed(0)
    model = nn.ModuleDict({"fc": nn.Linear(8, 4), "lstm": nn.LSTM(8, 6, batch_first=True), "gru": nn.GRU(8, 6),
                           "lstm_cell": nn.LSTMCell(8, 6), "gru_cell": nn.GRUCell(8, 6), "rnn_cell": nn.RNNCell(8, 6),
                           "mha": nn.MultiheadAttention(8, 2, batch_first=True)}).eval()
    q = tq.quantize_dynamic(model, {nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell,
                                    nn.MultiheadAttention})
    for name, f in model.items():
        assert type(q[name]) is not type(f), name
        _check_signature(type(q[name]), type(f))
    x, xs, h = torch.randn(2, 8), torch.randn(2, 3, 8), torch.randn(2, 6)
    with torch.no_grad():
        _same(q["fc"](x), q["fc"](input=x))
        h0 = (torch.randn(1, 2, 6), torch.randn(1, 2, 6))
        _same(q["lstm"](xs, h0), q["lstm"](input=xs, hx=h0))
        _same(q["gru"](xs), q["gru"](input=xs))
        _same(q["lstm_cell"](x, (h, h)), q["lstm_cell"](input=x, hx=(h, h)))
        _same(q["gru_cell"](x, h), q["gru_cell"](input=x, hx=h))
        _same(q["rnn_cell"](x), q["rnn_cell"](input=x))
        mask = torch.tensor([[False, False, True], [False, False, False]])
        _same(q["mha"](xs, xs, xs, mask, False), q["mha"](query=xs, key=xs, value=xs, key_padding_mask=mask,
                                                          need_weights=False))


def test_weight_only_int4_takes_input_keyword():
    torch.manual_seed(0)
    q = tq.quantize_weight_only(nn.Sequential(nn.Linear(128, 16)), bits=4, progress=False)
    assert isinstance(q[0], LinearWeightOnlyInt4)
    x = torch.randn(2, 128)
    with torch.no_grad():
        _same(q[0](x), q[0](input=x))


def test_qat_modules_take_torch_nns_input_keyword():
    """prepare_qat's modules (Linear, LinearReLU, LinearBn1d, Conv*, ConvBn*, ConvBnReLU*) derive
    from the torch.nn class they train for, and take its calls."""
    from torchquant.nn import qat, qat_conv

    classes = [c for mod in (qat, qat_conv) for c in vars(mod).values()
               if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == mod.__name__
               and "forward" in vars(c) and _torch_nn_base(c) is not None]
    assert len(classes) >= 5
    for c in classes:
        _check_signature(c, _torch_nn_base(c))

    torch.manual_seed(0)
    m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(144, 5), nn.ReLU(), tq.DeQuantStub()).train()
    m = tq.fuse_modules_qat(m, [["1", "2", "3"], ["5", "6"]])
    m.qconfig = tq.get_default_qat_qconfig("x86")
    p = tq.prepare_qat(m).eval()
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(p[1](input=x), p[1](x))
    y = torch.randn(2, 144)
    assert torch.equal(p[5](input=y), p[5](y))
