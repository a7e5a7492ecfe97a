"""CUDA tensor-core convolution (csrc/cuda/conv_mma.cu, forced with TORCHQUANT_CUDA_CONV=mma)
bit for bit against torchquant.reference.conv_int8 and against the direct kernel: the fast
gather (Cin/groups a multiple of 32, 16-byte aligned channels-last rows) and the element-wise
one (stems, small groups, misaligned input), 1-d/2-d/3-d, stride/padding/dilation, groups,
uint8/int8 activations, every output kind, ReLU, saturation, batch 0, pixel and channel counts
off the 64 x 64 block. All skip without a GPU."""
import zlib

import pytest
import torch

from torchquant import reference

pytestmark = pytest.mark.cuda
ops = torch.ops.torchquant

# (spatial, Cin, Cout, kernel, stride, padding, dilation, groups)
CASES = [
    ((9, 9), 64, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1),         # fast gather, one block of channels
    ((7, 11), 32, 80, (3, 3), (2, 2), (1, 1), (1, 1), 1),        # fast, strided, 80 = 64 + 16 channels
    ((8, 8), 64, 130, (1, 1), (1, 1), (0, 0), (1, 1), 1),        # fast 1x1, channels off the block
    ((9, 10), 64, 64, (3, 3), (1, 1), (2, 2), (2, 2), 2),        # fast grouped (Cg = 32), dilated
    ((13, 11), 3, 17, (7, 7), (2, 2), (3, 3), (1, 1), 1),        # stem: element-wise gather, Kg = 147
    ((10, 11), 12, 18, (3, 2), (2, 1), (1, 0), (1, 2), 3),       # grouped Cg = 4, asymmetric
    ((6, 5), 4, 4, (7, 7), (1, 1), (3, 3), (1, 1), 1),           # kernel larger than the input
    ((33,), 32, 40, (5,), (2,), (2,), (1,), 1),                  # conv1d, fast
    ((5, 6, 7), 4, 9, (3, 3, 3), (1, 2, 1), (1, 1, 0), (1, 1, 2), 1),  # conv3d, element-wise
    ((4, 5, 6), 32, 33, (3, 1, 3), (2, 1, 1), (1, 0, 1), (1, 1, 1), 1),  # conv3d, fast
]


def _make(case, batch, xdtype, seed, saturate=False):
    sp, cin, cout, k, s, p, d, g = case
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (0, 256) if xdtype == torch.uint8 else (-128, 128)
    x = torch.randint(lo, hi, (batch, cin, *sp), generator=gen).to(xdtype)
    w = torch.randint(-128, 128, (cout, cin // g, *k), generator=gen).to(torch.int8)
    if saturate:
        x = torch.full_like(x, hi - 1 if xdtype == torch.uint8 else -128)
        w = torch.full_like(w, -128)
    zp = torch.tensor([int(torch.randint(lo, hi, (1,), generator=gen))], dtype=torch.int32)
    xs = torch.tensor([0.02 + 0.01 * torch.rand(1, generator=gen).item()])
    ws = torch.rand(cout, generator=gen) * 0.01 + 0.001
    bias = torch.randn(cout, generator=gen)
    return x, xs, zp, w, ws, bias


def _out_qparams(out_dtype):
    if out_dtype in (torch.int8, torch.uint8):
        return torch.tensor([0.05]), torch.tensor([3 if out_dtype == torch.int8 else 100], dtype=torch.int32)
    return None, None


def _conv_cuda(case, x, xs, zp, w, ws, bias, out_dtype, relu, path, monkeypatch):
    sp, cin, cout, k, s, p, d, g = case
    os_, oz = _out_qparams(out_dtype)
    cu = lambda t: None if t is None else t.cuda()  # noqa: E731
    monkeypatch.setenv("TORCHQUANT_CUDA_CONV", path)
    wp, cs = ops.pack_conv_weight(w.cuda(), g)
    return ops.conv_int8(x if x.is_cuda else x.cuda(), cu(xs), cu(zp), wp, cs, cu(ws), cu(bias), list(k), list(s),
                         list(p), list(d), g, cu(os_), cu(oz), relu, out_dtype).cpu()


def _want(case, x, xs, zp, w, ws, bias, out_dtype, relu):
    sp, cin, cout, k, s, p, d, g = case
    os_, oz = _out_qparams(out_dtype)
    return reference.conv_int8(x.cpu(), xs, zp, w, ws, bias, list(s), list(p), list(d), g, os_, oz, relu, out_dtype)


def _same(got, want):
    assert got.shape == want.shape and got.dtype == want.dtype
    if got.dtype == torch.float32:
        assert torch.equal(got.contiguous().view(torch.int32), want.contiguous().view(torch.int32))
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[0])}d-c{c[1]}-o{c[2]}-k{c[3][0]}-g{c[7]}")
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("out_dtype,relu", [(torch.float32, False), (torch.uint8, True), (torch.int8, False),
                                            (torch.bfloat16, True)])
def test_conv_mma_matches_reference(case, xdtype, out_dtype, relu, monkeypatch):
    args = _make(case, 2, xdtype, seed=zlib.crc32(f"{case}{xdtype}".encode()) % 1000)  # str hash() varies per process
    got = _conv_cuda(case, *args, out_dtype, relu, "mma", monkeypatch)
    _same(got, _want(case, *args, out_dtype, relu))


@pytest.mark.parametrize("case", CASES[:5], ids=lambda c: f"{len(c[0])}d-c{c[1]}-o{c[2]}-k{c[3][0]}-g{c[7]}")
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_conv_mma_equals_direct_and_saturates(case, xdtype, monkeypatch):
    for saturate in (False, True):
        args = _make(case, 3, xdtype, seed=5, saturate=saturate)
        a = _conv_cuda(case, *args, torch.float32, False, "mma", monkeypatch)
        b = _conv_cuda(case, *args, torch.float32, False, "direct", monkeypatch)
        _same(a, b)


@pytest.mark.parametrize("batch", [0, 1])
def test_conv_mma_small_batches(batch, monkeypatch):
    case = CASES[0]
    args = _make(case, batch, torch.uint8, seed=11)
    got = _conv_cuda(case, *args, torch.uint8, True, "mma", monkeypatch)
    _same(got, _want(case, *args, torch.uint8, True))


def test_conv_mma_misaligned_and_non_contiguous_input(monkeypatch):
    case = CASES[0]
    x, xs, zp, w, ws, bias = _make(case, 2, torch.uint8, seed=3)
    # Channels-last data starting one byte past an aligned address: the element-wise gather.
    flat = torch.empty(x.numel() + 1, dtype=torch.uint8, device="cuda")
    xcl = flat[1:].view(2, 9, 9, 64)
    xcl.copy_(x.permute(0, 2, 3, 1).cuda())
    xg = xcl.permute(0, 3, 1, 2)
    got = _conv_cuda(case, xg, xs, zp, w, ws, bias, torch.float32, False, "mma", monkeypatch)
    _same(got, _want(case, x, xs, zp, w, ws, bias, torch.float32, False))
    # An NCHW (not channels-last) input.
    got = _conv_cuda(case, x.cuda(), xs, zp, w, ws, bias, torch.float32, False, "mma", monkeypatch)
    _same(got, _want(case, x, xs, zp, w, ws, bias, torch.float32, False))


def test_conv_path_env_checked(monkeypatch):
    case = CASES[0]
    args = _make(case, 1, torch.uint8, seed=1)
    with pytest.raises(RuntimeError, match="TORCHQUANT_CUDA_CONV"):
        _conv_cuda(case, *args, torch.float32, False, "bogus", monkeypatch)
