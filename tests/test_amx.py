"""The AMX variant's int8 GEMM (gemm_amx.cpp): bit-exact with torchquant.reference and with the
AVX-512 VNNI variant on the shapes that reach the tiles (16 rows or more, K >= 64 and a multiple
of 4): K chunks of 64 with and without a last partial chunk, blocks of 32 rows with 1 to 31 rows
left over (one or two row tiles), an odd number of panels, N not a multiple of 16, uint8 and int8
activations at their extremes, per-tensor and per-row qparams, every output kind, the fused
requantize and the general epilogue, rows at a stride larger than K (grouped 1x1 convolutions),
thread splits, and K at the exactness bound. The isa fixture runs the rest of the suite on the
AMX variant too; these cases are the ones that do not fall back to AVX-512 VNNI."""
import pytest
import torch

import torchquant
from torchquant import reference

from conftest import SUPPORTED_ISAS, num_threads

pytestmark = pytest.mark.skipif("amx" not in SUPPORTED_ISAS, reason="this CPU has no AMX-INT8 (or the OS refused it)")

ops = torch.ops.torchquant

OUT_KINDS = ((None, None, None), (torch.int8, 3.0, -5), (torch.uint8, 1.0, 128),
             (torch.uint8, 0.05, 0), (torch.int8, 1e-3, 0), (torch.bfloat16, None, None))


def _x(gen, shape, dtype):
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    x = torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int16)
    ext = torch.randint(0, 4, shape, generator=gen)
    x = torch.where(ext == 0, torch.full_like(x, lo), torch.where(ext == 1, torch.full_like(x, hi), x))
    return x.to(dtype)


def _w(gen, shape):
    w = torch.randint(-128, 128, shape, generator=gen, dtype=torch.int16)
    return torch.where(torch.rand(shape, generator=gen) < 0.2, torch.full_like(w, -128), w).to(torch.int8)


def _scales(gen, n):
    # Powers of two in half the channels: ties at the requantize.
    return torch.where(torch.rand(n, generator=gen) < 0.5, torch.full((n,), 0.5), torch.rand(n, generator=gen) * 0.02 + 1e-3)


def _qp(v, dtype):
    return None if v is None else torch.tensor([v], dtype=dtype)


