"""int8 GEMM ops: every CPU variant bit-exact with torchquant.reference (and int8_mm with an
exact integer product), over odd shapes, extreme values, ties, non-contiguous and empty inputs;
bad arguments raise errors that name them."""
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch

import torchquant
from torchquant import reference
from torchquant._ops import packed_weight_shape

from conftest import num_threads

ops = torch.ops.torchquant
KMAX = 65793

SHAPES = [(1, 1, 1), (5, 13, 7), (3, 4099, 33), (7, 67, 17), (6, 64, 16), (13, 100, 65),
          (1, 257, 129), (25, 3, 300), (64, 784, 256), (2, 8, 10)]


def _rand_x(shape, dtype, gen):
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    x = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int16)
    # Extremes in a fair share of places: the values that stress int32 and the flip to uint8.
    ext = torch.randint(0, 4, shape, generator=gen)
    x = torch.where(ext == 0, torch.full_like(x, lo), torch.where(ext == 1, torch.full_like(x, hi), x))
    return x.to(dtype)


def _rand_w(n, k, gen):
    w = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int16)
    w = torch.where(torch.rand(n, k, generator=gen) < 0.2, torch.full_like(w, -128), w)
    return w.to(torch.int8)


def _exact_mm(a, b):
    return (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)


# ---------------------------------------------------------------- int8_mm
@pytest.mark.parametrize("M,K,N", SHAPES)
def test_int8_mm_exact(isa, M, K, N):
    gen = torch.Generator().manual_seed(M * 1000 + K + N)
    a = _rand_x((M, K), torch.int8, gen)
    b = _rand_w(N, K, gen).t().contiguous()
    got = ops.int8_mm(a, b)
    assert got.dtype == torch.int32 and got.shape == (M, N)
    assert torch.equal(got, _exact_mm(a, b))
    assert torch.equal(got, reference.int8_mm(a, b))
    # b with unit stride along K (a transposed weight) takes the other packing path
    bt = _rand_w(N, K, gen)
    assert torch.equal(ops.int8_mm(a, bt.t()), _exact_mm(a, bt.t()))


# The unpacked path (AVX-512 VNNI, b with unit stride along N) walks N in blocks of 64 columns
# (a last block of <= 16 columns on its own) with 4-row tiles interleaved in registers and
# K chunks of 256 rows (M <= 4), or 6-row tiles (12 for the narrow blocks) over a buffer that
# holds K chunks of up to 2048 rows of runs of blocks: every M up to 7 and around 64, K around
# the 4-row groups and the chunk edge, N around the 16-lane quarters and the 64-column block;
# other ISAs check the same shapes through the packing path.
@pytest.mark.parametrize("M", [1, 2, 3, 4, 5, 6, 7, 63, 64, 65])
def test_int8_mm_unpacked_shapes(isa, M):
    gen = torch.Generator().manual_seed(M)
    for K in (1, 2, 3, 4, 5, 7, 255, 256, 257, 259, 515):
        for N in (17, 31, 48, 63, 64, 65, 130):
            a = _rand_x((M, K), torch.int8, gen)
            b = _rand_w(K, N, gen)
            assert torch.equal(ops.int8_mm(a, b), _exact_mm(a, b)), (M, K, N)


# N <= 16 (one narrow block) and the 12-row tiles of the narrow blocks.
@pytest.mark.parametrize("M", [1, 4, 5, 12, 13, 25, 100])
def test_int8_mm_narrow_n(isa, M):
    gen = torch.Generator().manual_seed(100 + M)
    for K in (1, 3, 4, 5, 255, 257, 1025):
        for N in range(1, 18):
            a = _rand_x((M, K), torch.int8, gen)
            b = _rand_w(K, N, gen)
            assert torch.equal(ops.int8_mm(a, b), _exact_mm(a, b)), (M, K, N)


# Edges of the buffered path: K chunks of 2048 rows (running sums through the output), runs of
# several 64-column blocks ending in a narrow block or a partial one, and the task splits over
# threads (by columns, and by rows when N is narrow or M > N), with b's rows far apart and a
# transposed.
@pytest.mark.parametrize("M,K,N", [(5, 1023, 300), (7, 1024, 257), (13, 1025, 273),
                                   (70, 2051, 130), (6, 4099, 80), (300, 1100, 10),
                                   (301, 101, 130), (130, 600, 1040), (64, 3000, 400),
                                   (9, 2047, 70), (7, 2048, 257), (13, 2049, 273)])
def test_int8_mm_buffered_edges(isa, M, K, N):
    gen = torch.Generator().manual_seed(M + K + N)
    a = _rand_x((M, K), torch.int8, gen)
    b = _rand_w(K, N, gen)
    assert torch.equal(ops.int8_mm(a, b), _exact_mm(a, b))
    wide_b = _rand_w(K, N + 37, gen)[:, 5:N + 5]      # row stride N + 37
    at = _rand_x((K, M), torch.int8, gen).t()          # unit stride along M
    assert torch.equal(ops.int8_mm(at, wide_b), _exact_mm(at, wide_b))


def test_int8_mm_unpacked_row_strided_b_and_extremes(isa):
    gen = torch.Generator().manual_seed(3)
    base_b = _rand_w(300, 200, gen)
    b = base_b[::2, 7:150]            # [150, 143], strides (400, 1): rows of b far apart
    a = _rand_x((9, 150), torch.int8, gen)[:, :]
    before = base_b.clone()
    assert torch.equal(ops.int8_mm(a, b), _exact_mm(a, b))
    assert torch.equal(ops.int8_mm(a[1:4], b), _exact_mm(a[1:4], b))
    assert torch.equal(base_b, before)
    # Largest magnitudes: a = -128 against b = -128 (flipped to 0) and 127 (flipped to 255).
    K = 1027
    for av, bv in ((-128, -128), (-128, 127), (127, -128), (127, 127)):
        a = torch.full((3, K), av, dtype=torch.int8)
        b = torch.full((K, 40), bv, dtype=torch.int8)
        assert torch.equal(ops.int8_mm(a, b), torch.full((3, 40), av * bv * K, dtype=torch.int32))


def test_int8_mm_matches_torch_int_mm():
    gen = torch.Generator().manual_seed(1)
    a = _rand_x((32, 64), torch.int8, gen)
    b = _rand_w(48, 64, gen).t().contiguous()
    assert torch.equal(torchquant.int8_mm(a, b), torch._int_mm(a, b))


def test_int8_mm_non_contiguous_and_untouched(isa):
    gen = torch.Generator().manual_seed(2)
    base_a = _rand_x((40, 90), torch.int8, gen)
    base_b = _rand_w(70, 60, gen)
    a = base_a[::2, 5:65]          # row stride 180, unit column stride
    b = base_b.t()[:, ::3]         # [60, 24], strides (1, 180)
    before = (base_a.clone(), base_b.clone())
    assert torch.equal(ops.int8_mm(a, b), _exact_mm(a, b))
    assert torch.equal(ops.int8_mm(a.t().contiguous().t(), b), _exact_mm(a, b))
    assert torch.equal(base_a, before[0]) and torch.equal(base_b, before[1])


@pytest.mark.parametrize("M,K,N", [(0, 5, 3), (4, 0, 3), (4, 5, 0), (0, 0, 0)])
def test_int8_mm_empty(isa, M, K, N):
    a = torch.zeros(M, K, dtype=torch.int8)
    b = torch.ones(K, N, dtype=torch.int8)
    got = ops.int8_mm(a, b)
    assert got.shape == (M, N) and got.dtype == torch.int32 and torch.equal(got, torch.zeros(M, N, dtype=torch.int32))


def test_int8_mm_large_k_extremes(isa):
    a = torch.full((2, KMAX), -128, dtype=torch.int8)
    a[1, ::2] = 127
    b = torch.full((KMAX, 3), -128, dtype=torch.int8)
    b[1::3, 1] = 127
    assert torch.equal(ops.int8_mm(a, b), _exact_mm(a, b))


