"""CUDA kernels: bit-exact with the CPU kernels and with plain-torch oracles on random inputs
with ties, saturation, odd shapes, M = 1, K/N not multiples of 8, empty and non-contiguous
tensors; every int8 GEMM path (gemv, cuBLASLt, tiled) on every shape. All skip without a GPU."""
import pytest
import torch

from torchquant import reference

ops = torch.ops.torchquant
pytestmark = pytest.mark.cuda

QRANGES = [(-128, 127, torch.int8), (0, 255, torch.uint8), (-8, 7, torch.int8), (0, 3, torch.uint8)]
PATHS = ["auto", "gemv", "mma", "lt", "tiled"]


@pytest.fixture(params=PATHS)
def gemm_path(request, monkeypatch):
    """Runs the test once per CUDA GEMM path (the op reads TORCHQUANT_CUDA_GEMM per call)."""
    monkeypatch.setenv("TORCHQUANT_CUDA_GEMM", request.param)
    yield request.param


def _same(a, b):
    """Bit-for-bit equal values, NaN where the other has NaN."""
    return torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


def _has_fake(name):
    """Whether the op has a fake (meta) kernel yet: opcheck needs one."""
    entry = torch._library.simple_registry.singleton.find(f"torchquant::{name}")
    return entry.fake_impl.kernel is not None


def _has_cpu_kernel(name):
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"torchquant::{name}", "CPU")


def _tricky(shape, scale, zp, qmin, qmax, gen):
    n = 1
    for d in shape:
        n *= d
    x = torch.randn(n, generator=gen) * scale * (qmax - qmin) / 3
    k = torch.randint(qmin - zp - 4, qmax - zp + 4, (n,), generator=gen).float()
    kind = torch.randint(0, 6, (n,), generator=gen)
    x = torch.where(kind == 1, (k + 0.5) * scale, x)  # exact ties
    x = torch.where(kind == 2, k * scale, x)
    x = torch.where(kind == 3, torch.full_like(x, 1e6) * torch.sign(torch.randn(n, generator=gen)), x)
    x = torch.where(kind == 4, torch.zeros_like(x), x)
    return x.reshape(shape)


