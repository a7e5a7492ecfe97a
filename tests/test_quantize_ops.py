"""quantize / dequantize / fake_quantize / choose_qparams: every CPU variant bit-exact with
torchquant.reference and with torch's own functions."""
import math
import random
import sys
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch

import torchquant
import torchquant as tq
from torchquant import reference

from conftest import TORCH_AO_ROUNDS_IN_FLOAT32

ops = torch.ops.torchquant
QRANGES = [(-128, 127, torch.int8), (0, 255, torch.uint8), (-8, 7, torch.int8), (0, 3, torch.uint8), (-127, 127, torch.int8)]


def _tricky_input(shape, scale, zp, qmin, qmax, gen):
    """Random floats mixed with exact ties ((k + 0.5) * s), values that saturate both ends,
    exact multiples of the scale, zeros and signed zeros."""
    n = 1
    for d in shape:
        n *= d
    x = torch.randn(n, generator=gen) * scale * (qmax - qmin) / 3
    k = torch.randint(qmin - zp - 4, qmax - zp + 4, (n,), generator=gen).float()
    kind = torch.randint(0, 6, (n,), generator=gen)
    x = torch.where(kind == 1, (k + 0.5) * scale, x)
    x = torch.where(kind == 2, k * scale, x)
    x = torch.where(kind == 3, torch.full_like(x, 1e6) * torch.sign(torch.randn(n, generator=gen)), x)
    x = torch.where(kind == 4, torch.zeros_like(x) * torch.sign(torch.randn(n, generator=gen)), x)
    return x.reshape(shape)


def _pt_qparams(scale, zp):
    return torch.tensor([scale]), torch.tensor([zp], dtype=torch.int32)


@pytest.mark.parametrize("qmin,qmax,dtype", QRANGES)
@pytest.mark.parametrize("n", [0, 1, 7, 31, 32, 33, 1000, 100003])
def test_quantize_per_tensor_matches_reference(isa, qmin, qmax, dtype, n):
    gen = torch.Generator().manual_seed(n + qmin)
    for zp in (qmin, qmax, (qmin + qmax) // 2):
        scale = 0.0173
        x = _tricky_input((n,), scale, zp, qmin, qmax, gen)
        s, z = _pt_qparams(scale, zp)
        got = ops.quantize(x, s, z, None, qmin, qmax, dtype)
        want = reference.quantize(x, s, z, None, qmin, qmax, dtype)
        assert got.dtype == dtype and torch.equal(got, want)
        deq = ops.dequantize(got, s, z, None)
        assert torch.equal(deq, reference.dequantize(got, s, z, None))
        fq = ops.fake_quantize(x, s, z, None, qmin, qmax)
        assert torch.equal(fq, reference.fake_quantize(x, s, z, None, qmin, qmax))


@pytest.mark.parametrize("shape,axis", [((5, 7), 0), ((5, 7), 1), ((3, 4, 70), 1), ((3, 4, 70), 2),
                                        ((2, 3, 5, 2), -1), ((2, 33, 3), 1), ((1,), 0), ((0, 4), 1), ((4, 0), 0),
                                        ((8, 130), 0), ((2, 3, 65), 1)])
@pytest.mark.parametrize("qmin,qmax,dtype", QRANGES[:3])
def test_per_channel_every_axis(isa, shape, axis, qmin, qmax, dtype):
    gen = torch.Generator().manual_seed(len(shape) * 10 + axis)
    C = shape[axis]
    scale = torch.rand(C, generator=gen) * 0.1 + 0.001
    zp = torch.randint(qmin, qmax + 1, (C,), generator=gen, dtype=torch.int32)
    if C >= 2:
        zp[0], zp[-1] = qmin, qmax
    x = _tricky_input(shape, 0.05, 0, qmin, qmax, gen)
    got = ops.quantize(x, scale, zp, axis, qmin, qmax, dtype)
    assert torch.equal(got, reference.quantize(x, scale, zp, axis % len(shape), qmin, qmax, dtype))
    assert torch.equal(ops.dequantize(got, scale, zp, axis), reference.dequantize(got, scale, zp, axis % len(shape)))
    fq = ops.fake_quantize(x, scale, zp, axis, qmin, qmax)
    assert torch.equal(fq, reference.fake_quantize(x, scale, zp, axis % len(shape), qmin, qmax))
    g = torch.randn(shape, generator=gen)
    assert torch.equal(ops.fake_quantize_backward(g, x, scale, zp, axis, qmin, qmax),
                       reference.fake_quantize_backward(g, x, scale, zp, axis % len(shape), qmin, qmax))


def test_matches_torch_functions(isa):
    gen = torch.Generator().manual_seed(0)
    x = _tricky_input((64, 129), 0.02, 5, -128, 127, gen)
    x = x.clamp(-1e4, 1e4)  # torch's own AVX2 quantize misorders values past int32 range
    assert torch.equal(torchquant.fake_quantize_per_tensor_affine(x, 0.02, 5, -128, 127),
                       torch.fake_quantize_per_tensor_affine(x, 0.02, 5, -128, 127))
    assert torch.equal(torchquant.fake_quantize_per_tensor_affine(x, 0.02, 5, 0, 15),
                       torch.fake_quantize_per_tensor_affine(x, 0.02, 5, 0, 15))
    for axis in (0, 1):
        C = x.shape[axis]
        s = torch.rand(C, generator=gen) * 0.05 + 0.005
        z = torch.randint(-128, 128, (C,), generator=gen, dtype=torch.int32)
        assert torch.equal(torchquant.fake_quantize_per_channel_affine(x, s, z, axis, -128, 127),
                           torch.fake_quantize_per_channel_affine(x, s, z, axis, -128, 127))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tq = torch.quantize_per_channel(x, s.double(), z.long(), axis, torch.qint8)
        ours = torchquant.quantize_per_channel(x, s, z, axis, torch.qint8)
        assert torch.equal(ours.int_repr(), tq.int_repr())
        assert torch.equal(ours.dequantize(), tq.dequantize())
    if not TORCH_AO_ROUNDS_IN_FLOAT32:
        pytest.skip("this torch build's quantize_per_tensor rounds ties otherwise (the 2.13.0 CPU wheel); the "
                    "comparisons above ran")
    for dtype, zp in ((torch.quint8, 200), (torch.qint8, -3)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tq = torch.quantize_per_tensor(x, 0.02, zp, dtype)
        ours = torchquant.quantize_per_tensor(x, 0.02, zp, dtype)
        assert torch.equal(ours.int_repr(), tq.int_repr())
        assert torch.equal(ours.dequantize(), tq.dequantize())
        assert ours.q_scale() == pytest.approx(0.02) and ours.q_zero_point() == zp


def test_nan_and_inf_are_defined(isa):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 3e38, -3e38, 0.0] * 7)
    s, z = _pt_qparams(0.1, 3)
    q = ops.quantize(x, s, z, None, -128, 127, torch.int8)
    assert q[:6].tolist() == [3, 127, -128, 127, -128, 3]
    fq = ops.fake_quantize(x, s, z, None, -128, 127)
    assert torch.isnan(fq[0]) and fq[1] == pytest.approx(12.4) and fq[2] == pytest.approx(-13.1)
    g = ops.fake_quantize_backward(torch.ones_like(x), x, s, z, None, -128, 127)
    assert g[:6].tolist() == [0, 0, 0, 0, 0, 1]
    assert torch.equal(q, reference.quantize(x, s, z, None, -128, 127, torch.int8))


