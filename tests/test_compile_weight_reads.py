"""A compact layer's weight read inside torch.compile / torch.export (python/torchquant/nn/_compact.py:
_traced_read): computed in the graph from the kernel layout, equal to eager bit for bit, the layer
left compact; and training through frozen int8 / int4 layers under torch.compile(fullgraph=True)."""
import functools
import warnings

import pytest
import torch
from torch import nn

import torchquant as tq
from torchquant.nn._compact import is_compact, unpack_by_probes

ops = torch.ops.torchquant


def _quiet(f, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*args, **kwargs)


def _layer(kind, seed=0):
    """A freshly converted (compact) layer of `kind` and an input for it."""
    torch.manual_seed(seed)
    if kind == "dynamic":
        return _quiet(tq.quantize_dynamic, nn.Sequential(nn.Linear(16, 8)).eval(), {nn.Linear})[0]
    if kind == "int4":
        return _quiet(tq.quantize_weight_only, nn.Sequential(nn.Linear(16, 8)).eval(), group_size=16,
                      progress=False)[0]
    if kind == "conv":
        m = nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 4, 3), tq.DeQuantStub()).eval()
        x = torch.randn(2, 3, 6, 6)
    else:
        m = nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), tq.DeQuantStub()).eval()
        x = torch.randn(32, 16)
    m.qconfig = tq.get_default_qconfig("x86")
    p = _quiet(tq.prepare, m)
    p(x)
    return _quiet(tq.convert, p)[1]


