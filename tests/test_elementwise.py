"""Quantized elementwise ops (add, mul, add_scalar, mul_scalar, cat): bit-identical with
torchquant.reference on every CPU kernel variant and on CUDA, and checked arguments."""
import pytest
import torch

import torchquant  # noqa: F401
from torchquant import reference

ops = torch.ops.torchquant
DT = [torch.uint8, torch.int8]


def _q(shape, dtype, gen, device="cpu"):
    lo, hi = (0, 256) if dtype == torch.uint8 else (-128, 128)
    return torch.randint(lo, hi, shape, dtype=dtype, generator=gen).to(device)


def _qp(scale, zp, device="cpu"):
    return torch.tensor([scale], dtype=torch.float32, device=device), torch.tensor([zp], dtype=torch.int32, device=device)


# (a_scale, b_scale, out_scale): exact halves (ties at every odd sum), a tiny output scale
# (saturation), and scales with no exact binary form.
SCALES = [(0.5, 0.25, 1.0), (0.5, 0.5, 0.001), (0.0731, 0.0193, 0.0517), (3.0, 0.01, 0.25),
          (3e38, 3e38, 1.0),   # overflow: inf - inf is NaN, which quantizes to the zero point
          (1e37, 1e37, 1e38)]  # the same NaN behind a large output scale
SHAPES = [((2, 3, 5, 7), (2, 3, 5, 7)), ((2, 3, 5, 7), (2, 3, 1, 1)), ((1, 3, 1, 1), (4, 3, 6, 5)),
          ((70,), ()), ((0, 3), (1, 3)), ((33,), (33,)), ((2, 67), (67,)),
          ((41,), (41,)), ((5, 24), (24,)), ((3, 1, 16), (3, 7, 16))]  # the 8-wide steps


def _zps(dtype):
    return [0, 3, 255] if dtype == torch.uint8 else [0, -5, 127]


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("a_dt", DT)
@pytest.mark.parametrize("b_dt", DT)
@pytest.mark.parametrize("relu", [False, True])
def test_binary_matches_reference(isa, op, a_dt, b_dt, relu):
    gen = torch.Generator().manual_seed(0)
    for (sa, sb, so) in SCALES:
        for (shape_a, shape_b) in SHAPES:
            for za, zb in zip(_zps(a_dt), _zps(b_dt)):
                for out_dt in (None, torch.int8, torch.uint8):
                    a, b = _q(shape_a, a_dt, gen), _q(shape_b, b_dt, gen)
                    zo = 7 if out_dt != torch.int8 else -7
                    args = (a, *_qp(sa, za), b, *_qp(sb, zb), *_qp(so, zo), relu, out_dt)
                    got = getattr(ops, op)(*args)
                    want = getattr(reference, op)(*args)
                    assert got.dtype == (out_dt or a_dt) and got.shape == want.shape
                    assert torch.equal(got, want), (op, sa, sb, so, shape_a, shape_b, za, zb, out_dt)


@pytest.mark.parametrize("op", ["add", "mul"])
def test_binary_layouts(isa, op):
    """Channels-last, transposed, sliced (strided) inputs and mixed layouts: the same values as
    on contiguous copies; the output keeps channels-last."""
    gen = torch.Generator().manual_seed(1)
    a = _q((2, 16, 9, 11), torch.uint8, gen)
    b = _q((2, 16, 9, 11), torch.int8, gen)
    qp = (*_qp(0.05, 10), )
    cl = torch.channels_last
    cases = [(a.contiguous(memory_format=cl), b.contiguous(memory_format=cl)),
             (a.contiguous(memory_format=cl), b),
             (a.transpose(2, 3), b.transpose(2, 3)),
             (a[:, ::2], b[:, 1::2]),
             (a.contiguous(memory_format=cl), b[:, :, :, :1])]
    for x, y in cases:
        args = (x, *qp, y, *_qp(0.03, -4), *_qp(0.08, 100), False, None)
        got = getattr(ops, op)(*args)
        want = getattr(reference, op)(x.contiguous(), *qp, y.contiguous(), *_qp(0.03, -4), *_qp(0.08, 100), False, None)
        assert torch.equal(got, want)
    out = ops.add(a.contiguous(memory_format=cl), *qp, b.contiguous(memory_format=cl), *qp, *qp)
    assert out.is_contiguous(memory_format=cl)