# ---------------------------------------------------------------- quantize family
@pytest.mark.parametrize("qmin,qmax,dtype", QRANGES)
@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 1000, 100003])
def test_per_tensor_matches_cpu_and_reference(qmin, qmax, dtype, n):
    gen = torch.Generator().manual_seed(n * 7 + qmin)
    for zp in (qmin, qmax, (qmin + qmax) // 2):
        x = _tricky((n,), 0.0173, zp, qmin, qmax, gen)
        x[: min(n, 3)] = torch.tensor([float("nan"), float("inf"), -float("inf")])[: min(n, 3)]
        s, z = torch.tensor([0.0173]), torch.tensor([zp], dtype=torch.int32)
        xc, sc, zc = x.cuda(), s.cuda(), z.cuda()
        q = ops.quantize(xc, sc, zc, None, qmin, qmax, dtype)
        assert q.dtype == dtype and q.is_cuda
        want = reference.quantize(x, s, z, None, qmin, qmax, dtype)
        assert torch.equal(q.cpu(), want)
        assert torch.equal(q.cpu(), ops.quantize(x, s, z, None, qmin, qmax, dtype))
        assert torch.equal(ops.dequantize(q, sc, zc, None).cpu(), reference.dequantize(want, s, z, None))
        fq = ops.fake_quantize(xc, sc, zc, None, qmin, qmax).cpu()
        assert _same(fq, reference.fake_quantize(x, s, z, None, qmin, qmax))
        assert _same(fq, ops.fake_quantize(x, s, z, None, qmin, qmax))
        g = torch.randn(n, generator=gen)
        gx = ops.fake_quantize_backward(g.cuda(), xc, sc, zc, None, qmin, qmax).cpu()
        assert torch.equal(gx, reference.fake_quantize_backward(g, x, s, z, None, qmin, qmax))


@pytest.mark.parametrize("shape,axis", [((5, 7), 0), ((5, 7), 1), ((3, 4, 70), 1), ((3, 4, 70), 2),
                                        ((2, 3, 5, 2), -1), ((2, 33, 3), 1), ((1,), 0), ((0, 4), 1),
                                        ((4, 0), 0), ((8, 130), 0), ((2, 3, 65), 1), ((64, 4096), 0)])
@pytest.mark.parametrize("qmin,qmax,dtype", QRANGES[:3])
def test_per_channel_every_axis(shape, axis, qmin, qmax, dtype):
    gen = torch.Generator().manual_seed(len(shape) * 10 + axis + qmin)
    C = shape[axis]
    scale = torch.rand(C, generator=gen) * 0.1 + 0.001
    zp = torch.randint(qmin, qmax + 1, (C,), generator=gen, dtype=torch.int32)
    if C >= 2:
        zp[0], zp[-1] = qmin, qmax
    x = _tricky(shape, 0.05, 0, qmin, qmax, gen)
    a = axis % len(shape)
    args = (scale.cuda(), zp.cuda(), axis)
    q = ops.quantize(x.cuda(), *args, qmin, qmax, dtype).cpu()
    assert torch.equal(q, reference.quantize(x, scale, zp, a, qmin, qmax, dtype))
    assert torch.equal(ops.dequantize(q.cuda(), *args).cpu(), reference.dequantize(q, scale, zp, a))
    fq = ops.fake_quantize(x.cuda(), *args, qmin, qmax).cpu()
    assert torch.equal(fq, reference.fake_quantize(x, scale, zp, a, qmin, qmax))
    assert torch.equal(fq, ops.fake_quantize(x, scale, zp, axis, qmin, qmax))
    g = torch.randn(shape, generator=gen)
    assert torch.equal(ops.fake_quantize_backward(g.cuda(), x.cuda(), *args, qmin, qmax).cpu(),
                       reference.fake_quantize_backward(g, x, scale, zp, a, qmin, qmax))


def test_non_contiguous_misaligned_and_other_dtypes():
    gen = torch.Generator().manual_seed(3)
    base = _tricky((40, 67), 0.03, 2, -128, 127, gen)
    s, z = torch.tensor([0.03]), torch.tensor([2], dtype=torch.int32)
    for x in (base.t(), base[:, 1:], base.reshape(-1)[3:2000], base.half(), base.bfloat16(), base.double()):
        xc = x.cuda()
        q = ops.quantize(xc, s.cuda(), z.cuda(), None, -128, 127, torch.int8).cpu()
        assert torch.equal(q, reference.quantize(x.float(), s, z, None, -128, 127, torch.int8))
        fq = ops.fake_quantize(xc, s.cuda(), z.cuda(), None, -128, 127)
        assert fq.dtype == x.dtype
        assert torch.equal(fq.cpu(), reference.fake_quantize(x, s, z, None, -128, 127))
    q = ops.quantize(base.cuda(), s.cuda(), z.cuda(), None, -128, 127, torch.int8)
    for qv in (q.t(), q.reshape(-1)[5:1000]):  # the scalar path: an odd storage offset
        assert torch.equal(ops.dequantize(qv, s.cuda(), z.cuda(), None).cpu(),
                           reference.dequantize(qv.cpu(), s, z, None))
    assert ops.dequantize(q, s.cuda(), z.cuda(), None, torch.bfloat16).dtype == torch.bfloat16


def test_inputs_not_modified_and_errors():
    x = torch.randn(100, device="cuda")
    x0 = x.clone()
    s, z = torch.tensor([0.1], device="cuda"), torch.tensor([0], device="cuda", dtype=torch.int32)
    ops.fake_quantize(x, s, z, None, -128, 127)
    assert torch.equal(x, x0)
    with pytest.raises(RuntimeError, match="same device"):
        ops.quantize(x, s.cpu(), z, None, -128, 127, torch.int8)
    with pytest.raises(RuntimeError, match="'qmin'"):
        ops.quantize(x, s, z, None, -129, 127, torch.int8)
    with pytest.raises(RuntimeError, match="'scale' must have 100"):
        ops.quantize(x, s, z, 0, -128, 127, torch.int8)


def test_autograd_and_opcheck_quantize():
    x = torch.randn(6, 9, device="cuda", requires_grad=True)
    s = torch.rand(9, device="cuda") * 0.1 + 0.01
    z = torch.randint(-10, 10, (9,), device="cuda", dtype=torch.int32)
    y = ops.fake_quantize(x, s, z, 1, -128, 127)
    y.sum().backward()
    assert torch.equal(x.grad.cpu(), reference.fake_quantize_backward(torch.ones(6, 9), x.detach().cpu(), s.cpu(), z.cpu(), 1, -128, 127))
    xd = x.detach()
    torch.library.opcheck(ops.quantize.default, (xd, s, z, 1, -128, 127, torch.int8))
    q = ops.quantize(xd, s, z, 1, -128, 127, torch.int8)
    torch.library.opcheck(ops.dequantize.default, (q, s, z, 1))
    torch.library.opcheck(ops.fake_quantize.default, (xd.clone().requires_grad_(), s, z, 1, -128, 127))
    torch.library.opcheck(ops.fake_quantize_backward.default, (torch.randn_like(xd), xd, s, z, 1, -128, 127))


# ---------------------------------------------------------------- int8 GEMM oracles
# The oracles are torchquant.reference (plain torch, int64/float64 where needed) on CPU copies.
def oracle_mm(a, b):
    return reference.int8_mm(a.cpu(), b.cpu())


def oracle_linear(xq, x_scale, x_zp, w, w_scale, bias, out_scale, out_zp, relu, out_dtype):
    cpu = (lambda t: None if t is None else t.cpu())
    return reference.linear_int8(xq.cpu(), x_scale.cpu(), x_zp.cpu(), w.cpu(), w_scale.cpu(), cpu(bias),
                                 cpu(out_scale), cpu(out_zp), relu, out_dtype)


def oracle_rowwise(x):
    return reference.quantize_rowwise(x.cpu())


def _rand_int8(shape, gen, lo=-128, hi=128):
    return torch.randint(lo, hi, shape, generator=gen, dtype=torch.int64).to(torch.int8)


MKN = [(1, 1, 1), (1, 7, 5), (1, 4096, 64), (2, 33, 17), (5, 16, 24), (17, 100, 9), (32, 64, 130),
       (33, 31, 65), (64, 128, 96), (100, 257, 33), (129, 96, 256), (0, 16, 8), (4, 0, 8), (3, 8, 0),
       (9, 1040, 23), (48, 777, 40), (64, 4096, 16)]


@pytest.mark.parametrize("M,K,N", MKN)
def test_int8_mm(gemm_path, M, K, N):
    gen = torch.Generator().manual_seed(M * 1000 + K * 10 + N)
    a, b = _rand_int8((M, K), gen), _rand_int8((K, N), gen)
    if M * K:
        a[0, :] = -128  # saturation of the products
    if K * N:
        b[:, 0] = -128
    got = ops.int8_mm(a.cuda(), b.cuda())
    assert got.dtype == torch.int32 and got.shape == (M, N)
    assert torch.equal(got.cpu(), oracle_mm(a, b))
    # b as the transpose of a row-major [N, K] (the in-place weight path) and a strided a
    bt = b.t().contiguous().cuda().t()
    assert torch.equal(ops.int8_mm(a.cuda(), bt).cpu(), oracle_mm(a, b))
    if M > 1:
        a2 = _rand_int8((M, 2 * K), gen).cuda()[:, ::2]
        assert torch.equal(ops.int8_mm(a2, b.cuda()).cpu(), oracle_mm(a2, b))
    if _has_cpu_kernel("int8_mm"):
        assert torch.equal(got.cpu(), ops.int8_mm(a, b))


@pytest.mark.parametrize("M,K,N", [(1, 32, 24), (8, 48, 40), (64, 64, 96), (64, 48, 1)])
def test_int8_mm_expanded_and_single_column_b(gemm_path, M, K, N):
    """b with stride 0 along N (an expanded column) or one column with any stride: as a
    transposed [N, K] it has rows closer than K apart, so it is copied, not handed to the
    kernels (or cuBLASLt, as a leading dimension smaller than K) in place."""
    gen = torch.Generator().manual_seed(M + K + N)
    a = _rand_int8((M, K), gen)
    col = _rand_int8((K, 1), gen)
    b = col.cuda().expand(K, N)
    assert b.stride(1) == 0
    assert torch.equal(ops.int8_mm(a.cuda(), b).cpu(), oracle_mm(a, col.expand(K, N)))
    wide = _rand_int8((K, 32), gen).cuda()[:, 5:6]  # one column, row stride 32
    assert torch.equal(ops.int8_mm(a.cuda(), wide).cpu(), oracle_mm(a, wide.cpu()))


@pytest.mark.parametrize("M", [1, 32, 200])
def test_int8_mm_transposed_b_is_not_copied(gemm_path, M):
    """b = w.t() of a row-major w [N, K] (K % 16 == 0) is every path's weight operand as it lies
    (for cuBLASLt the "TN" problem: W transposed, X not): the call allocates its output and at
    most cuBLASLt's workspace (<= 64 MiB), never a copy of w (96 MiB here)."""
    gen = torch.Generator().manual_seed(M)
    K, N = 8192, 12288
    a = _rand_int8((M, K), gen).cuda()
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8, device="cuda")
    w[:, 0] = -128
    b = w.t()
    assert b.stride() == (1, K)
    got = ops.int8_mm(a, b)  # warm-up: cuBLASLt's algorithm choice allocates once per shape
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    got = ops.int8_mm(a, b)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra < M * N * 4 + (66 << 20) < N * K, extra
    assert torch.equal(got, ops.int8_mm(a, b.contiguous()))  # the copying path, checked elsewhere
    if M > 16:
        assert torch.equal(got, torch._int_mm(a, b))