def test_non_contiguous_and_inputs_untouched(isa):
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(40, 66, generator=gen)
    x = base.t()[::2]  # non-contiguous view
    before = base.clone()
    s = torch.rand(x.shape[1], generator=gen) * 0.05 + 0.01
    z = torch.zeros(x.shape[1], dtype=torch.int32)
    q = ops.quantize(x, s, z, 1, -128, 127, torch.int8)
    assert torch.equal(q, reference.quantize(x.contiguous(), s, z, 1, -128, 127, torch.int8))
    assert torch.equal(base, before)


@pytest.mark.parametrize("hugepages", ["1", "0"])
def test_large_outputs_huge_page_path(hugepages):
    """Outputs of 4 MiB and more are advised onto huge pages (TORCHQUANT_HUGEPAGES=0 turns that
    off; the setting is read once per process, so each runs in a fresh one): results must not
    depend on it, at an odd size whose end is not on a 2 MiB boundary."""
    code = """
import torch, torchquant
from torchquant import reference
ops = torch.ops.torchquant
g = torch.Generator().manual_seed(0)
x = torch.randn(1531, 1409, generator=g) * 3  # 8.2 MiB of float32
s, z = torch.tensor([0.02]), torch.tensor([3], dtype=torch.int32)
sc, zc = torch.rand(1409, generator=g) * 0.05 + 0.01, torch.randint(-9, 9, (1409,), dtype=torch.int32)
for ss, zz, ax in ((s, z, None), (sc, zc, 1)):
    q = ops.quantize(x, ss, zz, ax, -128, 127, torch.int8)
    assert torch.equal(q, reference.quantize(x, ss, zz, ax, -128, 127, torch.int8))
    assert torch.equal(ops.dequantize(q, ss, zz, ax), reference.dequantize(q, ss, zz, ax))
    assert torch.equal(ops.fake_quantize(x, ss, zz, ax, -128, 127),
                       reference.fake_quantize(x, ss, zz, ax, -128, 127))
    gr = torch.randn(x.shape, generator=g)
    assert torch.equal(ops.fake_quantize_backward(gr, x, ss, zz, ax, -128, 127),
                       reference.fake_quantize_backward(gr, x, ss, zz, ax, -128, 127))
a = torch.randint(-128, 128, (1031, 1100), dtype=torch.int8, generator=g)
b = torch.randint(-128, 128, (1100, 1031), dtype=torch.int8, generator=g)
assert torch.equal(torchquant.int8_mm(a, b), reference.int8_mm(a, b))
print("ok")
"""
    import os
    import subprocess
    import sys
    env = dict(os.environ, TORCHQUANT_HUGEPAGES=hugepages)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
@pytest.mark.parametrize("value, advised", [(None, True), ("1", True), ("0", False), (" Off ", False),
                                            ("false", False), ("no", False)])
def test_hugepages_setting(value, advised):
    # TORCHQUANT_HUGEPAGES turned the advice off for "0" only ("off" / "false" left it on, unlike
    # TORCHQUANT_FASTCALL's spellings); read once per process, so each value runs in a fresh one.
    code = """
import torch, torchquant
q = torch.ops.torchquant.quantize(torch.randn(8 << 20), torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32),
                                  None, -128, 127, torch.int8)
addr, flags = q.data_ptr() + (4 << 20), None
for line in open("/proc/self/smaps"):
    p = line.split()
    if p and "-" in p[0] and all(c in "0123456789abcdef-" for c in p[0]):
        lo, hi = (int(v, 16) for v in p[0].split("-"))
        inside = lo <= addr < hi
    elif line.startswith("VmFlags") and inside:
        flags = line.split()
print("hg" in flags)
"""
    import os
    import subprocess
    env = {k: v for k, v in os.environ.items() if k != "TORCHQUANT_HUGEPAGES"}
    if value is not None:
        env["TORCHQUANT_HUGEPAGES"] = value
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read() if os.path.exists(
        "/sys/kernel/mm/transparent_hugepage/enabled") else ""
    if advised and "[never]" in thp:
        pytest.skip("transparent huge pages are off on this machine")
    assert r.stdout.strip() == str(advised)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes(dtype):
    x = (torch.randn(100) * 2).to(dtype)
    s, z = _pt_qparams(0.05, 0)
    fq = ops.fake_quantize(x, s, z, None, -128, 127)
    assert fq.dtype == dtype
    assert torch.equal(fq, reference.fake_quantize(x.float(), s, z, None, -128, 127).to(dtype))


def test_fake_quantize_autograd_straight_through():
    x = torch.tensor([-100.0, -1.0, 0.0, 0.5, 1.0, 100.0], requires_grad=True)
    y = torchquant.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)
    y.sum().backward()
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 0]
    xt = x.detach().clone().requires_grad_()
    torch.fake_quantize_per_tensor_affine(xt, 0.1, 0, -128, 127).sum().backward()
    assert torch.equal(x.grad, xt.grad)


