"""CUDA int4 weight-only Linear: each kernel (GEMV for M <= 8, tiled, tensor-core; forced in turn
through TORCHQUANT_CUDA_INT4) within the float-rounding bound of dequantize-then-matmul
(torchquant.int4.reference), on odd K, M = 1, empty batches and bfloat16 / float16 / float32
activations; the module moving between devices. All skip without a GPU."""
import pytest
import torch
from torch import nn

from torchquant.int4 import format as fmt
from torchquant.int4 import reference as ref
from torchquant.nn.quantized import LinearWeightOnlyInt4

pytestmark = pytest.mark.cuda
ops = torch.ops.torchquant


def _rand_weight(N, K, gs, gen):
    q = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    G = fmt.num_groups(K, gs)
    return fmt.pack_int4(q), torch.rand(N, G, generator=gen) * 0.02 + 1e-3, torch.randint(0, 16, (N, G), generator=gen,
                                                                                          dtype=torch.uint8)


@pytest.fixture(params=["auto", "gemv", "tiled", "mma"])
def int4_path(request, monkeypatch):
    """Runs the test once per CUDA int4 kernel (the op reads TORCHQUANT_CUDA_INT4 per call; a
    kernel that does not apply to a case falls back to the tiled one)."""
    monkeypatch.setenv("TORCHQUANT_CUDA_INT4", request.param)
    return request.param