def test_int8_mm_matches_torch_int_mm():
    gen = torch.Generator().manual_seed(1)
    a, b = _rand_int8((64, 128), gen).cuda(), _rand_int8((128, 96), gen).cuda()
    assert torch.equal(ops.int8_mm(a, b), torch._int_mm(a, b))


def test_pack_weight_layout():
    gen = torch.Generator().manual_seed(2)
    for N, K in [(5, 7), (16, 32), (3, 0), (0, 5), (33, 4099)]:
        w = _rand_int8((N, K), gen)
        packed, sums = ops.pack_weight(w.cuda())
        Kp = (K + 15) // 16 * 16
        assert packed.shape == (N, Kp) and packed.dtype == torch.int8 and packed.is_cuda
        assert torch.equal(packed.cpu()[:, :K], w) and not packed.cpu()[:, K:].any()
        assert torch.equal(sums.cpu(), w.long().sum(1).to(torch.int32))
    w = _rand_int8((40, 20), gen)
    packed, sums = ops.pack_weight(w.cuda().t().contiguous().t())  # non-contiguous [N, K] view
    assert torch.equal(packed.cpu()[:, :20], w)


def _linear_case(M, K, N, x_dtype, gen, per_row=False):
    lo, hi = (-128, 128) if x_dtype == torch.int8 else (0, 256)
    xq = torch.randint(lo, hi, (M, K), generator=gen).to(x_dtype)
    w = _rand_int8((N, K), gen, -127, 128)
    rows = M if per_row else 1
    x_scale = torch.rand(rows, generator=gen) * 0.05 + 0.001
    x_zp = torch.randint(lo, hi, (rows,), generator=gen, dtype=torch.int32)
    if x_zp.numel():
        x_zp[0] = lo  # zero points at both ends
        x_zp[-1] = hi - 1
    w_scale = torch.rand(N, generator=gen) * 0.02 + 0.0005
    bias = torch.randn(N, generator=gen)
    return xq, x_scale, x_zp, w, w_scale, bias


