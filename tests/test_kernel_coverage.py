"""Kernel-coverage gaps found by an audit of the op tests. Each test compares an op with its
plain-torch oracle (torchquant.reference / torchquant.int4.reference: bit for bit, the sign of
zero included; within the documented bound where the op is not exact) on a property the other
test files leave out for that op: a layout (views, kept as views on the device), an empty size,
exact ties, saturation, other input dtypes, a split over threads, an argument error, or that the
caller's tensors are left unchanged (`_run` checks every tensor argument after each call). Every
CPU kernel variant runs through the `isa` fixture; the CUDA case of each test carries the
`device` fixture (skipped without a GPU). Seeds are fixed.

Tests also cover defects fixed alongside: geometry whose int64 shape arithmetic overflowed
(crash, made-up output sizes), fake_quantize_learnable_backward's -0.0, and the recurrent layer
ops' own argument checks (an empty sequence accepted any c0 or weights)."""
import pytest
import torch

from torchquant import reference
from torchquant.int4 import format as fmt
from torchquant.int4 import reference as ref4
from torchquant.nn.quantized_embedding import pack_rowwise

from conftest import num_threads

ops = torch.ops.torchquant
INF, NAN = float("inf"), float("nan")
CL = torch.channels_last


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _same(a, b):
    """Same dtype, shape and bits; NaN where the other has NaN; the sign of zero compared."""
    a, b = a.cpu(), b.cpu()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return (torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
            and torch.equal(torch.signbit(a), torch.signbit(b)))


def _views(t):
    """Non-contiguous views holding the values of t (>= 2-D): transposed in memory, sliced with a
    step (from a tensor twice as wide), and (4-D) channels-last."""
    out = [t.transpose(0, -1).contiguous().transpose(0, -1)]
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    wide[..., ::2] = t
    out.append(wide[..., ::2])
    if t.dim() == 4:
        out.append(t.contiguous(memory_format=CL))
    assert all(not v.is_contiguous() for v in out if v.numel() > 1 and v.shape[-1] > 1)
    return out


def _q(shape, dtype, gen, device="cpu"):
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    return torch.randint(lo, hi, shape, generator=gen).to(dtype).to(device)


def _qp(scale, zp, device="cpu"):
    return (torch.tensor([scale], dtype=torch.float32, device=device),
            torch.tensor([zp], dtype=torch.int32, device=device))