@pytest.mark.parametrize("axis", [None, 1])
def test_fake_quantize_float64_gradient_passes_unrounded(axis):
    x = torch.tensor([[-100.0, -1.0, 0.5, 100.0]] * 3, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[0.1, 1e-50, 1e300, 1.0000000001]] * 3, dtype=torch.float64).t().contiguous().t()  # non-contiguous
    if axis is None:
        y = torchquant.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)
        yt = torch.fake_quantize_per_tensor_affine(x, 0.1, 0, -128, 127)
    else:
        s, z = torch.full((4,), 0.1), torch.zeros(4, dtype=torch.int32)
        y = torchquant.fake_quantize_per_channel_affine(x, s, z, axis, -128, 127)
        yt = torch.fake_quantize_per_channel_affine(x, s, z, axis, -128, 127)
    (gx,) = torch.autograd.grad(y, x, g)
    (gt,) = torch.autograd.grad(yt, x, g)
    assert gx.dtype == torch.float64 and torch.equal(gx, gt)
    assert gx[0].tolist() == [0.0, 1e-50, 1e300, 0.0]


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_learnable_gradients_match_reference(axis):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(16, 12, generator=gen) * 2
    C = 1 if axis is None else x.shape[axis]
    scale = (torch.rand(C, generator=gen) * 0.05 + 0.02).requires_grad_()
    zp = torch.randn(C, generator=gen).mul(3).requires_grad_()
    xr = x.clone().requires_grad_()
    y = ops.fake_quantize_learnable(xr, scale, zp, axis, -128, 127, 0.5)
    assert torch.equal(y, reference.fake_quantize_learnable(x, scale.detach(), zp.detach(), axis, -128, 127))
    g = torch.randn(y.shape, generator=gen)
    y.backward(g)
    gx, gs, gz = reference.fake_quantize_learnable_backward(g, x, scale.detach(), zp.detach(), axis, -128, 127, 0.5)
    assert torch.equal(xr.grad, gx)
    torch.testing.assert_close(scale.grad, gs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(zp.grad, gz, rtol=1e-5, atol=1e-5)


def test_learnable_matches_torch_per_tensor():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1000, generator=gen)
    s = torch.tensor([0.013], requires_grad=True)
    z = torch.tensor([2.0], requires_grad=True)
    y = torchquant.fake_quantize_learnable_per_tensor_affine(x, s, z, -128, 127)
    s2, z2 = s.detach().clone().requires_grad_(), z.detach().clone().requires_grad_()
    y2 = torch._fake_quantize_learnable_per_tensor_affine(x, s2, z2, -128, 127, 1.0)
    assert torch.equal(y, y2)
    y.sum().backward()
    y2.sum().backward()
    torch.testing.assert_close(s.grad, s2.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(z.grad, z2.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("symmetric", [False, True])
def test_choose_qparams_matches_torch_ao(symmetric):
    from torch.ao.quantization.observer import MinMaxObserver, PerChannelMinMaxObserver
    gen = torch.Generator().manual_seed(11)
    for dtype, qmin, qmax in ((torch.quint8, 0, 255), (torch.qint8, -128, 127)):
        x = torch.randn(64, 33, generator=gen) * 3 + 0.7
        scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
        obs = MinMaxObserver(dtype=dtype, qscheme=scheme)
        obs(x)
        s_ao, z_ao = obs.calculate_qparams()
        szp = 128 if (symmetric and dtype == torch.quint8) else 0
        s, z = torchquant.choose_qparams(x.min().reshape(1), x.max().reshape(1), qmin, qmax, symmetric, symmetric_zero_point=szp)
        assert torch.equal(s, s_ao.float()) and torch.equal(z.long(), z_ao.long())
        scheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
        pobs = PerChannelMinMaxObserver(ch_axis=1, dtype=dtype, qscheme=scheme)
        pobs(x)
        s_ao, z_ao = pobs.calculate_qparams()
        s, z = torchquant.choose_qparams(x.amin(0), x.amax(0), qmin, qmax, symmetric, symmetric_zero_point=szp)
        assert torch.equal(s, s_ao.float()) and torch.equal(z.long(), z_ao.long())
        rs, rz = reference.choose_qparams(x.amin(0), x.amax(0), qmin, qmax, symmetric, symmetric_zero_point=szp)
        assert torch.equal(s, rs) and torch.equal(z, rz)


def test_choose_qparams_degenerate_ranges():
    lo = torch.tensor([0.0, 2.0, float("nan"), -float("inf"), -1e-30])
    hi = torch.tensor([0.0, 2.0, float("nan"), float("inf"), 1e-30])
    s, z = torchquant.choose_qparams(lo, hi, -128, 127)
    assert torch.isfinite(s).all() and (s > 0).all()
    # zero stays exactly representable: dequantize(zero_point) == 0
    assert ((z >= -128) & (z <= 127)).all()


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("call,match", [
    (lambda: ops.quantize(torch.arange(4), torch.tensor([0.1]), torch.tensor([0]), None, -128, 127, torch.int8), "argument 'x' must be a floating-point"),
    (lambda: ops.quantize(torch.randn(4), torch.tensor([-0.5]), torch.tensor([0]), None, -128, 127, torch.int8), r"scale' must be > 0 and finite, got -0.5"),
    (lambda: ops.quantize(torch.randn(4), torch.tensor([float("nan")]), torch.tensor([0]), None, -128, 127, torch.int8), "scale' must be > 0 and finite, got nan"),
    (lambda: ops.quantize(torch.randn(4), torch.tensor([float("inf")]), torch.tensor([0]), None, -128, 127, torch.int8), "scale' must be > 0 and finite, got inf"),
    (lambda: ops.quantize(torch.randn(4), torch.tensor([0.1]), torch.tensor([300]), None, -128, 127, torch.int8), r"zero_point' must lie in \[-128, 127\], got 300"),
    # float32 [C] scales with int32 zero points (a module's buffers) are read in place: same checks
    (lambda: ops.quantize(torch.randn(4), torch.tensor([0.1]), torch.tensor([-129], dtype=torch.int32), None, -128, 127, torch.int8), r"zero_point' must lie in \[-128, 127\], got -129"),
    (lambda: ops.dequantize(torch.zeros(4, dtype=torch.uint8), torch.tensor([0.1]), torch.tensor([256], dtype=torch.int32), None), r"zero_point' must lie in \[0, 255\], got 256"),
    (lambda: ops.quantize(torch.randn(2, 3), torch.tensor([0.1, 0.1, 0.1]), torch.tensor([0, 0, 128], dtype=torch.int32), 1, -128, 127, torch.int8), r"zero_point' must lie in \[-128, 127\], got 128 at channel 2"),
    (lambda: ops.quantize(torch.randn(2, 3), torch.tensor([0.1, 0.0, 0.1]), torch.zeros(3, dtype=torch.int32), 1, -128, 127, torch.int8), "scale' must be > 0 and finite, got 0 at channel 1"),
    (lambda: ops.quantize(torch.randn(4), torch.tensor([0.1]), torch.tensor([0]), None, 5, 5, torch.int8), "qmin' must be < qmax"),
    (lambda: ops.quantize(torch.randn(4), torch.tensor([0.1]), torch.tensor([0]), None, -1, 255, torch.uint8), r"qmin' must lie in \[0, 255\]"),
    (lambda: ops.quantize(torch.randn(4), torch.tensor([0.1]), torch.tensor([0]), None, -128, 300, torch.int8), r"qmax' must lie in \[-128, 127\]"),
    (lambda: ops.quantize(torch.randn(4), torch.tensor([0.1]), torch.tensor([0]), None, -128, 127, torch.int32), "dtype' must be torch.int8 or torch.uint8"),
    (lambda: ops.quantize(torch.randn(4, 3), torch.tensor([0.1]), torch.tensor([0]), 2, -128, 127, torch.int8), "argument 'axis' must lie in"),
    (lambda: ops.quantize(torch.randn(4, 3), torch.ones(4), torch.zeros(3, dtype=torch.int32), 1, -128, 127, torch.int8), "'scale' must have 3 elements"),
    (lambda: ops.quantize(torch.randn(4, 3), torch.ones(3), torch.zeros(4, dtype=torch.int32), 1, -128, 127, torch.int8), "'zero_point' must have 3"),
    (lambda: ops.quantize(torch.randn(4), torch.tensor([0.1]), torch.tensor([0.5]), None, -128, 127, torch.int8), "zero_point' must be an integer tensor"),
    (lambda: ops.dequantize(torch.randn(4), torch.tensor([0.1]), torch.tensor([0]), None), "argument 'q' must be an int8 or uint8"),
    (lambda: ops.fake_quantize(torch.randn(4), torch.tensor([0.0]), torch.tensor([0]), None, -128, 127), "scale' must be > 0"),
    (lambda: ops.fake_quantize_backward(torch.randn(3), torch.randn(4), torch.tensor([0.1]), torch.tensor([0]), None, -128, 127), "argument 'grad' must have the shape"),
    (lambda: torchquant.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.float32), "argument 'dtype' must be"),
    (lambda: ops.choose_qparams(torch.zeros(2), torch.zeros(3), -128, 127), "must have the same shape"),
    (lambda: torchquant.set_cpu_isa("sse9"), "unknown CPU ISA 'sse9'"),
    # learnable fake-quantize: the backward broadcast a mis-shaped grad, and read a zero or
    # NaN scale into gradients; a NaN zero point was reported as -2147483648
    (lambda: ops.fake_quantize_learnable_backward(torch.ones(1), torch.randn(4, 5), torch.tensor([0.1]), torch.tensor([0.0]), None, -128, 127), r"argument 'grad' must have the shape of x \[4, 5\], got \[1\]"),
    (lambda: ops.fake_quantize_learnable_backward(torch.ones(5), torch.randn(4, 5), torch.tensor([0.1]), torch.tensor([0.0]), None, -128, 127), r"argument 'grad' must have the shape of x"),
    (lambda: ops.fake_quantize_learnable_backward(torch.ones(4, 5, dtype=torch.int64), torch.randn(4, 5), torch.tensor([0.1]), torch.tensor([0.0]), None, -128, 127), "argument 'grad' must be a floating-point tensor, got dtype Long"),
    (lambda: ops.fake_quantize_learnable_backward(torch.ones(4, 5), torch.randn(4, 5), torch.tensor([0.0]), torch.tensor([0.0]), None, -128, 127), "argument 'scale' must be > 0 and finite, got 0"),
    (lambda: ops.fake_quantize_learnable_backward(torch.ones(4, 5), torch.randn(4, 5), torch.tensor([0.1, -1.0, 0.1, 0.1, 0.1]), torch.zeros(5), 1, -128, 127), "argument 'scale' must be > 0 and finite, got -1 at channel 1"),
    (lambda: ops.fake_quantize_learnable_backward(torch.ones(4, 5), torch.randn(4, 5), torch.tensor([0.1]), torch.tensor([0.0]), None, -2 ** 40, 2 ** 40), r"arguments 'qmin'/'qmax' must lie in \[-2\^23, 2\^23\]"),
    (lambda: ops.fake_quantize_learnable_backward(torch.ones(4, 5), torch.randn(4, 5), torch.tensor([0.1]), torch.tensor([0.0]), None, -128, 127, float("nan")), "argument 'grad_factor' must be finite, got nan"),
    (lambda: ops.fake_quantize_learnable(torch.randn(4, 5), torch.tensor([0.1]), torch.tensor([float("nan")]), None, -128, 127), "argument 'zero_point' must not be NaN"),
    (lambda: ops.fake_quantize_learnable_backward(torch.ones(4, 5), torch.randn(4, 5), torch.tensor([0.1]), torch.tensor([float("nan")]), None, -128, 127), "argument 'zero_point' must not be NaN"),
    # choose_qparams: zero points are int32; eps becomes a float32 tensor
    (lambda: ops.choose_qparams(torch.tensor([-1.0]), torch.tensor([2.0]), -2 ** 40, 2 ** 40), r"arguments 'qmin'/'qmax' must lie in \[-2\^31, 2\^31 - 1\]"),
    (lambda: ops.choose_qparams(torch.tensor([-1.0]), torch.tensor([2.0]), 0, 2 ** 31), r"arguments 'qmin'/'qmax' must lie in \[-2\^31, 2\^31 - 1\]"),
    (lambda: ops.choose_qparams(torch.tensor([-1.0]), torch.tensor([2.0]), 0, 255, False, 1e300), r"argument 'eps' must be > 0 and finite in float32, got 1e\+300"),
])
def test_bad_input_errors_name_the_argument(call, match):
    with pytest.raises((RuntimeError, ValueError, TypeError), match=match):
        call()


def test_python_number_qparams_are_checked():
    # An integer argument given a float was truncated (zero_point 0.5 became 0); one past int32
    # failed inside torch.tensor without naming the argument.
    x = torch.randn(4, 5)
    with pytest.raises(TypeError, match="argument 'zero_point' must be an integer or a tensor, got float 0.5"):
        torchquant.quantize_per_tensor(x, 0.1, 0.5, torch.qint8)
    with pytest.raises(TypeError, match="argument 'zero_point' must be an integer or a tensor, got float 2.0"):
        torchquant.fake_quantize_per_tensor_affine(x, 0.1, 2.0, -128, 127)
    with pytest.raises(TypeError, match="argument 'zero_point' must be an integer or a tensor, got bool"):
        torchquant.quantize_per_tensor(x, 0.1, True, torch.quint8)
    for zp in (2 ** 40, 2 ** 63):
        with pytest.raises(ValueError, match=f"argument 'zero_point' must lie in the int32 range, got {zp}"):
            torchquant.quantize_per_tensor(x, 0.1, zp, torch.qint8)
    w = torch.ones(4, 8, dtype=torch.int8)
    wp, cs = torchquant.pack_weight(w)
    q = torch.ones(2, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="argument 'x_zero_point' must be an integer or a tensor, got float 3.5"):
        torchquant.linear_int8(q, 0.1, 3.5, wp, cs, torch.ones(4))
    with pytest.raises(TypeError, match="argument 'out_zero_point' must be an integer or a tensor, got float 1.5"):
        torchquant.linear_int8(q, 0.1, 3, wp, cs, torch.ones(4), out_scale=0.1, out_zero_point=1.5,
                               out_dtype=torch.uint8)
    with pytest.raises(TypeError, match="argument 'x_scale' must be a number or a tensor, got str"):
        torchquant.linear_int8(q, "0.1", 3, wp, cs, torch.ones(4))
    # integral values of either type still work
    assert torchquant.quantize_per_tensor(x, 1, 3, torch.qint8).q_zero_point() == 3


@pytest.mark.parametrize("meta", ["scale", "zero_point", "grad"])
def test_one_meta_argument_is_an_error(meta):
    # A meta tensor among CPU ones sends the call to the fake kernel (Meta outranks CPU), which
    # returned an uninitialized CPU tensor as the result.
    args = dict(x=torch.randn(4, 5), scale=torch.tensor([0.1]), zero_point=torch.tensor([0], dtype=torch.int32),
                grad=torch.randn(4, 5))
    args[meta] = args[meta].to("meta")
    x, s, z, g = args["x"], args["scale"], args["zero_point"], args["grad"]
    match = f"argument '{meta}' is on meta but '(x|q)' is on cpu"
    with pytest.raises(RuntimeError, match=match):
        ops.fake_quantize_backward(g, x, s, z, None, -128, 127)
    if meta == "grad":
        return
    with pytest.raises(RuntimeError, match=match):
        ops.quantize(x, s, z, None, -128, 127, torch.int8)
    with pytest.raises(RuntimeError, match=match):
        ops.dequantize(torch.zeros(4, 5, dtype=torch.int8), s, z, None)
    with pytest.raises(RuntimeError, match=match):
        ops.fake_quantize(x, s, z, None, -128, 127)


# ---------------------------------------------------------------- torch integration
def _opcheck_samples():
    x = torch.randn(6, 5)
    s, z = torch.tensor([0.05]), torch.tensor([2], dtype=torch.int32)
    sc, zc = torch.rand(5) * 0.1 + 0.01, torch.zeros(5, dtype=torch.int32)
    q = ops.quantize(x, s, z, None, -128, 127, torch.int8)
    return [
        (ops.quantize.default, (x, s, z, None, -128, 127, torch.int8)),
        (ops.quantize.default, (x, sc, zc, 1, 0, 255, torch.uint8)),
        (ops.dequantize.default, (q, s, z, None)),
        (ops.fake_quantize.default, (x.requires_grad_(), s, z, None, -128, 127)),
        (ops.fake_quantize.default, (torch.randn(6, 5, requires_grad=True), sc, zc, 1, -128, 127)),
        (ops.fake_quantize_backward.default, (torch.randn(6, 5), x.detach(), s, z, None, -128, 127)),
        (ops.fake_quantize_learnable.default, (torch.randn(6, 5, requires_grad=True), s.clone().requires_grad_(), torch.tensor([1.0], requires_grad=True), None, -128, 127, 1.0)),
        (ops.choose_qparams.default, (torch.tensor([-1.0, 0.2]), torch.tensor([2.0, 3.0]), -128, 127, False, 1e-7, 0)),
    ]


@pytest.mark.parametrize("i", range(8))
def test_opcheck(i):
    op, args = _opcheck_samples()[i]
    torch.library.opcheck(op, args)


def test_torch_compile_fullgraph_forward_and_backward():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(16, 8)
            self.register_buffer("s", torch.tensor([0.02]))
            self.register_buffer("z", torch.tensor([0], dtype=torch.int32))

        def forward(self, x):
            w = torchquant.fake_quantize_per_channel_affine(self.lin.weight, torch.full((8,), 0.01), torch.zeros(8, dtype=torch.int32), 0, -127, 127)
            y = torch.nn.functional.linear(torchquant.fake_quantize_per_tensor_affine(x, self.s, self.z, -128, 127), w, self.lin.bias)
            return y.relu()

    torch.manual_seed(0)
    m = M()
    x = torch.randn(4, 16)
    eager = m(x)
    eager.sum().backward()
    g_eager = m.lin.weight.grad.clone()
    m.zero_grad()
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    assert torch.equal(out, eager)
    assert torch.equal(m.lin.weight.grad, g_eager)


def test_qtensor_api():
    x = torch.randn(3, 4)
    q = torchquant.quantize_per_channel(x, torch.full((4,), 0.05), torch.zeros(4, dtype=torch.int32), 1, torch.qint8)
    assert q.shape == (3, 4) and q.dtype == torch.qint8 and q.q_per_channel_axis() == 1
    assert q.q_per_channel_scales().shape == (4,) and q.q_per_channel_zero_points().dtype == torch.int32
    want = reference.quantize(x, torch.full((4,), 0.05), torch.zeros(4, dtype=torch.int32), 1, -128, 127, torch.int8)
    assert torch.equal(q.int_repr(), want) and torch.equal(q.to("cpu").int_repr(), want)
    with pytest.raises(RuntimeError, match="per-tensor"):
        q.q_scale()
    qt = torchquant.quantize_per_tensor(x, 0.05, 3, torch.quint8)
    assert qt.flatten().shape == (12,) and "QTensor" in repr(qt)
    s3, z3 = torch.tensor([0.05]), torch.tensor([3], dtype=torch.int32)
    assert torch.equal(qt.dequantize(), reference.fake_quantize(x, s3, z3, None, 0, 255))
    assert torch.allclose(qt.dequantize(), x.clamp(min=-0.15), atol=0.025 + 1e-6)  # |error| <= scale / 2


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(qmin=5, qmax=4), ValueError, "qmin <= qmax"),
    (dict(qmin=-129), ValueError, "-128 <= qmin"),
    (dict(qmax=128), ValueError, "qmax <= 127"),
    (dict(qmin=-3.5), TypeError, "argument 'qmin' must be an integer"),
    (dict(axis=1.0), TypeError, "argument 'axis' must be an integer"),
    (dict(axis=2), ValueError, "argument 'axis'"),
    (dict(axis=-3), ValueError, "argument 'axis'"),
    (dict(scale=0.1), TypeError, "argument 'scale'"),
    (dict(zero_point=0), TypeError, "argument 'zero_point'"),
    (dict(data=[1, 2]), TypeError, "argument 'data'"),
    (dict(data=torch.zeros(2, 3)), TypeError, "int8 or uint8"),
])
def test_qtensor_constructor_checks_its_arguments(kwargs, exc, match):
    from torchquant.qtensor import QTensor
    args = dict(data=torch.zeros(2, 3, dtype=torch.int8), scale=torch.tensor([0.1]),
                zero_point=torch.tensor([0], dtype=torch.int32), axis=None, qmin=None, qmax=None)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        QTensor(**args)
    ok = QTensor(torch.zeros(2, 3, dtype=torch.int8), torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32),
                 -1, -8, 7)
    assert (ok.axis, ok.qmin, ok.qmax) == (1, -8, 7)  # the axis counted from the front, as torch's