@pytest.mark.parametrize("op", ["add_scalar", "mul_scalar"])
@pytest.mark.parametrize("dt", DT)
def test_scalar_ops_match_reference(isa, op, dt):
    gen = torch.Generator().manual_seed(2)
    for s, z in [(0.5, 0), (0.0731, 3 if dt == torch.uint8 else -3), (0.25, 255 if dt == torch.uint8 else 127)]:
        for c in [0.0, 0.25, -1.5, 3.7, 1e6, -0.1234567, 3e38, float("inf")]:
            for shape in [(0,), (5,), (67,), (2, 3, 40)]:
                a = _q(shape, dt, gen)
                for x in (a, a.transpose(0, -1) if a.dim() > 1 else a[::2]):
                    for out_dt in (None, torch.int8):
                        args = (x, *_qp(s, z), c, *_qp(0.03, 1), out_dt)
                        got, want = getattr(ops, op)(*args), getattr(reference, op)(*args)
                        assert torch.equal(got, want), (op, s, z, c, shape, out_dt)


@pytest.mark.parametrize("dt", DT)
def test_cat_matches_reference(isa, dt):
    gen = torch.Generator().manual_seed(3)
    cl = torch.channels_last
    xs = [_q((2, c, 5, 6), d, gen).contiguous(memory_format=cl) for c, d in [(3, dt), (16, torch.int8), (0, dt), (33, torch.uint8)]]
    qps = [_qp(0.05, 7 if dt == torch.uint8 else -7), _qp(0.5, 0), _qp(1.0, 0), _qp(0.0371, 200)]
    for out_qp in [qps[0], _qp(0.5, 3), _qp(0.001, 0)]:
        for out_dt in (None, torch.int8, torch.uint8):
            lo, hi = (0, 255) if (out_dt or dt) == torch.uint8 else (-128, 127)
            if not lo <= int(out_qp[1]) <= hi:
                continue
            for dim in (1, -3):
                args = (xs, [q[0] for q in qps], [q[1] for q in qps], dim, *out_qp, out_dt)
                got, want = ops.cat(*args), reference.cat(*args)
                assert torch.equal(got, want)
    # Inputs that share the output's qparams come through unchanged, channels-last kept.
    s, z = _qp(0.05, 7 if dt == torch.uint8 else -7)
    out = ops.cat([xs[0], xs[0]], [s, s], [z, z], 1, s, z)
    assert torch.equal(out, torch.cat([xs[0], xs[0]], 1)) and out.is_contiguous(memory_format=cl)
    # non-contiguous inputs
    a = _q((4, 9), dt, gen).t()
    args = ([a, a[:, ::2]], [s, s], [z, z], 1, *_qp(0.2, 0), None)
    assert torch.equal(ops.cat(*args), reference.cat(*args))
    # each input is written into its slice of the output: torch.cat's shape and layout (mixed
    # layouts, a legacy empty [0] input, the last dim, copies next to requantized inputs)
    b = _q((2, 4, 3, 5), dt, gen)
    cases = [([b, b[:, :3].contiguous(memory_format=cl)], 1), ([b, b.contiguous(memory_format=cl)], 1),
             ([b, torch.empty(0, dtype=dt), b], 0), ([b, b[..., :2]], -1), ([b[:, :, :1], b], 2)]
    for tensors, dim in cases:
        n = len(tensors)
        qp_list = [_qp(0.05, 3 if dt == torch.uint8 else -3), _qp(0.5, 0), _qp(0.05, 3 if dt == torch.uint8 else -3)][:n]
        args = (tensors, [q[0] for q in qp_list], [q[1] for q in qp_list], dim, *qp_list[0], None)
        got, want = ops.cat(*args), reference.cat(*args)
        assert torch.equal(got, want) and got.stride() == want.stride(), (dim, got.stride(), want.stride())
    with pytest.raises(RuntimeError, match=r"zero-dimensional tensor \(at position 0\) cannot be concatenated"):
        ops.cat([b[0, 0, 0, 0], b[0, 0, 0, 0]], [s, s], [z, z], 0, s, z)
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        ops.cat([b, xs[0]], [s, s], [z, z], 0, s, z)


