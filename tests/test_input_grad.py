"""Training through frozen weight-quantized Linears (int8 dynamic, int4 weight-only): the
gradient with respect to the input is dL/dy @ W with the layer's effective float weight (the
straight-through estimator for the dynamic input quantization); the integer weights get none."""
import warnings

import pytest
import torch
from torch import nn

import torchquant as tq


def _quantized(kind, lin):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "dynamic":
            q = tq.quantize_dynamic(nn.Sequential(lin), {nn.Linear})[0]
            return q, q._float_weight(), False
        if kind == "dynamic_relu":
            m = tq.fuse_modules(nn.Sequential(lin, nn.ReLU()), [["0", "1"]])
            q = tq.quantize_dynamic(m, {tq.nn.intrinsic.LinearReLU})[0]
            return q, q._float_weight(), True
        q = tq.quantize_weight_only(nn.Sequential(lin), bits=4, group_size=32, progress=False)[0]
        return q, q.dequantized_weight(), False


@pytest.mark.parametrize("kind", ["dynamic", "dynamic_relu", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_input_gradient_is_grad_times_the_effective_weight(kind, dtype):
    torch.manual_seed(0)
    q, w, relu = _quantized(kind, nn.Linear(64, 48))
    x = torch.randn(3, 5, 64, dtype=dtype, requires_grad=True)
    y = q(x)
    assert y.requires_grad and y.dtype == dtype
    with torch.no_grad():
        assert torch.equal(q(x), y.detach())  # the same forward as inference
    g = torch.randn_like(y)
    y.backward(g)
    gy = g.float() * (y > 0) if relu else g.float()
    assert torch.equal(x.grad, (gy @ w).to(dtype))
    assert not any(p.requires_grad for p in q.parameters())  # nothing of the layer trains


def test_an_adapter_and_the_layer_before_train_through_an_int4_layer():
    # QLoRA-style: a frozen int4 layer with a trainable low-rank adapter beside it and a float
    # layer before it; the gradients are those of the same model with the dequantized weight, up
    # to the int4 kernel's own rounding of the forward (its activations go through int8 on VNNI).
    torch.manual_seed(1)
    pre, base = nn.Linear(16, 64), nn.Linear(64, 32)
    q, w, _ = _quantized("int4", base)
    a, b = nn.Linear(64, 4, bias=False), nn.Linear(4, 32, bias=False)
    nn.init.normal_(b.weight, std=0.1)
    x, target = torch.randn(8, 16), torch.randn(8, 32)

    def loss_of(layer):
        h = pre(x)
        return (layer(h) + b(a(h)) - target).pow(2).mean()

    ref = nn.Linear(64, 32)
    with torch.no_grad():
        ref.weight.copy_(w)
        ref.bias.copy_(q.bias)
    loss_of(ref).backward()
    want = [p.grad.clone() for p in (pre.weight, a.weight, b.weight)]
    for p in (pre.weight, a.weight, b.weight, pre.bias):
        p.grad = None
    loss_of(q).backward()
    for got, exp in zip((pre.weight.grad, a.weight.grad, b.weight.grad), want):
        assert float((got - exp).norm() / exp.norm()) < 0.01
    opt = torch.optim.SGD(list(pre.parameters()) + list(a.parameters()) + list(b.parameters()), lr=0.05)
    first = float(loss_of(q))
    for _ in range(20):
        opt.zero_grad()
        loss_of(q).backward()
        opt.step()
    assert float(loss_of(q)) < 0.9 * first


@pytest.mark.parametrize("kind", ["dynamic", "dynamic_relu", "int4"])
def test_torch_func_transforms_give_autograds_input_gradient(kind):
    torch.manual_seed(1)
    q, w, relu = _quantized(kind, nn.Linear(64, 48))
    x = torch.randn(4, 64)

    def loss(x):
        return q(x).square().sum()

    xr = x.clone().requires_grad_()
    loss(xr).backward()
    assert torch.equal(torch.func.grad(loss)(x), xr.grad)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the ops' per-sample vmap fallback)
        per_row = torch.vmap(torch.func.grad(loss))(x.unsqueeze(1))
        jac = torch.func.jacrev(lambda x: q(x))(x[:1])
    assert torch.allclose(per_row.squeeze(1), xr.grad, rtol=1e-5, atol=1e-6)
    y = q(x[:1])
    want = (w * (y[0] > 0).float().unsqueeze(1)) if relu else w
    assert torch.allclose(jac[0, :, 0], want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["dynamic", "dynamic_relu", "int4"])
def test_jit_trace_in_grad_mode_behind_a_float_layer_that_requires_grad(kind):
    # (as a traced BERT: its embeddings require grad; the trace failed with "unordered_map::at")
    torch.manual_seed(1)
    q, _, _ = _quantized(kind, nn.Linear(32, 24))
    model = nn.Sequential(nn.Linear(16, 32), q).eval()
    x = torch.randn(4, 16)
    traced = torch.jit.trace(model, x)
    with torch.no_grad():
        for xx in (x, torch.randn(7, 16)):
            assert torch.equal(traced(xx), model(xx))
