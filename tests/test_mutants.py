"""Cases that deliberately broken kernels and Python paths got through: each test here fails
with a specific small bug (named in its docstring) that the rest of the suite did not catch."""
import pytest
import torch
from torch.overrides import TorchFunctionMode

import torchquant
from torchquant import _fastcall, reference

ops = torch.ops.torchquant
NAN, INF = float("nan"), float("inf")


def _same(a, b):
    """Bit-exact equality that also accepts NaN where the other has NaN (and checks -0)."""
    return (a.dtype == b.dtype and a.shape == b.shape and torch.equal(torch.isnan(a), torch.isnan(b))
            and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
            and torch.equal(torch.signbit(a), torch.signbit(b)))


def _per_channel_case(shape, axis, qmin, qmax, gen):
    """Per-channel qparams with power-of-two scales (so (k + 0.5) * scale[c] is an exact tie
    after the multiply by 1 / scale) and x mixing ties, saturating values, NaN, +-Inf and -0
    in every channel."""
    C = shape[axis]
    scale = 2.0 ** -torch.randint(1, 9, (C,), generator=gen).float()
    zp = torch.randint(qmin, qmax + 1, (C,), generator=gen, dtype=torch.int32)
    view = [1] * len(shape)
    view[axis] = C
    s, z = scale.reshape(view), zp.reshape(view).float()
    k = torch.randint(qmin - 3, qmax + 3, shape, generator=gen).float() - z
    x = (k + 0.5) * s                                  # ties, some past the range
    kind = torch.randint(0, 10, shape, generator=gen)
    x = torch.where(kind == 0, torch.randn(shape, generator=gen) * 3, x)
    x = torch.where(kind == 1, torch.full(shape, NAN), x)
    x = torch.where(kind == 2, torch.full(shape, INF), x)
    x = torch.where(kind == 3, torch.full(shape, -INF), x)
    x = torch.where(kind == 4, torch.full(shape, -0.0), x)
    x = torch.where(kind == 5, k * s, x)               # exact multiples
    return x, scale, zp


# Per-channel layouts: inner < 64 takes the per-channel vector kernels (rows of C * inner with
# one qparam per element, a vector body and a scalar tail), inner >= 64 the per-tensor ones.
PC_LAYOUTS = [((7, 37), 1), ((3, 5, 13), 1), ((4, 3, 8), 2), ((2, 70), 0), ((9, 40), -1)]