@pytest.mark.parametrize("op", ["add", "mul"])
def test_binary_on_device(device, op):
    gen = torch.Generator().manual_seed(4)
    a, b = _q((3, 8, 5, 5), torch.uint8, gen), _q((3, 8, 1, 1), torch.int8, gen)
    args = (a, *_qp(0.0731, 9), b, *_qp(0.5, -3), *_qp(0.0517, 5), True, None)
    want = getattr(reference, op)(*args)
    dev_args = tuple(t.to(device) if isinstance(t, torch.Tensor) else t for t in args)
    assert torch.equal(getattr(ops, op)(*dev_args).cpu(), want)


def test_int64_zero_point_past_int32_saturates_on_device_and_is_refused_on_the_cpu(device):
    # The CPU refuses a zero point outside the dtype's codes; the GPU kernels clamp it into
    # them, after saturating it into int32 (2^32 + 3 wrapped to 3 before, a wrong result).
    gen = torch.Generator().manual_seed(7)
    a = _q((2, 3, 4), torch.uint8, gen).to(device)
    s, z = _qp(0.0731, 9, device)
    so = torch.tensor([0.05], device=device)
    big = torch.tensor([2 ** 32 + 3], dtype=torch.int64, device=device)
    if device == "cpu":
        with pytest.raises(RuntimeError, match="must lie in"):
            ops.add_scalar(a, s, z, 0.5, so, big, torch.uint8)
        return
    got = ops.add_scalar(a, s, z, 0.5, so, big, torch.uint8)
    want = ops.add_scalar(a, s, z, 0.5, so, torch.tensor([255], dtype=torch.int32, device=device), torch.uint8)
    assert torch.equal(got, want)


def test_unary_and_cat_on_device(device):
    gen = torch.Generator().manual_seed(5)
    a = _q((4, 6, 7), torch.int8, gen).to(device)
    s, z = _qp(0.0731, -9, device)
    so, zo = _qp(0.05, 3, device)
    for op in ("add_scalar", "mul_scalar"):
        got = getattr(ops, op)(a, s, z, -0.75, so, zo, torch.uint8)
        want = getattr(reference, op)(a.cpu(), s.cpu(), z.cpu(), -0.75, so.cpu(), zo.cpu(), torch.uint8)
        assert torch.equal(got.cpu(), want)
    got = ops.cat([a, a[:, :2]], [s, so], [z, zo], 1, so, zo, None)
    want = reference.cat([a.cpu(), a[:, :2].cpu()], [s.cpu(), so.cpu()], [z.cpu(), zo.cpu()], 1, so.cpu(), zo.cpu(), None)
    assert torch.equal(got.cpu(), want)