@pytest.mark.parametrize("M", [16, 17, 31, 32, 33, 47, 48, 63, 100])
@pytest.mark.parametrize("K,N", [(64, 16), (68, 17), (128, 33), (196, 1), (260, 48), (1028, 100), (192, 15)])
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_linear_int8_amx_matches_reference_and_vnni(M, K, N, xdtype):
    gen = torch.Generator().manual_seed(M * 1000 + K * 7 + N)
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    x, w, ws = _x(gen, (M, K), xdtype), _w(gen, (N, K)), _scales(gen, N)
    bias = torch.randn(N, generator=gen) * 50
    wp, cs = ops.pack_weight(w)
    for zp in (lo, hi, (lo + hi) // 2):
        xs, xz = torch.tensor([0.25]), torch.tensor([zp], dtype=torch.int32)
        for out_dtype, os_, oz in OUT_KINDS:
            os_t, oz_t = _qp(os_, torch.float32), _qp(oz, torch.int32)
            for b, relu in ((None, False), (bias, True), (bias, False)):
                want = reference.linear_int8(x, xs, xz, w, ws, b, os_t, oz_t, relu, out_dtype)
                with torchquant.force_cpu_isa("amx"):
                    got = ops.linear_int8(x, xs, xz, wp, cs, ws, b, os_t, oz_t, relu, out_dtype)
                with torchquant.force_cpu_isa("avx512vnni"):
                    vnni = ops.linear_int8(x, xs, xz, wp, cs, ws, b, os_t, oz_t, relu, out_dtype)
                assert torch.equal(got, want), (zp, out_dtype, os_, relu, b is None)
                assert torch.equal(got, vnni)


@pytest.mark.parametrize("M,K,N", [(16, 64, 16), (40, 132, 50), (97, 256, 33)])
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_linear_int8_amx_per_row_qparams(M, K, N, xdtype):
    gen = torch.Generator().manual_seed(M + K + N)
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    x, w, ws = _x(gen, (M, K), xdtype), _w(gen, (N, K)), _scales(gen, N)
    xs = torch.rand(M, generator=gen) * 0.3 + 1e-3
    xz = torch.randint(lo, hi + 1, (M,), generator=gen, dtype=torch.int32)
    xz[::3] = lo
    xz[1::3] = hi
    wp, cs = ops.pack_weight(w)
    bias = torch.randn(N, generator=gen)
    for s, z in ((xs, xz), (xs, xz[:1]), (xs[:1], xz)):
        for out_dtype, os_, oz in OUT_KINDS:
            os_t, oz_t = _qp(os_, torch.float32), _qp(oz, torch.int32)
            want = reference.linear_int8(x, s, z, w, ws, bias, os_t, oz_t, True, out_dtype)
            with torchquant.force_cpu_isa("amx"):
                got = ops.linear_int8(x, s, z, wp, cs, ws, bias, os_t, oz_t, True, out_dtype)
            assert torch.equal(got, want), (s.numel(), z.numel(), out_dtype)


@pytest.mark.parametrize("reduce_range", [False, True])
def test_linear_dynamic_amx(reduce_range):
    gen = torch.Generator().manual_seed(5)
    for M, K, N in ((16, 64, 16), (45, 300, 70), (130, 512, 129)):
        x = torch.randn(M, K, generator=gen) * 3
        x[0, :7] = 0.0
        w, ws = _w(gen, (N, K)), _scales(gen, N)
        wp, cs = ops.pack_weight(w)
        bias = torch.randn(N, generator=gen)
        want = reference.linear_dynamic(x, w, ws, bias, False, reduce_range)
        with torchquant.force_cpu_isa("amx"):
            got = ops.linear_dynamic(x, wp, cs, ws, bias, False, reduce_range)
        assert torch.equal(got, want), (M, K, N)


def test_linear_int8_amx_threads_and_strided_rows():
    gen = torch.Generator().manual_seed(11)
    M, K, N = 333, 640, 200
    big = _x(gen, (M, K + 36), torch.uint8)
    x = big[:, 5:5 + K]  # rows K + 36 bytes apart
    w, ws = _w(gen, (N, K)), _scales(gen, N)
    wp, cs = ops.pack_weight(w)
    xs, xz = torch.tensor([0.02]), torch.tensor([7], dtype=torch.int32)
    os_t, oz_t = torch.tensor([0.5]), torch.tensor([3], dtype=torch.int32)
    want = reference.linear_int8(x, xs, xz, w, ws, None, os_t, oz_t, False, torch.uint8)
    before = big.clone()
    for threads in (1, 2, 3):
        with num_threads(threads), torchquant.force_cpu_isa("amx"):
            got = ops.linear_int8(x, xs, xz, wp, cs, ws, None, os_t, oz_t, False, torch.uint8)
        assert torch.equal(got, want), threads
    assert torch.equal(big, before)


@pytest.mark.parametrize("xdtype,xval,zp,wval", [(torch.uint8, 255, 0, -128), (torch.int8, -128, 127, -128),
                                                 (torch.int8, 127, -128, -128)])
def test_linear_int8_amx_k_at_bound_is_exact(xdtype, xval, zp, wval):
    # K = 65792 (the largest multiple of 4 under the bound): the sums pass 2^31 on the way.
    M, K, N = 17, 65792, 18
    x = torch.full((M, K), xval, dtype=xdtype)
    w = torch.full((N, K), wval, dtype=torch.int8)
    w[1::2, ::3] = 127
    ws = torch.full((N,), 1e-6)
    wp, cs = ops.pack_weight(w)
    xs, xz = torch.tensor([1.0]), torch.tensor([zp], dtype=torch.int32)
    want = reference.linear_int8(x, xs, xz, w, ws)
    with torchquant.force_cpu_isa("amx"):
        got = ops.linear_int8(x, xs, xz, wp, cs, ws, None, None, None, False, None)
    assert torch.equal(got, want)


CONV_CASES = [
    # (N, C, H, W, Cout, k, stride, pad, dilation, groups): im2col tiles (GEMM depth 9C >= 256),
    # 1x1 read in place, grouped 1x1 (rows C bytes apart, K = C / groups), K % 64 != 0, a strided
    # 1x1 (im2col, K = 256), odd sizes. Each reaches the tiles (below depth 256, or with fewer
    # than 64 output pixels, a convolution takes AVX-512 VNNI's implicit GEMM).
    (2, 32, 9, 11, 24, 3, 1, 1, 1, 1),
    (1, 64, 8, 8, 64, 3, 1, 1, 1, 1),
    (6, 36, 7, 5, 40, 3, 2, 1, 1, 1),
    (2, 64, 6, 6, 100, 1, 1, 0, 1, 1),
    (2, 256, 5, 7, 34, 1, 1, 0, 1, 2),
    (3, 256, 9, 9, 130, 1, 2, 0, 1, 1),
    (2, 96, 6, 7, 66, 3, 1, 2, 2, 3),
    (4, 20, 6, 6, 16, 5, 1, 2, 1, 1),
    (1, 64, 7, 7, 260, 3, 1, 1, 1, 1),  # 49 output pixels, the panels split between threads
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_conv2d_amx_matches_reference_and_vnni(case, xdtype):
    n, c, h, wd, co, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(sum(case))
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    x = _x(gen, (n, c, h, wd), xdtype)
    w, ws = _w(gen, (co, c // g, k, k)), _scales(gen, co)
    bias = torch.randn(co, generator=gen) * 20
    wp, cs = ops.pack_conv_weight(w, g)
    for zp in (lo, hi, 0 if xdtype == torch.uint8 else 3):
        xs, xz = torch.tensor([0.1]), torch.tensor([zp], dtype=torch.int32)
        for layout in (torch.contiguous_format, torch.channels_last):
            xl = x.contiguous(memory_format=layout)
            for out_dtype, os_, oz in OUT_KINDS:
                os_t, oz_t = _qp(os_, torch.float32), _qp(oz, torch.int32)
                for b, relu in ((None, False), (bias, True)):
                    want = reference.conv_int8(x, xs, xz, w, ws, b, s, p, d, g, os_t, oz_t, relu, out_dtype)
                    args = (xl, xs, xz, wp, cs, ws, b, [k, k], [s, s], [p, p], [d, d], g, os_t, oz_t, relu, out_dtype)
                    with torchquant.force_cpu_isa("amx"):
                        got = ops.conv_int8(*args)
                    with torchquant.force_cpu_isa("avx512vnni"):
                        vnni = ops.conv_int8(*args)
                    assert torch.equal(got, want), (zp, layout, out_dtype, relu)
                    assert torch.equal(got, vnni)


IMPLICIT_CASES = [
    # (N, C, spatial, Cout, kernel, padding, dilation): stride-1 layers the AMX implicit GEMM takes
    # (one group, kernel depth 1, KW * C a multiple of 64, GEMM depth >= 256, few dropped
    # columns): 2-d with and without padding, dilation along H, a single output row, rows left
    # over after blocks of 32 and 16, 1-d and 3-d.
    (2, 64, (9, 20), 40, (3, 3), (1, 1), (1, 1)),
    (1, 128, (6, 40), 33, (3, 3), (0, 0), (1, 1)),
    (1, 64, (3, 30), 16, (3, 3), (0, 0), (1, 1)),
    (3, 64, (7, 21), 17, (3, 3), (0, 1), (2, 1)),
    (1, 64, (4, 22), 130, (3, 3), (2, 0), (1, 1)),
    (2, 32, (5, 26), 20, (5, 2), (1, 0), (1, 1)),
    (2, 64, (60,), 24, (5,), (2,), (1,)),
    (1, 64, (3, 4, 21), 18, (1, 3, 3), (0, 1, 1), (1, 1, 1)),
]


@pytest.mark.parametrize("case", IMPLICIT_CASES)
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_conv_amx_implicit_matches_reference_and_vnni(case, xdtype):
    n, c, sp, co, k, p, d = case
    gen = torch.Generator().manual_seed(n + c + sum(sp) + co)
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    x = _x(gen, (n, c, *sp), xdtype)
    w, ws = _w(gen, (co, c, *k)), _scales(gen, co)
    bias = torch.randn(co, generator=gen) * 20
    wp, cs = ops.pack_conv_weight(w, 1)
    ones = [1] * len(sp)
    layouts = [torch.contiguous_format] + ([torch.channels_last] if len(sp) == 2 else [])
    for zp in (lo, hi, 0 if xdtype == torch.uint8 else 3):
        xs, xz = torch.tensor([0.1]), torch.tensor([zp], dtype=torch.int32)
        for layout in layouts:
            xl = x.contiguous(memory_format=layout)
            for out_dtype, os_, oz in OUT_KINDS[:4]:
                os_t, oz_t = _qp(os_, torch.float32), _qp(oz, torch.int32)
                want = reference.conv_int8(x, xs, xz, w, ws, bias, 1, list(p), list(d), 1, os_t, oz_t, True, out_dtype)
                args = (xl, xs, xz, wp, cs, ws, bias, list(k), ones, list(p), list(d), 1, os_t, oz_t, True, out_dtype)
                for threads in (1, 2, 3):
                    with num_threads(threads), torchquant.force_cpu_isa("amx"):
                        got = ops.conv_int8(*args)
                    assert torch.equal(got, want), (zp, layout, out_dtype, threads)
                with torchquant.force_cpu_isa("avx512vnni"):
                    assert torch.equal(ops.conv_int8(*args), want)
            assert torch.equal(x, xl)


@pytest.mark.parametrize("M,K,N", [(32, 256, 130), (33, 260, 300), (100, 512, 300), (64, 1028, 257), (40, 64, 33)])
def test_int8_mm_amx_matches_exact_product(M, K, N):
    # int8_mm packs b per task and multiplies on tiles from 32 rows, K = 256 and a block of 128
    # columns per thread on (else the direct VNNI paths): b row-major, b = w.t(), and b strided
    # both ways.
    gen = torch.Generator().manual_seed(M + K + N)
    a = _w(gen, (M, K))
    w = _w(gen, (N, K))
    want = (a.to(torch.int64) @ w.to(torch.int64).t()).to(torch.int32)
    big = torch.zeros((2 * K, 2 * N), dtype=torch.int8)
    big[::2, ::2] = w.t()
    for b in (w.t().contiguous(), w.t(), big[::2, ::2]):
        for threads in (1, 2):
            with num_threads(threads), torchquant.force_cpu_isa("amx"):
                assert torch.equal(ops.int8_mm(a, b), want)


def test_conv1d_amx_long_signal():
    # A 1-d signal whose padded row is past 1 MiB takes the im2col tiles instead of the implicit
    # GEMM's whole-row window; both against the reference.
    gen = torch.Generator().manual_seed(3)
    for L, c in ((17000, 64), (900, 64)):
        x = _x(gen, (1, c, L), torch.uint8)
        w, ws = _w(gen, (20, c, 3)), _scales(gen, 20)
        wp, cs = ops.pack_conv_weight(w, 1)
        xs, xz = torch.tensor([0.1]), torch.tensor([9], dtype=torch.int32)
        os_t, oz_t = torch.tensor([0.5]), torch.tensor([4], dtype=torch.int32)
        want = reference.conv_int8(x, xs, xz, w, ws, None, 1, [1], [1], 1, os_t, oz_t, False, torch.uint8)
        with torchquant.force_cpu_isa("amx"):
            got = ops.conv_int8(x, xs, xz, wp, cs, ws, None, [3], [1], [1], [1], 1, os_t, oz_t, False, torch.uint8)
        assert torch.equal(got, want), L