@pytest.mark.parametrize("shape,axis", PC_LAYOUTS)
@pytest.mark.parametrize("qmin,qmax,dtype", [(-128, 127, torch.int8), (0, 255, torch.uint8), (-8, 7, torch.int8)])
def test_per_channel_ties_nan_inf_every_path(isa, shape, axis, qmin, qmax, dtype):
    """Mutants: per-channel quantize rounding half up instead of half to even (the per-channel
    tests had random scales, so no exact ties); fake_quantize per channel returning the
    quantized value for NaN instead of NaN (no per-channel test had NaN input)."""
    gen = torch.Generator().manual_seed(len(shape) * 100 + axis + qmin)
    x, scale, zp = _per_channel_case(shape, axis, qmin, qmax, gen)
    ax = axis % len(shape)
    ties = torch.isfinite(x) & (torch.frac(x / scale.reshape([-1 if d == ax else 1 for d in range(len(shape))])).abs() == 0.5)
    assert ties.sum() >= x.numel() // 4 and torch.isnan(x).any()
    q = ops.quantize(x, scale, zp, axis, qmin, qmax, dtype)
    assert torch.equal(q, reference.quantize(x, scale, zp, ax, qmin, qmax, dtype))
    assert _same(ops.dequantize(q, scale, zp, axis), reference.dequantize(q, scale, zp, ax))
    fq = ops.fake_quantize(x, scale, zp, axis, qmin, qmax)
    want = reference.fake_quantize(x, scale, zp, ax, qmin, qmax)
    assert _same(fq, want)
    assert torch.equal(torch.isnan(fq), torch.isnan(x))  # NaN in, NaN out
    g = torch.randn(shape, generator=gen)
    assert _same(ops.fake_quantize_backward(g, x, scale, zp, axis, qmin, qmax),
                 reference.fake_quantize_backward(g, x, scale, zp, ax, qmin, qmax))


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("use_grad_scaling,qmin,qmax", [(True, 0, 255), (True, -128, 0), (False, -128, 127)])
def test_learnable_fake_quantize_module_gradients(per_channel, use_grad_scaling, qmin, qmax):
    """Mutant: LearnableFakeQuantize's LSQ gradient scale 1 / (numel * Q_P) without the square
    root (only the finiteness of the gradients was checked)."""
    gen = torch.Generator().manual_seed(qmin + 7)
    kw = dict(quant_min=qmin, quant_max=qmax, use_grad_scaling=use_grad_scaling,
              dtype=torch.quint8 if qmin == 0 else torch.qint8)
    if per_channel:
        kw.update(observer=torchquant.observer.MovingAveragePerChannelMinMaxObserver, ch_axis=1,
                  qscheme=torch.per_channel_affine)
    fq = torchquant.LearnableFakeQuantize(**kw)
    x = torch.randn(24, 6, generator=gen) * 2 - (1.0 if qmax == 0 else 0.0)
    fq(x)  # qparams from the observer; then x twice as wide: clipped values give gz its terms
    fq.disable_observer()
    x = x * 2
    y = fq(x)
    g = torch.randn(y.shape, generator=gen)
    y.backward(g)
    axis = 1 if per_channel else None
    s, z = fq.scale.detach(), fq.zero_point.detach()
    qp = qmax if qmax > 0 else -qmin
    factor = 1.0 / (x.numel() * qp) ** 0.5 if use_grad_scaling else 1.0
    assert torch.equal(y, reference.fake_quantize_learnable(x, s, z, axis, qmin, qmax))
    _, gs, gz = reference.fake_quantize_learnable_backward(g, x, s, z, axis, qmin, qmax, factor)
    assert gs.abs().sum() > 0 and gz.abs().sum() > 0
    torch.testing.assert_close(fq.scale.grad, gs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(fq.zero_point.grad, gz, rtol=1e-5, atol=1e-7)


class _Tagged(torch.Tensor):
    pass


class _Mode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_fastcall_usable_checks_every_argument():
    """Mutant: usable() not checking the type of its third tensor (a tensor subclass given as a
    zero point or weight would skip its __torch_function__)."""
    t = torch.ones(2)
    sub = t.as_subclass(_Tagged)
    assert _fastcall.usable(t, t, t) == _fastcall.enabled
    for args in ((sub, t, t), (t, sub, t), (t, t, sub), (torch.nn.Parameter(t), t, t)):
        assert not _fastcall.usable(*args), [type(a).__name__ for a in args]
    with _Mode():
        assert not _fastcall.usable(t, t, t)


def test_quantized_modules_route_subclass_qparams_through_torch_ops(monkeypatch):
    """The same through a module: a DeQuantize of a QTensor whose zero point is a subclass must
    take torch.ops (which honours the subclass), not the typed path."""
    calls = []
    f = _fastcall.dequantize
    monkeypatch.setattr(_fastcall, "dequantize", lambda *a: calls.append(1) or f(*a))
    monkeypatch.setattr(_fastcall, "enabled", True)
    data = torch.randint(0, 256, (3, 4), dtype=torch.uint8)
    plain = torchquant.QTensor(data, torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32), None, 0, 255)
    dq = torchquant.nn.quantized.DeQuantize()
    want = dq(plain)
    assert calls == [1]
    tagged = torchquant.QTensor(data, torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32).as_subclass(_Tagged),
                                None, 0, 255)
    assert torch.equal(dq(tagged).as_subclass(torch.Tensor), want)
    assert calls == [1]


def test_histogram_rebin_run_addition_exactness_bound():
    """The rebin adds a run of k equal parts in one step only where no one-by-one addition could
    round. Here the one-by-one sum rounds: 2^49 + 2^25 (a float32 rounding tie) plus sixteen
    parts of 1/16, each a half-ulp tie that leaves the sum unchanged, so the new bin holds
    2^49 + 2^25 and rounds to 2^49 in float32; adding 16 * (1/16) at once would give
    2^49 + 2^25 + 1, which rounds to 2^49 + 2^26. A looser bound on the one-step path fails
    here."""
    hist = torch.tensor([2.0**49, 2.0**25, 1.0, 0.0])
    args = (hist, torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0), torch.tensor(1000.0), 16)
    want = reference.histogram_rebin(*args)
    assert want[0].item() == 2.0**49
    assert torch.equal(torch.ops.torchquant.histogram_rebin(*args), want)