@pytest.mark.parametrize("M,K,N,gs", [(1, 4096, 256, 128), (1, 130, 17, 128), (3, 67, 33, 32), (8, 257, 50, 64),
                                      (9, 257, 50, 64), (65, 200, 130, 16), (0, 64, 16, 32), (4, 64, 0, 32),
                                      (1, 8, 1, 8), (17, 129, 65, 64), (100, 300, 70, 32), (130, 1024, 200, 128),
                                      (64, 96, 64, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_linear_int4_cuda_within_bound(M, K, N, gs, dtype, int4_path):
    gen = torch.Generator().manual_seed(M * 131 + K + N)
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    bias = torch.randn(N, generator=gen)
    x = torch.randn(M, K, generator=gen).to(dtype)
    packed = ops.int4_pack_weight(qw.cuda(), scale.cuda(), zp.cuda(), K, gs)
    got = ops.linear_int4(x.cuda(), *packed, bias.cuda(), K, N, gs)
    assert got.dtype == dtype and got.shape == (M, N)
    exact = ref.linear_int4_dequant(x.float(), qw, scale, zp, bias, K, gs)
    bound = ref.error_bound(x.float(), qw, scale, zp, K, gs, cpu=False)
    if dtype != torch.float32:
        bound = bound + exact.abs() * 2.0 ** -7  # the output's own rounding
    assert ((got.cpu().double() - exact).abs() <= bound + 1e-6).all()


@pytest.mark.parametrize("M,K", [(16, 4096), (9, 16384), (1, 16384)])
def test_linear_int4_cuda_same_sign_products_within_bound(M, K, int4_path):
    """Non-negative activations (after a ReLU) and zero points 0: no product cancels another, so
    the float32 chain's rounding grows with K; it stays within the bound's K + 2 roundings."""
    gen = torch.Generator().manual_seed(K + M)
    N, gs = 64, 128
    qw = fmt.pack_int4(torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8))
    G = fmt.num_groups(K, gs)
    scale = torch.rand(N, G, generator=gen) * 0.02 + 1e-3
    zp = torch.zeros(N, G, dtype=torch.uint8)
    x = torch.rand(M, K, generator=gen)
    packed = ops.int4_pack_weight(qw.cuda(), scale.cuda(), zp.cuda(), K, gs)
    got = ops.linear_int4(x.cuda(), *packed, None, K, N, gs)
    exact = ref.linear_int4_dequant(x, qw, scale, zp, None, K, gs)
    bound = ref.error_bound(x, qw, scale, zp, K, gs, cpu=False)
    assert ((got.cpu().double() - exact).abs() <= bound).all()


def test_linear_int4_cuda_unaligned_input(int4_path):
    """The tensor-core kernel's 16-byte activation loads apply only to aligned rows: an input
    whose data starts off a 16-byte boundary takes the element-wise loads, within the same bound."""
    gen = torch.Generator().manual_seed(7)
    K, N, gs = 264, 48, 32
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    flat = torch.randn(40 * K + 1, generator=gen).to(torch.bfloat16).cuda()
    xg = flat[1:].view(40, K)  # contiguous, but starting one element past a 16-byte boundary
    x = xg.cpu()
    packed = ops.int4_pack_weight(qw.cuda(), scale.cuda(), zp.cuda(), K, gs)
    got = ops.linear_int4(xg, *packed, None, K, N, gs)
    exact = ref.linear_int4_dequant(x.float(), qw, scale, zp, None, K, gs)
    bound = ref.error_bound(x.float(), qw, scale, zp, K, gs, cpu=False) + exact.abs() * 2.0 ** -7
    assert ((got.cpu().double() - exact).abs() <= bound + 1e-6).all()


def test_linear_int4_cuda_unaligned_packed_weight(int4_path):
    """A packed weight that is a contiguous view starting off a 16-byte boundary (the GEMV's
    4-byte and the tensor-core kernel's 16-byte weight loads): copied once, same results."""
    gen = torch.Generator().manual_seed(8)
    K, N, gs = 256, 40, 64
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    w, qp, sc = ops.int4_pack_weight(qw.cuda(), scale.cuda(), zp.cuda(), K, gs)
    flat = torch.empty(w.numel() + 1, dtype=w.dtype, device="cuda")
    flat[1:].copy_(w.reshape(-1))
    w_off = flat[1:].view(w.shape)
    assert w_off.is_contiguous() and w_off.data_ptr() % 16 != 0
    for M in (1, 5, 33):
        x = torch.randn(M, K, generator=gen).to(torch.bfloat16).cuda()
        assert torch.equal(ops.linear_int4(x, w_off, qp, sc, None, K, N, gs), ops.linear_int4(x, w, qp, sc, None, K, N, gs))


def test_linear_int4_cuda_rows_past_the_grid_limit(int4_path):
    """More than 65535 row tiles of 64 (grid.y's limit): launched in slices, each row's result
    equal to the same rows run alone."""
    gen = torch.Generator().manual_seed(9)
    K, N, gs = 16, 8, 16
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    packed = ops.int4_pack_weight(qw.cuda(), scale.cuda(), zp.cuda(), K, gs)
    M = 65536 * 64 + 3
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
    got = ops.linear_int4(x, *packed, None, K, N, gs)
    for rows in (slice(0, 70), slice(M - 70, M), slice(65535 * 64 - 5, 65535 * 64 + 5)):
        assert torch.equal(got[rows], ops.linear_int4(x[rows].contiguous(), *packed, None, K, N, gs))


def test_linear_int4_cuda_path_env_checked(monkeypatch):
    monkeypatch.setenv("TORCHQUANT_CUDA_INT4", "bogus")
    gen = torch.Generator().manual_seed(0)
    qw, scale, zp = _rand_weight(8, 32, 32, gen)
    packed = ops.int4_pack_weight(qw.cuda(), scale.cuda(), zp.cuda(), 32, 32)
    with pytest.raises(RuntimeError, match="TORCHQUANT_CUDA_INT4"):
        ops.linear_int4(torch.randn(2, 32, device="cuda"), *packed, None, 32, 8, 32)


def test_linear_int4_cuda_refuses_what_the_cpu_refuses():
    gen = torch.Generator().manual_seed(11)
    N, K, gs = 16, 64, 32
    qw, scale, zp = _rand_weight(N, K, gs, gen)
    packed = ops.int4_pack_weight(qw.cuda(), scale.cuda(), zp.cuda(), K, gs)
    x = torch.randn(2, K, device="cuda")
    for dev in ("cpu", "cuda"):  # an integer bias
        p = packed if dev == "cuda" else ops.int4_pack_weight(qw, scale, zp, K, gs)
        with pytest.raises(RuntimeError, match="'bias' must be a floating-point tensor"):
            ops.linear_int4(x.to(dev), *p, torch.arange(N, device=dev), K, N, gs)
    # an int64 zero point past int32 is refused, not wrapped into [0, 15] (2^32 + 3 -> 3)
    big = zp.to(torch.int64)
    big[0, 0] = 2 ** 32 + 3
    for dev in ("cpu", "cuda"):
        with pytest.raises(RuntimeError, match="'zero_point' must lie in"):
            ops.int4_pack_weight(qw.to(dev), scale.to(dev), big.to(dev), K, gs)


def test_module_moves_between_devices():
    torch.manual_seed(0)
    lin = nn.Linear(300, 40)
    q = LinearWeightOnlyInt4.from_float(lin, group_size=64)
    x = torch.randn(5, 300)
    yc = q(x)
    qg = q.cuda()
    assert qg._w_packed.device.type == "cuda" and qg._w_packed.shape == (40, 320 // 2)
    yg = qg(x.cuda()).cpu()
    # CPU: int8 activations; CUDA: float. Both near the float layer with the quantized weight.
    exact = x.double() @ q.cpu().dequantized_weight().double().t() + lin.bias.double()
    assert (yg.double() - exact).abs().max() < 1e-3
    assert (yc.double() - exact).abs().max() < 0.05
