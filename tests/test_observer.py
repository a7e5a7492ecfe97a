"""Observer ops (every CPU variant bit-exact with torchquant.reference), observer classes
(torch.ao's qparams for the same data and arguments), state_dict, NaN / Inf, calibrate."""
import threading
import warnings

import pytest
import torch

import torchquant
import torchquant as tq
from torchquant import observer as tqo
from torchquant import reference

ops = torch.ops.torchquant
INF, NAN = float("inf"), float("nan")

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torch.ao.quantization.observer as ao
except ImportError:  # pragma: no cover
    ao = None
needs_ao = pytest.mark.skipif(ao is None, reason="torch.ao.quantization is not importable")


def _data(shape, gen, special=True):
    """Random floats with NaN, +-Inf, repeated extremes and signed zeros sprinkled in."""
    n = 1
    for d in shape:
        n *= d
    x = torch.randn(n, generator=gen) * 3
    if special and n:
        kind = torch.randint(0, 40, (n,), generator=gen)
        x = torch.where(kind == 0, torch.full_like(x, NAN), x)
        x = torch.where(kind == 1, torch.full_like(x, INF), x)
        x = torch.where(kind == 2, torch.full_like(x, -INF), x)
        x = torch.where(kind == 3, -torch.zeros_like(x), x)
        x = torch.where(kind == 4, torch.full_like(x, 7.5), x)
    return x.reshape(shape)


def _fresh(c=None):
    shape = () if c is None else (c,)
    return torch.full(shape, INF), torch.full(shape, -INF), torch.zeros(2, dtype=torch.int64)


SHAPES_AXES = [((0,), None), ((1,), None), ((7,), None), ((33,), 0), ((1000,), None), ((100003,), None),
               ((5, 7), 0), ((5, 7), 1), ((3, 4, 70), 1), ((3, 4, 70), 2), ((3, 4, 70), 0), ((2, 3, 5, 2), -1),
               ((2, 33, 3), 1), ((0, 4), 1), ((4, 0), 0), ((0, 6), 0), ((3, 0, 2), 1), ((64, 300), 0), ((300, 64), 1),
               ((2, 9, 4000), 1)]


# ---------------------------------------------------------------- ops vs reference
@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
def test_aminmax_matches_reference(isa, shape, axis):
    gen = torch.Generator().manual_seed(sum(shape) + (axis or 0))
    x = _data(shape, gen)
    got = ops.aminmax(x, axis)
    want = reference.aminmax(x, axis)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    if x.numel() and axis is None and not torch.isnan(x).any():
        assert torch.equal(got[0], torch.amin(x)) and torch.equal(got[1], torch.amax(x))


@pytest.mark.parametrize("shape,axis", SHAPES_AXES)
@pytest.mark.parametrize("averaging_constant", [None, 0.0, 0.25, 1.0])
def test_observe_minmax_matches_reference(isa, shape, axis, averaging_constant):
    gen = torch.Generator().manual_seed(len(shape) * 31 + (axis or 0))
    c = None if axis is None else shape[axis]
    got, want = _fresh(c), _fresh(c)
    for step in range(3):
        x = _data(shape, gen) * (1 + step)
        x_before = x.clone()
        ops.observe_minmax_(*got, x, axis, averaging_constant)
        reference.observe_minmax_(*want, x, axis, averaging_constant)
        assert torch.equal(x.nan_to_num(), x_before.nan_to_num())  # input untouched
        for g, w in zip(got, want):
            assert torch.equal(g, w), (step, g, w)


def test_observe_minmax_last_axis_every_row_group_remainder(isa):
    # The channels-last kernel folds rows in groups; every remainder of rows and of vector
    # columns, specials in every position of a group, and several row chunks (4099 rows).
    gen = torch.Generator().manual_seed(11)
    shapes = [(rows, width) for rows in range(1, 20) for width in (1, 7, 8, 9, 24, 37)]
    shapes += [(4099, 64), (1030, 70)]
    for shape in shapes:
        x = _data(shape, gen)
        for axis in (1, -1):
            got, want = _fresh(shape[1]), _fresh(shape[1])
            ops.observe_minmax_(*got, x, axis, None)
            reference.observe_minmax_(*want, x, axis, None)
            assert all(torch.equal(g, w) for g, w in zip(got, want)), shape
        amm = ops.aminmax(x, 1)
        ref = reference.aminmax(x, 1)
        assert torch.equal(amm[0], ref[0]) and torch.equal(amm[1], ref[1]), shape
    x = torch.randn(16, 24)
    x[5, 3], x[9, 3], x[15, 23] = NAN, INF, -INF  # inside groups and in the scalar column tail
    mn, mx, cnt = _fresh(24)
    ops.observe_minmax_(mn, mx, cnt, x, 1, None)
    assert cnt.tolist() == [1, 2]
    assert float(mn[3]) == float(torch.cat([x[:5, 3], x[6:9, 3], x[10:, 3]]).min())


def test_minmax_sparse_specials_and_overflowing_sums(isa):
    # The vector kernel folds clean blocks without per-vector checks and redoes a block whose
    # running sum is not finite: specials alone in a block, at block edges and in the tail, and
    # finite values large enough to overflow the sum, must all give the reference's result.
    gen = torch.Generator().manual_seed(5)
    n = 2048 * 9 + 37  # odd tail; x[:-1] splits into two channels of 9234
    for case in range(6):
        x = torch.randn(n, generator=gen)
        if case == 1:
            x[2047], x[4096], x[n - 1] = NAN, INF, -INF
        elif case == 2:
            x[3 * 2048 + 100] = NAN
        elif case == 3:
            x[5000:5010] = 3e38  # finite, but their sum is not
            x[9000] = -3.3e38
        elif case == 4:
            x[2048 * 4 + 7] = -INF
            x[:2048] = -0.0
        elif case == 5:
            x = x.abs() + 1e30
        for axis, xx in ((None, x), (0, x[:-1].reshape(2, -1))):
            c = None if axis is None else xx.shape[axis]
            got, want = _fresh(c), _fresh(c)
            ops.observe_minmax_(*got, xx, axis, None)
            reference.observe_minmax_(*want, xx, axis, None)
            assert all(torch.equal(g, w) for g, w in zip(got, want)), (case, got, want)
            amm, ref = ops.aminmax(xx, axis), reference.aminmax(xx, axis)
            assert torch.equal(amm[0], ref[0]) and torch.equal(amm[1], ref[1]), case