# ------------------------------------------- int8_mm with b = w.t() (unit stride along K)
# torch._int_mm's usual call: b is the transpose of a row-major weight w [N, K]. Up to 4 rows
# of a (AVX-512 VNNI) it is read as dot products of rows (64 k per vector, 4 x 4 tiles); else
# its panels are packed straight from w's rows (16 x 16 / 8 x 8 transposes of 4-byte groups on
# AVX-512 / AVX2): every M around the row tiles, K around the 4-k groups, the 64-byte vectors,
# the 16-group (AVX-512) and 8-group (AVX2) chunks and the K % 4 tail, N around the 4-column
# tiles, the 16-channel panels and the 8-panel blocks, against torch._int_mm and the exact
# product.
@pytest.mark.parametrize("M", [0, 1, 2, 3, 4, 5, 6, 7, 13, 64, 65])
def test_int8_mm_transposed_b_shapes(isa, M):
    gen = torch.Generator().manual_seed(700 + M)
    for K in (0, 1, 2, 3, 4, 5, 7, 31, 32, 33, 63, 64, 65, 67, 127, 257, 1025):
        for N in (1, 9, 15, 16, 17, 31, 33, 129, 130):
            a = _rand_x((M, K), torch.int8, gen)
            w = _rand_w(N, K, gen)
            b = w.t()
            assert b.stride() == (1, K) or K <= 1
            got = ops.int8_mm(a, b)
            assert got.dtype == torch.int32 and got.shape == (M, N)
            assert torch.equal(got, _exact_mm(a, b)), (M, K, N)
            if K != 1:  # torch 2.14's CPU _int_mm misreads a [1, N] b with strides (1, 1)
                assert torch.equal(got, torch._int_mm(a, b)), (M, K, N)


# Several panel blocks over the threads (M * N * K above the serial limit), K % 4 != 0; on VNNI
# also K chunks of 2048 rows with a K % 4 tail (9 x 4099), and the split by rows (300 x 100).
@pytest.mark.parametrize("M,K,N", [(64, 601, 300), (3, 4099, 257), (300, 130, 1040), (1, 4096, 4096),
                                   (9, 4099, 200), (300, 521, 100)])
def test_int8_mm_transposed_b_threaded(isa, M, K, N):
    gen = torch.Generator().manual_seed(M + K + N)
    a = _rand_x((M, K), torch.int8, gen)
    w = _rand_w(N, K, gen)
    want = torch._int_mm(a, w.t())
    assert torch.equal(want, _exact_mm(a, w.t()))
    assert torch.equal(ops.int8_mm(a, w.t()), want)
    assert torch.equal(torchquant.int8_mm(a, w.t()), want)


def test_int8_mm_transposed_b_extremes(isa):
    """Saturating magnitudes: -128 * -128 summed over the largest K, and every sign pair, with
    the K % 4 tail and a partial panel."""
    for M in (3, 7):  # the dot-product kernel (VNNI, M <= 4) and the packing path
        for av, bv in ((-128, -128), (-128, 127), (127, -128), (127, 127)):
            for K in (4096 + 3, KMAX):
                a = torch.full((M, K), av, dtype=torch.int8)
                w = torch.full((19, K), bv, dtype=torch.int8)
                assert torch.equal(ops.int8_mm(a, w.t()), torch.full((M, 19), av * bv * K, dtype=torch.int32))
        a = torch.full((M, KMAX), -128, dtype=torch.int8)
        a[1, ::2] = 127
        w = torch.full((17, KMAX), -128, dtype=torch.int8)
        w[1::3, 5::7] = 127
        assert torch.equal(ops.int8_mm(a, w.t()), _exact_mm(a, w.t()))


def test_int8_mm_strided_b_layouts_and_untouched(isa):
    """b = w.t() of a w whose rows are further apart than K (a column slice, every other row, an
    expanded row), and b with no unit stride at all: all exact; nothing passed in is written."""
    gen = torch.Generator().manual_seed(11)
    base = _rand_w(90, 300, gen)
    a = _rand_x((21, 131), torch.int8, gen)
    before = (base.clone(), a.clone())
    cases = [
        base[:40, 5:136].t(),                 # strides (1, 300)
        base[::2, 100:231].t(),               # strides (1, 600)
        base[7, 11:142].expand(33, 131).t(),  # strides (1, 0): one row for every channel
        base[:, :131].t()[:, :0],             # N = 0
        base.t()[:131:1, ::3],                # strides (1, 900), N = 30
        base[:, :262].reshape(90, 131, 2)[:, :, 1].t(),  # strides (2, 300): no unit stride
    ]
    for b in cases:
        assert b.shape[0] == 131
        assert torch.equal(ops.int8_mm(a, b), _exact_mm(a, b)), b.stride()
        assert torch.equal(ops.int8_mm(a[3:4], b), _exact_mm(a[3:4], b)), b.stride()
    assert torch.equal(base, before[0]) and torch.equal(a, before[1])


def _packed_oracle(w):
    """The packed weight layout of gemm_kernels.h in torch ops: [ceil(N/16), K, 16] int8 holding,
    per panel, full 4-k groups of 16 channels x 4 bytes, then the K % 4 tail channel by channel."""
    N, K = w.shape
    P = (N + 15) // 16
    wp = torch.zeros(P * 16, K, dtype=torch.int8)
    wp[:N] = w
    wp = wp.reshape(P, 16, K)
    full = K // 4 * 4
    groups = wp[:, :, :full].reshape(P, 16, K // 4, 4).permute(0, 2, 1, 3).reshape(P, -1)
    tail = wp[:, :, full:].reshape(P, -1)
    return torch.cat([groups, tail], 1).reshape(P, K, 16)


@pytest.mark.parametrize("N,K", [(1, 1), (16, 64), (17, 67), (15, 3), (33, 130), (40, 1031), (130, 257)])
def test_pack_weight_layout(isa, N, K):
    """pack_weight (rows with unit stride along K take the transposing packer on AVX2 / AVX-512)
    writes the documented layout, zeros past N, on every ISA and for strided rows."""
    gen = torch.Generator().manual_seed(N * K)
    w = _rand_w(N, K, gen)
    want = _packed_oracle(w)
    cs_want = w.to(torch.int64).sum(1).to(torch.int32)
    wide = _rand_w(N, K + 9, gen)
    wide[:, 4:K + 4] = w
    for src in (w, wide[:, 4:K + 4], w.t().contiguous().t()):
        wp, cs = ops.pack_weight(src)
        assert torch.equal(wp, want), src.stride()
        assert torch.equal(cs, cs_want), src.stride()


# ---------------------------------------------------------------- linear_int8
def _linear_case(gen, M, K, N, xdtype, zp):
    x = _rand_x((M, K), xdtype, gen)
    w = _rand_w(N, K, gen)
    # Power-of-two scales make y * (1 / out_scale) land on exact halves often: ties.
    w_scale = torch.where(torch.rand(N, generator=gen) < 0.5, torch.full((N,), 0.5),
                          torch.rand(N, generator=gen) * 0.02 + 1e-3)
    bias = torch.randn(N, generator=gen) * 50
    return x, torch.tensor([0.25]), torch.tensor([zp], dtype=torch.int32), w, w_scale, bias


@pytest.mark.parametrize("M,K,N", SHAPES)
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_linear_int8_every_isa_matches_reference(M, K, N, xdtype):
    gen = torch.Generator().manual_seed(M + 7 * K + 13 * N)
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    from conftest import SUPPORTED_ISAS
    for zp in (lo, hi, (lo + hi) // 2):
        x, xs, xz, w, ws, bias = _linear_case(gen, M, K, N, xdtype, zp)
        wp, cs = ops.pack_weight(w)
        for out_dtype, os_, oz in ((None, None, None), (torch.int8, 3.0, -5), (torch.uint8, 1.0, 128),
                                   (torch.int8, 1e-3, 0),  # saturates
                                   (torch.bfloat16, None, None), (torch.float16, None, None)):
            os_t = None if os_ is None else torch.tensor([os_])
            oz_t = None if oz is None else torch.tensor([oz], dtype=torch.int32)
            for b, relu in ((None, False), (bias, True), (bias, False)):
                want = reference.linear_int8(x, xs, xz, w, ws, b, os_t, oz_t, relu, out_dtype)
                for isa in SUPPORTED_ISAS:
                    with torchquant.force_cpu_isa(isa):
                        got = ops.linear_int8(x, xs, xz, wp, cs, ws, b, os_t, oz_t, relu, out_dtype)
                    assert got.dtype == (out_dtype or torch.float32)
                    assert torch.equal(got, want), (isa, zp, out_dtype, relu, b is None)


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (3, 2, 7), (4, 3, 16), (5, 5, 17), (9, 31, 40), (2, 33, 33),
                                   (7, 67, 5), (33, 300, 20), (6, 4099, 18)])