@pytest.mark.parametrize("fn", [
    lambda x, s: torchquant.quantize_per_tensor(x, s, 0, torch.qint8),
    lambda x, s: torchquant.fake_quantize_per_tensor_affine(x, s, 0, -128, 127),
    lambda x, s: torchquant.linear_int8(torch.zeros(2, 3, dtype=torch.int8), s, 0,
                                        *torchquant.pack_weight(torch.zeros(4, 3, dtype=torch.int8)), torch.ones(4)),
])
@pytest.mark.parametrize("scale,shown", [(1e-50, r"1e-50 \(0 in float32\)"), (1e39, r"1e\+39 \(inf in float32\)")])
def test_python_number_scale_error_shows_the_value_given(fn, scale, shown):
    # A Python float scale was made a float32 tensor first, so 1e-50 was reported as "got 0".
    with pytest.raises(RuntimeError, match=r"must be > 0 and finite, got " + shown):
        fn(torch.randn(4, 3), scale)


def test_python_number_scale_near_float32_limits_still_works():
    x = torch.randn(5)
    for s in (1.5e-38, 2e38):
        got = torchquant.fake_quantize_per_tensor_affine(x, s, 0, -128, 127)
        assert torch.equal(got, torch.fake_quantize_per_tensor_affine(x, s, 0, -128, 127))