def _dev(t, device):
    """t on device with the same sizes, strides and storage offset (Tensor.to makes a strided
    slice contiguous): a view stays a view there."""
    if not isinstance(t, torch.Tensor) or t.device.type == device:
        return t
    storage = t.untyped_storage()
    flat = torch.empty(0, dtype=t.dtype).set_(storage, 0, (storage.nbytes() // t.element_size(),), (1,))
    return flat.to(device).as_strided(t.shape, t.stride(), t.storage_offset())


def _run(op, device, *args):
    """op(*args) with the tensor arguments (and tensors in list arguments) moved to device as
    views of the same layout; asserts that no argument was modified; the result on the CPU."""
    dargs = [[_dev(u, device) for u in a] if isinstance(a, list) else _dev(a, device) for a in args]
    flat = [u for a in dargs for u in (a if isinstance(a, list) else [a]) if isinstance(u, torch.Tensor)]
    before = [u.clone() for u in flat]
    out = op(*dargs)
    for i, (u, b) in enumerate(zip(flat, before)):
        assert _same(u, b), f"argument {i} (a tensor of shape {tuple(u.shape)}) was modified"
    return tuple(o.cpu() for o in out) if isinstance(out, (tuple, list)) else out.cpu()


# ============================================================ dequantize: non-contiguous q, out dtypes
# The CPU tests feed dequantize only the contiguous output of quantize; CUDA's has a transposed q.
@pytest.mark.parametrize("axis", [None, 0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8])
def test_dequantize_non_contiguous_q_every_out_dtype(isa, device, axis, dtype):
    gen = _gen(10 + (axis or 0) + (dtype == torch.uint8))
    q = _q((3, 37, 5), dtype, gen)
    C = 1 if axis is None else q.shape[axis]
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    scale = torch.rand(C, generator=gen) * 0.1 + 0.001
    zp = torch.randint(lo, hi + 1, (C,), generator=gen, dtype=torch.int32)
    zp[0] = hi  # the largest |q - zp|
    views = [q.transpose(0, 2).contiguous().transpose(0, 2), q.permute(1, 0, 2).contiguous().permute(1, 0, 2),
             _q((3, 37, 10), dtype, gen)[..., ::2], _q((3, 74, 5), dtype, gen)[:, 1::2]]
    for v in views:
        assert not v.is_contiguous()
        for out_dtype in (None, torch.float16, torch.bfloat16, torch.float64):
            got = _run(ops.dequantize, device, v, scale, zp, axis, out_dtype)
            want = reference.dequantize(v.contiguous(), scale, zp, axis, out_dtype)
            assert _same(got, want), (v.stride(), out_dtype)


# ============================================================ fake_quantize_backward: non-contiguous grad
@pytest.mark.parametrize("axis", [None, 1])
def test_fake_quantize_backward_non_contiguous_grad_and_x(isa, device, axis):
    """grad and x given as views (transposed, strided); x holds ties (power-of-two scales) on the
    range's edges, where rounding half to even decides whether the gradient passes (odd zero
    points: x * inv = qmax - zp + 0.5 rounds to qmax, inside; qmin - zp - 0.5 rounds to qmin - 1,
    outside; rounding half up would flip both), saturating values and NaN / Inf; nothing the
    caller passed is modified."""
    gen = _gen(20 + (axis or 0))
    shape = (9, 41)
    C = 1 if axis is None else shape[axis]
    scale = 2.0 ** -torch.randint(1, 6, (C,), generator=gen).float()
    zp = torch.randint(-10, 10, (C,), generator=gen, dtype=torch.int32) * 2 + 1  # odd
    s = scale if axis is None else scale.reshape(1, -1)
    zf = zp.float() if axis is None else zp.float().reshape(1, -1)
    k = torch.randint(-140, 140, shape, generator=gen).float()
    x = (k + 0.5) * s  # ties, many past [qmin, qmax]
    x[1] = ((127 - zf + 0.5) * s).expand(shape[1]) if axis is None else ((127 - zf + 0.5) * s)[0]
    x[2] = ((-128 - zf - 0.5) * s).expand(shape[1]) if axis is None else ((-128 - zf - 0.5) * s)[0]
    x[0, :4] = torch.tensor([NAN, INF, -INF, 1e9])
    g = torch.randn(shape, generator=gen)
    for xv, gv in ((x, _views(g)[0]), (_views(x)[1], _views(g)[1]), (_views(x)[0], g)):
        got = _run(ops.fake_quantize_backward, device, gv, xv, scale, zp, axis, -128, 127)
        want = reference.fake_quantize_backward(gv.contiguous(), xv.contiguous(), scale, zp, axis, -128, 127)
        assert _same(got, want)
    passed = reference.fake_quantize_backward(torch.ones(shape), x, scale, zp, axis, -128, 127)
    assert bool((passed[1] == 1).all()) and bool((passed[2] == 0).all()) and bool((passed[3:] == 0).any())


@pytest.mark.parametrize("axis", [None, 1])
def test_fake_quantize_learnable_views_ties_and_device(isa, device, axis):
    """fake_quantize_learnable and its backward (composites over the fake_quantize kernel and
    ATen) have no CUDA test and no view / tie input: x transposed and strided, ties at
    power-of-two scales, values past the range. Forward and grad_x bit for bit; grad_scale and
    grad_zero_point (sums, whose order may differ) as close as test_quantize_ops.py asks."""
    gen = _gen(27 + (axis or 0))
    shape = (6, 45)
    C = 1 if axis is None else shape[axis]
    scale = 2.0 ** -torch.randint(2, 6, (C,), generator=gen).float()
    zp = torch.randn(C, generator=gen) * 4  # float, rounded by the op
    s = scale if axis is None else scale.reshape(1, -1)
    x = (torch.randint(-160, 160, shape, generator=gen).float() + 0.5) * s
    g = torch.randn(shape, generator=gen)
    for xv in (_views(x)[0], _views(x)[1]):
        y = _run(ops.fake_quantize_learnable, device, xv, scale, zp, axis, -128, 127, 0.5)
        assert _same(y, reference.fake_quantize_learnable(xv.contiguous(), scale, zp, axis, -128, 127))
        gx, gs, gz = _run(ops.fake_quantize_learnable_backward, device, _views(g)[1], xv, scale, zp, axis, -128, 127, 0.5)
        rx, rs, rz = reference.fake_quantize_learnable_backward(g, xv.contiguous(), scale, zp, axis, -128, 127, 0.5)
        # bit for bit, the sign of zero included (grad_x was -0.0 for a negative grad outside
        # the range, where fake_quantize_backward gives +0.0: fixed in csrc/composite.cpp)
        assert _same(gx, rx)
        torch.testing.assert_close(gs, rs, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gz, rz, rtol=1e-5, atol=1e-5)


# ============================================================ quantize_rowwise: empty, views, exact ties
@pytest.mark.parametrize("shape", [(0, 8), (4, 0), (2, 0, 8), (0, 0), (3, 0, 0), (1, 1)])
def test_quantize_rowwise_empty_shapes(isa, device, shape):
    x = torch.randn(shape, generator=_gen(30))
    q, s, z = _run(ops.quantize_rowwise, device, x)
    rq, rs, rz = reference.quantize_rowwise(x)
    assert _same(q, rq) and _same(s, rs) and _same(z, rz)


def _rowwise_tie_rows(gen, rows, K):
    """Rows whose range makes scale = 1/16 exactly (min 0 and max 255/16, or min -8 and max
    127/16), so (k + 0.5) / 16 are exact ties of x * (1 / scale); zero points -128 and 0."""
    k = torch.randint(-128, 127, (rows, K), generator=gen).float()
    x = (k + 0.5) / 16  # inside [-8, 127 / 16]
    x[0::2] = ((k[0::2] + 128) % 255 + 0.5) / 16  # non-negative rows
    x[0::2, 0], x[0::2, 1] = 0.0, 255 / 16
    x[1::2, 0], x[1::2, 1] = -8.0, 127 / 16
    return x


@pytest.mark.parametrize("K", [5, 16, 67, 130])
def test_quantize_rowwise_exact_ties_and_views(isa, device, K):
    """quantize_rowwise's own tests hold no exact ties (their scales are not powers of two) and
    only contiguous input. Rows here tie on half of their elements, given contiguous, transposed
    and strided; then linear_dynamic on the same rows (its fused quantization) against the
    reference."""
    gen = _gen(40 + K)
    x = _rowwise_tie_rows(gen, 7, K)
    rq, rs, rz = reference.quantize_rowwise(x)
    assert torch.equal(rs, torch.full((7,), 1 / 16)) and set(rz.tolist()) == {-128, 0}
    ties = (torch.frac(x * 16).abs() == 0.5)
    assert int(ties.sum()) >= x.numel() // 2
    for v in [x] + _views(x):
        q, s, z = _run(ops.quantize_rowwise, device, v)
        assert _same(q, rq) and _same(s, rs) and _same(z, rz), v.stride()
    w = torch.randint(-128, 128, (9, K), generator=gen, dtype=torch.int8)
    ws = torch.rand(9, generator=gen) * 0.01 + 1e-3
    bias = torch.randn(9, generator=gen)
    wp, cs = ops.pack_weight(w.to(device))
    for v in [x] + _views(x):
        got = _run(ops.linear_dynamic, device, v, wp, cs, ws, bias, False)
        assert _same(got, reference.linear_dynamic(v.contiguous(), w, ws, bias)), v.stride()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("axis", [None, 0, 2])
def test_quantize_family_low_precision_and_double_inputs(isa, device, dtype, axis):
    """quantize / fake_quantize / fake_quantize_backward on float16, bfloat16 and float64 x (and
    grad), per tensor and per channel, given as views: the other files try these dtypes per
    tensor on contiguous input only, and not per ISA. Values are ties at power-of-two scales
    (exact in every dtype), saturating values, NaN and Inf."""
    gen = _gen(25 + (axis or 0))
    shape = (4, 7, 37)
    C = 1 if axis is None else shape[axis]
    scale = 2.0 ** -torch.randint(1, 5, (C,), generator=gen).float()
    zp = torch.randint(-30, 30, (C,), generator=gen, dtype=torch.int32)
    view = [1] * 3
    if axis is not None:
        view[axis] = C
    s = scale.reshape(view)
    k = torch.randint(-150, 150, shape, generator=gen).float()
    x = ((k + 0.5) * s).to(dtype)
    x[0, 0, :3] = torch.tensor([NAN, INF, -INF], dtype=dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    assert bool((torch.frac(x.double() / s.double()).abs() == 0.5).sum() > x.numel() // 2)
    for xv, gv in ((_views(x)[0], _views(g)[1]), (_views(x)[1], g)):
        q = _run(ops.quantize, device, xv, scale, zp, axis, -128, 127, torch.int8)
        assert _same(q, reference.quantize(xv.contiguous(), scale, zp, axis, -128, 127, torch.int8))
        fq = _run(ops.fake_quantize, device, xv, scale, zp, axis, -128, 127)
        assert fq.dtype == dtype and _same(fq, reference.fake_quantize(xv.contiguous(), scale, zp, axis, -128, 127))
        gx = _run(ops.fake_quantize_backward, device, gv, xv, scale, zp, axis, -128, 127)
        assert _same(gx, reference.fake_quantize_backward(gv.contiguous(), xv.contiguous(), scale, zp, axis, -128, 127))


# ============================================================ elementwise: ties and saturation of the scalar ops
@pytest.mark.parametrize("op", ["add_scalar", "mul_scalar"])
@pytest.mark.parametrize("dt", [torch.uint8, torch.int8])
def test_scalar_ops_exact_ties_and_saturation(isa, device, op, dt):
    """The scalar ops' tests use out_scale 0.03 (no exact ties). Here y / out_scale lands on .5
    for every element (add_scalar) or every odd code (mul_scalar), and a tiny out_scale
    saturates both ends; odd sizes past the vector width; transposed and strided input, not
    modified."""
    gen = _gen(50 + (dt == torch.uint8))
    z = 7 if dt == torch.uint8 else -3
    a = _q((3, 67), dt, gen)
    a[0, :2] = torch.tensor([0, 255] if dt == torch.uint8 else [-128, 127], dtype=dt)
    cases = {"add_scalar": [(0.5, 0.25, 0.5), (0.5, -0.75, 0.5), (0.5, 0.25, 1e-3)],
             "mul_scalar": [(0.5, 0.5, 0.5), (0.25, -2.0, 1.0), (0.5, 3.0, 1e-3)]}[op]
    for a_scale, other, out_scale in cases:
        for out_dt in (None, torch.int8, torch.uint8):
            oz = 0 if (out_dt or dt) == torch.int8 else 128
            for v in (a, a.t().contiguous().t(), _q((3, 134), dt, gen)[:, ::2]):
                args = (v, *_qp(a_scale, z), other, *_qp(out_scale, oz), out_dt)
                want = getattr(reference, op)(v.contiguous(), *args[1:])
                got = _run(getattr(ops, op), device, *args)
                assert _same(got, want), (a_scale, other, out_scale, out_dt, v.stride())
        if out_scale == 0.5:
            y = (a.int() - z).float() * a_scale
            y = y + other if op == "add_scalar" else y * other
            assert bool((torch.frac(y / out_scale).abs() == 0.5).any()), "the data must hold ties"
        if out_scale == 1e-3:
            lo, hi = (-128, 127) if dt == torch.int8 else (0, 255)
            got = getattr(reference, op)(a, *_qp(a_scale, z), other, *_qp(out_scale, oz), None).int()
            assert bool((got == lo).any()) and bool((got == hi).any())


@pytest.mark.parametrize("op", ["add_scalar", "mul_scalar"])
@pytest.mark.parametrize("other", [INF, -INF, NAN, 1e39, -1e300])
def test_scalar_ops_non_finite_other(isa, device, op, other):
    """A non-finite scalar (or one past float32's range) gives y = +-Inf or NaN: quantized as
    the contract's quantize formula does (saturated, or the zero point for NaN), as the
    reference does; a is not modified."""
    a = _q((2, 37), torch.uint8, _gen(55))
    a[0, 0] = 9  # a - zero_point = 0: 0 * inf is NaN for mul_scalar
    for out_dt, oz in ((None, 100), (torch.int8, -5)):
        args = (a, *_qp(0.25, 9), other, *_qp(0.1, oz), out_dt)
        got = _run(getattr(ops, op), device, *args)
        assert _same(got, getattr(reference, op)(*args)), out_dt


def test_elementwise_split_over_threads(isa):
    """Large enough for TensorIterator to split the ops over two threads (the other files' inputs
    are below the grain): broadcast, channels-last and strided operands, ties and saturation; the
    same bits on one and two threads, and as the reference."""
    gen = _gen(56)
    a = _q((2, 40, 45, 47), torch.uint8, gen).contiguous(memory_format=CL)
    b = _q((1, 40, 1, 47), torch.int8, gen)
    c = _q((2, 40, 45, 94), torch.int8, gen)[..., ::2]
    sa, za = _qp(0.5, 100)
    sb, zb = _qp(0.25, -3)
    so, zo = _qp(0.5, 2)
    calls = [
        (ops.add, reference.add, (a, sa, za, b, sb, zb, so, zo, False, None)),
        (ops.mul, reference.mul, (a, sa, za, c, sb, zb, *_qp(0.01, 2), True, torch.int8)),
        (ops.add_scalar, reference.add_scalar, (c, sb, zb, 0.125, so, zo, torch.uint8)),
        (ops.mul_scalar, reference.mul_scalar, (a, sa, za, -0.5, *_qp(0.125, 0), torch.int8)),
        (ops.cat, reference.cat, ([a, c], [sa, sb], [za, zb], 1, so, zo, None)),
    ]
    for op, ref, args in calls:
        with num_threads(1):
            one = op(*args)
        with num_threads(2):
            two = op(*args)
        plain = [t.contiguous() if isinstance(t, torch.Tensor) else t for t in args]
        if isinstance(args[0], list):
            plain[0] = [t.contiguous() for t in args[0]]
        with num_threads(1):
            want = ref(*plain)
        assert _same(one, two) and _same(two, want), op


# ============================================================ elementwise: empty sizes, broadcasting views, inputs untouched
# (a's shape, b's shape): empty along each dimension, an empty operand broadcast against a
# non-empty one, 0-d operands; the last pair does not broadcast (torch's error).
EMPTY_PAIRS = [((0, 3, 5), (0, 3, 5)), ((2, 0, 5), (2, 0, 5)), ((2, 3, 0), (2, 3, 0)), ((0, 3, 5), (1, 3, 1)),
               ((1, 3, 5), (0, 1, 1)), ((2, 1, 5), (2, 0, 1)), ((), ()), ((4, 1), ()), ((2, 3, 5), (0, 3, 5))]


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("shapes", EMPTY_PAIRS, ids=str)
def test_binary_empty_along_each_dim_and_scalars(isa, device, op, shapes):
    gen = _gen(60)
    sa, sb = shapes
    try:
        want_shape = torch.broadcast_shapes(sa, sb)
    except RuntimeError:
        want_shape = None
    a, b = _q(sa, torch.uint8, gen), _q(sb, torch.int8, gen)
    args = (a, *_qp(0.5, 3), b, *_qp(0.25, -2), *_qp(0.5, 10), True, None)
    if want_shape is None:
        with pytest.raises(RuntimeError, match="size of tensor a"):
            _run(getattr(ops, op), device, *args)
        return
    got = _run(getattr(ops, op), device, *args)
    assert got.shape == want_shape and _same(got, getattr(reference, op)(*args))


@pytest.mark.parametrize("op", ["add", "mul"])
def test_binary_broadcast_views_ties_inputs_untouched(isa, device, op):
    """Broadcast operands given as views (odd sizes: 33 and 67 past the vector width), half
    scales (ties), a tiny out_scale (saturation), ReLU; neither input is modified."""
    gen = _gen(61)
    pairs = [((3, 5, 67), (5, 1)), ((3, 1, 33), (3, 7, 33)), ((2, 16, 9, 11), (1, 16, 1, 1)), ((33,), (4, 33))]
    for sa, sb in pairs:
        a, b = _q(sa, torch.uint8, gen), _q(sb, torch.int8, gen)
        for av in [a] + (_views(a) if a.dim() > 1 else []):
            for bv in [b] + (_views(b)[:1] if b.dim() > 1 else []):
                for (sa_, sb_, so), relu in (((0.5, 0.25, 0.5), False), ((0.5, 0.5, 1e-3), True)):
                    args = (av, *_qp(sa_, 5), bv, *_qp(sb_, -3), *_qp(so, 7), relu, None)
                    got = _run(getattr(ops, op), device, *args)
                    want = getattr(reference, op)(av.contiguous(), *args[1:3], bv.contiguous(), *args[4:])
                    assert _same(got, want), (sa, sb, av.stride(), bv.stride(), so)


def test_cat_empty_inputs_views_and_untouched(isa, device):
    """cat of all-empty inputs, inputs empty along the cat dim and along another dim, views (a
    transposed, a strided, a channels-last input), ties; the inputs are not modified."""
    gen = _gen(62)
    s1, z1 = _qp(0.5, 3)
    s2, z2 = _qp(0.25, -4)
    so, zo = _qp(0.5, 1)
    x = _q((2, 6, 5, 7), torch.uint8, gen)
    y = _q((2, 3, 5, 7), torch.int8, gen)
    cases = [
        ([x[:0, :3], y[:0]], 0), ([x[:0], y[:0]], 1),           # every input empty
        ([x, y[:, :0], y], 1), ([x[:, :0], y[:, :0]], 1),       # empty along the cat dim
        ([x[:, :, :0], y[:, :, :0]], 1),                        # empty along another dim
        ([x.contiguous(memory_format=CL), _views(y)[0], _views(y)[1]], 1),
        ([x.transpose(2, 3), y.transpose(2, 3)], -3),
    ]
    for xs, dim in cases:
        scales = [s1 if t.dtype == torch.uint8 else s2 for t in xs]
        zps = [z1 if t.dtype == torch.uint8 else z2 for t in xs]
        for out_dt in (None, torch.int8):
            got = _run(ops.cat, device, xs, scales, zps, dim, so, zo, out_dt)
            want = reference.cat([t.contiguous() for t in xs], scales, zps, dim, so, zo, out_dt)
            assert _same(got, want), ([t.shape for t in xs], dim)


# ============================================================ GRU / LSTM cell updates
def _close_to_ref(got, want):
    got = got.cpu()
    bound = reference.CELL_UPDATE_ATOL + reference.CELL_UPDATE_RTOL * want.abs()
    return got.shape == want.shape and bool(((got - want).abs() <= bound).all())


@pytest.mark.parametrize("B,H", [(3, 13), (2, 0), (0, 4), (5, 17)])
def test_gru_cell_update_views_empty_and_untouched(isa, device, B, H):
    """gru_cell_update's tests have contiguous inputs only and no H = 0 (lstm_cell_update's have
    both): transposed / strided igates, hgates and h, large pre-activations (saturated gates);
    within the documented bound of the reference; nothing modified."""
    gen = _gen(70 + B + H)
    ig = torch.randn(B, 3 * H, generator=gen) * 8
    hg = torch.randn(B, 3 * H, generator=gen) * 8
    h = torch.randn(B, H, generator=gen)
    if B and H:
        ig[0, :3] = torch.tensor([200.0, -200.0, 0.0])
    want = reference.gru_cell_update(ig, hg, h)
    for igv, hgv, hv in ((ig, hg, h), (_views(ig)[0], _views(hg)[1], _views(h)[0]),
                         (_views(ig)[1], hg, _views(h)[1])):
        got = _run(ops.gru_cell_update, device, igv, hgv, hv)
        assert _close_to_ref(got, want), (igv.stride(), hgv.stride(), hv.stride())


def test_lstm_cell_update_on_device_views(device):
    """lstm_cell_update with views on the device fixture (test_cuda_sequence.py has contiguous
    inputs only)."""
    gen = _gen(75)
    ig, hg = torch.randn(5, 4 * 19, generator=gen) * 6, torch.randn(5, 4 * 19, generator=gen) * 6
    c = torch.randn(5, 19, generator=gen) * 3
    rh, rc = reference.lstm_cell_update(ig, hg, c)
    for igv, hgv, cv in ((_views(ig)[0], _views(hg)[1], _views(c)[0]), (ig, hg, c)):
        h2, c2 = _run(ops.lstm_cell_update, device, igv, hgv, cv)
        assert _close_to_ref(h2, rh) and _close_to_ref(c2, rc)


@pytest.mark.parametrize("H", [3, 37])
def test_cell_updates_split_over_threads(isa, H):
    """Many rows (the batch is split over threads in tasks of 8192 units): one and two threads
    give the same bits, within the reference's bound."""
    gen = _gen(78 + H)
    B = 40000 // H
    ig, hg = torch.randn(B, 4 * H, generator=gen) * 5, torch.randn(B, 4 * H, generator=gen) * 5
    c = torch.randn(B, H, generator=gen) * 2
    with num_threads(1):
        one = ops.lstm_cell_update(ig, hg, c) + (ops.gru_cell_update(ig[:, :3 * H], hg[:, :3 * H], c),)
    with num_threads(2):
        two = ops.lstm_cell_update(ig, hg, c) + (ops.gru_cell_update(ig[:, :3 * H], hg[:, :3 * H], c),)
    assert all(torch.equal(x, y) for x, y in zip(one, two))
    rh, rc = reference.lstm_cell_update(ig, hg, c)
    assert _close_to_ref(two[0], rh) and _close_to_ref(two[1], rc)
    assert _close_to_ref(two[2], reference.gru_cell_update(ig[:, :3 * H], hg[:, :3 * H], c))


# ============================================================ the layer ops: views, untouched inputs
def _dyn_linear(gen, n, k, device):
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
    ws = torch.rand(n, generator=gen) * 0.01 + 1e-3
    bias = torch.randn(n, generator=gen)
    wp, cs = ops.pack_weight(w.to(device))
    return wp, cs, ws.to(device), bias.to(device)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_ops_views_equal_the_step_loop(isa, device, mode, reverse):
    """lstm_layer_dynamic / gru_layer_dynamic with non-contiguous igates, h0 and c0 (a batch-first
    transposed sequence, strided states): bit-identical to the documented loop of
    linear_dynamic + cell update calls, and igates / h0 / c0 are not modified."""
    gen = _gen(80 + reverse)
    T, B, H = 5, 3, 11
    G = 4 if mode == "LSTM" else 3
    Hout = 7 if mode == "LSTM" else H  # the LSTM with a projection to 7
    hh = _dyn_linear(gen, G * H, Hout, device)
    hr = _dyn_linear(gen, Hout, H, device) if mode == "LSTM" else None
    ig_bf = torch.randn(B, T, G * H, generator=gen) * 3
    ig = _dev(ig_bf.transpose(0, 1), device)  # [T, B, G*H], not contiguous
    h0 = _dev(_views(torch.randn(B, Hout, generator=gen))[1], device)
    c0 = _dev(torch.randn(H, B, generator=gen).t(), device)
    assert not ig.is_contiguous() and not h0.is_contiguous() and not c0.is_contiguous()
    before = [t.clone() for t in (ig, h0, c0)]
    # the loop, step by step (csrc/rnn_layer.cpp's contract)
    h, c, hs = h0, c0, [None] * T
    for t in (range(T - 1, -1, -1) if reverse else range(T)):
        hgates = ops.linear_dynamic(h, *hh, False)
        if mode == "LSTM":
            h, c = ops.lstm_cell_update(ig[t], hgates, c)
            h = ops.linear_dynamic(h, *hr[:3], None, False)
        else:
            h = ops.gru_cell_update(ig[t], hgates, h)
        hs[t] = h
    if mode == "LSTM":
        out, hT, cT = ops.lstm_layer_dynamic(ig, h0, c0, *hh, *hr[:3], reverse)
        assert torch.equal(cT, c)
    else:
        out, hT = ops.gru_layer_dynamic(ig, h0, *hh, reverse)
    assert torch.equal(out, torch.stack(hs)) and torch.equal(hT, h)
    assert all(torch.equal(t, b) for t, b in zip((ig, h0, c0), before))  # nothing modified


# The layer ops check their own arguments before the time loop (an empty sequence included),
# naming the layer's argument rather than one step's.
def _lstm_weights(H, K):
    wp, cs = ops.pack_weight(torch.ones(4 * H, K, dtype=torch.int8))
    return wp, cs, torch.ones(4 * H), None, None, None, None


def test_layer_ops_check_their_arguments_when_the_sequence_is_empty():
    with pytest.raises(RuntimeError, match="c0"):
        ops.lstm_layer_dynamic(torch.randn(0, 3, 16), torch.randn(3, 4), torch.randn(7, 9), *_lstm_weights(4, 4), False)
    with pytest.raises(RuntimeError, match="igates"):
        ops.gru_layer_dynamic(torch.randn(0, 3, 13), torch.randn(3, 4), *ops.pack_weight(torch.ones(12, 4, dtype=torch.int8)),
                              torch.ones(12), None, False)


def test_layer_op_error_names_the_layer_argument():
    with pytest.raises(RuntimeError, match="'c0'"):
        ops.lstm_layer_dynamic(torch.randn(2, 3, 16), torch.randn(3, 4), torch.randn(3, 5), *_lstm_weights(4, 4), False)


def test_layer_ops_refuse_non_float32_states():
    with pytest.raises(RuntimeError, match="argument 'h0' must be a float32 tensor, got Double"):
        ops.lstm_layer_dynamic(torch.randn(2, 3, 16), torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4),
                               *_lstm_weights(4, 4), False)
    with pytest.raises(RuntimeError, match="argument 'h0' must be a float32 tensor"):
        ops.gru_layer_dynamic(torch.randn(2, 3, 12), torch.randn(3, 4, dtype=torch.float64),
                              *ops.pack_weight(torch.ones(12, 4, dtype=torch.int8)), torch.ones(12), None, False)
    with pytest.raises(RuntimeError, match="'hh_col_sums' and 'hh_scale' must have 16 elements"):
        ops.lstm_layer_dynamic(torch.randn(0, 3, 16), torch.randn(3, 4), torch.randn(3, 4),
                               *ops.pack_weight(torch.ones(12, 4, dtype=torch.int8)), torch.ones(12), None, None, None,
                               None, False)


# ============================================================ conv / conv_transpose: packing from views, Cin = 0
CONV_PACK_CASES = [((6, 4, 3, 3), 1), ((8, 2, 3, 3), 2), ((9, 1, 3, 3), 9), ((5, 3, 4), 1), ((4, 3, 2, 3, 3), 1),
                   ((17, 3, 7, 7), 1)]


def _weight_views(w):
    views = [w.transpose(0, 1).contiguous().transpose(0, 1)]
    if w.dim() == 4:
        views.append(w.contiguous(memory_format=CL))
    wide = torch.zeros(*w.shape[:-1], 2 * w.shape[-1], dtype=w.dtype)
    wide[..., 1::2] = w
    views.append(wide[..., 1::2])
    return [v for v in views if not v.is_contiguous()]


@pytest.mark.parametrize("w_shape,groups", CONV_PACK_CASES, ids=str)
def test_pack_conv_weight_from_views_and_conv(isa, device, w_shape, groups):
    """pack_conv_weight has only been given contiguous weights; a module's weight may be
    channels-last or a view. The packing of a view equals that of a contiguous copy, the weight
    is not modified, and conv_int8 with it equals the reference."""
    gen = _gen(90 + sum(w_shape))
    w = torch.randint(-128, 128, w_shape, generator=gen, dtype=torch.int8)
    want_p, want_cs = ops.pack_conv_weight(w.to(device), groups)
    cin = w_shape[1] * groups
    nsp = len(w_shape) - 2
    x = torch.randint(0, 256, (2, cin, *([7] * nsp)), generator=gen, dtype=torch.uint8)
    xs, xz = _qp(0.05, 128)
    ws = torch.rand(w_shape[0], generator=gen) * 0.01 + 1e-3
    for v in _weight_views(w):
        wp, cs = _run(ops.pack_conv_weight, device, v, groups)
        assert torch.equal(wp, want_p.cpu()) and torch.equal(cs, want_cs.cpu()), v.stride()
        k = list(w_shape[2:])
        got = _run(ops.conv_int8, device, x, xs, xz, wp, cs, ws, None, k, [1], [1], [1], groups, None, None, False,
                   None)
        assert _same(got, reference.conv_int8(x, xs, xz, w, ws, None, 1, 1, 1, groups))


def test_pack_weight_leaves_its_input_untouched(isa, device):
    """pack_weight's layout tests (test_gemm.py) check the packing of views but not the view."""
    gen = _gen(93)
    for w in (torch.randint(-128, 128, (33, 70), generator=gen, dtype=torch.int8),
              torch.randint(-128, 128, (70, 33), generator=gen, dtype=torch.int8).t(),
              torch.randint(-128, 128, (33, 140), generator=gen, dtype=torch.int8)[:, ::2]):
        _run(ops.pack_weight, device, w)  # asserts w unchanged


@pytest.mark.parametrize("w_shape,groups", [((4, 6, 3, 3), 1), ((6, 2, 3, 3), 3), ((3, 5, 4), 1), ((4, 3, 2, 2, 2), 2)],
                         ids=str)
def test_pack_conv_transpose_weight_from_views_and_conv(isa, device, w_shape, groups):
    gen = _gen(95 + sum(w_shape))
    w = torch.randint(-128, 128, w_shape, generator=gen, dtype=torch.int8)
    want_p, want_cs = ops.pack_conv_transpose_weight(w.to(device), groups)
    cin, cout = w_shape[0], w_shape[1] * groups
    nsp = len(w_shape) - 2
    x = torch.randint(-128, 128, (2, cin, *([5] * nsp)), generator=gen, dtype=torch.int8)
    xs, xz = _qp(0.05, -3)
    ws = torch.rand(cout, generator=gen) * 0.01 + 1e-3
    for v in _weight_views(w):
        wp, cs = _run(ops.pack_conv_transpose_weight, device, v, groups)
        assert torch.equal(wp, want_p.cpu()) and torch.equal(cs, want_cs.cpu()), v.stride()
        k = list(w_shape[2:])
        got = _run(ops.conv_transpose_int8, device, x, xs, xz, wp, cs, ws, None, k, [2], [1], [1], [1], groups, None,
                   None, False, None)
        assert _same(got, reference.conv_transpose_int8(x, xs, xz, w, ws, None, 2, 1, 1, 1, groups))


@pytest.mark.parametrize("nsp", [1, 2, 3])
def test_conv_no_input_channels_is_the_bias(isa, device, nsp):
    """conv_int8 with Cin = 0 (conv_transpose_int8's test has this case, conv_int8's not): every
    output is the bias (relu applied), requantized for a quantized out_dtype; as the reference."""
    gen = _gen(97 + nsp)
    x = torch.zeros(2, 0, *([6] * nsp), dtype=torch.uint8)
    w = torch.zeros(5, 0, *([3] * nsp), dtype=torch.int8)
    ws = torch.rand(5, generator=gen) * 0.01 + 1e-3
    bias = torch.randn(5, generator=gen)
    xs, xz = _qp(0.1, 3)
    wp, cs = ops.pack_conv_weight(w.to(device), 1)
    pixels = 2 * 6 ** nsp
    for out_dtype, relu, os_, oz in ((None, False, None, None), (None, True, None, None),
                                     (torch.int8, False, *_qp(0.25, 1)), (torch.uint8, True, *_qp(0.01, 128))):
        got = _run(ops.conv_int8, device, x, xs, xz, wp, cs, ws, bias, [3] * nsp, [1], [1], [1], 1, os_, oz, relu,
                   out_dtype)
        # reference.conv_int8 cannot say it (torch's conv of 0 input channels returns 0 output
        # channels): the epilogue of zero sums, which is linear_int8's with K = 0.
        rows = reference.linear_int8(torch.zeros(pixels, 0, dtype=torch.uint8), xs, xz, w.reshape(5, 0), ws, bias,
                                     os_, oz, relu, out_dtype)
        want = rows.reshape(2, *([6] * nsp), 5).movedim(-1, 1)
        assert got.shape == (2, 5, *([6] * nsp)) and _same(got, want)


# Geometry values whose int64 shape arithmetic overflowed: conv_int8 with dilation 2^63 - 1
# returned a 10 x 10 output for an 8 x 8 input without padding (and the AVX-512 VNNI depthwise
# kernel then crashed the process with a segmentation fault); conv_transpose_int8 with
# kernel_size [2^32, 2^32] divided by a wrapped zero (SIGFPE); max_pool_int8 with dilation
# 2^63 - 1 returned a 10 x 10 output of zeros. Run in a fresh process, so that a crash is a
# failure of this test and not the end of the run.
_OVERFLOW_SCRIPT = r"""
import sys, torch, torchquant
ops = torch.ops.torchquant
device, isas = sys.argv[1], sys.argv[2].split(",")
M = 2 ** 63 - 1
x = torch.randint(0, 255, (1, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)).to(device)
s, z = torch.tensor([0.1], device=device), torch.tensor([3], dtype=torch.int32, device=device)
w = ops.pack_conv_weight(torch.ones(4, 3, 3, 3, dtype=torch.int8, device=device))
wd = ops.pack_conv_weight(torch.ones(3, 1, 3, 3, dtype=torch.int8, device=device), 3)
wt = ops.pack_conv_transpose_weight(torch.ones(3, 4, 3, 3, dtype=torch.int8, device=device))
ws4, ws3 = torch.ones(4, device=device), torch.ones(3, device=device)
conv = lambda wp, ws, k, st, pd, dl, g=1: ops.conv_int8(x, s, z, *wp, ws, None, k, st, pd, dl, g, None, None, False, None)
convt = lambda k, st, pd, dl: ops.conv_transpose_int8(x, s, z, *wt, ws4, None, k, st, pd, [0], dl, 1, None, None, False, None)
cases = {
    "conv_dilation": lambda: conv(w, ws4, [3, 3], [1], [0], [M]),
    "conv_depthwise_dilation": lambda: conv(wd, ws3, [3, 3], [1], [0], [M], 3),
    "conv_dilation_2^62": lambda: conv(w, ws4, [3, 3], [1], [0], [2 ** 62]),
    "conv_padding": lambda: conv(w, ws4, [3, 3], [1], [2 ** 62], [1]),
    "conv_taps": lambda: conv(w, ws4, [2 ** 32, 2 ** 32], [1], [2 ** 32], [1]),
    "conv_transpose_dilation": lambda: convt([3, 3], [1], [0], [M]),
    "conv_transpose_stride": lambda: convt([3, 3], [2 ** 62], [0], [1]),
    "conv_transpose_taps": lambda: convt([2 ** 32, 2 ** 32], [1], [0], [1]),
    "max_pool_dilation": lambda: ops.max_pool_int8(x, [3, 3], [1, 1], [0], [M]),
    "max_pool_stride": lambda: ops.max_pool_int8(x, [3, 3], [2 ** 31]),
    "avg_pool_kernel": lambda: ops.avg_pool_int8(x, z, [2 ** 40, 1], [1], [0], True),
}
for isa in isas:
    if isa != "-":
        torchquant.set_cpu_isa(isa)
    for name, call in cases.items():
        try:
            y = call()
            print(isa, name, "returned", tuple(y.shape), flush=True)
        except RuntimeError as e:
            print(isa, name, "error", str(e).splitlines()[0], flush=True)
"""

_OVERFLOW_WANT = {
    "conv_dilation": r"argument 'dilation' is too large",
    "conv_depthwise_dilation": r"argument 'dilation' is too large",
    "conv_dilation_2^62": r"argument 'dilation' is too large",
    "conv_padding": r"argument 'padding' is too large",
    "conv_taps": r"argument 'kernel_size' must hold fewer than 2\^63 taps",
    "conv_transpose_dilation": r"would have a size past int64 .*'dilation' is too large",
    "conv_transpose_stride": r"would have a size past int64 .*'stride'",
    "conv_transpose_taps": r"argument 'kernel_size' must hold fewer than 2\^63 taps",
    "max_pool_dilation": r"max_pool2d: argument 'dilation' must hold values below 2\^31",
    "max_pool_stride": r"max_pool2d: argument 'stride' must hold values below 2\^31",
    "avg_pool_kernel": r"avg_pool2d: argument 'kernel_size' must hold values below 2\^31",
}


def test_geometry_overflowing_int64_is_an_error(device):
    import re
    import subprocess
    import sys

    from conftest import SUPPORTED_ISAS
    isas = ",".join(SUPPORTED_ISAS) if device == "cpu" else "-"
    r = subprocess.run([sys.executable, "-c", _OVERFLOW_SCRIPT, device, isas], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, f"the process died (exit code {r.returncode}):\n{r.stdout}\n{r.stderr[-2000:]}"
    lines = r.stdout.splitlines()
    assert len(lines) == len(_OVERFLOW_WANT) * len(isas.split(",")), r.stdout
    for line in lines:
        isa, name, kind, rest = line.split(" ", 3)
        assert kind == "error" and re.search(_OVERFLOW_WANT[name], rest), line


def test_large_but_valid_geometry_still_matches_the_reference(isa, device):
    """The overflow checks reject no geometry whose arithmetic fits: a stride of 2^62 (one output
    pixel), dilated kernels reaching across the padded input, pooling strides of 2^31 - 1."""
    gen = _gen(99)
    x = torch.randint(0, 256, (2, 3, 8, 8), generator=gen, dtype=torch.uint8)
    w = torch.randint(-128, 128, (4, 3, 3, 3), generator=gen, dtype=torch.int8)
    xs, xz = _qp(0.05, 100)
    ws = torch.rand(4, generator=gen) * 0.01 + 1e-3
    wp, cs = ops.pack_conv_weight(w.to(device))
    for st, pd, dl in (([2 ** 62], [1], [1]), ([1], [0], [3]), ([5], [2], [5])):
        got = _run(ops.conv_int8, device, x, xs, xz, wp, cs, ws, None, [3, 3], st, pd, dl, 1, None, None, False, None)
        assert _same(got, reference.conv_int8(x, xs, xz, w, ws, None, st, pd, dl, 1)), (st, pd, dl)
    big = 2 ** 31 - 1
    for args in (([3, 3], [big], [1]), ([3, 3], [1, big], [1], [1], True), ([2, 2], [1], [0], [7])):
        got = _run(ops.max_pool_int8, device, x, *args)
        assert _same(got, reference.max_pool_int8(x, *args)), args
    got = _run(ops.avg_pool_int8, device, x, xz, [3, 3], [big], [1], True)
    assert _same(got, reference.avg_pool_int8(x, xz, [3, 3], [big], [1], True))


# ============================================================ int4: packing from views, untouched inputs
def test_int4_pack_weight_from_views_and_inputs_untouched(isa, device):
    """int4_pack_weight of non-contiguous qweight / scale / zero_point (e.g. slices of a bigger
    checkpoint tensor) packs the same as contiguous copies; linear_int4 on a strided x equals
    the oracle (CPU: bit for bit; CUDA: within the documented bound); nothing is modified."""
    gen = _gen(100)
    N, K, gs = 19, 70, 32
    G = fmt.num_groups(K, gs)
    q = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    qw = fmt.pack_int4(q)
    scale = torch.rand(N, G, generator=gen) * 0.02 + 1e-3
    zp = torch.randint(0, 16, (N, G), generator=gen, dtype=torch.uint8)
    want = _run(ops.int4_pack_weight, device, qw, scale, zp, K, gs)
    qw_v = torch.zeros(N, 2 * qw.shape[1], dtype=torch.uint8)
    qw_v[:, ::2] = qw
    qw_v = qw_v[:, ::2]
    scale_v, zp_v = scale.t().contiguous().t(), zp.t().contiguous().t()
    got = _run(ops.int4_pack_weight, device, qw_v, scale_v, zp_v, K, gs)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    x = (torch.randn(3, 2 * K, generator=gen) * 3)[:, ::2]
    assert not x.is_contiguous()
    bias = torch.randn(N, generator=gen)
    y = _run(ops.linear_int4, device, x, *got, bias, K, N, gs)
    if device == "cpu":
        assert _same(y, ref4.linear_int4(x.contiguous(), qw, scale, zp, bias, K, gs))
    else:
        exact = ref4.linear_int4_dequant(x, qw, scale, zp, bias, K, gs)
        bound = ref4.error_bound(x, qw, scale, zp, K, gs, cpu=False)
        assert bool(((y.cpu().double() - exact).abs() <= bound).all())


@pytest.mark.parametrize("K,gs", [(67, 32), (130, 64)])
def test_linear_int4_activation_ties(isa, device, K, gs):
    """The int4 CPU path quantizes x per row to int8 (the quantize_rowwise kernels); test_int4.py's
    'ties' are ties of the integer grid, not of the row's scale. Rows with scale 1/16 make half
    of x exact ties: bit for bit the oracle on the CPU, within the documented bound on CUDA."""
    gen = _gen(105 + K)
    N = 21
    G = fmt.num_groups(K, gs)
    qw = fmt.pack_int4(torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8))
    scale = torch.rand(N, G, generator=gen) * 0.02 + 1e-3
    zp = torch.randint(0, 16, (N, G), generator=gen, dtype=torch.uint8)
    x = _rowwise_tie_rows(gen, 6, K)
    packed = _run(ops.int4_pack_weight, device, qw, scale, zp, K, gs)
    for v in (x, _views(x)[0]):
        y = _run(ops.linear_int4, device, v, *packed, None, K, N, gs)
        if device == "cpu":
            assert _same(y, ref4.linear_int4(x, qw, scale, zp, None, K, gs))
        else:
            exact = ref4.linear_int4_dequant(x, qw, scale, zp, None, K, gs)
            bound = ref4.error_bound(x, qw, scale, zp, K, gs, cpu=False)
            assert bool(((y.cpu().double() - exact).abs() <= bound).all())


# ============================================================ observers: views, other dtypes, untouched
def _obs_data(shape, gen, inf=True):
    """Random floats with NaN and -0.0 sprinkled in (and +-Inf, rarely: where they are the
    extremes, a kernel that reads the wrong elements gives the right answer)."""
    x = torch.randn(shape, generator=gen) * 3
    kind = torch.randint(0, 400, shape, generator=gen)
    x = torch.where(kind < 12, torch.full(shape, NAN), x)
    x = torch.where(kind == 12, torch.full(shape, -0.0), x)
    if inf:
        x = torch.where(kind == 13, torch.full(shape, INF), x)
        x = torch.where(kind == 14, torch.full(shape, -INF), x)
    return x


@pytest.mark.parametrize("axis", [None, 0, 1, 2])
def test_aminmax_views_and_dtypes(isa, device, axis):
    """aminmax is tested on contiguous float32 only (observe_minmax_ has views and dtypes):
    transposed, strided and channels-last-like views, float64 / float16 / bfloat16, against the
    reference; the input is not modified."""
    gen = _gen(110 + (axis or 0))
    base = _obs_data((5, 37, 9), gen, inf=False)
    base[1, 3, 4], base[2, 30, 7] = INF, -INF  # one channel of each axis sees an infinity
    views = [base.transpose(0, 2).contiguous().transpose(0, 2), base.permute(1, 0, 2).contiguous().permute(1, 0, 2),
             _obs_data((5, 37, 18), gen, inf=False)[..., ::2], base.double(), base.half(), base.bfloat16(),
             base.transpose(1, 2).contiguous().transpose(1, 2).half()]
    for v in views:
        mn, mx = _run(ops.aminmax, device, v, axis)
        rmn, rmx = reference.aminmax(v.contiguous(), axis)
        assert _same(mn, rmn) and _same(mx, rmx), (v.dtype, v.stride())


def test_histogram_views_dtypes_and_untouched(isa, device):
    """histogram_ on the CPU has been given contiguous float32 x only: transposed and strided x,
    float64 / float16 / bfloat16, across range growth; x is not modified; every finite value is
    counted once."""
    gen = _gen(120)
    state = (torch.zeros(97), torch.tensor(INF), torch.tensor(-INF), torch.zeros(2, dtype=torch.int64))
    got = tuple(t.clone().to(device) for t in state)
    want = tuple(t.clone() for t in state)
    finite = 0
    for i, scale in enumerate((1.0, 3.0, 0.5, 7.0, 2.0)):
        base = _obs_data((33, 21), gen) * scale
        v = [base.t().contiguous().t(), (_obs_data((33, 42), gen) * scale)[:, ::2], base.double(), base.half(),
             base.bfloat16()][i]
        xv = _dev(v, device)
        before = xv.clone()
        ops.histogram_(*got, xv)
        reference.histogram_(*want, v.contiguous())
        assert all(_same(g, w) for g, w in zip(got, want)), (i, v.dtype, v.stride())
        assert _same(xv, before)
        finite += int(torch.isfinite(v.float()).sum())
    assert float(got[0].sum()) == finite


# ============================================================ embedding_bag_rowwise: views, int32 offsets, untouched
@pytest.mark.parametrize("bits", [8, 4])
def test_embedding_bag_views_offsets_and_untouched(isa, device, bits):
    """The packed table as a view (rows of a bigger table, taken with a step), strided
    per_sample_weights and offsets, int32 indices with int64 offsets and the reverse: the same
    bits as the reference on contiguous copies; nothing passed in is modified."""
    gen = _gen(130 + bits)
    dim, rows = 37, 40
    data = (dim * bits + 7) // 8
    q = torch.randint(0, 256, (2 * rows, data), generator=gen, dtype=torch.uint8)
    s = torch.exp(torch.empty(2 * rows).uniform_(-5, 1, generator=gen))
    z = torch.randn(2 * rows, generator=gen) * 20
    big = pack_rowwise(q, s, z, bits, dim)
    table = big[::2]
    assert not table.is_contiguous()
    idx = torch.randint(0, rows, (60,), generator=gen)
    off = torch.tensor([0, 0, 7, 8, 30, 59])
    psw = torch.randn(120, generator=gen)[::2]

    def strided(t):  # t's values, every other element of a tensor twice as long
        return torch.stack([t, t], 1)[:, 1]

    idx_v, off_v = strided(idx), strided(off)
    assert not psw.is_contiguous() and not off_v.is_contiguous() and not idx_v.is_contiguous()
    cases = [(table, idx, off, 0, None), (table, idx, off, 0, psw), (big[1::2], idx_v, off_v, 1, None),
             (table, idx.int(), off, 2, None), (table, idx, off.int(), 0, psw),
             (table, strided(idx.int()), strided(off.int()), 1, None), (table, idx_v, off_v, 2, None)]
    for tb, ix, of, mode, w in cases:
        got = _run(ops.embedding_bag_rowwise, device, tb, bits, dim, ix, of, mode, w, False, int(idx[3]))
        want = reference.embedding_bag_rowwise(tb.contiguous(), bits, dim, ix.contiguous(), of.contiguous(), mode,
                                               None if w is None else w.contiguous(), False, int(idx[3]))
        assert _same(got, want), (mode, w is not None, ix.dtype, of.dtype)


# ============================================================ bad arguments the other files do not try
def _table_4x8():
    return pack_rowwise(torch.zeros(4, 8, dtype=torch.uint8), torch.ones(4), torch.zeros(4), 8, 8)


def _u8(*shape):
    return torch.zeros(*shape, dtype=torch.uint8)


_S, _Z = torch.tensor([0.1]), torch.tensor([0])


@pytest.mark.parametrize("call,match", [
    (lambda: ops.embedding_bag_rowwise(_table_4x8(), 8, 8, torch.tensor([1, 2, 3]), torch.tensor([0]), 0, torch.ones(2)),
     r"argument 'per_sample_weights' must have the shape of indices \[3\], got \[2\]"),
    (lambda: ops.embedding_bag_rowwise(_table_4x8(), 8, 8, torch.tensor([1, 2, 3]), torch.tensor([0]), 0,
                                       torch.ones(3, dtype=torch.float64)),
     r"argument 'per_sample_weights' must be a float32 tensor, got Double"),
    (lambda: ops.embedding_bag_rowwise(_table_4x8(), 8, 8, torch.tensor([1, 2, 3]), torch.tensor([0]), 3),
     r"argument 'mode' must be 0 \(sum\), 1 \(mean\) or 2 \(max\), got 3"),
    (lambda: ops.embedding_bag_rowwise(_table_4x8(), 8, 8, torch.tensor([1, 2]), torch.tensor([0]), 0, None, False, 4),
     r"argument 'padding_idx' must lie in \[0, 4\)"),
    (lambda: ops.embedding_bag_rowwise(_table_4x8(), 8, -1, torch.tensor([1]), torch.tensor([0]), 0),
     r"argument 'embedding_dim' must lie in \[0, 2\^40\], got -1"),
    (lambda: ops.gru_cell_update(torch.zeros(2, 12), torch.zeros(2, 12), torch.zeros(2, 5)),
     r"argument 'igates' must have shape \[2, 15\]"),
    (lambda: ops.gru_cell_update(torch.zeros(2, 12), torch.zeros(2, 12, dtype=torch.float64), torch.zeros(2, 4)),
     r"argument 'hgates' must be a float32 tensor, got Double"),
    (lambda: ops.lstm_cell_update(torch.zeros(2, 16), torch.zeros(2, 16), torch.zeros(3, 4)),
     r"argument 'igates' must have shape \[3, 16\]"),
    (lambda: ops.cat([_u8(2, 3)] * 2, [_S], [_Z] * 2, 0, _S, _Z),
     r"arguments 'scales' and 'zero_points' must hold one tensor per input \(2\), got 1 and 2"),
    (lambda: ops.add(_u8(2), _S, torch.tensor([0.0]), _u8(2), _S, _Z, _S, _Z),
     r"argument 'a_zero_point' must be an integer tensor, got dtype Float"),
    (lambda: ops.add(_u8(2), _S, _Z, _u8(2), _S, _Z, _S, torch.tensor([-1]), False, torch.uint8),
     r"argument 'out_zero_point' must lie in \[0, 255\]"),
    (lambda: ops.quantize_rowwise(torch.tensor(1.0)), r"argument 'x' must have at least 1 dimension"),
    (lambda: ops.histogram_(torch.zeros(8), torch.tensor(INF), torch.tensor(-INF), torch.zeros(2, dtype=torch.int64),
                            torch.arange(3)),
     r"argument 'x' must be a floating-point tensor, got dtype Long"),
])
def test_more_bad_arguments_name_the_argument(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


# ============================================================ signed zeros in observed ranges, gradients per thread count
@pytest.mark.parametrize("n", [8, 64, 2048, 5000])
def test_observers_keep_a_negative_zero_extreme(isa, n):
    # -0.0 as the minimum (and as the maximum of an all -0.0 input): the SIMD fold that skips
    # non-finite lanes once added +0 to every lane, which turned -0.0 into +0.0.
    inf = float("inf")
    for x in (torch.cat([torch.full((n - 1,), -0.0), torch.tensor([5.0])]), torch.full((n,), -0.0),
              torch.cat([torch.full((n - 2,), -0.0), torch.tensor([float("nan"), 5.0])])):
        for axis, xx in ((None, x), (0, x.reshape(2, -1) if n % 2 == 0 else x.reshape(1, -1))):
            c = [] if axis is None else [xx.shape[0]]
            got = [torch.full(c, inf), torch.full(c, -inf), torch.zeros(2, dtype=torch.int64)]
            want = [t.clone() for t in got]
            ops.observe_minmax_(*got, xx, axis, None)
            reference.observe_minmax_(*want, xx, axis, None)
            for g, w in zip(got, want):
                assert torch.equal(g, w) and torch.equal(torch.signbit(g), torch.signbit(w)), (axis, got, want)
        h = [torch.zeros(8), torch.tensor(inf), torch.tensor(-inf), torch.zeros(2, dtype=torch.int64)]
        hr = [t.clone() for t in h]
        ops.histogram_(*h, x, 16)
        reference.histogram_(*hr, x, 16)
        for g, w in zip(h, hr):
            assert torch.equal(g, w) and torch.equal(torch.signbit(g), torch.signbit(w))


@pytest.mark.parametrize("axis", [None, 0, 1])
def test_learnable_fake_quant_gradients_are_the_same_for_any_thread_count(axis):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 513, generator=gen) * 5
    grad = torch.randn(1000, 513, generator=gen)
    c = 1 if axis is None else x.shape[axis]
    scale = torch.rand(c, generator=gen) * 0.05 + 0.02
    zp = torch.randn(c, generator=gen).mul(3).round()
    results = []
    for k in (1, 2, 3):
        with num_threads(k):
            results.append(ops.fake_quantize_learnable_backward(grad, x, scale, zp, axis, -128, 127, 1.0))
    for r in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, results[0]))


def test_a_torch_quantized_tensor_is_named_by_every_op():
    # torch.ao code holds torch quantized tensors; given to an op with CPU / CUDA kernels only,
    # they reached torch's dispatcher error, which names no argument.
    ops = torch.ops.torchquant
    qx = torch.quantize_per_tensor(torch.randn(2, 3, 4, 4), 0.1, 128, torch.quint8)
    s, z = torch.tensor([0.1]), torch.tensor([128], dtype=torch.int32)
    cases = {
        "q": lambda: ops.dequantize(qx, s, z, None, None),
        "x": lambda: ops.max_pool_int8(qx, [2, 2], [], [0], [1], False),
        "b": lambda: ops.add(qx.int_repr(), s, z, qx, s, z, s, z, False, None),
        "scale": lambda: ops.quantize(torch.randn(3), torch.quantize_per_tensor(torch.tensor([0.1]), 0.1, 0,
                                                                               torch.quint8), z, None, 0, 255,
                                      torch.uint8),
    }
    for name, call in cases.items():
        with pytest.raises(TypeError, match=rf"argument '{name}' is a torch quantized tensor \(torch.quint8\).*"
                                            rf"{name}\.int_repr\(\)"):
            call()
    # ops with a composite kernel see such a tensor themselves: streamed_copy keeps it as it is
    out = ops.streamed_copy(qx)
    assert out.is_quantized and torch.equal(out.int_repr(), qx.int_repr())


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool])
def test_fake_quantize_learnable_refuses_a_zero_point_that_is_no_number(dtype):
    # A complex zero point lost its imaginary part (with a C++ warning only) and its backward gave
    # a complex "gradient"; a bool one was read as 0 / 1.
    ops = torch.ops.torchquant
    x, s = torch.randn(5), torch.tensor([0.1])
    zp = torch.tensor([3 + 100j]) if dtype == torch.complex64 else torch.tensor([True])
    for call in (lambda: ops.fake_quantize_learnable(x, s, zp, None, 0, 255, 1.0),
                 lambda: ops.fake_quantize_learnable_backward(torch.ones(5), x, s, zp, None, 0, 255, 1.0)):
        with pytest.raises(RuntimeError, match=rf"argument 'zero_point' must be a floating-point or integer tensor, "
                                               rf"got {'ComplexFloat' if dtype == torch.complex64 else 'Bool'}"):
            call()
