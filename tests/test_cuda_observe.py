"""CUDA observer kernels (aminmax, observe_minmax_, histogram_, histogram_rebin): bit-exact with
the CPU kernels and with the plain-torch oracle on random inputs with NaN and +-Inf, empty and
one-element tensors, every axis, non-contiguous and misaligned views, and shapes that take each
of the kernels' layouts (per tensor; short runs in shared columns; long runs, vectorized or
not; wide rows). All skip without a GPU."""
import pytest
import torch

from torchquant import reference

ops = torch.ops.torchquant
pytestmark = pytest.mark.cuda

DEV = "cuda"
INF = float("inf")

# Shapes covering the layouts: per tensor (vector and tail), [outer, C, inner] with inner < 32
# and C * inner <= 4096 (shared columns), inner >= 32 with inner % 4 == 0 or not (long runs),
# inner < 32 with C * inner > 4096 (wide rows).
SHAPES = [(), (1,), (3,), (17,), (1000,), (70001,), (1, 1), (5, 33), (300, 7), (64, 130),
          (3, 5000), (2, 3, 40), (4, 6, 37), (9, 2, 3, 5), (257, 16), (6, 4100), (0,), (4, 0, 3)]


def _data(shape, gen, nonfinite=True):
    n = 1
    for d in shape:
        n *= d
    x = torch.randn(n, generator=gen) * 3
    if nonfinite and n:
        kind = torch.randint(0, 40, (n,), generator=gen)
        x = torch.where(kind == 0, torch.full_like(x, float("nan")), x)
        x = torch.where(kind == 1, torch.full_like(x, INF), x)
        x = torch.where(kind == 2, torch.full_like(x, -INF), x)
        x = torch.where(kind == 3, torch.zeros_like(x), x)
        x = torch.where(kind == 4, -torch.zeros_like(x), x)
    return x.reshape(shape)


def _axes(x):
    return [None] + list(range(-x.dim(), x.dim()))


def _fresh(c=None, device="cpu"):
    shape = () if c is None else (c,)
    return (torch.full(shape, INF, device=device), torch.full(shape, -INF, device=device),
            torch.zeros(2, dtype=torch.int64, device=device))


def _equal(got, want):
    return all(torch.equal(g.cpu(), w.cpu()) for g, w in zip(got, want))


def _views(x):
    """x itself, a transposed copy's view, a strided view and a view off 16-byte alignment:
    the same values reached through every input path of the kernels."""
    yield x
    if x.dim() >= 2:
        yield x.transpose(0, -1).contiguous().transpose(0, -1)
    if x.dim() >= 1:
        yield torch.stack([x, x], dim=-1)[..., 0]
    if x.numel():
        yield torch.cat([x.reshape(-1)[:1], x.reshape(-1)])[1:].reshape(x.shape)


# ---------------------------------------------------------------- aminmax
@pytest.mark.parametrize("shape", SHAPES)
def test_aminmax_matches_cpu_and_reference(shape):
    gen = torch.Generator().manual_seed(len(shape) * 1000 + sum(shape))
    x = _data(shape, gen)
    for axis in _axes(x):
        want = ops.aminmax(x, axis)
        if x.numel():  # the oracle cannot reshape a zero-size channel dimension
            assert _equal(want, reference.aminmax(x, axis))
        for v in _views(x.to(DEV)):
            got = ops.aminmax(v, axis)
            assert got[0].device.type == DEV and got[0].shape == want[0].shape
            assert _equal(got, want), (shape, axis)


def test_aminmax_dtypes_and_all_nan_channel():
    gen = torch.Generator().manual_seed(1)
    x = _data((40, 70), gen)
    x[3] = float("nan")
    x[:, 5] = float("nan")
    for dt in (torch.float64, torch.float16, torch.bfloat16):
        xd = x.to(dt)
        for axis in (None, 0, 1):
            assert _equal(ops.aminmax(xd.to(DEV), axis), ops.aminmax(xd, axis))
    mn, mx = ops.aminmax(x.to(DEV), 0)
    assert mn[3].item() == INF and mx[3].item() == -INF


def test_aminmax_leaves_input_untouched():
    x = _data((33, 65), torch.Generator().manual_seed(2)).to(DEV)
    before = x.clone()
    ops.aminmax(x, 0)
    assert torch.equal(x.nan_to_num(), before.nan_to_num()) and torch.equal(x.isnan(), before.isnan())