class _TiedHead(nn.Module):
    """Model code computing with a layer's weight values, as a tied / shared head does."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        w = self.layer.weight.dequantize()
        return x @ w.reshape(w.shape[0], -1).t()


def _state_of(layer):
    # (the placeholder and its read-back's weak cache: a trace changes neither)
    rec = layer.__dict__["_tq_compact"]
    r = rec[0]._tq_rebuild
    return rec[0], r.last, r.last_version


def _unchanged(layer, before):
    ph, last, version = _state_of(layer)
    return is_compact(layer) and ph is before[0] and last is before[1] and version == before[2]


_KINDS = ["dynamic", "static", "int4", "conv"]


def _input(kind):
    return torch.randn(3, 27) if kind == "conv" else torch.randn(3, 16)


@pytest.mark.parametrize("kind", _KINDS)
def test_weight_values_read_under_fullgraph_compile(kind):
    # The placeholder (meta device) reached the op: "making fake tensor call" for int8
    x = _input(kind)
    with torch.no_grad():
        want = _TiedHead(_layer(kind))(x)
        m = _TiedHead(_layer(kind))
        before = _state_of(m.layer)
        torch._dynamo.reset()
        got = torch.compile(m, backend="eager", fullgraph=True)(x)
    assert torch.equal(got, want)
    assert _unchanged(m.layer, before)  # (the module is not changed by the trace)


@pytest.mark.parametrize("kind", _KINDS)
def test_weight_values_read_under_export(kind):
    # int8: "'scale' is on cpu but 'q' is on meta"; int4: a FakeTensorDeviceMismatchError (non-strict
    # export's fake buffer has no read-back record: the module's is used)
    x = _input(kind)
    with torch.no_grad():
        want = _TiedHead(_layer(kind))(x)
        m = _TiedHead(_layer(kind))
        ep = torch.export.export(m, (x,))
        assert torch.equal(ep.module()(x), want)
    assert is_compact(m.layer)
    assert ep.state_dict["layer.qweight"].is_meta  # (the program holds the placeholder and runs the layout)


def test_weight_values_read_under_strict_export():
    x = _input("int4")
    with torch.no_grad():
        want = _TiedHead(_layer("int4"))(x)
        m = _TiedHead(_layer("int4"))
        assert torch.equal(torch.export.export(m, (x,), strict=True).module()(x), want)
    assert is_compact(m.layer)


def test_dynamic_multihead_attentions_stacked_weight_read_under_compile():
    # in_proj_weight: one QTensor over three compact layers (q, k, v)
    def build():
        torch.manual_seed(0)
        return _quiet(tq.quantize_dynamic, nn.Sequential(nn.MultiheadAttention(16, 2)).eval(),
                      {nn.MultiheadAttention})[0]

    def f(mha, x):
        return mha(x, x, x)[0] + (x @ mha.in_proj_weight.dequantize().t())[..., :16]

    x = torch.randn(5, 1, 16)
    with torch.no_grad():
        want = f(build(), x)
        mha = build()
        torch._dynamo.reset()
        assert torch.equal(torch.compile(functools.partial(f, mha), backend="eager", fullgraph=True)(x), want)


@pytest.mark.skipif(tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 12),
                    reason="torch 2.11's Dynamo cannot trace id() of a tensor made in the graph: the layer's "
                           "repack from another model's placeholder breaks the graph there")
def test_another_modules_placeholder_read_under_compile():
    # functional_call with another model's state_dict(keep_vars=True): its placeholder stands for
    # its own layout, which the trace reads (before the layer's call, which repacks from it)
    class M(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return x @ self.layer.weight.dequantize().t() + self.layer(x)

    m1, m2 = M(_layer("dynamic", 0)), M(_layer("dynamic", 1))
    x = torch.randn(3, 16)
    with torch.no_grad():
        want = M(_layer("dynamic", 1))(x)
        state = m2.state_dict(keep_vars=True)
        torch._dynamo.reset()
        f = torch.compile(lambda t: torch.func.functional_call(m1, state, (t,)), backend="eager", fullgraph=True)
        assert torch.equal(f(x), want)
    assert is_compact(m1.layer) and is_compact(m2.layer)


def _call_ops(ep):
    g = ep.graph_module.graph
    g.eliminate_dead_code()
    return sorted(str(n.target) for n in g.nodes if n.op == "call_function")


@pytest.mark.parametrize("kind", ["dynamic", "int4"])
def test_shape_and_dtype_reads_leave_no_live_op_in_an_exported_graph(kind):
    # A qweight read whose values go unused is dead code (its unpack: pure reshapes of the layout),
    # which DCE drops (run_decompositions and AOT autograd do); .weight's shape / dtype add nothing
    class Plain(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x.to(torch.float32)) * 8 + 1

    class Reads(Plain):
        def forward(self, x):
            w = self.layer.weight
            return self.layer(x.to(w.dtype)) * w.shape[0] + self.layer.qweight.dtype.itemsize

    x = torch.randn(3, 16)
    with torch.no_grad():
        want = Plain(_layer(kind))(x)
        m = Reads(_layer(kind))
        ep = torch.export.export(m, (x,))
        assert torch.equal(ep.module()(x), want)
        assert _call_ops(ep) == _call_ops(torch.export.export(Plain(_layer(kind)), (x,)))
    assert is_compact(m.layer)


def _probed(layer):
    """layer's read-back swapped for unpack_by_probes (not traceable), as a layout that needs it
    reads back (ConvTranspose's, Conv's on CUDA)."""
    r = layer.__dict__["_tq_compact"][0]._tq_rebuild
    r.unpack = lambda bufs, shape: unpack_by_probes(lambda w: ops.pack_weight(w)[0], bufs["_packed_weight"], shape)
    return layer


def test_a_layout_read_back_by_probes_names_the_workaround_in_a_trace():
    x = torch.randn(3, 16)
    with torch.no_grad():
        want = _TiedHead(_layer("dynamic"))(x)
        assert torch.equal(_probed(_layer("dynamic")).qweight, _layer("dynamic").qweight)  # (eagerly, it reads back)
        m = _TiedHead(_probed(_layer("dynamic")))
        with pytest.raises(RuntimeError, match="(?i)read module.qweight once before compiling or exporting"):
            torch.export.export(m, (x,))
        torch._dynamo.reset()
        with pytest.raises(Exception, match="(?i)read module.qweight once before compiling or exporting"):
            torch.compile(m, backend="eager", fullgraph=True)(x)
        # a read of the shape alone still traces (the placeholder answers it)
        torch._dynamo.reset()
        f = torch.compile(lambda t: m.layer(t) * m.layer.qweight.shape[0], backend="eager", fullgraph=True)
        assert torch.equal(f(x), m.layer(x) * 8)
        assert is_compact(m.layer)
        # the workaround: the weight read once, eagerly, before the trace (the layer then holds it)
        m.layer.qweight
        assert torch.equal(torch.export.export(m, (x,)).module()(x), want)


@pytest.mark.parametrize("kind", ["dynamic", "int4"])
def test_training_through_frozen_layers_compiles_fullgraph(kind):
    # InputGrad's backward reads the weight: the read-back's weak cache was a write to a Python
    # object inside an autograd.Function ("HOP: Unsafe side effect"); a trace records nothing
    def build():
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
        if kind == "dynamic":
            return _quiet(tq.quantize_dynamic, base, {nn.Linear})
        return _quiet(tq.quantize_weight_only, base, group_size=32, progress=False)

    x = torch.randn(4, 64)
    want = x.clone().requires_grad_()
    eager = build()
    eager(want).sum().backward()
    got = x.clone().requires_grad_()
    q = build()
    before = [_state_of(m) for m in (q[0], q[2])]
    torch._dynamo.reset()
    y = torch.compile(q, backend="eager", fullgraph=True)(got)
    y.sum().backward()
    assert torch.equal(y.detach(), eager(x))
    assert torch.equal(got.grad, want.grad)
    assert all(_unchanged(m, b) for m, b in zip((q[0], q[2]), before))


def test_a_transposed_convolutions_weight_read_in_a_trace_names_the_workaround():
    # Its .weight read qweight directly: inside a trace the meta placeholder, and a device
    # mismatch error where the codes were used.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = nn.Sequential(tq.QuantStub(), nn.ConvTranspose2d(4, 4, 3), tq.DeQuantStub()).eval()
        m.qconfig = tq.get_default_qconfig("x86")
        p = tq.prepare(m)
        p(torch.randn(2, 4, 5, 5))
        q = tq.convert(p)
    x = torch.randn(2, 4, 5, 5)

    def f(t):
        return q(t) + q[1].weight.dequantize().sum()

    with torch.no_grad():
        torch._dynamo.reset()
        # its shape answers inside a graph (Conv's layout), without the codes
        g = torch.compile(lambda t: q(t) * q[1].weight.shape[0] + q[1].weight.dim(), backend="eager", fullgraph=True)
        assert torch.equal(g(x), q(x) * 4 + 4) and is_compact(q[1])
        assert tuple(q[1].weight.shape) == (4, 4, 3, 3)
        torch._dynamo.reset()
        with pytest.raises(Exception, match="(?i)read module.qweight once before compiling or exporting"):
            torch.compile(f, backend="eager", fullgraph=True)(x)
        q[1].qweight  # the workaround
        torch._dynamo.reset()
        assert torch.equal(torch.compile(f, backend="eager", fullgraph=True)(x), f(x))