# ---------------------------------------------------------------- edge cases of the CPU ops (choose_qparams, scale errors, fake kernels)
INT32_MAX = 2 ** 31 - 1


def _expected_zero_point(min_neg, scale, qmin, qmax):
    """qmin - round(min_neg / scale), clamped, with the quotient rounded in float32 as the op
    does but the subtraction in Python integers (no wrap)."""
    q = torch.round(torch.tensor([min_neg], dtype=torch.float32) / scale)
    return max(qmin, min(qmax, qmin - int(q.item())))


@pytest.mark.parametrize("lo,qmin,qmax", [
    (-1e6, 0, INT32_MAX),              # min / scale rounds to -2^31 in float32
    (-1000.0, -2 ** 31, INT32_MAX),    # min / scale is about -2^32
    (-3.0, -2 ** 31 + 5, INT32_MAX - 7),
    (-1.0, -128, 127),
])
def test_choose_qparams_zero_point_of_wide_int32_ranges(lo, qmin, qmax):
    # The zero point's integer steps were made in int32, where round(min / scale) can reach
    # 2^31 or more for ranges wider than int32's half: it wrapped to a wrong zero point (0).
    mn, mx = torch.tensor([lo]), torch.tensor([0.0])
    for fn in (ops.choose_qparams, reference.choose_qparams):
        s, z = fn(mn, mx, qmin, qmax)
        assert z.dtype == torch.int32
        assert z.item() == _expected_zero_point(lo, s, qmin, qmax), (fn, s, z)
    assert torch.equal(ops.choose_qparams(mn, mx, qmin, qmax)[1], reference.choose_qparams(mn, mx, qmin, qmax)[1])