def test_observe_minmax_non_contiguous_and_dtypes(isa):
    gen = torch.Generator().manual_seed(3)
    base = _data((40, 70), gen)
    for x in (base.t(), base[:, ::3], base.to(torch.float64), base.to(torch.bfloat16), base.half()):
        for axis in (None, 0, 1):
            c = None if axis is None else x.shape[axis]
            got, want = _fresh(c), _fresh(c)
            ops.observe_minmax_(*got, x, axis, None)
            reference.observe_minmax_(*want, x, axis, None)
            assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_observe_minmax_all_nan_leaves_channel_unchanged(isa):
    x = torch.randn(3, 50)
    x[1] = NAN
    mn, mx, cnt = _fresh(3)
    ops.observe_minmax_(mn, mx, cnt, x, 0, None)
    assert mn[1] == INF and mx[1] == -INF and int(cnt[0]) == 50
    assert torch.equal(mn[[0, 2]], x[[0, 2]].amin(1))


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1000, 200001])
@pytest.mark.parametrize("bins", [1, 7, 256, 2048])
def test_histogram_matches_reference(isa, n, bins):
    gen = torch.Generator().manual_seed(n + bins)
    got = (torch.zeros(bins),) + _fresh()
    want = (torch.zeros(bins),) + _fresh()
    for scale in (1.0, 2.5, 0.5, 4.0):  # the range grows, stays, grows again
        x = _data((n,), gen) * scale
        ops.histogram_(*got, x)
        reference.histogram_(*want, x)
        for g, w in zip(got, want):
            assert torch.equal(g, w)
    if n:
        assert float(got[0].sum()) == 4 * n - int(got[3].sum())  # every finite value counted once


@pytest.mark.parametrize("bins", [2048, 70000])
def test_histogram_long_runs_of_one_bin(isa, bins):
    # Long inputs count into sub-histograms (one per lane pair, flushed every 2^22 values) unless
    # the histogram is wide: ReLU-like data (half exact zeros, runs of one bin) on one thread, so
    # one chunk spans several flushes, must count exactly what the reference counts.
    gen = torch.Generator().manual_seed(bins)
    n = (1 << 22) * 2 + 4099
    x = torch.randn(n, generator=gen).relu()
    x[1000:300000] = 0.25
    x[n - 20:] = float("nan")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = (torch.zeros(bins),) + _fresh()
        ops.histogram_(*got, x)
    finally:
        torch.set_num_threads(threads)
    want = (torch.zeros(bins),) + _fresh()
    reference.histogram_(*want, x)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert float(got[0].sum()) == n - 20


def test_histogram_constant_then_growth(isa):
    got = (torch.zeros(64),) + _fresh()
    want = (torch.zeros(64),) + _fresh()
    for x in (torch.full((100,), 2.0), torch.full((10,), 2.0), torch.linspace(-1, 5, 1000), torch.randn(77) * 9):
        ops.histogram_(*got, x)
        reference.histogram_(*want, x)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert float(got[0].sum()) == 100 + 10 + 1000 + 77


def test_histogram_rebin_matches_reference():
    gen = torch.Generator().manual_seed(0)
    hist = torch.randint(0, 100, (128,), generator=gen).float()
    args = (hist, torch.tensor(-1.0), torch.tensor(2.0), torch.tensor(-3.0), torch.tensor(2.5))
    got = ops.histogram_rebin(*args)
    assert torch.equal(got, reference.histogram_rebin(*args))
    assert float(got.sum()) == float(hist.sum())
    same = ops.histogram_rebin(hist, args[1], args[2], args[1], args[2])
    assert torch.equal(same, hist)
    with pytest.raises(RuntimeError, match="new_min"):
        ops.histogram_rebin(hist, args[1], args[2], torch.tensor(0.0), args[2])


@pytest.mark.parametrize("up", [1, 3, 16, 128])
def test_histogram_rebin_every_upsample_rate_and_growth(up):
    # Slight growth (most old bins straddle a new boundary), large growth (many old bins per new
    # bin), a shared edge (the top part lands exactly on the last bin), and fractional counts.
    gen = torch.Generator().manual_seed(up)
    for bins in (1, 5, 2048):
        hist = torch.randint(0, 1000, (bins,), generator=gen).float() * torch.rand(bins, generator=gen)
        lo, hi = torch.tensor(-1.25), torch.tensor(3.5)
        for nlo, nhi in ((-1.2501, 3.5002), (-1000.0, 700.0), (-1.25, 9.0), (-7.0, 3.5)):
            args = (hist, lo, hi, torch.tensor(nlo), torch.tensor(nhi), up)
            assert torch.equal(ops.histogram_rebin(*args), reference.histogram_rebin(*args)), (bins, nlo, nhi)


@pytest.mark.parametrize("up", [3, 7, 128])
def test_histogram_rebin_counts_of_every_magnitude(up):
    # Runs of parts are added in one step only where no addition of the one-by-one sum could
    # round; counts from 1e-17 to 1e17 in neighbouring bins (and parts like c / 3, which use all
    # 53 bits) take the one-by-one path, and the results must not tell the two apart.
    gen = torch.Generator().manual_seed(up)
    for bins in (7, 2048):
        hist = torch.exp(torch.randn(bins, generator=gen) * 13).float()
        hist[::5] = torch.randint(0, 1 << 24, (hist[::5].numel(),), generator=gen).float()
        lo, hi = torch.tensor(-2.0), torch.tensor(1.5)
        for nlo, nhi in ((-2.0003, 1.5001), (-40.0, 30.0), (-2.0, 1.5 + 2 ** -10)):
            args = (hist, lo, hi, torch.tensor(nlo), torch.tensor(nhi), up)
            assert torch.equal(ops.histogram_rebin(*args), reference.histogram_rebin(*args)), (bins, nlo, nhi)


def test_op_argument_errors(device):
    mn, mx, cnt = (t.to(device) for t in _fresh())
    x = torch.randn(10, device=device)
    with pytest.raises(RuntimeError, match="argument 'x' must be a floating-point"):
        ops.aminmax(torch.arange(3, device=device), None)
    with pytest.raises(RuntimeError, match="argument 'axis' must lie in"):
        ops.aminmax(x, 3)
    with pytest.raises(RuntimeError, match="argument 'running_min' must have 10"):
        ops.observe_minmax_(mn, mx, cnt, x.view(10, 1), 0, None)
    with pytest.raises(RuntimeError, match="argument 'running_max' must be a float32"):
        ops.observe_minmax_(mn, mx.double(), cnt, x, None, None)
    with pytest.raises(RuntimeError, match="argument 'nonfinite_count' must be an int64"):
        ops.observe_minmax_(mn, mx, cnt.float(), x, None, None)
    with pytest.raises(RuntimeError, match="argument 'averaging_constant' must lie in"):
        ops.observe_minmax_(mn, mx, cnt, x, None, 1.5)
    if device != "cpu":
        with pytest.raises(RuntimeError, match="running_min"):
            ops.observe_minmax_(mn.cpu(), mx, cnt, x, None, None)
    with pytest.raises(RuntimeError, match="argument 'hist' must be a contiguous 1-D float32"):
        ops.histogram_(torch.zeros(2, 2, device=device), mn, mx, cnt, x)
    with pytest.raises(RuntimeError, match="argument 'upsample_rate' must be >= 1"):
        ops.histogram_(torch.zeros(8, device=device), mn, mx, cnt, x, 0)
    with pytest.raises(RuntimeError, match="argument 'upsample_rate' must be >= 1"):
        ops.histogram_rebin(torch.zeros(8, device=device), mn, mx, mn, mx, 0)