@pytest.mark.parametrize("M,K,N", MKN)
@pytest.mark.parametrize("x_dtype", [torch.int8, torch.uint8])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.int8, torch.uint8, torch.bfloat16])
def test_linear_int8(gemm_path, M, K, N, x_dtype, out_dtype):
    gen = torch.Generator().manual_seed(M * 7919 + K * 31 + N)
    xq, x_scale, x_zp, w, w_scale, bias = _linear_case(M, K, N, x_dtype, gen)
    packed, sums = ops.pack_weight(w.cuda())
    # A small out_scale so that the requantized values saturate at both ends too.
    out_scale, out_zp = torch.tensor([0.01]), torch.tensor([3], dtype=torch.int32)
    for relu in (False, True):
        for b in (bias, None):
            got = ops.linear_int8(xq.cuda(), x_scale.cuda(), x_zp.cuda(), packed, sums, w_scale.cuda(),
                                  None if b is None else b.cuda(), out_scale.cuda(), out_zp.cuda(), relu,
                                  out_dtype)
            want = oracle_linear(xq, x_scale, x_zp, w, w_scale, b, out_scale, out_zp, relu, out_dtype)
            assert got.dtype == want.dtype and got.shape == want.shape
            assert torch.equal(got.cpu(), want), (relu, b is None)
    if _has_cpu_kernel("linear_int8") and _has_cpu_kernel("pack_weight"):
        cp, cs = ops.pack_weight(w)
        cpu = ops.linear_int8(xq, x_scale, x_zp, cp, cs, w_scale, bias, out_scale, out_zp, True, out_dtype)
        gpu = ops.linear_int8(xq.cuda(), x_scale.cuda(), x_zp.cuda(), packed, sums, w_scale.cuda(), bias.cuda(),
                              out_scale.cuda(), out_zp.cuda(), True, out_dtype)
        assert torch.equal(gpu.cpu(), cpu)