@pytest.mark.parametrize("eps", [1e-50, 5e-46])
def test_choose_qparams_rejects_eps_that_is_zero_in_float32(eps):
    # eps > 0 as a double but 0 in float32 gave a zero scale (and a -0.0 one, symmetric).
    with pytest.raises(RuntimeError, match=r"argument 'eps' must be > 0 and finite in float32, got "):
        ops.choose_qparams(torch.tensor([0.0]), torch.tensor([0.0]), -128, 127, False, eps)
    with pytest.raises(RuntimeError, match=r"argument 'eps'"):
        ops.choose_qparams(torch.tensor([0.0]), torch.tensor([0.0]), -128, 127, True, eps)


def test_choose_qparams_smallest_float32_eps_gives_positive_scale():
    s, _ = ops.choose_qparams(torch.tensor([0.0]), torch.tensor([0.0]), -128, 127, True, 1.4e-45)
    assert s.item() > 0 and not torch.signbit(s).item()


def _packed(n=3, k=4):
    return ops.pack_weight(torch.zeros(n, k, dtype=torch.int8))


F64 = torch.float64


@pytest.mark.parametrize("call,match", [
    (lambda: ops.quantize(torch.randn(3), torch.tensor([1e-200], dtype=F64), torch.tensor([0]), None, -128, 127, torch.int8),
     r"argument 'scale' must be > 0 and finite, got 1e-200 \(0 in float32\)"),
    (lambda: ops.dequantize(torch.zeros(3, dtype=torch.int8), torch.tensor([1e40], dtype=F64), torch.tensor([0]), None),
     r"argument 'scale' must be > 0 and finite, got 1e\+40 \(inf in float32\)"),
    (lambda: ops.fake_quantize(torch.randn(3, 2), torch.tensor([0.1, 1e40], dtype=F64), torch.tensor([0, 0]), 1, -128, 127),
     r"got 1e\+40 \(inf in float32\) at channel 1"),
    (lambda: ops.fake_quantize_learnable(torch.randn(3), torch.tensor([1e-200], dtype=F64), torch.tensor([0.0]), None, -128, 127),
     r"argument 'scale' must be > 0 and finite, got 1e-200 \(0 in float32\)"),
    (lambda: ops.linear_int8(torch.zeros(2, 4, dtype=torch.int8), torch.tensor([1e-200], dtype=F64), torch.tensor([0]), *_packed(), torch.ones(3), None, None, None, False, None),
     r"argument 'x_scale' must be > 0 and finite, got 1e-200 \(0 in float32\)"),
    (lambda: ops.linear_int8(torch.zeros(2, 4, dtype=torch.int8), torch.tensor([1.0, 1e-200], dtype=F64), torch.tensor([0]), *_packed(), torch.ones(3), None, None, None, False, None),
     r"argument 'x_scale' must be > 0 and finite, got 1e-200 \(0 in float32\) at row 1"),
    (lambda: ops.linear_int8(torch.zeros(2, 4, dtype=torch.int8), torch.tensor([1.0]), torch.tensor([0]), *_packed(), torch.tensor([1, 1, 1e39], dtype=F64), None, None, None, False, None),
     r"argument 'w_scale' must be > 0 and finite, got 1e\+39 \(inf in float32\) at channel 2"),
    (lambda: ops.linear_int8(torch.zeros(2, 4, dtype=torch.int8), torch.tensor([1.0]), torch.tensor([0]), *_packed(), torch.ones(3), None, torch.tensor([1e39], dtype=F64), torch.tensor([0]), False, torch.int8),
     r"argument 'out_scale' must be > 0 and finite, got 1e\+39 \(inf in float32\)"),
    # float32 values, and float64 ones that float32 shows alike, are shown as they are
    (lambda: ops.quantize(torch.randn(3), torch.tensor([-0.2], dtype=F64), torch.tensor([0]), None, -128, 127, torch.int8),
     r"argument 'scale' must be > 0 and finite, got -0.2$"),
    (lambda: ops.quantize(torch.randn(3), torch.tensor([-2.5]), torch.tensor([0]), None, -128, 127, torch.int8),
     r"argument 'scale' must be > 0 and finite, got -2.5$"),
])
def test_scale_errors_show_the_value_given_not_its_float32_rounding(call, match):
    # A float64 scale out of float32's range was reported as the converted value ("got 0",
    # "got inf"), which is not what the caller passed.
    with pytest.raises(RuntimeError, match=match):
        call()