def test_linear_int8_7bit_activations(isa, M, K, N):
    """uint8 activations in [0, 127] (reduce_range=True; without VNNI such 4-row tiles take the
    vpmaddubsw loop), every K % 4, partial tiles and panels, per-tensor and per-row qparams,
    each output kind, against the oracle; tiles holding bytes past 127 (in the body and in the
    K % 4 tail) take the 8-bit loop beside 7-bit ones."""
    gen = torch.Generator().manual_seed(M + 3 * K + 5 * N)
    x, xs, xz, w, ws, bias = _linear_case(gen, M, K, N, torch.uint8, 0)
    x = x // 2
    x.view(-1)[: min(2, x.numel())] = torch.tensor([0, 127][: min(2, x.numel())], dtype=torch.uint8)
    # A tile with bytes past 127 must take the 8-bit loop: a pair of 255s against a pair of
    # -128s would saturate vpmaddubsw's int16 sum (at the start of the body, and in the K % 4 tail).
    mixed = x.clone()
    if M > 4 and K >= 2:
        mixed[4, 0:2] = 255
        w[: N // 2 + 1, 0:2] = -128
        t = K // 4 * 4 if K % 4 >= 2 else K - 2
        mixed[M - 1, t:t + 2] = 255
        w[: N // 2 + 1, t:t + 2] = -128
    wp, cs = ops.pack_weight(w)
    row_s, row_z = torch.rand(M, generator=gen) + 0.1, torch.randint(0, 128, (M,), generator=gen, dtype=torch.int32)
    for a in (x, mixed):
        for s_, z_ in ((xs, torch.tensor([0], dtype=torch.int32)), (xs, torch.tensor([127], dtype=torch.int32)),
                       (xs, torch.tensor([255], dtype=torch.int32)), (row_s, row_z)):
            for out_dtype, os_t, oz_t, relu in ((None, None, None, False),
                                                (torch.uint8, torch.tensor([1.0]), torch.tensor([128], dtype=torch.int32), True),
                                                (torch.int8, torch.tensor([3.0]), torch.tensor([-5], dtype=torch.int32), False)):
                want = reference.linear_int8(a, s_, z_, w, ws, bias, os_t, oz_t, relu, out_dtype)
                got = ops.linear_int8(a, s_, z_, wp, cs, ws, bias, os_t, oz_t, relu, out_dtype)
                assert torch.equal(got, want), (a is mixed, s_.numel(), int(z_[0]), out_dtype)
    if M * K * N < 2 ** 16:  # int32 accumulators, unscaled: the sums themselves
        got = ops.linear_int8(x, torch.tensor([1.0]), torch.tensor([0], dtype=torch.int32), wp, cs, torch.ones(N), None,
                              None, None)
        assert torch.equal(got, _exact_mm(x, w.t()).float())


def test_linear_int8_scale_product_past_float32_gives_the_zero_point(isa):
    """a_scale * w_scale overflowing float32 (each finite) times a zero correction is NaN, which
    requantizes to the output zero point: kernels that skip the NaN step when no NaN can arise
    must not skip it here."""
    x = torch.full((5, 20), 9, dtype=torch.uint8)
    x[1] = 200
    w = _rand_w(37, 20, torch.Generator().manual_seed(1))
    wp, cs = ops.pack_weight(w)
    xs, xz, ws = torch.tensor([1e30]), torch.tensor([9], dtype=torch.int32), torch.full((37,), 1e10)
    for out_dtype, zp in ((torch.uint8, 7), (torch.int8, -3)):
        for bias, relu in ((None, False), (torch.randn(37), True), (torch.randn(37), False)):
            os_, oz = torch.tensor([0.5]), torch.tensor([zp], dtype=torch.int32)
            want = reference.linear_int8(x, xs, xz, w, ws, bias, os_, oz, relu, out_dtype)
            got = ops.linear_int8(x, xs, xz, wp, cs, ws, bias, os_, oz, relu, out_dtype)
            assert (want[0] == zp).all()
            assert torch.equal(got, want), (out_dtype, bias is None, relu)


def test_linear_int8_every_partial_column_chunk(isa):
    """N = 1 .. 33: every width of the last (masked) 16- or 8-column chunk, every output kind."""
    gen = torch.Generator().manual_seed(5)
    for N in range(1, 34):
        x, xs, xz, w, ws, bias = _linear_case(gen, 7, 37, N, torch.uint8, 100)
        wp, cs = ops.pack_weight(w)
        for out_dtype, os_t, oz_t in ((None, None, None),
                                      (torch.uint8, torch.tensor([1.0]), torch.tensor([128], dtype=torch.int32))):
            want = reference.linear_int8(x, xs, xz, w, ws, bias, os_t, oz_t, True, out_dtype)
            got = ops.linear_int8(x, xs, xz, wp, cs, ws, bias, os_t, oz_t, True, out_dtype)
            assert torch.equal(got, want), (N, out_dtype)
        a = _rand_x((7, 37), torch.int8, gen)
        assert torch.equal(ops.int8_mm(a, w.t().contiguous()), _exact_mm(a, w.t())), N


@pytest.mark.parametrize("xdtype,xval,zp,wval", [(torch.uint8, 255, 0, -128), (torch.int8, -128, 127, -128),
                                                 (torch.uint8, 0, 255, -128), (torch.int8, 127, -128, -128),
                                                 (torch.uint8, 255, 0, 127)])
def test_linear_int8_k_at_bound_is_exact(isa, xdtype, xval, zp, wval):
    """K = kMaxK with the largest |x - zp| and |w|: the int32 sum reaches +-(2^31 - 128)."""
    x = torch.full((2, KMAX), xval, dtype=xdtype)
    w = torch.full((3, KMAX), wval, dtype=torch.int8)
    w[1, ::5] = 0
    wp, cs = ops.pack_weight(w)
    xs, xz, ws = torch.tensor([1.0]), torch.tensor([zp], dtype=torch.int32), torch.ones(3)
    got = ops.linear_int8(x, xs, xz, wp, cs, ws, None, None, None, False, None)
    exact = ((x.to(torch.int64) - zp) @ w.to(torch.int64).t())
    assert exact.abs().max() > 2**31 - 2**8 or wval == 127
    assert torch.equal(got, exact.to(torch.int32).float())
    assert torch.equal(got, reference.linear_int8(x, xs, xz, w, ws))


def test_linear_int8_leading_dims_and_non_contiguous(isa):
    gen = torch.Generator().manual_seed(5)
    w = _rand_w(40, 24, gen)
    wp, cs = ops.pack_weight(w)
    ws, xs, xz = torch.rand(40, generator=gen) * 0.01 + 1e-3, torch.tensor([0.1]), torch.tensor([3], dtype=torch.int32)
    base = _rand_x((3, 24, 10), torch.uint8, gen)
    before = base.clone()
    for x in (base.transpose(1, 2), base.transpose(1, 2)[:, ::2], base[0].t(), base.permute(2, 0, 1)[:, :, :24][0, :1].squeeze(0)):
        got = ops.linear_int8(x, xs, xz, wp, cs, ws, None, None, None, False, None)
        assert got.shape == (*x.shape[:-1], 40)
        assert torch.equal(got, reference.linear_int8(x.contiguous(), xs, xz, w, ws))
    x2 = _rand_x((9, 50), torch.uint8, gen)[:, 3:27]  # rows 50 apart, read in place
    assert torch.equal(ops.linear_int8(x2, xs, xz, wp, cs, ws, None, None, None, False, None),
                       reference.linear_int8(x2, xs, xz, w, ws))
    assert torch.equal(base, before)
    x1 = _rand_x((24,), torch.uint8, gen)
    assert torch.equal(ops.linear_int8(x1, xs, xz, wp, cs, ws, None, None, None, False, None),
                       reference.linear_int8(x1, xs, xz, w, ws))


@pytest.mark.parametrize("M,K,N", [(0, 8, 5), (3, 0, 5), (3, 8, 0)])
def test_linear_int8_empty(isa, M, K, N):
    w = torch.ones(N, K, dtype=torch.int8)
    wp, cs = ops.pack_weight(w)
    assert wp.shape == packed_weight_shape(N, K)
    x = torch.full((M, K), 7, dtype=torch.uint8)
    bias = torch.arange(N, dtype=torch.float32)
    got = ops.linear_int8(x, torch.tensor([0.5]), torch.tensor([2], dtype=torch.int32), wp, cs, torch.ones(N),
                          bias, None, None, False, None)
    assert got.shape == (M, N)
    assert torch.equal(got, reference.linear_int8(x, torch.tensor([0.5]), torch.tensor([2], dtype=torch.int32), w,
                                                  torch.ones(N), bias))


def test_linear_int8_non_finite_bias_is_defined(isa):
    w = torch.ones(18, 5, dtype=torch.int8)
    wp, cs = ops.pack_weight(w)
    x = torch.ones(2, 5, dtype=torch.uint8)
    bias = torch.zeros(18)
    bias[0], bias[1], bias[17] = float("nan"), float("inf"), -float("inf")
    args = (x, torch.tensor([1.0]), torch.tensor([0], dtype=torch.int32), wp, cs, torch.ones(18), bias)
    for relu in (False, True):
        for od, s, z in ((None, None, None), (torch.int8, torch.tensor([1.0]), torch.tensor([3], dtype=torch.int32))):
            got = ops.linear_int8(*args, s, z, relu, od)
            want = reference.linear_int8(x, args[1], args[2], w, args[5], bias, s, z, relu, od)
            assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan())
    q = ops.linear_int8(*args, torch.tensor([1.0]), torch.tensor([3], dtype=torch.int32), False, torch.int8)
    assert q[0, :2].tolist() == [3, 127] and q[0, 17] == -128  # NaN -> zero point, +-inf saturate


def test_linear_int8_subnormal_out_scale(isa):
    # 1 / out_scale overflows to inf: a zero result times inf is NaN (-> zero point), the others
    # saturate. The kernels skip the NaN step only where no NaN can arise; this must not be one.
    gen = torch.Generator().manual_seed(4)
    w = torch.randint(-3, 4, (40, 9), dtype=torch.int8, generator=gen)
    wp, cs = ops.pack_weight(w)
    x = torch.randint(0, 4, (7, 9), dtype=torch.uint8, generator=gen)
    x[0] = 2  # with zero point 2: row 0 is all zero
    xs, xz = torch.tensor([0.5]), torch.tensor([2], dtype=torch.int32)
    os_, oz = torch.tensor([1e-40]), torch.tensor([5], dtype=torch.int32)
    for relu in (False, True):
        got = ops.linear_int8(x, xs, xz, wp, cs, torch.ones(40), None, os_, oz, relu, torch.int8)
        want = reference.linear_int8(x, xs, xz, w, torch.ones(40), None, os_, oz, relu, torch.int8)
        assert torch.equal(got, want)
        assert (got[0] == 5).all()


# ---------------------------------------------------------------- linear_int8, per-row qparams
def _row_qparams(gen, rows, xdtype):
    """Per-row scales (a quarter powers of two: ties downstream) and zero points, the ends of
    the activation range in a fair share of rows."""
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    xs = torch.rand(rows, generator=gen) * 0.3 + 1e-3
    xs = torch.where(torch.rand(rows, generator=gen) < 0.25, torch.full((rows,), 0.25), xs)
    xz = torch.randint(lo, hi + 1, (rows,), generator=gen, dtype=torch.int32)
    ext = torch.randint(0, 4, (rows,), generator=gen)
    xz = torch.where(ext == 0, torch.full_like(xz, lo), torch.where(ext == 1, torch.full_like(xz, hi), xz))
    return xs, xz


OUT_KINDS = ((None, None, None), (torch.int8, torch.tensor([3.0]), torch.tensor([-5], dtype=torch.int32)),
             (torch.uint8, torch.tensor([1.0]), torch.tensor([128], dtype=torch.int32)),
             (torch.int8, torch.tensor([1e-3]), torch.tensor([0], dtype=torch.int32)),  # saturates
             (torch.bfloat16, None, None), (torch.float16, None, None))


@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (5, 13, 7), (7, 67, 17), (13, 100, 65), (25, 3, 300), (3, 4099, 33)])
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_linear_int8_per_row_matches_reference(isa, M, K, N, xdtype):
    gen = torch.Generator().manual_seed(M + 7 * K + 13 * N)
    x, _, _, w, ws, bias = _linear_case(gen, M, K, N, xdtype, 0)
    xs, xz = _row_qparams(gen, M, xdtype)
    wp, cs = ops.pack_weight(w)
    # per row in both, and per row in one with the other per tensor
    for s, z in ((xs, xz), (xs, xz[:1]), (xs[:1], xz)):
        before = (x.clone(), s.clone(), z.clone())
        for out_dtype, os_t, oz_t in OUT_KINDS:
            for b, relu in ((None, False), (bias, True), (bias, False)):
                want = reference.linear_int8(x, s, z, w, ws, b, os_t, oz_t, relu, out_dtype)
                got = ops.linear_int8(x, s, z, wp, cs, ws, b, os_t, oz_t, relu, out_dtype)
                assert got.dtype == (out_dtype or torch.float32)
                assert torch.equal(got, want), (isa, out_dtype, relu, b is None, s.numel(), z.numel())
        assert torch.equal(x, before[0]) and torch.equal(s, before[1]) and torch.equal(z, before[2])