_GENERIC = torch._C.DispatchKeySet("CompositeExplicitAutograd")


@pytest.mark.parametrize("bins", [1, 7, 2048])
def test_histogram_range_too_narrow_for_float32(isa, bins):
    # bins / (hi - lo) overflows float32 for a range of a few subnormals: inv_width is +inf and
    # the value at lo gives 0 * inf = NaN, which goes to bin 0 (converting it to an int would
    # be undefined behaviour: an index far outside the histogram). Also reached through a
    # rebin from a one-point range onto such a range.
    for first in (None, torch.tensor([0.0, 0.0])):
        got = (torch.zeros(bins),) + _fresh()
        want = (torch.zeros(bins),) + _fresh()
        gen = (torch.zeros(bins),) + _fresh()
        for x in ([first] if first is not None else []) + [torch.tensor([0.0, 1e-40, 5e-41] * 7 + [1e-45])]:
            ops.histogram_(*got, x)
            reference.histogram_(*want, x)
            ops.histogram_.default.redispatch(_GENERIC, *gen, x)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        assert all(torch.equal(g, w) for g, w in zip(gen, want))
        assert float(got[0].sum()) == 22 + (2 if first is not None else 0)
    obs = tqo.HistogramObserver()
    obs(torch.tensor([0.0, 1e-40, 5e-41]))
    scale, _ = obs.calculate_qparams()
    assert torch.isfinite(scale).all() and (scale > 0).all()


@pytest.mark.parametrize("lo,hi", [(NAN, 1.0), (0.0, NAN), (-INF, 1.0), (0.0, INF), (5.0, -5.0),
                                   (INF, 1.0), (-1.0, -INF), (INF, NAN), (NAN, -INF), (INF, INF), (-INF, -INF)])
def test_histogram_corrupt_range_is_an_error(lo, hi):
    # Anything but (+inf, -inf) or a finite lo <= hi cannot be a histogram's range: a NaN or an
    # infinite end would reach the rebin's float-to-int conversions; half of the empty range
    # ((+inf, 1.0)) is not empty (it was taken as empty, dropping the counts).
    hist = torch.ones(8)
    for call in (ops.histogram_, lambda *a: ops.histogram_.default.redispatch(_GENERIC, *a)):
        state = (hist.clone(), torch.tensor(lo), torch.tensor(hi), torch.zeros(2, dtype=torch.int64))
        with pytest.raises(RuntimeError, match=r"arguments 'min_val'/'max_val' must hold a finite range"):
            call(*state, torch.tensor([0.0, 2.0]))
        assert torch.equal(state[0], hist) and state[3].tolist() == [0, 0]  # nothing written
    with pytest.raises(RuntimeError, match=r"arguments 'min_val'/'max_val' must hold a finite range"):
        ops.histogram_rebin(hist, torch.tensor(lo), torch.tensor(hi), torch.tensor(-10.0), torch.tensor(10.0))