# ---------------------------------------------------------------- observe_minmax_
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("averaging_constant", [None, 0.01, 1.0])
def test_observe_minmax_matches_cpu_and_reference(shape, averaging_constant):
    gen = torch.Generator().manual_seed(len(shape) * 77 + sum(shape))
    x0 = _data(shape, gen)
    for axis in _axes(x0):
        c = None if axis is None else x0.shape[axis]
        got, cpu, want = _fresh(c, DEV), _fresh(c), _fresh(c)
        # The range grows, stays, shrinks (moving average); a batch with nothing finite.
        batches = [x0, x0 * 2.5, x0 * 0.5, torch.full_like(x0, float("nan")), x0 * 4 + 1]
        for step, x in enumerate(batches):
            ops.observe_minmax_(*got, x.to(DEV), axis, averaging_constant)
            ops.observe_minmax_(*cpu, x, axis, averaging_constant)
            if x.numel():  # the oracle cannot reshape a zero-size channel dimension
                reference.observe_minmax_(*want, x, axis, averaging_constant)
                assert _equal(cpu, want), (shape, axis, step)
            assert _equal(got, cpu), (shape, axis, step, got, cpu)


def test_observe_minmax_views_and_dtypes():
    gen = torch.Generator().manual_seed(3)
    x = _data((12, 40, 9), gen)
    for axis in (None, 0, 1, 2):
        c = None if axis is None else x.shape[axis]
        for v in _views(x):
            for dt in (torch.float32, torch.float16, torch.float64):
                got, want = _fresh(c, DEV), _fresh(c)
                for s in (1.0, 3.0):
                    ops.observe_minmax_(*got, (v * s).to(dt).to(DEV), axis, 0.5)
                    ops.observe_minmax_(*want, (v * s).to(dt), axis, 0.5)
                assert _equal(got, want), (axis, dt)


def test_observe_minmax_one_channel_all_nan_left_unchanged():
    x = torch.randn(3, 50)
    x[1] = float("nan")
    mn, mx, cnt = _fresh(3, DEV)
    ops.observe_minmax_(mn, mx, cnt, x.to(DEV), 0, None)
    assert mn[1].item() == INF and mx[1].item() == -INF and int(cnt[0]) == 50 and int(cnt[1]) == 0
    assert torch.equal(mn[[0, 2]].cpu(), x[[0, 2]].amin(1))


def test_observe_minmax_counts_large_input():
    # Several blocks and a tail: the per-block counts must add up exactly.
    x = torch.randn(3_000_001)
    x[::7] = float("nan")
    x[1::11] = INF
    x[2::13] = -INF
    got = _fresh(device=DEV)
    ops.observe_minmax_(*got, x.to(DEV), None, None)
    assert int(got[2][0]) == int(x.isnan().sum()) and int(got[2][1]) == int(x.isinf().sum())
    fin = x[x.isfinite()]
    assert got[0].item() == fin.min().item() and got[1].item() == fin.max().item()


# ---------------------------------------------------------------- histogram_
def _hist_state(bins, device):
    return (torch.zeros(bins, device=device),) + _fresh(device=device)


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1000, 200001])
@pytest.mark.parametrize("bins", [1, 7, 256, 2048, 13000])
@pytest.mark.parametrize("upsample_rate", [1, 3, 16])
def test_histogram_matches_cpu_and_reference(n, bins, upsample_rate):
    gen = torch.Generator().manual_seed(n + bins + upsample_rate)
    got, cpu, want = _hist_state(bins, DEV), _hist_state(bins, "cpu"), _hist_state(bins, "cpu")
    # The range grows on both sides, stays, grows on one side, and a batch has nothing finite.
    for step, (scale, shift) in enumerate([(1.0, 0.0), (2.5, 0.0), (0.5, 0.1), (1.0, 9.0), (None, 0.0), (4.0, -3.0)]):
        x = _data((n,), gen)
        x = torch.full_like(x, float("nan")) if scale is None else x * scale + shift
        ops.histogram_(*got, x.to(DEV), upsample_rate)
        ops.histogram_(*cpu, x, upsample_rate)
        reference.histogram_(*want, x, upsample_rate)
        assert _equal(cpu, want), (step,)
        assert _equal(got, cpu), (step, got[1:], cpu[1:])
    if n and upsample_rate == 1:  # whole bins move: the counts stay integers
        assert float(got[0].double().sum()) == 6 * n - int(got[3].sum())  # every finite value once


def test_histogram_constant_then_growth():
    for bins in (1, 2, 64):
        got, cpu = _hist_state(bins, DEV), _hist_state(bins, "cpu")
        for x in (torch.full((100,), 2.0), torch.full((10,), 2.0), torch.tensor([float("nan"), 2.0]),
                  torch.linspace(-1, 5, 1000), torch.randn(77) * 9, torch.full((5,), 1e30)):
            ops.histogram_(*got, x.to(DEV))
            ops.histogram_(*cpu, x)
            assert _equal(got, cpu)


def test_histogram_views_and_huge_growth():
    gen = torch.Generator().manual_seed(4)
    x = _data((300, 101), gen)
    for v in _views(x):
        got, cpu = _hist_state(2048, DEV), _hist_state(2048, "cpu")
        # A tiny first range then a vastly larger one: every old part lands in one new bin.
        for s in (1e-6, 1.0, 1e6):
            ops.histogram_(*got, (v * s).to(DEV))
            ops.histogram_(*cpu, v * s)
            assert _equal(got, cpu)