def test_linear_int8_per_row_is_each_row_per_tensor(isa):
    """Independent of the reference: row r of a per-row call is the per-tensor call on row r
    with row r's qparams, for every output kind."""
    gen = torch.Generator().manual_seed(11)
    for xdtype in (torch.uint8, torch.int8):
        x, _, _, w, ws, bias = _linear_case(gen, 9, 45, 37, xdtype, 0)
        xs, xz = _row_qparams(gen, 9, xdtype)
        wp, cs = ops.pack_weight(w)
        for out_dtype, os_t, oz_t in OUT_KINDS[:3]:
            got = ops.linear_int8(x, xs, xz, wp, cs, ws, bias, os_t, oz_t, True, out_dtype)
            for r in range(9):
                one = ops.linear_int8(x[r:r + 1], xs[r:r + 1], xz[r:r + 1], wp, cs, ws, bias, os_t, oz_t, True,
                                      out_dtype)
                assert torch.equal(got[r:r + 1], one), (xdtype, out_dtype, r)


def test_linear_int8_per_row_from_quantize_rowwise_is_linear_dynamic(isa):
    gen = torch.Generator().manual_seed(12)
    x = _dyn_input(gen, (2, 7, 50))
    w = _rand_w(30, 50, gen)
    wp, cs = ops.pack_weight(w)
    ws, bias = torch.rand(30, generator=gen) * 0.01 + 1e-3, torch.randn(30, generator=gen)
    q, s, z = ops.quantize_rowwise(x, -128, 127)
    for relu in (False, True):
        assert torch.equal(ops.linear_int8(q, s, z, wp, cs, ws, bias, None, None, relu, None),
                           ops.linear_dynamic(x, wp, cs, ws, bias, relu))