@pytest.mark.parametrize("M,K,N", [(1, 64, 8), (3, 33, 7), (40, 48, 24)])
def test_linear_int8_per_row_3d_and_non_contiguous(gemm_path, M, K, N):
    gen = torch.Generator().manual_seed(11)
    xq, x_scale, x_zp, w, w_scale, bias = _linear_case(M, K, N, torch.uint8, gen, per_row=True)
    packed, sums = ops.pack_weight(w.cuda())
    got = ops.linear_int8(xq.cuda(), x_scale.cuda(), x_zp.cuda(), packed, sums, w_scale.cuda(), bias.cuda(),
                          None, None, False, None)
    assert torch.equal(got.cpu(), oracle_linear(xq, x_scale, x_zp, w, w_scale, bias, None, None, False, None))
    # 3-D input, per tensor, and a non-contiguous x
    x3 = torch.randint(0, 256, (2, M, 2 * K), generator=gen).to(torch.uint8)[:, :, ::2]
    xs, xz = x_scale[:1], x_zp[:1]
    got = ops.linear_int8(x3.cuda(), xs.cuda(), xz.cuda(), packed, sums, w_scale.cuda(), None, None, None,
                          True, torch.float32)
    assert got.shape == (2, M, N)
    assert torch.equal(got.cpu(), oracle_linear(x3, xs, xz, w, w_scale, None, None, None, True, torch.float32))
    assert torch.equal(x3, x3.clone())