def test_histogram_range_too_narrow_for_float32():
    """A range of a few subnormals: bins / (hi - lo) overflows float32, so (x - lo) * inv is
    0 * inf = NaN for x == lo, which goes to bin 0 as on the CPU (in the count, and in the
    rebinning of a one-point histogram)."""
    tiny = 1e-45  # the smallest subnormal
    for bins in (7, 2048, 13000):
        got, cpu = _hist_state(bins, DEV), _hist_state(bins, "cpu")
        for x in (torch.zeros(3), torch.tensor([0.0, tiny, 0.0, 2 * tiny, tiny]), torch.tensor([tiny, 0.0])):
            ops.histogram_(*got, x.to(DEV))
            ops.histogram_(*cpu, x)
            assert _equal(got, cpu), (bins, x)
        hist = torch.arange(bins, dtype=torch.float32)
        args = [torch.tensor(v) for v in (0.0, 0.0, 0.0, tiny)]
        want = ops.histogram_rebin(hist, *args, 4)
        got = ops.histogram_rebin(hist.to(DEV), *[a.to(DEV) for a in args], 4)
        assert torch.equal(got.cpu(), want), bins


def test_histogram_rebin_matches_cpu():
    gen = torch.Generator().manual_seed(0)
    for bins, up in ((128, 16), (7, 3), (2048, 16), (1, 1)):
        hist = torch.randint(0, 100, (bins,), generator=gen).float() + torch.rand(bins, generator=gen)
        cases = [(-1.0, 2.0, -3.0, 2.5), (-1.0, 2.0, -1.0, 2.0), (0.5, 0.5, -1.0, 3.0), (0.5, 0.5, 0.5, 0.5),
                 (1e-3, 2e-3, -1e4, 1e4), (INF, -INF, -1.0, 1.0)]
        for lo, hi, nlo, nhi in cases:
            args = [torch.tensor(v) for v in (lo, hi, nlo, nhi)]
            want = ops.histogram_rebin(hist, *args, up)
            got = ops.histogram_rebin(hist.to(DEV), *[a.to(DEV) for a in args], up)
            assert torch.equal(got.cpu(), want), (bins, up, lo, hi, nlo, nhi)
    # A new range that does not contain the old one is not validated on the device: NaN.
    bad = ops.histogram_rebin(hist.to(DEV), *[torch.tensor(v, device=DEV) for v in (-1.0, 2.0, 0.0, 2.0)])
    assert bool(bad.isnan().all())


def test_histogram_rebin_most_bins():
    """2^31 - 2 bins, the most a histogram may have: the per-bin loops' index plus the grid's
    stride passes INT32_MAX, so it must not be an int32 (16 GiB of GPU memory)."""
    bins = 2**31 - 2
    free, _ = torch.cuda.mem_get_info()
    if free < 20 * 2**30:
        pytest.skip("needs 20 GiB of free GPU memory")
    hist = torch.empty(bins, device=DEV)
    hist[: 2**30] = 1.0
    hist[2**30:] = 2.0
    hist[-3:] = torch.tensor([3.0, 4.0, 5.0], device=DEV)
    r = [torch.tensor(v, device=DEV) for v in (0.0, 1.0, 0.0, 1.0)]  # the same range: a copy
    out = ops.histogram_rebin(hist, *r, 1)
    torch.cuda.synchronize()
    assert out[: 2**30].eq(1.0).all() and out[2**30:-3].eq(2.0).all()
    assert out[-3:].tolist() == [3.0, 4.0, 5.0] and hist[-3:].tolist() == [3.0, 4.0, 5.0]
    assert hist[:2**30].eq(1.0).all() and hist[2**30:-3].eq(2.0).all()


# ---------------------------------------------------------------- errors, opcheck
# The argument errors on CUDA: test_observer.py's test_op_argument_errors (device fixture).


def test_opcheck():
    x = _data((6, 40), torch.Generator().manual_seed(6)).to(DEV)
    torch.library.opcheck(ops.aminmax, (x, None))
    torch.library.opcheck(ops.aminmax, (x, 1))
    torch.library.opcheck(ops.observe_minmax_, (*_fresh(40, DEV), x, 1, 0.5))
    torch.library.opcheck(ops.observe_minmax_, (*_fresh(device=DEV), x, None, None))
    torch.library.opcheck(ops.histogram_, (torch.zeros(32, device=DEV), *_fresh(device=DEV), x))
    scalars = tuple(torch.tensor(v, device=DEV) for v in (0.0, 1.0, -1.0, 1.0))
    torch.library.opcheck(ops.histogram_rebin, (torch.ones(32, device=DEV),) + scalars)