def test_output_layout_on_device_is_the_cpu_kernels_and_the_fake_kernels(device):
    # Dense permuted, channels-last, sliced and broadcast operands: the values and the output's
    # strides equal the CPU kernels' (and so the fake kernels', which torch.compile trusts).
    gen = torch.Generator().manual_seed(6)
    base = _q((3, 8, 5, 6), torch.uint8, gen)
    other = _q((3, 8, 5, 6), torch.int8, gen)
    layouts = {
        "transposed": (base.transpose(2, 3), other.transpose(2, 3)),
        "channels_last": (base.contiguous(memory_format=torch.channels_last), other),
        "sliced": (base[:, ::2], other[:, 1::2]),
        "broadcast": (base.transpose(2, 3), other[:1, :, :1, :1]),
        "permuted both": (base.permute(3, 1, 0, 2), other.permute(3, 1, 0, 2)),
        # a broadcast / expanded first operand against a full one (TensorIterator's own layout
        # followed the first operand's strides there, unlike the fake kernel)
        "broadcast first": (base[:1].transpose(2, 3), other.transpose(2, 3).contiguous()),
        "expanded first": (base[:1, :, :, :1].expand(1, 8, 5, 6), other.transpose(2, 3).contiguous().transpose(2, 3)),
        # the first operand has the output's shape through stride-0 dimensions (a dense output)
        "expanded full": (base[:1].expand(3, 8, 5, 6), other.transpose(2, 3).contiguous().transpose(2, 3)),
    }
    qa, qb, qo = _qp(0.0731, 9), _qp(0.5, -3), _qp(0.0517, 5)
    for name, (a, b) in layouts.items():
        cpu = {
            "add": ops.add(a, *qa, b, *qb, *qo, False, None),
            "mul": ops.mul(a, *qa, b, *qb, *qo, True, torch.int8),
            "add_scalar": ops.add_scalar(a, *qa, 0.25, *qo, torch.uint8),
            "mul_scalar": ops.mul_scalar(b, *qb, -0.5, *qo, torch.int8),
        }
        d = lambda t: t.to(device) if device == "cpu" else torch.empty_strided(  # noqa: E731
            t.size(), t.stride(), dtype=t.dtype, device=device).copy_(t)
        dqa, dqb, dqo = (tuple(t.to(device) for t in q) for q in (qa, qb, qo))
        da, db = d(a), d(b)
        got = {
            "add": ops.add(da, *dqa, db, *dqb, *dqo, False, None),
            "mul": ops.mul(da, *dqa, db, *dqb, *dqo, True, torch.int8),
            "add_scalar": ops.add_scalar(da, *dqa, 0.25, *dqo, torch.uint8),
            "mul_scalar": ops.mul_scalar(db, *dqb, -0.5, *dqo, torch.int8),
        }
        # the fake kernels (meta tensors of the same strides)
        m = lambda t: torch.empty_strided(t.size(), t.stride(), dtype=t.dtype, device="meta")  # noqa: E731
        mqa, mqb, mqo = (tuple(m(t) for t in q) for q in (qa, qb, qo))
        fake = {
            "add": ops.add(m(a), *mqa, m(b), *mqb, *mqo, False, None),
            "mul": ops.mul(m(a), *mqa, m(b), *mqb, *mqo, True, torch.int8),
        }
        for op, want in cpu.items():
            assert torch.equal(got[op].cpu(), want), (name, op)
            assert got[op].stride() == want.stride(), (name, op, got[op].stride(), want.stride())
            if op in fake:
                assert fake[op].stride() == want.stride(), (name, op, fake[op].stride(), want.stride())


def test_bad_arguments():
    a = torch.zeros(2, 3, dtype=torch.uint8)
    s, z = _qp(0.1, 0)
    with pytest.raises(RuntimeError, match="argument 'a' must be an int8 or uint8 tensor"):
        ops.add(a.float(), s, z, a, s, z, s, z)
    with pytest.raises(RuntimeError, match="argument 'b_scale' must be > 0 and finite, got -1"):
        ops.add(a, s, z, a, torch.tensor([-1.0]), z, s, z)
    with pytest.raises(RuntimeError, match=r"argument 'out_zero_point' must lie in \[-128, 127\]"):
        ops.mul(a, s, z, a, s, z, s, torch.tensor([200]), False, torch.int8)
    with pytest.raises(RuntimeError, match="argument 'a_scale' must have 1 element"):
        ops.add_scalar(a, torch.ones(3), z, 1.0, s, z)
    with pytest.raises(RuntimeError, match="argument 'out_dtype' must be torch.int8 or torch.uint8"):
        ops.mul_scalar(a, s, z, 2.0, s, z, torch.float32)
    with pytest.raises(RuntimeError, match="size of tensor a"):
        ops.add(a, s, z, torch.zeros(2, 4, dtype=torch.uint8), s, z, s, z)
    with pytest.raises(RuntimeError, match="argument 'tensors' must hold at least one tensor"):
        ops.cat([], [], [], 0, s, z)
    with pytest.raises(RuntimeError, match=r"argument 'tensors\[1\]' must be an int8 or uint8"):
        ops.cat([a, a.float()], [s, s], [z, z], 0, s, z)
    with pytest.raises(RuntimeError, match=r"argument 'scales\[1\]' must be > 0"):
        ops.cat([a, a], [s, torch.tensor([0.0])], [z, z], 0, s, z)
    # nothing the caller passed in is modified
    a2 = a.clone()
    ops.add(a, s, z, a, s, z, s, z)
    assert torch.equal(a, a2)