def test_linear_int8_per_row_shapes_dtypes_and_strides(isa):
    gen = torch.Generator().manual_seed(13)
    w = _rand_w(40, 24, gen)
    wp, cs = ops.pack_weight(w)
    ws = torch.rand(40, generator=gen) * 0.01 + 1e-3
    base = _rand_x((3, 24, 10), torch.uint8, gen)
    before = base.clone()
    x = base.transpose(1, 2)                      # [3, 10, 24], non-contiguous: 30 rows
    xs, xz = _row_qparams(gen, 30, torch.uint8)
    want = reference.linear_int8(x.contiguous(), xs, xz, w, ws)
    # qparams shaped like x's leading dims (also with transposed strides), [rows, 1], other dtypes
    for s, z in ((xs.reshape(3, 10), xz.reshape(3, 10)), (xs.reshape(30, 1), xz.reshape(30, 1)),
                 (xs.reshape(3, 10).t().contiguous().t(), xz.reshape(3, 10).t().contiguous().t()),
                 (xs.double(), xz.long()), (xs.double(), xz.to(torch.uint8)), (xs.half(), xz.to(torch.int16))):
        y = ops.linear_int8(x, s, z, wp, cs, ws, None, None, None, False, None)
        assert y.shape == (3, 10, 40)
        assert torch.equal(y, reference.linear_int8(x.contiguous(), s, z, w, ws))
    assert torch.equal(ops.linear_int8(x, xs, xz, wp, cs, ws, None, None, None, False, None), want)
    strided_s = torch.stack([xs, torch.zeros(30)], 1)[:, 0]   # stride 2
    strided_z = torch.stack([xz, torch.zeros(30, dtype=torch.int32)], 1)[:, 0]
    assert torch.equal(ops.linear_int8(x, strided_s, strided_z, wp, cs, ws, None, None, None, False, None), want)
    x2 = _rand_x((9, 50), torch.uint8, gen)[:, 3:27]  # rows 50 apart, read in place
    s2, z2 = _row_qparams(gen, 9, torch.uint8)
    assert torch.equal(ops.linear_int8(x2, s2, z2, wp, cs, ws, None, None, None, False, None),
                       reference.linear_int8(x2, s2, z2, w, ws))
    x1 = _rand_x((24,), torch.uint8, gen)  # 1-D x has one row
    assert torch.equal(ops.linear_int8(x1, s2[:1], z2[:1], wp, cs, ws, None, None, None, False, None),
                       reference.linear_int8(x1, s2[:1], z2[:1], w, ws))
    assert torch.equal(base, before)


@pytest.mark.parametrize("xshape,N", [((0, 8), 5), ((2, 0, 8), 5), ((3, 0), 5), ((4, 8), 0)])
def test_linear_int8_per_row_empty(isa, xshape, N):
    K = xshape[-1]
    rows = 1
    for d in xshape[:-1]:
        rows *= d
    w = torch.ones(N, K, dtype=torch.int8)
    wp, cs = ops.pack_weight(w)
    x = torch.full(xshape, 7, dtype=torch.uint8)
    bias = torch.arange(N, dtype=torch.float32)
    xs, xz = torch.full((rows,), 0.5), torch.arange(rows, dtype=torch.int32)
    for s, z in ((xs, xz), (torch.tensor([0.5]), xz), (xs, torch.tensor([2], dtype=torch.int32))):
        got = ops.linear_int8(x, s, z, wp, cs, torch.ones(N), bias, None, None, False, None)
        assert got.shape == (*xshape[:-1], N)
        assert torch.equal(got, reference.linear_int8(x, s, z, w, torch.ones(N), bias))


@pytest.mark.parametrize("over,match", [
    (dict(x_scale=torch.tensor([0.1, 0.2])), r"'x_scale' must have 1 element \(per tensor\) or 3 \(per row\), got 2"),
    (dict(x_scale=torch.ones(4)), r"'x_scale' must have 1 element \(per tensor\) or 3 \(per row\), got 4"),
    (dict(x_scale=torch.ones(0)), r"'x_scale' must have 1 element \(per tensor\) or 3 \(per row\), got 0"),
    (dict(x_zero_point=torch.tensor([1, 2], dtype=torch.int32)),
     r"'x_zero_point' must have 1 element \(per tensor\) or 3 \(per row\), got 2"),
    (dict(x=torch.ones(2, 3, 8, dtype=torch.uint8), x_scale=torch.ones(3)),
     r"'x_scale' must have 1 element \(per tensor\) or 6 \(per row\), got 3"),
    (dict(x_scale=torch.tensor([0.1, 0.0, 0.3])), "'x_scale' must be > 0 and finite, got 0 at row 1"),
    (dict(x_scale=torch.tensor([0.1, 0.2, float("inf")])), "'x_scale' must be > 0 and finite, got inf at row 2"),
    (dict(x_scale=torch.tensor([float("nan"), 0.2, 0.3])), "'x_scale' must be > 0 and finite, got nan at row 0"),
    (dict(x_scale=torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)), "'x_scale' must be > 0 and finite, got -0.2 at row 1"),
    (dict(x_scale=torch.tensor([0.1, 1e300, 0.3], dtype=torch.float64)), r"'x_scale' must be > 0 and finite, got 1e\+300 \(inf in float32\) at row 1"),
    (dict(x_scale=torch.tensor([1, 2, 3])), "'x_scale' must be a floating-point tensor, got dtype Long"),
    (dict(x_zero_point=torch.tensor([0, 255, 256], dtype=torch.int32)), r"'x_zero_point' must lie in \[0, 255\], got 256 at row 2"),
    (dict(x_zero_point=torch.tensor([0, -1, 3])), r"'x_zero_point' must lie in \[0, 255\], got -1 at row 1"),
    (dict(x_zero_point=torch.tensor([2**32 + 3, 0, 0])), r"'x_zero_point' must lie in \[0, 255\], got 4294967299 at row 0"),
    (dict(x=torch.ones(3, 8, dtype=torch.int8), x_zero_point=torch.tensor([-128, 127, 128], dtype=torch.int32)),
     r"'x_zero_point' must lie in \[-128, 127\], got 128 at row 2"),
    (dict(x=torch.ones(3, 8, dtype=torch.int8), x_zero_point=torch.tensor([0, 200, 0], dtype=torch.uint8)),
     r"'x_zero_point' must lie in \[-128, 127\], got 200 at row 1"),
    (dict(x_zero_point=torch.tensor([1.0, 2.0, 3.0])), "'x_zero_point' must be an integer tensor, got dtype Float"),
])
def test_linear_int8_per_row_bad_input(over, match):
    with pytest.raises(RuntimeError, match=match):
        _call(**over)