def test_fake_kernels_check_dtype_and_qrange_as_the_kernels_do():
    """Under tracing (fake tensors) quantize / dequantize raise where the real kernels raise."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = torch.randn(4, 3)
    s, z = torch.tensor([0.1]), torch.tensor([0], dtype=torch.int32)
    q = torch.zeros(4, 3, dtype=torch.int8)
    cases = [
        (torch.ops.torchquant.quantize, (x, s, z, None, 0, 255, torch.float32), "argument 'dtype' must be torch.int8 or torch.uint8"),
        (torch.ops.torchquant.quantize, (x, s, z, None, -129, 127, torch.int8), r"argument 'qmin' must lie in \[-128, 127\]"),
        (torch.ops.torchquant.quantize, (x, s, z, None, 0, 256, torch.uint8), r"argument 'qmax' must lie in \[0, 255\]"),
        (torch.ops.torchquant.dequantize, (q, s, z, None, torch.int32), "argument 'out_dtype' must be a floating-point dtype"),
    ]
    for op, args, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            op(*args)
        with FakeTensorMode() as mode:
            fargs = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            with pytest.raises(RuntimeError, match=msg):
                op(*fargs)


# ---------------------------------------------------------------- eager-flow edge cases (hooks, dtype casts, weight ranges, qconfig_spec, QTensor)
# ---------------------------------------------------------------- QTensor.to
def test_qtensor_to_dtype_is_a_clear_error():
    q = tq.quantize_per_tensor(torch.tensor([0.1, -0.5]), 0.01, 0, torch.qint8)
    for dt in (torch.float32, torch.float64, torch.int32, torch.uint8):
        with pytest.raises(TypeError, match=r"argument 'device'.*dequantize"):
            q.to(dt)
    moved = q.to(torch.device("cpu"))
    assert torch.equal(moved.int_repr(), q.int_repr()) and moved.dtype == torch.qint8
    assert q.to("cpu").device == torch.device("cpu")


def test_qtensor_indexing_per_tensor_is_exact_and_per_channel_raises():
    data = torch.randint(0, 256, (4, 6), dtype=torch.uint8)
    q = tq.QTensor(data, torch.tensor([0.1]), torch.tensor([7], dtype=torch.int32), None, 0, 255)
    for index in (0, -1, slice(1, 3), (slice(None), 2), (slice(None), slice(1, None, 2)), torch.tensor([2, 0])):
        sub = q[index]
        assert isinstance(sub, tq.QTensor) and torch.equal(sub.int_repr(), data[index])
        assert torch.equal(sub.dequantize(), q.dequantize()[index])
    assert [torch.equal(row.int_repr(), data[i]) for i, row in enumerate(q)] == [True] * 4
    pc = tq.QTensor(data.to(torch.int8) // 2, torch.full((6,), 0.1), torch.zeros(6, dtype=torch.int32), 1, -128, 127)
    with pytest.raises(NotImplementedError, match="only defined for per-tensor quantization .* axis 1"):
        pc[0]


def test_qtensor_saves_and_loads_with_weights_only_through_its_checks():
    import io
    import pickle

    data = torch.randint(0, 256, (3, 4), dtype=torch.uint8)
    q = tq.QTensor(data, torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32), None, 2, 250)
    pc = tq.QTensor(data.to(torch.int8) // 2, torch.full((4,), 0.1), torch.zeros(4, dtype=torch.int32), 1)
    buf = io.BytesIO()
    torch.save({"q": q, "pc": pc}, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=True)
    for a, b in ((q, back["q"]), (pc, back["pc"])):
        assert isinstance(b, tq.QTensor) and (b.axis, b.qmin, b.qmax) == (a.axis, a.qmin, a.qmax)
        assert torch.equal(b.int_repr(), a.int_repr()) and torch.equal(b.dequantize(), a.dequantize())
    # unpickling runs the constructor's checks: a payload with float data is refused
    broken = tq.QTensor.__new__(tq.QTensor)
    for name in ("data", "scale", "zero_point", "axis", "qmin", "qmax"):
        setattr(broken, name, getattr(q, name))
    broken.data = torch.zeros(3)
    with pytest.raises(TypeError, match="QTensor data must be int8 or uint8"):
        pickle.loads(pickle.dumps(broken))


# ---------------------------------------------------------------- cases that small deliberate bugs got through
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


def _quant_case(r):
    """A random shape (empty dims included), optionally a per-channel axis, a quantized range,
    and a layout: contiguous, transposed or sliced with a step, from the random.Random r."""
    nd = r.randint(1, 4)
    dims = [r.choice([0, 1, 2, 3, 5, 8, 16, 17, 33, 64, 65, 130]) for _ in range(nd)]
    while math.prod(dims) > 20000:  # small enough for the reference: halve the largest dim
        i = dims.index(max(dims))
        dims[i] = dims[i] // 2 + 1
    axis = None if r.random() < 0.4 else r.randint(-nd, nd - 1)
    return tuple(dims), axis, r.choice(QRANGES), r.choice(["contiguous", "transposed", "strided"])


@settings(max_examples=100, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_shapes_layouts_match_reference(isa, seed):
    """Property test: quantize, dequantize, fake_quantize and its backward on random shapes
    (empty ones included), per tensor or per channel on any axis, every quantized range, on
    contiguous, transposed and strided inputs with ties, saturation, NaN, +-Inf and -0: the same
    bits as the reference on each ISA, and the inputs untouched. The case comes from the drawn
    seed, uniformly (hypothesis's own draws lean to the first choice)."""
    shape, axis, (qmin, qmax, dtype), layout = _quant_case(random.Random(seed))
    gen = torch.Generator().manual_seed(seed % 2**31)
    if axis is None:
        C = 1
        ax = None
    else:
        ax = axis % len(shape)
        C = shape[ax]
    if C == 0:  # no qparams to give
        return
    big = list(shape)
    if layout == "strided":
        big[-1] = 2 * shape[-1]
    x = torch.randn(big, generator=gen) * 3
    kind = torch.randint(0, 8, big, generator=gen)
    x = torch.where(kind == 1, torch.full(big, NAN), x)
    x = torch.where(kind == 2, torch.full(big, INF), x)
    x = torch.where(kind == 3, torch.full(big, -0.0), x)
    x = torch.where(kind == 4, torch.round(x * 8) / 8 + 1 / 16, x)  # ties at power-of-two scales
    x = torch.where(kind == 5, x * 1e4, x)                             # saturates
    if layout == "strided":
        x = x[..., ::2]
    elif layout == "transposed" and len(shape) >= 2:
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    scale = 2.0 ** -torch.randint(1, 6, (C,), generator=gen).float()
    zp = torch.randint(qmin, qmax + 1, (C,), dtype=torch.int32, generator=gen)
    before = x.clone()
    q = ops.quantize(x, scale, zp, axis, qmin, qmax, dtype)
    assert torch.equal(q, reference.quantize(x, scale, zp, ax, qmin, qmax, dtype))
    assert _same(ops.dequantize(q, scale, zp, axis), reference.dequantize(q, scale, zp, ax))
    assert _same(ops.fake_quantize(x, scale, zp, axis, qmin, qmax),
                 reference.fake_quantize(x, scale, zp, ax, qmin, qmax))
    g = torch.randn(shape, generator=gen)
    assert _same(ops.fake_quantize_backward(g, x, scale, zp, axis, qmin, qmax),
                 reference.fake_quantize_backward(g, x, scale, zp, ax, qmin, qmax))
    assert _same(x, before)


def test_reference_quantize_saturates_at_int32_bounds():
    x = torch.tensor([3e9, float("inf"), 2147483647.0, -3e9, float("-inf")])
    s, z = torch.tensor([1.0]), torch.tensor([0], dtype=torch.int32)
    got = reference.quantize(x, s, z, None, -2**31, 2**31 - 1, torch.int32)
    want = torch.quantize_per_tensor(x, 1.0, 0, torch.qint32).int_repr()
    assert got.tolist() == [2**31 - 1, 2**31 - 1, 2**31 - 1, -2**31, -2**31] and torch.equal(got, want)


def _layouts():
    base = torch.randn(2, 6, 5, 7)
    return {
        "channels_last": base.to(memory_format=torch.channels_last),
        "channels_last_3d": torch.randn(2, 3, 4, 5, 6).to(memory_format=torch.channels_last_3d),
        "transposed": torch.randn(9, 13).t(),
        "permuted, offset": torch.randn(3, 2, 6, 5, 7).permute(0, 1, 3, 4, 2)[1],
        "step slice": base[:, :, ::2],
        "expanded": torch.randn(1, 7).expand(4, 7),
        "contiguous": base,
        "empty channels_last": torch.randn(0, 3, 4, 4).to(memory_format=torch.channels_last),
    }


@pytest.mark.parametrize("layout", list(_layouts()))
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_per_tensor_ops_keep_a_dense_layout(isa, layout, device):
    """A per-tensor quantize / dequantize / fake_quantize (and its backward) of a dense tensor
    that is not contiguous (channels-last activations) returns its strides, as torch's
    elementwise ops do; other layouts give contiguous outputs. Values are those of the
    contiguous input's, and the fake kernels give the same strides as the kernels."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    x = _layouts()[layout].to(device) * 3
    dense = x.numel() > 0 and not x.is_contiguous() and layout not in ("step slice", "expanded")
    s, z = torch.tensor([0.05], device=device), torch.tensor([-3], dtype=torch.int32, device=device)
    x16 = x.half()
    q = ops.quantize(x, s, z, None, -128, 127, torch.int8)
    g = torch.randn_like(x)  # (randn_like keeps a dense layout)
    outs = {
        "quantize": (q, ops.quantize(x.contiguous(), s, z, None, -128, 127, torch.int8)),
        "quantize half": (ops.quantize(x16, s, z, None, -128, 127, torch.int8),
                          ops.quantize(x16.contiguous(), s, z, None, -128, 127, torch.int8)),
        "dequantize": (ops.dequantize(q, s, z, None), ops.dequantize(q.contiguous(), s, z, None)),
        "dequantize half": (ops.dequantize(q, s, z, None, torch.float16),
                            ops.dequantize(q.contiguous(), s, z, None, torch.float16)),
        "fake_quantize": (ops.fake_quantize(x, s, z, None, -128, 127),
                          ops.fake_quantize(x.contiguous(), s, z, None, -128, 127)),
        "fake_quantize_backward": (ops.fake_quantize_backward(g, x, s, z, None, -128, 127),
                                   ops.fake_quantize_backward(g.contiguous(), x.contiguous(), s, z, None, -128, 127)),
    }
    for name, (got, want) in outs.items():
        assert torch.equal(got, want), name
        assert got.stride() == (x.stride() if dense else want.stride()), name
    # and the plain-torch oracle, on the input as it lies
    assert torch.equal(q, reference.quantize(x, s, z, None, -128, 127, torch.int8))
    assert torch.equal(outs["dequantize"][0], reference.dequantize(q, s, z, None))
    assert torch.equal(outs["fake_quantize"][0], reference.fake_quantize(x, s, z, None, -128, 127))
    assert torch.equal(outs["fake_quantize_backward"][0], reference.fake_quantize_backward(g, x, s, z, None, -128, 127))
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx, fq, fg = mode.from_tensor(x), mode.from_tensor(q), mode.from_tensor(g)
        fakes = {
            "quantize": ops.quantize(fx, s, z, None, -128, 127, torch.int8),
            "dequantize": ops.dequantize(fq, s, z, None),
            "fake_quantize": ops.fake_quantize(fx, s, z, None, -128, 127),
            "fake_quantize_backward": ops.fake_quantize_backward(fg, fx, s, z, None, -128, 127),
        }
    for name, f in fakes.items():
        assert f.stride() == outs[name][0].stride() and f.dtype == outs[name][0].dtype, name
    # per channel: contiguous, as before
    pc = ops.quantize(x, s.expand(x.shape[-1]).contiguous(), z.expand(x.shape[-1]).contiguous(), x.dim() - 1,
                      -128, 127, torch.int8) if x.dim() else None
    assert pc is None or pc.is_contiguous()


def test_a_channels_last_qtensor_stays_channels_last_through_a_float_op():
    # dequantize -> float op -> quantize (leaky_relu with a slope past 1 takes that path) gave a
    # contiguous QTensor, which the next convolution copied back to channels-last.
    import torch.nn.functional as F

    x = torch.randn(2, 8, 6, 6).to(memory_format=torch.channels_last)
    q = tq.quantize_per_tensor(x, 0.05, 3, torch.quint8)
    assert q.data.is_contiguous(memory_format=torch.channels_last)
    y = F.leaky_relu(q, 2.0)
    assert y.data.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y.dequantize().contiguous(), F.leaky_relu(tq.quantize_per_tensor(x.contiguous(), 0.05, 3,
                                                                                      torch.quint8), 2.0).dequantize())
    assert q.dequantize().is_contiguous(memory_format=torch.channels_last)


def test_per_channel_dequantize_of_many_channels_reads_no_reciprocal(isa):
    # dequantize computes no 1 / scale; its per-channel path with short rows (inner < 64) read C
    # of them from one float: 4M channels ran off the stack (SIGSEGV).
    C = 4_000_000
    q = torch.randint(-128, 128, (2, C), dtype=torch.int8)
    s, z = torch.rand(C) + 0.5, torch.randint(-3, 4, (C,), dtype=torch.int32)
    assert torch.equal(ops.dequantize(q, s, z, 1), reference.dequantize(q, s, z, 1))


def test_fake_kernels_take_sizes_known_only_at_run_time():
    # t[t > 0] has a size the trace cannot guard on: the fake kernels' layout rule must not ask.
    import torch._dynamo

    s, z = torch.tensor([0.05]), torch.tensor([0], dtype=torch.int32)

    def f(t):
        x = t[t[:, 0] > 0]
        q = ops.quantize(x, s, z, None, -128, 127, torch.int8)
        return ops.dequantize(q, s, z, None), ops.fake_quantize(x, s, z, None, -128, 127)

    t = torch.randn(20, 3)
    old = torch._dynamo.config.capture_dynamic_output_shape_ops
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    try:
        torch._dynamo.reset()
        got = torch.compile(f, backend="eager", fullgraph=True)(t)
    finally:
        torch._dynamo.config.capture_dynamic_output_shape_ops = old
        torch._dynamo.reset()
    for a, b in zip(got, f(t)):
        assert torch.equal(a, b)


def test_fake_quantize_backward_keeps_the_layout_whatever_a_size_one_stride():
    # a size-1 dimension's stride says nothing about the layout: the kernel and the fake kernel
    # keep x's strides for any grad that lies alike
    x = torch.randn(2, 1, 5, 4).permute(0, 3, 1, 2)  # dense, not contiguous; a size-1 dim
    g = torch.randn(2, 4, 1, 5)
    g = torch.as_strided(g.permute(0, 2, 3, 1).contiguous(), x.shape, (20, 1, 999, 4))
    s, z = torch.tensor([0.05]), torch.tensor([0], dtype=torch.int32)
    out = ops.fake_quantize_backward(g, x, s, z, None, -128, 127)
    assert out.stride() == x.stride()
    assert torch.equal(out, ops.fake_quantize_backward(g.contiguous(), x.contiguous(), s, z, None, -128, 127))