def test_fake_kernels_under_compile():
    def f(a, b, s, z):
        return ops.add(a, s, z, b, s, z, s, z, True, None), ops.cat([a, b], [s, s], [z, z], 1, s, z)

    a = torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    s, z = _qp(0.1, 3)
    got = torch.compile(f, backend="eager", fullgraph=True)(a, a, s, z)
    want = f(a, a, s, z)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode() as m:
        fa = m.from_tensor(a)
        out = ops.add(fa, m.from_tensor(s), m.from_tensor(z), fa, m.from_tensor(s), m.from_tensor(z),
                      m.from_tensor(s), m.from_tensor(z))
        assert out.shape == a.shape and out.dtype == torch.uint8


@pytest.mark.parametrize("a_dt", DT)
@pytest.mark.parametrize("t_dt", DT)
def test_lookup_table_matches_reference(device, a_dt, t_dt):
    # every code of both dtypes, channels-last, non-contiguous, empty; output in the table's dtype
    gen = torch.Generator().manual_seed(6)
    table = _q((256,), t_dt, gen).to(device)
    lo = -128 if a_dt == torch.int8 else 0
    every = torch.arange(lo, lo + 256, dtype=torch.int16).to(a_dt).to(device)
    got = ops.lookup_table(every, table)
    assert got.dtype == t_dt and torch.equal(got.cpu(), table.cpu())  # code c -> entry c - qmin
    cases = [_q((3, 5, 7, 9), a_dt, gen).to(device).contiguous(memory_format=torch.channels_last),
             _q((4, 70001), a_dt, gen).to(device)[:, ::3], _q((0, 4), a_dt, gen).to(device),
             _q((), a_dt, gen).to(device)]
    for a in cases:
        out = ops.lookup_table(a, table)
        assert out.shape == a.shape and torch.equal(out.cpu(), reference.lookup_table(a.cpu(), table.cpu()))
    assert ops.lookup_table(cases[0], table).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("a_dt", DT)
def test_lookup_table_kernel_variants_match_reference(isa, a_dt):
    # every SIMD width's tail (sizes around 16, 32, 64 and the thread split at 65536), every code,
    # offsets that misalign the rows, each against the plain-torch oracle
    gen = torch.Generator().manual_seed(11)
    table = _q((256,), torch.int8, gen)
    lo = -128 if a_dt == torch.int8 else 0
    every = torch.arange(lo, lo + 256, dtype=torch.int16).to(a_dt)
    assert torch.equal(ops.lookup_table(every, table), table)
    big = _q((200_003,), a_dt, gen)
    for n in (0, 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 1000, 65_535, 65_536, 65_537, 200_000):
        for off in (0, 1, 3):
            a = big[off:off + n]
            assert torch.equal(ops.lookup_table(a, table), reference.lookup_table(a, table)), (n, off)


def test_lookup_table_bad_arguments():
    a = torch.zeros(2, 3, dtype=torch.uint8)
    table = torch.zeros(256, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="argument 'a' must be .*int8.*got .*Float"):
        ops.lookup_table(a.float(), table)
    with pytest.raises(RuntimeError, match=r"argument 'table' must be 1-D with 256 elements .*\[255\]"):
        ops.lookup_table(a, table[:255])
    with pytest.raises(RuntimeError, match=r"argument 'table' must be 1-D with 256 elements .*\[2, 128\]"):
        ops.lookup_table(a, table.reshape(2, 128))
    with pytest.raises(RuntimeError, match="argument 'table' must be an int8 or uint8 tensor, got dtype Float"):
        ops.lookup_table(a, table.float())
    with pytest.raises(RuntimeError, match="argument 'table'"):
        ops.lookup_table(a, table.to("meta"))
    out = torch.compile(lambda x, t: ops.lookup_table(x, t), fullgraph=True)(a, table)
    assert torch.equal(out, reference.lookup_table(a, table))


def test_qfunctional_scalar_ops_refuse_a_per_channel_qtensor():
    from torchquant.nn.quantized import QFunctional

    pc = torchquant.quantize_per_channel(torch.randn(2, 3), torch.tensor([0.1, 0.2]), torch.zeros(2, dtype=torch.int32),
                                         0, torch.qint8)
    f = QFunctional(0.05, 0, torch.qint8)
    for op in (f.add_scalar, f.mul_scalar):
        with pytest.raises(ValueError, match="needs per-tensor quantized input, got a QTensor quantized along axis 0"):
            op(pc, 2.0)