def test_linear_int8_per_row_fake_kernel():
    w = torch.ones(20, 8, dtype=torch.int8)
    wp, cs = ops.pack_weight(w)
    x = torch.ones(2, 3, 8, dtype=torch.uint8)
    fake = torch._subclasses.fake_tensor.FakeTensorMode()
    with fake:
        fx, fwp, fcs, fws = (fake.from_tensor(t) for t in (x, wp, cs, torch.ones(20)))
        y = ops.linear_int8(fx, fake.from_tensor(torch.ones(6)), fake.from_tensor(torch.zeros(2, 3, dtype=torch.int32)),
                            fwp, fcs, fws, None, None, None, False, None)
        assert y.shape == (2, 3, 20) and y.dtype == torch.float32
        with pytest.raises(RuntimeError, match=r"'x_zero_point' must have 1 element \(per tensor\) or 6 \(per row\), got 5"):
            ops.linear_int8(fx, fake.from_tensor(torch.ones(1)), fake.from_tensor(torch.zeros(5, dtype=torch.int32)),
                            fwp, fcs, fws, None, None, None, False, None)


# ---------------------------------------------------------------- pack_weight
# K = 0 with N % 16 != 0: the last panel's padding was a memset of the empty tensor's null data
# pointer (undefined behaviour; scripts/sanitize.sh's UBSan run reported it).
@pytest.mark.parametrize("N,K", [(1, 1), (16, 4), (17, 5), (33, 130), (0, 3), (5, 0), (17, 0), (32, 0), (0, 0)])
def test_pack_weight_shape_and_col_sums(N, K):
    gen = torch.Generator().manual_seed(N + K)
    w = _rand_w(N, K, gen)
    wp, cs = ops.pack_weight(w)
    assert wp.shape == packed_weight_shape(N, K) and wp.dtype == torch.int8
    assert torch.equal(cs, w.to(torch.int64).sum(1).to(torch.int32))
    wp2, cs2 = ops.pack_weight(w.t().contiguous().t())  # strided weight, same packing
    assert torch.equal(wp, wp2) and torch.equal(cs, cs2)
    fake = torch._subclasses.fake_tensor.FakeTensorMode()
    with fake:
        fwp, fcs = ops.pack_weight(fake.from_tensor(w))
    assert fwp.shape == wp.shape and fcs.shape == cs.shape


# ---------------------------------------------------------------- dynamic
def _dyn_input(gen, shape):
    x = torch.randn(shape, generator=gen) * 3
    x = x + torch.randn(shape[:-1] + (1,), generator=gen)  # rows offset: zero points away from the middle
    if shape[-1] > 2:
        x[..., 1] = 0.0
    return x


@pytest.mark.parametrize("shape", [(1, 1), (4, 13), (33, 67), (2, 3, 100), (64, 784), (5, 1000)])
def test_quantize_rowwise_matches_reference_and_torch_ao(isa, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x = _dyn_input(gen, shape)
    x.view(-1)[:: 7] = torch.round(x.view(-1)[:: 7] * 4) / 4  # exact multiples: ties after scaling
    q, s, z = ops.quantize_rowwise(x, -128, 127)
    rq, rs, rz = reference.quantize_rowwise(x, -128, 127)
    assert torch.equal(q, rq) and torch.equal(s, rs) and torch.equal(z, rz)
    from torch.ao.quantization.observer import PerChannelMinMaxObserver
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_affine)
    obs(x.reshape(-1, shape[-1]))
    s_ao, z_ao = obs.calculate_qparams()
    assert torch.equal(s, s_ao.float()) and torch.equal(z.long(), z_ao.long())
    q7, s7, z7 = ops.quantize_rowwise(x, -64, 63)
    rq7, rs7, rz7 = reference.quantize_rowwise(x, -64, 63)
    assert torch.equal(q7, rq7) and torch.equal(s7, rs7) and torch.equal(z7, rz7)


def test_quantize_rowwise_non_finite_rows_are_defined(isa):
    x = torch.tensor([[1.0, float("nan"), -2.0, 0.5] * 5,
                      [1.0, float("inf"), -2.0, 0.5] * 5,
                      [1.0, -float("inf"), -2.0, 0.5] * 5,
                      [0.0] * 20,
                      [float("nan")] * 20])
    q, s, z = ops.quantize_rowwise(x)
    rq, rs, rz = reference.quantize_rowwise(x)
    assert torch.equal(q, rq) and torch.equal(s, rs) and torch.equal(z, rz)
    # K = 83: the specials land in every accumulator of the vector kernels' 64-wide blocks,
    # in a 16-wide step and in the tail.
    wide = torch.cat([x.repeat(1, 4), x[:, :3]], dim=1)
    wq, ws_, wz = ops.quantize_rowwise(wide)
    rq, rs, rz = reference.quantize_rowwise(wide)
    assert torch.equal(wq, rq) and torch.equal(ws_, rs) and torch.equal(wz, rz)
    # NaN counts as 0: the NaN row quantizes like the row with 0 in its place
    q0, s0, z0 = ops.quantize_rowwise(torch.nan_to_num(x[:1], nan=0.0))
    assert torch.equal(q[:1], q0) and torch.equal(s[:1], s0) and torch.equal(z[:1], z0)
    assert z[2] == -128 and torch.isinf(s[1]) and torch.isinf(s[2])
    w = torch.ones(3, 20, dtype=torch.int8)
    wp, cs = ops.pack_weight(w)
    y = ops.linear_dynamic(x, wp, cs, torch.ones(3), None, False)
    assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.equal(y[3], torch.zeros(3)) and torch.equal(y[4], torch.zeros(3))


@pytest.mark.parametrize("M,K,N", SHAPES[:8] + [(2, 3, 5)])
def test_linear_dynamic_every_isa_matches_reference(M, K, N):
    from conftest import SUPPORTED_ISAS
    gen = torch.Generator().manual_seed(3 * M + K + N)
    x = _dyn_input(gen, (M, K))
    w = _rand_w(N, K, gen)
    ws = torch.rand(N, generator=gen) * 0.01 + 1e-4
    bias = torch.randn(N, generator=gen)
    wp, cs = ops.pack_weight(w)
    for b, relu, rr in ((None, False, False), (bias, True, False), (None, False, True), (bias, True, True)):
        want = reference.linear_dynamic(x, w, ws, b, relu, rr)
        for isa in SUPPORTED_ISAS:
            with torchquant.force_cpu_isa(isa):
                got = ops.linear_dynamic(x, wp, cs, ws, b, relu, rr)
            assert torch.equal(got, want), (isa, rr)
    # 7-bit rows (reduce_range) are linear_int8 on quantize_rowwise(x, 0, 127)'s codes as uint8
    q7, s7, z7 = reference.quantize_rowwise(x, 0, 127)
    if M:
        assert int(q7.min()) >= 0 and int(z7.min()) >= 0
    assert torch.equal(ops.linear_dynamic(x, wp, cs, ws, bias, True, True),
                       reference.linear_int8(q7.view(torch.uint8), s7, z7, w, ws, bias, relu=True))
    # the float model of the dequantized activations, up to float32 summation order
    q, s, z = reference.quantize_rowwise(x)
    xq = (q.double() - z[:, None]) * s[:, None].double()
    y = ops.linear_dynamic(x, wp, cs, ws, bias, False)
    torch.testing.assert_close(y.double(), xq @ (w.double() * ws[:, None]).t() + bias, rtol=1e-5, atol=1e-4)


def test_linear_dynamic_leading_dims_and_dtypes(isa):
    gen = torch.Generator().manual_seed(9)
    w = _rand_w(20, 30, gen)
    wp, cs = ops.pack_weight(w)
    ws = torch.rand(20, generator=gen) * 0.01 + 1e-3
    x = _dyn_input(gen, (2, 5, 30))
    got = ops.linear_dynamic(x, wp, cs, ws, None, False)
    assert got.shape == (2, 5, 20) and torch.equal(got, reference.linear_dynamic(x, w, ws))
    xt = x.transpose(0, 1)
    assert torch.equal(ops.linear_dynamic(xt, wp, cs, ws, None, False), reference.linear_dynamic(xt.contiguous(), w, ws))
    xd = x.double()
    assert torch.equal(ops.linear_dynamic(xd, wp, cs, ws, None, False), reference.linear_dynamic(xd.float(), w, ws))
    assert ops.linear_dynamic(torch.zeros(0, 30), wp, cs, ws, None, False).shape == (0, 20)