@pytest.mark.parametrize("shape", [(1, 1), (1, 4096), (3, 7), (17, 64), (2, 5, 33), (0, 8), (4, 0), (64, 1000)])
def test_quantize_rowwise(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=gen) * 3
    if x.numel() > 4:
        x.view(-1)[:2] = torch.tensor([0.0, 1e4])
    if shape == (3, 7):
        x[1] = x[1].abs() + 0.1  # an all-positive row: the range still holds 0
        x[2] = 0.0  # an all-zero row: scale = eps
    q, s, z = ops.quantize_rowwise(x.cuda())
    wq, ws, wz = oracle_rowwise(x)
    assert q.dtype == torch.int8 and q.shape == x.shape and s.shape == ws.shape
    assert torch.equal(s.cpu(), ws) and torch.equal(z.cpu(), wz) and torch.equal(q.cpu(), wq)
    if _has_cpu_kernel("quantize_rowwise"):
        cq, cs, cz = ops.quantize_rowwise(x)
        assert torch.equal(q.cpu(), cq) and torch.equal(s.cpu(), cs) and torch.equal(z.cpu(), cz)


@pytest.mark.parametrize("M,K,N", [(1, 64, 8), (1, 7, 5), (5, 100, 33), (32, 256, 64), (77, 96, 48), (0, 8, 8)])
def test_linear_dynamic(gemm_path, M, K, N):
    gen = torch.Generator().manual_seed(M + K + N)
    x = torch.randn(M, K, generator=gen)
    w = _rand_int8((N, K), gen, -127, 128)
    w_scale = torch.rand(N, generator=gen) * 0.02 + 0.0005
    bias = torch.randn(N, generator=gen)
    packed, sums = ops.pack_weight(w.cuda())
    for relu in (False, True):
        got = ops.linear_dynamic(x.cuda(), packed, sums, w_scale.cuda(), bias.cuda(), relu)
        assert got.dtype == torch.float32 and got.shape == (M, N)
        if M == 0:
            continue
        q, s, z = oracle_rowwise(x)
        want = oracle_linear(q, s, z, w, w_scale, bias, None, None, relu, torch.float32)
        assert torch.equal(got.cpu(), want)
    if _has_cpu_kernel("linear_dynamic") and _has_cpu_kernel("pack_weight"):
        cp, cs = ops.pack_weight(w)
        assert torch.equal(got.cpu(), ops.linear_dynamic(x, cp, cs, w_scale, bias, True))
    # 7-bit rows (reduce_range): codes in [0, 127], the same results as the oracle's
    got7 = ops.linear_dynamic(x.cuda(), packed, sums, w_scale.cuda(), bias.cuda(), True, True)
    assert torch.equal(got7.cpu(), reference.linear_dynamic(x, w, w_scale, bias, True, True))