def test_upsample_rate_bound():
    # bins * upsample_rate parts: past 2^31 - 1 the count overflowed int64 (a histogram of zeros
    # came back) or the rebin ran for minutes.
    hist = torch.ones(4)
    args = (hist, torch.tensor(0.0), torch.tensor(1.0), torch.tensor(-1.0), torch.tensor(1.0))
    for up in (2 ** 62, 2 ** 40, 2 ** 31 // 4 + 1):
        with pytest.raises(RuntimeError, match=r"argument 'upsample_rate' must be at most 536870911 for 4 bins"):
            ops.histogram_rebin(*args, up)
        state = (torch.zeros(4),) + _fresh()
        ops.histogram_(*state, torch.tensor([0.0, 1.0]))
        with pytest.raises(RuntimeError, match=r"argument 'upsample_rate' must be at most"):
            ops.histogram_(*state, torch.tensor([-3.0, 2.0]), up)
    assert float(ops.histogram_rebin(*args, 2 ** 31 // 4 - 1).sum()) == 4.0


def test_in_place_arguments_must_not_share_memory():
    # A shared buffer made the second write overwrite the first (running_min == running_max ==
    # max), or cleared x before it was counted (hist is x).
    x = torch.tensor([-1.0, 2.0])
    t = torch.tensor([INF])
    with pytest.raises(RuntimeError, match="arguments 'running_min' and 'running_max' share memory"):
        ops.observe_minmax_(t, t, torch.zeros(2, dtype=torch.int64), x, None, None)
    buf = torch.tensor([INF, -INF])
    with pytest.raises(RuntimeError, match="arguments 'running_min' and 'x' share memory"):
        ops.observe_minmax_(buf[:1], torch.tensor([-INF]), torch.zeros(2, dtype=torch.int64), buf, None, None)
    for call in (ops.histogram_, lambda *a: ops.histogram_.default.redispatch(_GENERIC, *a)):
        h = torch.arange(8.0)
        with pytest.raises(RuntimeError, match="arguments 'hist' and 'x' share memory"):
            call(h, torch.tensor(INF), torch.tensor(-INF), torch.zeros(2, dtype=torch.int64), h)
        with pytest.raises(RuntimeError, match="arguments 'hist' and 'x' share memory"):
            call(h, torch.tensor(INF), torch.tensor(-INF), torch.zeros(2, dtype=torch.int64), h[::2])
        assert torch.equal(h, torch.arange(8.0))
        m = torch.tensor(INF)
        with pytest.raises(RuntimeError, match="arguments 'min_val' and 'max_val' share memory"):
            call(torch.zeros(8), m, m, torch.zeros(2, dtype=torch.int64), x)
    # Separate tensors, and views of one buffer that do not overlap, are fine.
    buf = torch.tensor([INF, -INF])
    ops.observe_minmax_(buf[:1], buf[1:], torch.zeros(2, dtype=torch.int64), x, None, None)
    assert buf.tolist() == [-1.0, 2.0]


@pytest.mark.parametrize("meta", ["running_min", "running_max", "nonfinite_count", "hist", "min_val", "max_val", "new_min"])
def test_one_meta_argument_is_an_error(meta):
    # A meta tensor among CPU ones sends the call to the fake kernel (Meta outranks CPU): the
    # in-place ops returned having updated nothing.
    x = torch.randn(10)
    if meta in ("running_min", "running_max", "nonfinite_count"):
        a = dict(zip(("running_min", "running_max", "nonfinite_count"), _fresh()))
        a[meta] = a[meta].to("meta")
        with pytest.raises(RuntimeError, match=f"argument '{meta}' is on meta but 'x' is on cpu"):
            ops.observe_minmax_(a["running_min"], a["running_max"], a["nonfinite_count"], x, None, None)
        return
    mn, mx, cnt = _fresh()
    a = dict(hist=torch.zeros(8), min_val=mn, max_val=mx, new_min=torch.tensor(-1.0))
    a[meta] = a[meta].to("meta")
    if meta != "new_min":
        with pytest.raises(RuntimeError, match=f"argument '{meta}' is on meta but 'x' is on cpu"):
            ops.histogram_(a["hist"], a["min_val"], a["max_val"], cnt, x)
    if meta != "hist":
        with pytest.raises(RuntimeError, match=f"argument '{meta}' is on meta but 'hist' is on cpu"):
            ops.histogram_rebin(a["hist"], a["min_val"], a["max_val"], a["new_min"], torch.tensor(1.0))


def test_opcheck():
    x = torch.randn(6, 40)
    torch.library.opcheck(ops.aminmax, (x, None))
    torch.library.opcheck(ops.aminmax, (x, 1))
    mn, mx, cnt = _fresh(40)
    torch.library.opcheck(ops.observe_minmax_, (mn, mx, cnt, x, 1, 0.5))
    torch.library.opcheck(ops.observe_minmax_, (*_fresh(), x, None, None))
    torch.library.opcheck(ops.histogram_, (torch.zeros(32), *_fresh(), x))
    torch.library.opcheck(ops.histogram_rebin, (torch.ones(32), torch.tensor(0.0), torch.tensor(1.0),
                                                torch.tensor(-1.0), torch.tensor(1.0)))


def test_generic_implementation_matches_cpu():
    """The ATen-built kernels that serve other devices, called directly, agree with the CPU ones."""
    gen = torch.Generator().manual_seed(5)
    x = _data((30, 50), gen)
    for axis in (None, 0, 1):
        c = None if axis is None else x.shape[axis]
        a, b = _fresh(c), _fresh(c)
        ops.observe_minmax_(*a, x, axis, 0.5)
        ops.observe_minmax_.default.redispatch(torch._C.DispatchKeySet("CompositeExplicitAutograd"), *b, x, axis, 0.5)
        assert all(torch.equal(p, q) for p, q in zip(a, b))
        ops.observe_minmax_(*a, x * 2, axis, 0.5)
        ops.observe_minmax_.default.redispatch(torch._C.DispatchKeySet("CompositeExplicitAutograd"), *b, x * 2, axis,
                                               0.5)
        assert all(torch.equal(p, q) for p, q in zip(a, b))
    h1, h2 = (torch.zeros(64),) + _fresh(), (torch.zeros(64),) + _fresh()
    for s in (1.0, 3.0):
        ops.histogram_(*h1, x * s)
        ops.histogram_.default.redispatch(torch._C.DispatchKeySet("CompositeExplicitAutograd"), *h2, x * s)
        assert all(torch.equal(p, q) for p, q in zip(h1, h2))


# ---------------------------------------------------------------- observers vs torch.ao
PER_TENSOR_CONFIGS = [
    dict(dtype=dt, qscheme=qs, reduce_range=rr, **qr)
    for dt in (torch.quint8, torch.qint8, torch.uint8, torch.int8, torch.qint32)
    for qs in (torch.per_tensor_affine, torch.per_tensor_symmetric)
    for rr in (False, True)
    for qr in ({}, {"quant_min": 0, "quant_max": 15} if dt in (torch.quint8, torch.uint8) else {"quant_min": -8, "quant_max": 7})
    if not (rr and qs == torch.per_tensor_symmetric and dt in (torch.quint8, torch.uint8))
]


def _batches(gen, shape=(16, 24), offset=0.7):
    return [torch.randn(shape, generator=gen) * (1 + i) + offset * i for i in range(3)]


def _assert_same_qparams(ours, theirs, exact=True):
    s, z = ours
    ts, tz = theirs
    assert s.dtype == torch.float32 and s.shape == ts.reshape(-1).shape
    if exact:
        assert torch.equal(s, ts.reshape(-1)), (s, ts)
        assert torch.equal(z.to(torch.int64), tz.reshape(-1).to(torch.int64)), (z, tz)
    else:
        assert torch.allclose(s, ts.reshape(-1), rtol=0.01)


@needs_ao
@pytest.mark.parametrize("cfg", PER_TENSOR_CONFIGS, ids=str)
@pytest.mark.parametrize("name,extra", [("MinMaxObserver", {}), ("MovingAverageMinMaxObserver", {"averaging_constant": 0.3})])
def test_per_tensor_minmax_matches_torch_ao(cfg, name, extra):
    gen = torch.Generator().manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(ao, name)(**extra, **cfg)
    ours = getattr(tqo, name)(**extra, **cfg)
    assert (ours.quant_min, ours.quant_max) == (theirs.quant_min, theirs.quant_max)
    for x in _batches(gen):
        assert ours(x) is x
        theirs(x)
    assert torch.equal(ours.min_val, theirs.min_val) and torch.equal(ours.max_val, theirs.max_val)
    _assert_same_qparams(ours.calculate_qparams(), theirs.calculate_qparams())


@needs_ao
@pytest.mark.parametrize("qscheme", [torch.per_channel_affine, torch.per_channel_symmetric])
@pytest.mark.parametrize("dtype,reduce_range", [(torch.quint8, False), (torch.qint8, False), (torch.qint8, True),
                                                (torch.quint8, True), (torch.int8, False)])
@pytest.mark.parametrize("ch_axis", [0, 1, -1, 2])
@pytest.mark.parametrize("name,extra", [("PerChannelMinMaxObserver", {}),
                                        ("MovingAveragePerChannelMinMaxObserver", {"averaging_constant": 0.2})])
def test_per_channel_minmax_matches_torch_ao(qscheme, dtype, reduce_range, ch_axis, name, extra):
    if reduce_range and dtype == torch.quint8 and qscheme == torch.per_channel_symmetric:
        pytest.skip("refused by torch.ao and torchquant alike")
    gen = torch.Generator().manual_seed(2)
    cfg = dict(qscheme=qscheme, dtype=dtype, reduce_range=reduce_range, ch_axis=ch_axis, **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = getattr(ao, name)(**cfg)
    ours = getattr(tqo, name)(**cfg)
    for x in _batches(gen, (6, 5, 70)):
        ours(x)
        theirs(x)
    _assert_same_qparams(ours.calculate_qparams(), theirs.calculate_qparams())


@needs_ao
def test_float_qparams_observer_matches_torch_ao():
    x = torch.randn(10, 12)
    ours, theirs = tqo.default_float_qparams_observer(), ao.default_float_qparams_observer()
    ours(x), theirs(x)
    for a, b in zip(ours.calculate_qparams(), theirs.calculate_qparams()):
        assert torch.equal(a, b)


@needs_ao
@pytest.mark.parametrize("qscheme", [torch.per_tensor_affine, torch.per_tensor_symmetric])
@pytest.mark.parametrize("dtype", [torch.quint8, torch.qint8])
@pytest.mark.parametrize("bins", [256, 2048])
def test_histogram_observer_within_one_percent_of_torch_ao(qscheme, dtype, bins):
    gen = torch.Generator().manual_seed(bins)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ao.HistogramObserver(bins=bins, dtype=dtype, qscheme=qscheme)
    ours = tqo.HistogramObserver(bins=bins, dtype=dtype, qscheme=qscheme)
    data = [torch.randn(4000, generator=gen) * 2 + 1, torch.randn(4000, generator=gen) * 4,
            torch.rand(4000, generator=gen) * 3, torch.randn(4000, generator=gen) ** 3]
    for x in data:
        ours(x)
        theirs(x)
    _assert_same_qparams(ours.calculate_qparams(), theirs.calculate_qparams(), exact=False)
    zp, tzp = ours.calculate_qparams()[1], theirs.calculate_qparams()[1]
    assert abs(int(zp) - int(tzp)) <= 1


@needs_ao
def test_defaults_match_torch_ao():
    names = ["default_observer", "default_weight_observer", "default_histogram_observer",
             "default_per_channel_weight_observer", "weight_observer_range_neg_127_to_127",
             "per_channel_weight_observer_range_neg_127_to_127"]
    x = torch.randn(8, 16)
    for name in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = getattr(ao, name)()
        ours = getattr(tqo, name)()
        assert type(ours).__name__ == type(theirs).__name__
        assert (ours.dtype, ours.qscheme, ours.quant_min, ours.quant_max) == \
            (theirs.dtype, theirs.qscheme, theirs.quant_min, theirs.quant_max)
        ours(x), theirs(x)
        _assert_same_qparams(ours.calculate_qparams(), theirs.calculate_qparams(), exact="histogram" not in name)


def test_with_args_builds_fresh_instances():
    factory = tqo.MinMaxObserver.with_args(dtype=torch.qint8).with_args(quant_min=-8, quant_max=7)
    a, b = factory(), factory()
    assert a is not b and a.dtype == torch.qint8 and (a.quant_min, a.quant_max) == (-8, 7)
    counter = iter(range(10))
    f = tqo.MovingAverageMinMaxObserver.with_callable_args(averaging_constant=lambda: 0.1 * (next(counter) + 1))
    assert (f().averaging_constant, f().averaging_constant) == (0.1, 0.2)


def test_constructor_errors():
    with pytest.raises(NotImplementedError, match="per_tensor"):
        tqo.MinMaxObserver(qscheme=torch.per_channel_affine)
    with pytest.raises(ValueError, match="must include 0"):
        tqo.MinMaxObserver(quant_min=1, quant_max=10)
    # min > max is the fault to name, though 0 lies outside [10, 5] too
    with pytest.raises(ValueError, match="quant_min must be < quant_max, got quant_min=10, quant_max=5"):
        tqo.MinMaxObserver(quant_min=10, quant_max=5)
    with pytest.raises(ValueError, match="quant_min must be < quant_max, got quant_min=10, quant_max=5"):
        tqo.PerChannelMinMaxObserver(quant_min=10, quant_max=5)
    with pytest.raises(ValueError, match=r"argument 'averaging_constant' must lie in \[0, 1\], got -0.1"):
        tqo.MovingAverageMinMaxObserver(averaging_constant=-0.1)
    with pytest.raises(ValueError, match=r"argument 'averaging_constant' must lie in \[0, 1\], got 1.5"):
        tqo.MovingAveragePerChannelMinMaxObserver(averaging_constant=1.5)
    with pytest.raises(NotImplementedError, match="reduce range"):
        tqo.MinMaxObserver(qscheme=torch.per_tensor_symmetric, reduce_range=True)
    with pytest.raises(ValueError, match="percentile"):
        tqo.PercentileObserver(percentile=20)


@pytest.mark.parametrize("kw,match", [
    (dict(scale=0.0, zero_point=0), "argument 'scale' must be > 0 and finite, got 0.0"),
    (dict(scale=float("nan"), zero_point=0), "argument 'scale' must be > 0 and finite, got nan"),
    (dict(scale=-0.5, zero_point=0), "argument 'scale' must be > 0 and finite, got -0.5"),
    (dict(scale=1e-50, zero_point=0), r"argument 'scale' must be > 0 and finite, got 1e-50 \(0.0 in float32\)"),
    (dict(scale=0.1, zero_point=1000), r"argument 'zero_point' must lie in \[0, 255\], got 1000"),
    (dict(scale=0.1, zero_point=0.5), "argument 'zero_point' must be an integer, got 0.5"),
    (dict(scale=0.1, zero_point=0, quant_min=10, quant_max=0), "quant_min must be < quant_max"),
])
def test_fixed_qparams_observer_checks_its_qparams(kw, match):
    # They were returned as given: a zero or NaN scale out of an observer.
    with pytest.raises(ValueError, match=match):
        tqo.FixedQParamsObserver(**kw)
    obs = tqo.FixedQParamsObserver(scale=2.0 / 256.0, zero_point=128)
    assert obs.calculate_qparams()[1].item() == 128


# ---------------------------------------------------------------- data edge cases
@pytest.mark.parametrize("cls", [tqo.MinMaxObserver, tqo.MovingAverageMinMaxObserver, tqo.HistogramObserver,
                                 tqo.PerChannelMinMaxObserver, tqo.PercentileObserver, tqo.MSEObserver])
def test_no_data_and_only_nan_raise_naming_the_observer(cls):
    obs = cls()
    assert not obs.has_data()
    with pytest.raises(RuntimeError, match=f"{cls.__name__} has observed no finite data"):
        obs.calculate_qparams()
    obs(torch.empty(0, 3))
    with pytest.warns(RuntimeWarning, match="4 NaN"):
        obs(torch.full((2, 2), NAN))
    assert not obs.has_data()
    with pytest.raises(RuntimeError, match=r"observed no finite data \(it skipped 4 NaN"):
        obs.calculate_qparams()
    obs.observer_name = "encoder.fc1.activation_post_process"
    with pytest.raises(RuntimeError, match="'encoder.fc1.activation_post_process'"):
        obs.calculate_qparams()


def test_per_channel_empty_channel_is_named():
    obs = tqo.PerChannelMinMaxObserver(ch_axis=0)
    x = torch.randn(4, 5)
    x[2] = NAN
    with pytest.warns(RuntimeWarning):
        obs(x)
    with pytest.raises(RuntimeError, match=r"channel\(s\) 2 of 4"):
        obs.calculate_qparams()


@pytest.mark.parametrize("cls", [tqo.MinMaxObserver, tqo.HistogramObserver, tqo.PerChannelMinMaxObserver,
                                 tqo.MSEObserver, tqo.PercentileObserver])
@pytest.mark.parametrize("value", [0.0, 3.0, -2.5])
@pytest.mark.parametrize("dtype,qscheme", [(torch.quint8, "affine"), (torch.qint8, "symmetric")])
def test_constant_tensor_gives_valid_scale_and_exact_zero(cls, value, dtype, qscheme):
    per_channel = cls is tqo.PerChannelMinMaxObserver
    qs = getattr(torch, ("per_channel_" if per_channel else "per_tensor_") + qscheme)
    obs = cls(dtype=dtype, qscheme=qs)
    obs(torch.full((4, 8), value))
    scale, zp = obs.calculate_qparams()
    assert torch.isfinite(scale).all() and (scale > 0).all()
    assert ((zp >= obs.quant_min) & (zp <= obs.quant_max)).all()
    # Real 0 maps to an integer exactly: dequantize(quantize(0)) == 0.
    q = torch.clamp(torch.round(torch.zeros_like(scale) / scale) + zp, obs.quant_min, obs.quant_max)
    assert torch.equal((q - zp) * scale, torch.zeros_like(scale))
    # The constant itself is represented to within half a step.
    qv = torch.clamp(torch.round(value / scale) + zp, obs.quant_min, obs.quant_max)
    assert ((qv - zp) * scale - value).abs().max() <= scale.max() / 2 + 1e-6


@pytest.mark.parametrize("cls", [tqo.MinMaxObserver, tqo.PerChannelMinMaxObserver, tqo.HistogramObserver])
def test_inf_is_clipped_and_counted_with_one_warning(cls):
    obs = cls()
    x = torch.tensor([[-1.0, 2.0, INF], [-INF, 0.5, NAN]])
    with pytest.warns(RuntimeWarning, match="1 NaN and 2 \\+-Inf"):
        obs(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obs(x)  # once only
    assert obs.nonfinite_count.tolist() == [2, 4]
    finite = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    ref = cls()
    ref(finite)
    for a, b in zip(obs.calculate_qparams(), ref.calculate_qparams()):
        assert torch.equal(a, b)


def _sym_int8(cls, **kw):
    return cls(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, **kw)


def _mse_of(x, scale):
    q = torch.clamp(torch.round(x / scale), -128, 127)
    return float(((q * scale - x) ** 2).mean())


def test_percentile_clips_outliers():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200000, generator=gen), torch.tensor([80.0, -60.0])])
    mm, pc = _sym_int8(tqo.MinMaxObserver), _sym_int8(tqo.PercentileObserver, percentile=99.99)
    mm(x), pc(x)
    s_mm, s_pc = mm.calculate_qparams()[0].item(), pc.calculate_qparams()[0].item()
    assert s_mm == pytest.approx(80 / 127.5, rel=1e-6)
    assert 3.0 / 127.5 < s_pc < 5.5 / 127.5  # the 99.99th percentile of |N(0,1)| is ~3.9
    full = _sym_int8(tqo.PercentileObserver, percentile=100.0)  # percentile 100: the plain range
    full(x)
    assert full.calculate_qparams()[0].item() == pytest.approx(s_mm, rel=1e-6)


def test_mse_clips_heavy_tails_where_that_lowers_the_error():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200000, generator=gen) ** 3  # heavy tails
    mm, mse = _sym_int8(tqo.MinMaxObserver), _sym_int8(tqo.MSEObserver)
    mm(x), mse(x)
    s_mm, s_mse = mm.calculate_qparams()[0].item(), mse.calculate_qparams()[0].item()
    assert s_mse < s_mm * 0.9
    assert _mse_of(x, s_mse) < _mse_of(x, s_mm) * 0.9
    # Its choice is the best of its candidates on the data too (to within the histogram's grain).
    candidates = [s_mm * k / 100 for k in range(1, 101)]
    best = min(_mse_of(x, s) for s in candidates)
    assert _mse_of(x, s_mse) <= best * 1.05


# ---------------------------------------------------------------- buffers
@pytest.mark.parametrize("cls,kw", [(tqo.MinMaxObserver, {}), (tqo.PerChannelMinMaxObserver, {"ch_axis": 1}),
                                    (tqo.MovingAveragePerChannelMinMaxObserver, {}), (tqo.HistogramObserver, {}),
                                    (tqo.MSEObserver, {"bins": 64})])
def test_state_dict_round_trip_into_fresh_observer(cls, kw):
    a = cls(**kw)
    a(torch.randn(6, 9))
    a(torch.randn(6, 9) * 2)
    sd = a.state_dict()
    assert "nonfinite_count" in sd and "min_val" in sd
    b = cls(**kw)
    assert not b.has_data()
    b.load_state_dict(sd)
    assert b.has_data()
    for x, y in zip(a.calculate_qparams(), b.calculate_qparams()):
        assert torch.equal(x, y)
    # It keeps observing from where it was.
    x = torch.randn(6, 9) * 3
    a(x), b(x)
    for p, q in zip(a.calculate_qparams(), b.calculate_qparams()):
        assert torch.equal(p, q)


@needs_ao
def test_loads_torch_ao_state_dict():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ao.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    theirs(torch.randn(5, 7))
    ours = tqo.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    ours.load_state_dict(theirs.state_dict())  # no nonfinite_count in it: strict load still works
    _assert_same_qparams(ours.calculate_qparams(), theirs.calculate_qparams())


def test_buffers_move_with_to_and_reset():
    obs = tqo.PerChannelMinMaxObserver()
    obs(torch.randn(3, 4))
    names = {n for n, _ in obs.named_buffers()}
    assert {"min_val", "max_val", "eps", "nonfinite_count"} <= names
    obs.to(torch.float64)  # a dtype cast keeps the statistics float32 (test_review_eager.py)
    obs.to(torch.float32)
    obs.reset_min_max_vals()
    assert not obs.has_data()


def test_forward_returns_input_and_keeps_autograd():
    x = torch.randn(4, 4, requires_grad=True)
    for obs in (tqo.MinMaxObserver(), tqo.HistogramObserver(), tqo.PerChannelMinMaxObserver(),
                tqo.PlaceholderObserver(), tqo.NoopObserver()):
        assert obs(x) is x
    (x * 2).sum().backward()
    with pytest.raises(RuntimeError, match="should not be called"):
        tqo.NoopObserver().calculate_qparams()


# ---------------------------------------------------------------- calibrate
def test_calibrate_accepts_tensors_and_tuples():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    obs = tqo.MinMaxObserver()
    model.add_module("obs", obs)
    data = [torch.randn(2, 4) for _ in range(5)]
    torchquant.calibrate(model, data, progress=False)
    want = tqo.MinMaxObserver()
    with torch.no_grad():
        for x in data:
            want(model[0](x))
    assert torch.equal(obs.min_val, want.min_val) and torch.equal(obs.max_val, want.max_val)
    obs2 = tqo.MinMaxObserver()
    model.obs = obs2
    torchquant.calibrate(model, [(x, 0) for x in data], num_batches=2, progress=True)
    assert obs2.has_data() and obs2.observer_name == "obs"
    with pytest.raises(ValueError, match="num_batches"):
        torchquant.calibrate(model, data, num_batches=-1)


def test_calibrate_runs_without_grad():
    seen = []

    class M(torch.nn.Module):
        def forward(self, x):
            seen.append(torch.is_grad_enabled())
            return x

    torchquant.calibrate(M(), iter([torch.randn(2)] * 3), progress=False)
    assert seen == [False] * 3


# ---- one observer shared by threads ----

def _run_threads(n, fn):
    barrier = threading.Barrier(n)
    errors = []

    def body(i):
        try:
            barrier.wait()
            fn(i)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_histogram_observer_shared_by_threads_loses_no_count():
    torch.manual_seed(0)
    batches = [torch.randn(256) * (1 + i % 5) for i in range(8 * 8)]
    for trial in range(5):
        obs = tqo.HistogramObserver(bins=256)

        def feed(i):
            for x in batches[i::8]:
                obs(x)

        _run_threads(8, feed)
        # Rebinning spreads counts fractionally: the total is exact up to float32 rounding.
        assert abs(obs.histogram.double().sum().item() - 256 * len(batches)) < 0.5, trial
        assert obs.min_val.item() == min(b.min().item() for b in batches)
        assert obs.max_val.item() == max(b.max().item() for b in batches)


def test_per_channel_observer_shared_by_threads_sets_its_channels_once():
    torch.manual_seed(1)
    batches = [torch.randn(64, 32) for _ in range(16)]
    expect_min = torch.stack([b.amin(0) for b in batches]).amin(0)
    expect_max = torch.stack([b.amax(0) for b in batches]).amax(0)
    for trial in range(40):
        obs = tqo.PerChannelMinMaxObserver(ch_axis=1)
        _run_threads(8, lambda i: [obs(b) for b in batches[i::8]])
        assert torch.equal(obs.min_val, expect_min) and torch.equal(obs.max_val, expect_max), trial


def test_fake_quantize_shared_by_threads_matches_one_thread():
    torch.manual_seed(2)
    batches = [torch.randn(64, 16) for _ in range(16)]
    fq = torchquant.FakeQuantize(observer=tqo.MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                 dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=1,
                                 averaging_constant=1.0)
    _run_threads(8, lambda i: [fq(b) for b in batches[i::8]])
    # averaging_constant=1: each batch replaces the statistics, so the qparams are those of some
    # batch seen last, whole (not a mix of two batches' halves).
    scale, _ = fq.calculate_qparams()
    candidates = []
    for b in batches:
        ref = tqo.PerChannelMinMaxObserver(ch_axis=1, dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
        ref(b)
        candidates.append(ref.calculate_qparams()[0])
    assert any(torch.equal(scale, c) for c in candidates)
    assert torch.equal(fq.scale, scale)


@pytest.mark.parametrize("make", [lambda: tqo.HistogramObserver(bins=64), lambda: tqo.PerChannelMinMaxObserver(),
                                  lambda: torchquant.FakeQuantize()])
def test_observer_lock_stays_out_of_state_dict_copies_and_pickles(make):
    import copy
    import io
    import pickle

    obs = make()
    obs(torch.randn(4, 3))  # the lock exists from here on
    assert "_tq_update_lock" in obs.__dict__
    keys = set(obs.state_dict())
    assert not any("lock" in k for k in keys)
    for other in (copy.deepcopy(obs), pickle.loads(pickle.dumps(obs))):
        assert "_tq_update_lock" not in other.__dict__
        other(torch.randn(4, 3))  # and makes its own
        assert other.__dict__["_tq_update_lock"] is not obs.__dict__["_tq_update_lock"]
        assert set(other.state_dict()) == keys
    buf = io.BytesIO()
    torch.save(obs, buf)
    buf.seek(0)
    torch.load(buf, weights_only=False)(torch.randn(4, 3))


# ---- reduce_minmax's split of the work: by rows, by columns, by channel runs ----
@pytest.mark.parametrize("shape,axis", [
    ((4, 200000), 1),       # wide rows: split by columns, scratch one row
    ((2, 100000, 3), 1),    # wide rows of short channel runs
    ((100000, 8), 1),       # narrow rows: split by rows, one partial row per chunk
    ((100000, 8), 0),       # runs of 8: narrow rows again, width 800000 -> columns
    ((3, 40000, 20), 1),    # runs of >= 16 elements per channel
    ((1, 300000), None),    # per tensor
])
def test_observe_minmax_split_paths_match_reference(isa, shape, axis):
    gen = torch.Generator().manual_seed(sum(shape))
    x = _data(shape, gen)
    x.view(-1)[::97] = 0.0
    x.view(-1)[1::89] = -0.0  # signed zeros: which one a fold keeps depends on its order
    c = None if axis is None else shape[axis]
    want = _fresh(c)
    reference.observe_minmax_(*want, x, axis, None)
    rmn, rmx = reference.aminmax(x, axis)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            got = _fresh(c)
            ops.observe_minmax_(*got, x, axis, None)
            mn, mx = ops.aminmax(x, axis)
            for g, w in zip(got, want):
                assert torch.equal(g, w), threads
            assert torch.equal(mn, rmn) and torch.equal(mx, rmx), threads
            results.append([t.view(torch.int32) if t.dtype == torch.float32 else t for t in (*got, mn, mx)])
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:  # the same bits (signed zeros included) whatever the thread count
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


_PEAK_PROBE = r"""
import resource, torch, torchquant
torch.set_num_threads(16)
x = torch.randn(4, 2_000_000)  # 32 MB
obs = torchquant.observer.PerChannelMinMaxObserver(ch_axis=1)
torchquant.observer.PerChannelMinMaxObserver(ch_axis=1)(torch.randn(4, 1000))  # warm up
obs.min_val.resize_(2_000_000).fill_(float("inf")); obs.max_val.resize_(2_000_000).fill_(-float("inf"))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
obs(x)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_per_channel_observer_scratch_is_bounded_by_the_work():
    # 4 x threads x C x inner floats were allocated twice whatever the split: +1 GB at 16
    # threads for this 32 MB input. Splitting its 2e6 columns needs one row of scratch (16 MB).
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", _PEAK_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) < 64, out.stdout


# ---------------------------------------------------------------- eager-flow edge cases (hooks, dtype casts, weight ranges, qconfig_spec, QTensor)
# ---------------------------------------------------------------- dtype casts of observers
_OBSERVERS = [tq.MinMaxObserver, tq.MovingAverageMinMaxObserver, tq.PerChannelMinMaxObserver,
              tq.MovingAveragePerChannelMinMaxObserver, tq.HistogramObserver]


@pytest.mark.parametrize("cls", _OBSERVERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_observer_statistics_stay_float32_under_a_dtype_cast(cls, dtype):
    torch.manual_seed(0)
    x1, x2 = torch.randn(4, 6) * 3, torch.randn(4, 6)
    cast, plain = cls(), cls()
    cast(x1), plain(x1)
    cast.to(dtype)  # used to turn the buffers into `dtype`, after which forward raised
    for name, buf in cast.named_buffers():
        assert buf.dtype == dict(plain.named_buffers())[name].dtype, name
        assert torch.equal(buf, dict(plain.named_buffers())[name]), name  # no rounding through `dtype`
    cast(x2), plain(x2)
    for a, b in zip(cast.calculate_qparams(), plain.calculate_qparams()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- cases that small deliberate bugs got through
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


@pytest.mark.parametrize("make,error,match", [
    # an eps <= 0 gave scale 0 and a NaN / infinite zero point (all-NaN rows after fake-quant)
    (lambda: torchquant.MinMaxObserver(eps=-1.0), ValueError, r"argument 'eps' must be > 0 and finite, got -1.0"),
    (lambda: torchquant.PerChannelMinMaxObserver(eps=0.0, qscheme=torch.per_channel_affine_float_qparams),
     ValueError, r"argument 'eps' must be > 0 and finite, got 0.0"),
    (lambda: torchquant.MinMaxObserver(eps=float("nan")), ValueError, r"argument 'eps' must be > 0 and finite"),
    # failed later with the op schema's own argument names, or were truncated / taken as another value
    (lambda: torchquant.HistogramObserver(upsample_rate=2.5), TypeError, r"argument 'upsample_rate' must be an int"),
    (lambda: torchquant.PerChannelMinMaxObserver(ch_axis="0"), TypeError, r"argument 'ch_axis' must be an int"),
    (lambda: torchquant.PerChannelMinMaxObserver(ch_axis=True), TypeError, r"argument 'ch_axis' must be an int"),
    (lambda: torchquant.MinMaxObserver(quant_min=0.5, quant_max=255), TypeError, r"argument 'quant_min' must be an int"),
])
def test_observer_constructors_refuse_bad_arguments_by_name(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_observers_take_torch_ao_argument_forms_and_refuse_complex_inputs():
    # torch.ao takes integral floats for the range and a float64 factory dtype
    obs = torchquant.MinMaxObserver(quant_min=0.0, quant_max=255.0, factory_kwargs={"dtype": torch.float64})
    assert (obs.quant_min, obs.quant_max) == (0, 255) and obs.eps.dtype == torch.float32
    obs(torch.randn(10))
    ref = torchquant.MinMaxObserver()
    ref(obs.min_val.reshape(1).clone())
    ref(obs.max_val.reshape(1).clone())
    assert [torch.equal(a, b) for a, b in zip(obs.calculate_qparams(), ref.calculate_qparams())] == [True, True]
    fq = torchquant.FakeQuantize(quant_min=0.0, quant_max=255.0)
    fq(torch.randn(10))
    assert fq.quant_min == 0 and fq.quant_max == 255
    for o in (torchquant.HistogramObserver(), torchquant.MinMaxObserver(), torchquant.PerChannelMinMaxObserver()):
        with pytest.raises(TypeError, match=r"argument 'x' of an observer must be a real tensor, got torch.complex64"):
            o(torch.tensor([[1 + 50j, -2 - 70j]]))


def test_a_state_dict_without_metadata_keeps_its_eps():
    # dict(sd) (or a safetensors file) drops the metadata: its eps was replaced by the default
    obs = torchquant.MinMaxObserver(eps=2 ** -12)
    obs(torch.zeros(4))
    again = torchquant.MinMaxObserver()
    again.load_state_dict(dict(obs.state_dict()))
    assert float(again.eps) == 2 ** -12
    assert [torch.equal(a, b) for a, b in zip(again.calculate_qparams(), obs.calculate_qparams())] == [True, True]
    old = {k: v for k, v in obs.state_dict().items() if k != "eps"}  # torch.ao's version-1 form: the default
    again.load_state_dict(old, strict=False)
    assert float(again.eps) == torch.finfo(torch.float32).eps


@pytest.mark.parametrize("which", ["observe_minmax_", "histogram_"])
def test_in_place_observer_ops_bump_versions_and_refuse_grad(which):
    # as torch's in-place ops: the written tensors' version counters go up, so a value saved for
    # backward and then updated is caught by autograd (it gave the new value's gradient); a
    # written tensor that requires grad is refused
    def call(lo, hi, x):
        cnt = torch.zeros(2, dtype=torch.int64)
        if which == "observe_minmax_":
            ops.observe_minmax_(lo, hi, cnt, x, None, None)
        else:
            ops.histogram_(torch.zeros(8), lo, hi, cnt, x, 16)

    lo, hi = torch.tensor([INF]), torch.tensor([-INF])
    call(lo, hi, torch.tensor([-10.0, 4.0]))
    assert lo._version == 1 and hi._version == 1
    w = torch.tensor([3.0], requires_grad=True)
    state = torch.tensor([2.0])
    y = w * state
    call(state, torch.tensor([5.0]), torch.tensor([-10.0]))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()
    leaf = torch.tensor([INF], requires_grad=True)
    with pytest.raises(RuntimeError, match=rf"{which}: argument '(running_min|min_val)' requires grad"):
        call(leaf, torch.tensor([-INF]), torch.randn(3))
    assert float(leaf) == INF
    # x may require grad (it is only read); inside inference mode the versions go up too
    call(torch.tensor([INF]), torch.tensor([-INF]), torch.randn(3, requires_grad=True))
    lo2, hi2 = torch.tensor([INF]), torch.tensor([-INF])
    with torch.inference_mode():
        call(lo2, hi2, torch.randn(3))
    assert lo2._version == 1


def test_observers_made_under_inference_mode_observe_outside_it():
    # an observer's buffers made under torch.inference_mode are inference tensors, which have no
    # version counter: the ops write them outside inference mode too (as before they bumped
    # versions), and the model calibrates and converts
    torch.manual_seed(0)
    model = torch.nn.Sequential(tq.QuantStub(), torch.nn.Linear(8, 4), tq.DeQuantStub()).eval()
    model.qconfig = tq.QConfig(activation=tqo.MinMaxObserver.with_args(dtype=torch.quint8),
                               weight=tqo.default_per_channel_weight_observer)
    with torch.inference_mode():
        p = tq.prepare(model)
    x = torch.randn(16, 8)
    p(x)
    q = tq.convert(p)
    assert (q(x) - model(x)).abs().max() < 0.05
    lo, hi = p[1].activation_post_process.min_val, p[1].activation_post_process.max_val
    assert lo.is_inference() and float(lo) < 0 < float(hi)