# ---------------------------------------------------------------- bad input
def _good_args():
    w = torch.ones(20, 8, dtype=torch.int8)
    wp, cs = ops.pack_weight(w)
    return dict(x=torch.ones(3, 8, dtype=torch.uint8), x_scale=torch.tensor([0.1]),
                x_zero_point=torch.tensor([3], dtype=torch.int32), w_packed=wp, w_col_sums=cs,
                w_scale=torch.ones(20), bias=None, out_scale=torch.tensor([0.5]),
                out_zero_point=torch.tensor([0], dtype=torch.int32), relu=False, out_dtype=torch.int8)


def _call(**over):
    a = _good_args()
    a.update(over)
    return ops.linear_int8(a["x"], a["x_scale"], a["x_zero_point"], a["w_packed"], a["w_col_sums"],
                           a["w_scale"], a["bias"], a["out_scale"], a["out_zero_point"], a["relu"], a["out_dtype"])


@pytest.mark.parametrize("over,match", [
    (dict(x=torch.ones(3, 8)), "'x' must be an int8 or uint8"),
    (dict(x=torch.ones(3, 9, dtype=torch.uint8)), "packed for K = 8 but 'x' has K = 9"),
    (dict(x_scale=torch.tensor([0.0])), "'x_scale' must be > 0 and finite, got 0"),
    (dict(x_scale=torch.tensor([-1.0])), "'x_scale' must be > 0"),
    (dict(x_scale=torch.tensor([float("nan")])), "'x_scale' must be > 0 and finite, got nan"),
    (dict(x_zero_point=torch.tensor([256], dtype=torch.int32)), r"'x_zero_point' must lie in \[0, 255\], got 256"),
    (dict(x_zero_point=torch.tensor([-1])), r"'x_zero_point' must lie in \[0, 255\], got -1"),
    (dict(x=torch.ones(3, 8, dtype=torch.int8), x_zero_point=torch.tensor([128], dtype=torch.int32)), r"\[-128, 127\], got 128"),
    (dict(x_zero_point=torch.tensor([1.0])), "'x_zero_point' must be an integer tensor"),
    (dict(w_scale=torch.ones(19)), "'w_scale' has 19 elements but 'w_col_sums' has 20"),
    (dict(w_col_sums=torch.zeros(2, dtype=torch.int32)), "'w_col_sums' has 2 elements .* but 'w_packed' holds 2 panels"),
    (dict(w_col_sums=torch.zeros(0, dtype=torch.int32)), "'w_col_sums' has 0 elements .* packed for 17 to 32"),
    (dict(w_scale=torch.tensor([1.0] * 19 + [float("inf")])), "'w_scale' must be > 0 and finite, got inf at channel 19"),
    (dict(w_scale=torch.tensor([1.0] * 5 + [-2.0] + [1.0] * 14)), "'w_scale' must be > 0 and finite, got -2 at channel 5"),
    (dict(bias=torch.ones(21)), "'bias' must have 20 elements"),
    (dict(out_scale=torch.tensor([float("inf")])), "'out_scale' must be > 0 and finite, got inf"),
    (dict(out_zero_point=torch.tensor([200], dtype=torch.int32)), r"'out_zero_point' must lie in \[-128, 127\], got 200"),
    (dict(out_zero_point=torch.tensor([-1], dtype=torch.int32), out_dtype=torch.uint8), r"\[0, 255\], got -1"),
    (dict(out_scale=None), "'out_scale' is required"),
    (dict(out_dtype=torch.float64), "'out_dtype' must be torch.float32, torch.bfloat16, torch.float16"),
    (dict(w_packed=torch.zeros(2, 8, 8, dtype=torch.int8)), "'w_packed' must be a contiguous int8 tensor of shape"),
    (dict(w_packed=torch.zeros(2, 8, 16)), "'w_packed' must be a contiguous int8"),
    (dict(w_packed=torch.zeros(3, 8, 16, dtype=torch.int8)), "'w_col_sums' has 20 elements .* but 'w_packed' holds 3 panels of 16 channels, packed for 33 to 48"),
    (dict(w_col_sums=torch.zeros(20)), "'w_col_sums' must be a contiguous 1-D int32"),
])
def test_linear_int8_bad_input(over, match):
    with pytest.raises(RuntimeError, match=match):
        _call(**over)