def test_gemm_errors(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    w = _rand_int8((8, 20), gen).cuda()
    packed, sums = ops.pack_weight(w)
    x = _rand_int8((4, 20), gen).cuda()
    one, zero = torch.ones(1, device="cuda"), torch.zeros(1, device="cuda", dtype=torch.int32)
    ws = torch.ones(8, device="cuda")
    with pytest.raises(RuntimeError, match="'w_packed' has 32 columns, but x has K = 40"):
        ops.linear_int8(_rand_int8((4, 40), gen).cuda(), one, zero, packed, sums, ws, None, None, None, False, None)
    with pytest.raises(RuntimeError, match="'out_scale' and 'out_zero_point' are required"):
        ops.linear_int8(x, one, zero, packed, sums, ws, None, None, None, False, torch.int8)
    with pytest.raises(RuntimeError, match="'w_scale' must have 8"):
        ops.linear_int8(x, one, zero, packed, sums, ws[:3], None, None, None, False, None)
    with pytest.raises(RuntimeError, match="'bias' must have 8"):
        ops.linear_int8(x, one, zero, packed, sums, ws, ws[:2], None, None, False, None)
    with pytest.raises(RuntimeError, match="'x_scale' must have 1 element"):
        ops.linear_int8(x, torch.ones(3, device="cuda"), zero, packed, sums, ws, None, None, None, False, None)
    with pytest.raises(RuntimeError, match="same device"):
        ops.linear_int8(x, one.cpu(), zero, packed, sums, ws, None, None, None, False, None)
    with pytest.raises(RuntimeError, match="'x_zero_point' must be an integer tensor, got dtype Float"):
        ops.linear_int8(x, one, zero.float(), packed, sums, ws, None, None, None, False, None)
    with pytest.raises(RuntimeError, match="'out_zero_point' must be an integer tensor, got dtype Float"):
        ops.linear_int8(x, one, zero, packed, sums, ws, None, one, zero.float(), False, torch.int8)
    with pytest.raises(RuntimeError, match="'out_zero_point' must have 1 element, got 2"):
        ops.linear_int8(x, one, zero, packed, sums, ws, None, one, zero.repeat(2), False, torch.int8)
    with pytest.raises(RuntimeError, match="'b' .* cannot be multiplied|cannot be multiplied"):
        ops.int8_mm(x, _rand_int8((5, 3), gen).cuda())
    with pytest.raises(RuntimeError, match="past the largest K"):
        ops.pack_weight(torch.zeros(1, 70000, dtype=torch.int8, device="cuda"))
    monkeypatch.setenv("TORCHQUANT_CUDA_GEMM", "bogus")
    with pytest.raises(RuntimeError, match="TORCHQUANT_CUDA_GEMM"):
        ops.int8_mm(x, w.t())


def test_algorithm_cache_and_stream():
    """Second call on a shape hits the cache and gives the same bits; work on a side stream."""
    gen = torch.Generator().manual_seed(9)
    a, b = _rand_int8((256, 512), gen).cuda(), _rand_int8((512, 384), gen).cuda()
    first = ops.int8_mm(a, b)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        second = ops.int8_mm(a, b)
    s.synchronize()
    assert torch.equal(first, second) and torch.equal(first.cpu(), oracle_mm(a, b))


@pytest.mark.parametrize("M,K,N", [(1, 64, 24), (8, 48, 24), (64, 48, 40)])
def test_packed_weight_at_unaligned_offset(gemm_path, M, K, N):
    """A packed weight that is a contiguous view at an offset that is not a multiple of 16 bytes
    (carved out of a flat buffer): the same results as the packed weight itself, not a
    misaligned-address fault of the kernels' 16-byte loads; the view is left as it was."""
    gen = torch.Generator().manual_seed(M + K + N)
    xq, x_scale, x_zp, w, w_scale, bias = _linear_case(M, K, N, torch.int8, gen)
    x = torch.randn(M, K, generator=gen)
    packed, sums = ops.pack_weight(w.cuda())
    for off in (1, 8):
        flat = torch.zeros(packed.numel() + off, dtype=torch.int8, device="cuda")
        moved = flat[off:].view(packed.shape)
        moved.copy_(packed)
        assert moved.is_contiguous() and moved.data_ptr() % 16 == off
        got = ops.linear_int8(xq.cuda(), x_scale.cuda(), x_zp.cuda(), moved, sums, w_scale.cuda(), bias.cuda(),
                              None, None, False, None)
        want = oracle_linear(xq, x_scale, x_zp, w, w_scale, bias, None, None, False, torch.float32)
        assert torch.equal(got.cpu(), want), off
        got = ops.linear_dynamic(x.cuda(), moved, sums, w_scale.cuda(), bias.cuda(), True)
        q, s, z = oracle_rowwise(x)
        want = oracle_linear(q, s, z, w, w_scale, bias, None, None, True, torch.float32)
        assert torch.equal(got.cpu(), want), off
        assert torch.equal(moved, packed)


def test_lt_operands_aligned_to_16_bytes_only(monkeypatch):
    """Operands that are 16-byte but not 256-byte aligned (row slices of a larger tensor) on the
    cuBLASLt path, before and after the same shape was cached with aligned operands: cuBLASLt's
    heuristic assumes 256-byte alignment unless it is told the real one."""
    monkeypatch.setenv("TORCHQUANT_CUDA_GEMM", "lt")
    gen = torch.Generator().manual_seed(13)
    M, K, N = 64, 48, 64
    big_a = _rand_int8((M + 16, K), gen).cuda()
    big_w = _rand_int8((N + 16, K), gen).cuda()
    for off in (16, 1, 0, 2, 3, 5):  # off * 48 bytes: aligned to 256, 16, 256, 32, 16, 16 bytes
        a = big_a[off:off + M]
        bt = big_w[off:off + N].t()  # [K, N], the in-place weight path at the same offset
        want = oracle_mm(a.cpu(), bt.cpu())
        assert torch.equal(ops.int8_mm(a, bt).cpu(), want), off
        assert torch.equal(ops.int8_mm(a, bt.contiguous()).cpu(), want), off
        w = big_w[:N].cpu()
        packed, sums = ops.pack_weight(w.cuda())
        xs, xz, ws = torch.tensor([0.02]), torch.tensor([-3], dtype=torch.int32), torch.full((N,), 0.01)
        got = ops.linear_int8(a, xs.cuda(), xz.cuda(), packed, sums, ws.cuda(), None, None, None, False, None)
        want = oracle_linear(a.cpu(), xs, xz, w, ws, None, None, None, False, torch.float32)
        assert torch.equal(got.cpu(), want), off


def test_opcheck_gemm():
    names = ["int8_mm", "pack_weight", "linear_int8", "quantize_rowwise", "linear_dynamic"]
    missing = [n for n in names if not _has_fake(n)]
    if missing:
        pytest.skip(f"no fake kernel registered yet for {missing}")
    gen = torch.Generator().manual_seed(4)
    a, b = _rand_int8((8, 24), gen).cuda(), _rand_int8((24, 16), gen).cuda()
    torch.library.opcheck(ops.int8_mm.default, (a, b))
    w = _rand_int8((16, 24), gen).cuda()
    torch.library.opcheck(ops.pack_weight.default, (w,))
    packed, sums = ops.pack_weight(w)
    one, zp = torch.full((1,), 0.02, device="cuda"), torch.tensor([3], device="cuda", dtype=torch.int32)
    ws = torch.full((16,), 0.01, device="cuda")
    torch.library.opcheck(ops.linear_int8.default, (a, one, zp, packed, sums, ws, None, one, zp, True, torch.int8))
    x = torch.randn(8, 24, device="cuda")
    torch.library.opcheck(ops.quantize_rowwise.default, (x,))
    torch.library.opcheck(ops.linear_dynamic.default, (x, packed, sums, ws, None, False))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("qmin,qmax", [(-128, 127), (0, 255), (0, 15)])
def test_choose_qparams_matches_cpu(symmetric, qmin, qmax):
    """Scales and zero points are the CPU's bit for bit (the divisions are float32 divisions on
    both devices, not a multiplication by a reciprocal)."""
    gen = torch.Generator().manual_seed(11)
    mn = -torch.rand(4096, generator=gen) * torch.logspace(-6, 3, 4096)
    mx = torch.rand(4096, generator=gen) * torch.logspace(3, -6, 4096)
    mn[:3] = torch.tensor([float("nan"), -float("inf"), 0.0])
    mx[:3] = torch.tensor([1.0, float("inf"), 0.0])
    want = ops.choose_qparams(mn, mx, qmin, qmax, symmetric, 1.1920929e-07)
    got = ops.choose_qparams(mn.cuda(), mx.cuda(), qmin, qmax, symmetric, 1.1920929e-07)
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])
