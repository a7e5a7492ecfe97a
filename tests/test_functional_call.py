"""torch.func.functional_call with another model's state on converted modules: the kernel layout
(non-persistent packed buffers) follows the tensors passed in, and the module's own state comes
back afterwards."""
import warnings

import pytest
import torch
from torch import nn

import torchquant as tq


def _static(model, x):
    model.eval()
    model.qconfig = tq.get_default_qconfig("x86")
    p = tq.prepare(model)
    p(x)
    return tq.convert(p)


def _models(seed):
    torch.manual_seed(seed)
    x2, x4 = torch.randn(4, 16), torch.randn(2, 3, 9, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "static linear": (_static(nn.Sequential(tq.QuantStub(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4),
                                                    tq.DeQuantStub()), x2), x2),
            "conv": (_static(nn.Sequential(tq.QuantStub(), nn.Conv2d(3, 6, 3), nn.ReLU6(), tq.DeQuantStub()), x4), x4),
            "conv transpose": (_static(nn.Sequential(tq.QuantStub(), nn.ConvTranspose2d(3, 4, 3, stride=2),
                                                     tq.DeQuantStub()), x4), x4),
            "dynamic": (tq.quantize_dynamic(nn.Sequential(nn.Linear(16, 8)), {nn.Linear}), x2),
            "lstm": (tq.quantize_dynamic(nn.LSTM(16, 8, 2), {nn.LSTM}), torch.randn(5, 2, 16)),
            "int4": (tq.quantize_weight_only(nn.Sequential(nn.Linear(64, 8)), group_size=32, progress=False),
                     torch.randn(4, 64)),
        }


def _out(y):
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("kind", ["static linear", "conv", "conv transpose", "dynamic", "lstm", "int4"])
def test_functional_call_with_another_models_state_runs_that_model(kind):
    (m1, x), (m2, _) = _models(0)[kind], _models(1)[kind]
    own = _out(m1(x))
    want = _out(m2(x))
    assert not torch.equal(own, want)
    got = _out(torch.func.functional_call(m1, m2.state_dict(), (x,)))
    assert torch.equal(got, want)
    assert torch.equal(_out(m1(x)), own)  # its own weights again after the call
    # a weight assigned in place of the buffer is used too (the other model's state as its state
    # dict gives it: a converted module's qweight buffer holds a placeholder, nn/_compact.py)
    for a, b in zip(m1.modules(), m2.modules()):
        sd = b.state_dict()
        for k, t in b._buffers.items():
            if isinstance(t, torch.Tensor) and k in sd:  # (the persistent state)
                a._buffers[k] = sd[k].clone()
    assert torch.equal(_out(m1(x)), want)


def test_an_ensemble_passing_its_own_packed_buffers_keeps_them():
    # torch.func.stack_module_state over named_buffers() passes the packed layout too (vmap over
    # models): the forward must not repack the batched weights
    (m1, x), (m2, _) = _models(0)["dynamic"], _models(1)["dynamic"]
    params, buffers = torch.func.stack_module_state([m1, m2])
    base = m1

    def call(p, b, x):
        return torch.func.functional_call(base, (p, b), (x,))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        y = torch.vmap(call, in_dims=(0, 0, None))(params, buffers, x)
    assert torch.equal(y[0], m1(x)) and torch.equal(y[1], m2(x))


@pytest.mark.parametrize("kind", ["dynamic", "int4"])
def test_fullgraph_compile_right_after_a_weight_is_assigned(kind):
    # The trace rebuilds the layout (the assigned weight is not the one packed); its check for
    # an inference tensor raised there ("Encountered tensor.is_inference() during tracing").
    torch.manual_seed(0)
    f = nn.Sequential(nn.Linear(64, 32))
    m = (tq.quantize_dynamic(f, {nn.Linear}) if kind == "dynamic"
         else tq.quantize_weight_only(f, group_size=32, progress=False))
    x = torch.randn(4, 64)
    with torch.no_grad():
        want = m(x)
        m[0].qweight = m[0].qweight.clone()
        torch._dynamo.reset()
        assert torch.equal(torch.compile(m, backend="eager", fullgraph=True)(x), want)