def test_bad_input_other_ops():
    wp, cs = ops.pack_weight(torch.ones(4, 8, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="'a' must be an int8 tensor, got dtype Int"):
        ops.int8_mm(torch.ones(2, 3, dtype=torch.int32), torch.ones(3, 2, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="'b' must be an int8 tensor, got dtype Byte"):
        ops.int8_mm(torch.ones(2, 3, dtype=torch.int8), torch.ones(3, 2, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match=r"a.size\(1\) must equal b.size\(0\)"):
        ops.int8_mm(torch.ones(2, 3, dtype=torch.int8), torch.ones(4, 2, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="'b' must be 2-D"):
        ops.int8_mm(torch.ones(2, 3, dtype=torch.int8), torch.ones(3, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="'w' must be an int8 tensor, got dtype Byte"):
        ops.pack_weight(torch.ones(4, 8, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="'w' must be 2-D"):
        ops.pack_weight(torch.ones(4, 8, 2, dtype=torch.int8))
    with pytest.raises(RuntimeError, match="'x' must be a floating-point tensor"):
        ops.linear_dynamic(torch.ones(2, 8, dtype=torch.int8), wp, cs, torch.ones(4), None, False)
    with pytest.raises(RuntimeError, match="packed for K = 8 but 'x' has K = 7"):
        ops.linear_dynamic(torch.ones(2, 7), wp, cs, torch.ones(4), None, False)
    with pytest.raises(RuntimeError, match="'w_scale' must be > 0 and finite, got 0 at channel 0"):
        ops.linear_dynamic(torch.ones(2, 8), wp, cs, torch.zeros(4), None, False)
    with pytest.raises(RuntimeError, match="'qmin' must be < qmax"):
        ops.quantize_rowwise(torch.ones(2, 8), 5, 5)
    with pytest.raises(RuntimeError, match="'qmax' must lie in"):
        ops.quantize_rowwise(torch.ones(2, 8), 0, 255)
    with pytest.raises(RuntimeError, match="'x' must be a floating-point tensor"):
        ops.quantize_rowwise(torch.ones(2, 8, dtype=torch.int32))


def test_packed_weight_from_another_device():
    wp, cs = ops.pack_weight(torch.ones(4, 8, dtype=torch.int8))
    x = torch.ones(2, 8, dtype=torch.uint8)
    args = (torch.tensor([1.0]), torch.tensor([0], dtype=torch.int32))
    with pytest.raises(RuntimeError, match="'w_packed' is on meta but 'x' is on cpu"):
        ops.linear_int8(x, *args, wp.to("meta"), cs, torch.ones(4), None, None, None, False, None)
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="'w_packed' is on cuda"):
            ops.linear_int8(x, *args, wp.cuda(), cs, torch.ones(4), None, None, None, False, None)


@pytest.mark.parametrize("meta", ["x_scale", "x_zero_point", "w_scale", "bias", "out_scale", "out_zero_point", "b"])
def test_one_meta_argument_is_an_error(meta):
    # A meta tensor among CPU ones sends the call to the fake kernel (Meta outranks CPU): it
    # returned an uninitialized CPU tensor as the result, or nothing at all for the in-place ops.
    wp, cs = ops.pack_weight(torch.ones(4, 8, dtype=torch.int8))
    args = dict(x=torch.ones(2, 8, dtype=torch.uint8), x_scale=torch.tensor([1.0]),
                x_zero_point=torch.tensor([0], dtype=torch.int32), w_scale=torch.ones(4), bias=torch.ones(4),
                out_scale=torch.tensor([1.0]), out_zero_point=torch.tensor([0], dtype=torch.int32))
    match = f"argument '{meta}' is on meta but '(x|a)' is on cpu"
    if meta == "b":
        with pytest.raises(RuntimeError, match=match):
            ops.int8_mm(torch.ones(2, 8, dtype=torch.int8), torch.ones(8, 3, dtype=torch.int8, device="meta"))
        return
    args[meta] = args[meta].to("meta")
    with pytest.raises(RuntimeError, match=match):
        ops.linear_int8(args["x"], args["x_scale"], args["x_zero_point"], wp, cs, args["w_scale"], args["bias"],
                        args["out_scale"], args["out_zero_point"], False, torch.uint8)
    if meta in ("w_scale", "bias"):
        with pytest.raises(RuntimeError, match=match):
            ops.linear_dynamic(torch.ones(2, 8), wp, cs, args["w_scale"], args["bias"], False)


def test_k_past_the_bound():
    k = KMAX + 1
    with pytest.raises(RuntimeError, match=f"inner dimension K of 'a' is {k}, past the largest K \\({KMAX}\\)"):
        ops.int8_mm(torch.ones(1, k, dtype=torch.int8), torch.ones(k, 1, dtype=torch.int8))
    with pytest.raises(RuntimeError, match=f"inner dimension K of 'w' is {k}"):
        ops.pack_weight(torch.ones(1, k, dtype=torch.int8))
    wp, cs = ops.pack_weight(torch.ones(1, KMAX, dtype=torch.int8))
    with pytest.raises(RuntimeError, match=f"inner dimension K of 'x' is {k}"):
        ops.linear_int8(torch.ones(1, k, dtype=torch.uint8), torch.tensor([1.0]), torch.tensor([0]), wp, cs,
                        torch.ones(1), None, None, None, False, None)
    with pytest.raises(RuntimeError, match=f"inner dimension K of 'x' is {k}"):
        ops.linear_dynamic(torch.ones(1, k), wp, cs, torch.ones(1), None, False)


# ---------------------------------------------------------------- registration
def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    w = _rand_w(20, 9, gen)
    wp, cs = ops.pack_weight(w)
    x = _rand_x((2, 3, 9), torch.uint8, gen)
    xs, xz = torch.tensor([0.1]), torch.tensor([4], dtype=torch.int32)
    ws, b = torch.rand(20, generator=gen) + 0.01, torch.randn(20, generator=gen)
    torch.library.opcheck(ops.int8_mm, (_rand_x((5, 9), torch.int8, gen), w.t()))
    torch.library.opcheck(ops.pack_weight, (w,))
    torch.library.opcheck(ops.linear_int8, (x, xs, xz, wp, cs, ws, b, None, None, True, None))
    torch.library.opcheck(ops.linear_int8, (x, xs, xz, wp, cs, ws, None, torch.tensor([0.2]),
                                            torch.tensor([-3], dtype=torch.int32), False, torch.int8))
    rs, rz = torch.rand(6, generator=gen) + 0.01, torch.randint(0, 256, (2, 3), generator=gen, dtype=torch.int32)
    torch.library.opcheck(ops.linear_int8, (x, rs, rz, wp, cs, ws, b, None, None, True, None))
    torch.library.opcheck(ops.quantize_rowwise, (torch.randn(4, 9, generator=gen), -128, 127))
    torch.library.opcheck(ops.linear_dynamic, (torch.randn(2, 3, 9, generator=gen), wp, cs, ws, b, False))
    torch.library.opcheck(ops.linear_dynamic, (torch.randn(2, 3, 9, generator=gen), wp, cs, ws, b, False, True))


def test_public_wrappers_and_compile():
    w = torch.randint(-128, 128, (4, 8), dtype=torch.int8)
    wp, cs = torchquant.pack_weight(w)
    x = torch.randint(0, 256, (2, 3, 8), dtype=torch.uint8)
    ws = torch.full((4,), 0.01)
    y = torchquant.linear_int8(x, 0.1, 128, wp, cs, ws, relu=True, out_scale=0.05, out_zero_point=0,
                               out_dtype=torch.uint8)
    assert torch.equal(y, reference.linear_int8(x, torch.tensor([0.1]), torch.tensor([128]), w, ws, None,
                                                torch.tensor([0.05]), torch.tensor([0]), True, torch.uint8))
    f = torch.compile(lambda x: torchquant.linear_dynamic(x, wp, cs, ws, relu=True), fullgraph=True)
    xf = torch.randn(5, 8)
    assert torch.equal(f(xf), reference.linear_dynamic(xf, w, ws, None, True))


@pytest.mark.parametrize("N", [5, 17, 32])
def test_linear_int8_with_k_zero_is_the_bias(isa, N):
    wp, cs = ops.pack_weight(torch.zeros(N, 0, dtype=torch.int8))
    bias = torch.randn(N)
    y = ops.linear_int8(torch.zeros(3, 0, dtype=torch.uint8), torch.tensor([0.5]), torch.tensor([7], dtype=torch.int32),
                        wp, cs, torch.ones(N), bias, None, None, False, None)
    assert torch.equal(y, bias.expand(3, N))


# ---------------------------------------------------------------- property tests
@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(M=st.integers(0, 300), K=st.integers(1, 600), N=st.integers(1, 200), seed=st.integers(0, 2**32 - 1))
def test_linear_int8_random_shapes_match_reference(isa, M, K, N, seed):
    """Property test over random shapes (M = 0 included; K and N across the 4-byte group, the
    16-column panel and the register tile's boundaries), per-tensor or per-row activation
    qparams, every output kind, 1 or 2 threads: bit-identical to the reference on each ISA. The
    choices other than the shape come from the drawn seed, uniformly."""
    r = random.Random(seed)
    xdtype, per_row = r.choice([torch.uint8, torch.int8]), r.random() < 0.5
    out, bias, relu, threads = r.randrange(len(OUT_KINDS)), r.random() < 0.5, r.random() < 0.5, r.choice([1, 2])
    gen = torch.Generator().manual_seed(seed % 2**31)
    zp = int(torch.randint(0, 256 if xdtype == torch.uint8 else 128, (1,), generator=gen))
    x, xs, xz, w, ws, b = _linear_case(gen, M, K, N, xdtype, zp if xdtype == torch.uint8 else zp - 64)
    if per_row and M > 0:
        xs, xz = _row_qparams(gen, M, xdtype)
    out_dtype, os_t, oz_t = OUT_KINDS[out]
    b = b if bias else None
    wp, cs = ops.pack_weight(w)
    with num_threads(threads):
        got = ops.linear_int8(x, xs, xz, wp, cs, ws, b, os_t, oz_t, relu, out_dtype)
    assert torch.equal(got, reference.linear_int8(x, xs, xz, w, ws, b, os_t, oz_t, relu, out_dtype))


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(M=st.integers(0, 300), K=st.integers(0, 600), N=st.integers(0, 200), seed=st.integers(0, 2**32 - 1))
def test_int8_mm_random_shapes_exact(isa, M, K, N, seed):
    """Property test: int8_mm of random shapes (empty ones included) and b layouts is the exact
    integer product on each ISA (layout and thread count from the drawn seed)."""
    r = random.Random(seed)
    b_layout, threads = r.choice(["contiguous", "w.t()", "strided"]), r.choice([1, 2])
    gen = torch.Generator().manual_seed(seed % 2**31)
    a = _rand_x((M, K), torch.int8, gen)
    if b_layout == "contiguous":
        b = _rand_w(K, N, gen)
    elif b_layout == "w.t()":
        b = _rand_w(N, K, gen).t()
    else:
        b = _rand_w(K, 2 * N + 1, gen)[:, 1::2]
    with num_threads(threads):
        got = ops.int8_mm(a, b)
    assert torch.equal(got, _exact_mm(a, b))
