"""int8 convolution ops: bit-identical with torchquant.reference.conv_int8 on every CPU kernel
variant (isa fixture) and on CUDA (device fixture), for 1-d / 2-d / 3-d, groups, depthwise,
stride / padding / dilation, odd sizes, batch 0 and 1, int8 / uint8 in and out, float out,
ReLU, non-contiguous input, saturation and ties; and the errors bad input gets."""
import random
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import torch
import torch.nn.functional as F

import torchquant
from torchquant import reference

from conftest import num_threads
from _conv_helpers import (assert_same, check_7bit_activations, check_device_matches_reference, check_low_float_out,
                           check_matches_reference, check_noncontiguous_and_layouts, check_saturation_and_ties,
                           check_shared_bad_input, make_data, out_qparams)

ops = torch.ops.torchquant

# (spatial input sizes, Cin, Cout, kernel, stride, padding, dilation, groups)
CASES = [
    ((9,), 5, 7, (3,), (1,), (1,), (1,), 1),                      # conv1d, odd
    ((17,), 8, 6, (4,), (3,), (2,), (2,), 2),                     # conv1d strided, dilated, grouped
    ((11,), 6, 6, (5,), (2,), (2,), (1,), 6),                     # conv1d depthwise
    ((7, 9), 3, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1),           # RGB stem-like, Cout past a panel
    ((8, 8), 16, 33, (1, 1), (1, 1), (0, 0), (1, 1), 1),          # pointwise, read in place
    ((9, 7), 16, 8, (1, 1), (2, 2), (0, 0), (1, 1), 1),           # strided 1x1 (downsample)
    ((10, 11), 12, 18, (3, 2), (2, 1), (1, 0), (1, 2), 3),        # grouped, asymmetric
    ((9, 9), 40, 40, (3, 3), (1, 1), (1, 1), (1, 1), 40),         # depthwise 3x3 (tail lanes)
    ((12, 10), 24, 24, (3, 3), (2, 2), (1, 1), (1, 1), 24),       # depthwise strided
    ((8, 9), 17, 17, (5, 3), (1, 2), (2, 1), (2, 1), 17),         # depthwise odd, dilated
    ((7, 7), 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 8),           # depthwise with multiplier 2
    ((6, 5), 4, 4, (7, 7), (1, 1), (3, 3), (1, 1), 1),            # kernel larger than the input
    ((5, 6, 7), 4, 9, (3, 3, 3), (1, 2, 1), (1, 1, 0), (1, 1, 2), 1),  # conv3d
    ((4, 5, 6), 6, 6, (3, 1, 3), (2, 1, 1), (1, 0, 1), (1, 1, 1), 6),  # conv3d depthwise
    ((4, 4, 4), 8, 12, (1, 1, 1), (1, 1, 1), (0, 0, 0), (1, 1, 1), 2),  # conv3d pointwise grouped
    # Kernel rows padded to a multiple of 4 bytes in the CPU packing (KW * Cg = 21, 15, 9, 6):
    ((13, 11), 3, 17, (7, 7), (2, 2), (3, 3), (1, 1), 1),        # 7x7/2 stem, odd sizes
    ((9, 8), 5, 16, (3, 3), (2, 2), (1, 1), (1, 1), 1),           # 15-byte rows, strided
    ((10, 9), 3, 8, (3, 3), (1, 1), (2, 3), (2, 2), 1),           # 9-byte rows, dilated, wide padding
    ((9, 10), 6, 12, (3, 3), (1, 2), (1, 0), (1, 1), 3),          # grouped, 6-byte rows
    ((5, 4, 6), 3, 5, (2, 3, 3), (1, 1, 2), (1, 1, 1), (1, 1, 1), 1),  # conv3d, 9-byte rows
    # The implicit GEMM (AVX-512 VNNI: kernel rows read in place from the input, padded or not):
    ((9, 9), 3, 16, (3, 3), (1, 1), (0, 0), (1, 1), 1),           # padded rows, no padding
    ((10, 9), 8, 12, (3, 3), (2, 1), (2, 1), (2, 1), 1),          # dilated along H only
    ((3, 6, 7), 4, 8, (1, 3, 3), (2, 1, 2), (0, 1, 1), (1, 2, 1), 1),  # conv3d of depth-1 kernel
    ((7, 8), 8, 70, (2, 5), (3, 1), (0, 2), (1, 1), 1),           # rows split over output rows, 5 panels
]


def _ids(case):
    sp, cin, cout, k, s, p, d, g = case
    return f"{len(sp)}d-{'x'.join(map(str, sp))}-c{cin}-o{cout}-k{'x'.join(map(str, k))}-s{s[0]}-p{p[0]}-d{d[-1]}-g{g}"


def _make(case, batch, xdtype, seed, device="cpu", saturate=False):
    sp, cin, cout, k, s, p, d, g = case
    return make_data(sp, cin, cout, (cout, cin // g, *k), batch, xdtype, seed, device, saturate)


def _run(case, x, xs, xz, w, ws, bias, out_dtype, relu, out_scale=None, out_zp=None):
    sp, cin, cout, k, s, p, d, g = case
    wp, cs = ops.pack_conv_weight(w, g)
    got = ops.conv_int8(x, xs, xz, wp, cs, ws, bias, list(k), list(s), list(p), list(d), g, out_scale, out_zp,
                        relu, out_dtype)
    want = reference.conv_int8(x.cpu(), xs.cpu(), xz.cpu(), w.cpu(), ws.cpu(), None if bias is None else bias.cpu(),
                               list(s), list(p), list(d), g, None if out_scale is None else out_scale.cpu(),
                               None if out_zp is None else out_zp.cpu(), relu, out_dtype)
    return got, want


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("out_dtype,relu", [(torch.float32, False), (torch.uint8, True), (torch.int8, False),
                                            (torch.int8, True)])
def test_conv_matches_reference(isa, case, xdtype, out_dtype, relu):
    check_matches_reference(_make, _run, case, xdtype, out_dtype, relu, CASES.index(case))


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("out_dtype,relu", [(torch.float32, False), (torch.uint8, True)])
def test_conv_7bit_activations(isa, case, out_dtype, relu):
    check_7bit_activations(_make, _run, case, out_dtype, relu, CASES.index(case))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv_cuda_matches_reference(device, case):
    check_device_matches_reference(_make, _run, case, device)


@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[12]], ids=_ids)
def test_conv_saturation_and_ties(isa, device, case):
    sp, cin, cout, k, s, p, d, g = case
    check_saturation_and_ties(_make, _run, lambda x, xs, xz, w, ws: reference.conv_int8(
        x, xs, xz, w, ws, None, list(s), list(p), list(d), g), case, device)


@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[9]], ids=_ids)
def test_conv_scale_product_past_float32_gives_the_zero_point(isa, case):
    """x_scale * w_scale overflowing float32 times a zero correction is NaN: the output zero point,
    as the oracle gives, in the GEMM path and the depthwise kernels alike."""
    x, xs, xz, w, ws, bias = _make(case, 2, torch.uint8, seed=11)
    x = torch.full_like(x, int(xz))
    xs, ws = torch.tensor([1e30]), torch.full_like(ws, 1e10)
    for out_dtype in (torch.uint8, torch.int8):
        os_, oz = out_qparams(out_dtype, "cpu")
        for b, relu in ((bias, True), (None, False)):
            got, want = _run(case, x, xs, xz, w, ws, b, out_dtype, relu, os_, oz)
            assert (want == oz).all()
            assert_same(got, want)


def test_conv_batch0_and_empty(isa, device):
    case = CASES[6]
    x, xs, xz, w, ws, bias = _make(case, 0, torch.uint8, seed=1, device=device)
    got, want = _run(case, x, xs, xz, w, ws, bias, torch.float32, False)
    assert got.shape == want.shape == (0, 18, 5, 9)
    # No output channels.
    x, xs, xz, w, ws, bias = _make(CASES[0], 2, torch.uint8, seed=1, device=device)
    w0 = w[:0]
    wp, cs = ops.pack_conv_weight(w0, 1)
    y = ops.conv_int8(x, xs, xz, wp, cs, ws[:0], None, [3], [1], [1], [1], 1, None, None, False, None)
    assert y.shape == (2, 0, 9)


def test_conv_noncontiguous_and_layouts(isa, device):
    check_noncontiguous_and_layouts(_make, _run, CASES[6], (2, 12, 20, 22), CASES[12], device)


def test_conv_low_float_out(isa):
    check_low_float_out(_make, _run, CASES[3])


def test_conv_large_layer_tiles(isa):
    """A layer with many output pixels and a deep K: several im2col tiles and panel blocks, and
    several threads."""
    case = ((30, 30), 64, 40, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    x, xs, xz, w, ws, bias = _make(case, 2, torch.uint8, seed=9)
    got, want = _run(case, x, xs, xz, w, ws, bias, torch.uint8, True, *out_qparams(torch.uint8, "cpu"))
    assert_same(got, want)
    case = ((30, 30), 64, 64, (3, 3), (2, 2), (1, 1), (1, 1), 64)
    x, xs, xz, w, ws, bias = _make(case, 2, torch.int8, seed=9)
    got, want = _run(case, x, xs, xz, w, ws, bias, torch.int8, False, *out_qparams(torch.int8, "cpu"))
    assert_same(got, want)


@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_conv_stem_two_threads(isa, xdtype):
    """The 7x7/2 RGB stem at 160x96 (odd output width), batch 2, on two threads: the padded input
    copy is split over threads, tiles cross output rows, padded kernel rows read past the last tap."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        case = ((160, 97), 3, 64, (7, 7), (2, 2), (3, 3), (1, 1), 1)
        x, xs, xz, w, ws, bias = _make(case, 2, xdtype, seed=11)
        got, want = _run(case, x, xs, xz, w, ws, bias, torch.uint8, True, *out_qparams(torch.uint8, "cpu"))
        assert_same(got, want)
        case = ((160, 97), 3, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1)
        got, want = _run(case, x, xs, xz, w[:32, :, :3, :3].contiguous(), ws[:32], bias[:32], torch.float32, False)
        assert_same(got, want)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("case", [
    ((7, 7), 64, 136, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # M = 49 in one tile, 9 panels split 4 + 5
    ((7, 7), 48, 200, (3, 3), (2, 2), (1, 1), (1, 1), 1),     # M = 16, 13 panels, stride 2
    ((9, 9), 64, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1),      # 2 panels: rows split instead
    ((11, 13), 128, 72, (1, 1), (1, 1), (0, 0), (1, 1), 1),   # direct 1x1, M = 143
    ((7, 9), 36, 136, (3, 3), (1, 1), (1, 1), (1, 2), 1),     # im2col (dilated W), small M
    ((40, 37), 320, 40, (3, 3), (1, 1), (1, 1), (1, 1), 1),   # 3 tiles made 4 (batch 1, AVX-512)
    ((9, 8), 36, 138, (3, 3), (1, 1), (1, 1), (1, 1), 3),     # groups: tasks of several groups
    ((7, 7), 256, 136, (1, 1), (1, 1), (0, 0), (1, 1), 1),    # direct 1x1, one tile, panels split
], ids=["one-tile", "one-tile-s2", "two-panels", "direct", "im2col", "many-tiles", "groups", "direct-panels"])
def test_conv_task_grid(isa, case, threads):
    """The task grid over threads: a single tile of all rows with the panels split between
    threads (small M, odd M and N), tiles split evenly (their number a multiple of the threads),
    rows split when there are too few panels; batch 1 and 3."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch, xdtype in ((1, torch.uint8), (3, torch.int8)):
            x, xs, xz, w, ws, bias = _make(case, batch, xdtype, seed=21 + batch)
            for out_dtype, relu in ((torch.uint8, True), (torch.float32, False)):
                got, want = _run(case, x, xs, xz, w, ws, bias, out_dtype, relu, *out_qparams(out_dtype, "cpu"))
                assert_same(got, want)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("case", [((13, 11), 3, 17, (7, 7), (2, 2), (3, 3), (1, 1), 1),   # 7x7/2 stem
                                  ((10, 9), 3, 32, (3, 3), (2, 2), (1, 1), (1, 1), 1),    # 3x3/2 stem
                                  ((8, 7), 8, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # 3x3, 8 channels
                                  ((3, 6, 7), 4, 8, (1, 3, 3), (2, 1, 2), (0, 1, 1), (1, 2, 1), 1),  # conv3d
                                  ((3001,), 8, 16, (5,), (2,), (4,), (3,), 1),             # long 1-d signal
                                  ((2, 701), 8, 20, (3, 3), (1, 1), (1, 1), (1, 2), 1)],   # wide rows
                         ids=["stem7", "stem3", "c8", "3d", "1d_long", "wide"])
def test_conv_padded_copy_layouts(isa, case):
    """The implicit GEMM's padded copy of the input reads it through its strides: contiguous
    NC(D)HW (3 channels and others), channels-last, every dimension strided, H and W swapped in
    memory, a view at an offset; batch 2, on two threads; the input is not modified. Tiles
    inside one output row copy only the columns their fields cover (a long 1-d signal, wide
    rows): the window's edges, padding and strides are checked here too."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x, xs, xz, w, ws, bias = _make(case, 2, torch.uint8, seed=31)
        big = torch.randint(0, 256, (5, x.shape[1] * 2 + 1, *[2 * n + 1 for n in x.shape[2:]]), dtype=torch.uint8)
        nd = x.dim()
        views = [x, big[1:5:2, 1::2, *[slice(1, None, 2)] * (nd - 2)], x.movedim(1, -1).contiguous().movedim(-1, 1),
                 x.transpose(-1, -2).contiguous().transpose(-1, -2), big[2:4, : x.shape[1], *[slice(0, n) for n in x.shape[2:]]]]
        for v in views:
            assert v.shape == x.shape
            before = v.clone()
            got, want = _run(case, v, xs, xz, w, ws, bias, torch.uint8, True, *out_qparams(torch.uint8, "cpu"))
            assert_same(got, want)
            assert torch.equal(v, before)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("width", [1, 2, 3, 4, 5, 6, 7, 9, 13])
def test_depthwise_edge_columns(isa, width):
    """Depthwise 3x3 / 5x3 rows of every width from 1 pixel up, stride 1 and 2, padding 0 to 2:
    the interior runs in blocks of several pixels, the border columns and the rest one by one;
    int8 / uint8 out with and without ReLU (each has a kernel of its own), 16-channel blocks and
    tail channels, ties and saturating outputs, batch 1 and 2."""
    gen = torch.Generator().manual_seed(width)
    for (kh, kw), s, p, c in (((3, 3), 1, 1, 32), ((3, 3), 2, 1, 19), ((5, 3), 1, 2, 16), ((3, 3), 1, 0, 48),
                              ((3, 3), 2, 2, 17)):
        if width + 2 * p < kw:
            continue
        case = ((5, width), c, c, (kh, kw), (s, s), (p, p), (1, 1), c)
        for batch, xdtype in ((1, torch.uint8), (2, torch.int8)):
            x, xs, xz, w, ws, bias = _make(case, batch, xdtype, seed=int(torch.randint(0, 1000, (1,), generator=gen)))
            for out_dtype, relu in ((torch.uint8, False), (torch.uint8, True), (torch.int8, False), (torch.int8, True)):
                # A small out_scale saturates many outputs; a larger one keeps most in range.
                for scale in (0.002, 0.2):
                    os_, oz = out_qparams(out_dtype, "cpu", scale=scale)
                    got, want = _run(case, x, xs, xz, w, ws, bias if scale < 0.1 else None, out_dtype, relu, os_, oz)
                    assert_same(got, want)


@pytest.mark.parametrize("case", [((6, 7), 8, 64, (3, 3), (1, 1), (1, 1), (1, 1), 1),     # implicit GEMM
                                  ((5, 6), 16, 128, (1, 1), (1, 1), (0, 0), (1, 1), 1),   # direct 1x1
                                  ((6, 5), 6, 64, (3, 3), (1, 2), (1, 1), (2, 1), 1),     # im2col (dilated W)
                                  ((5, 5), 8, 136, (2, 2), (2, 2), (0, 0), (1, 1), 2)],   # 64 + 4 per group
                         ids=["implicit", "direct", "im2col", "groups"])
def test_conv_requantize_full_panels(isa, case):
    """Requantized outputs over whole groups of 64 channels (the AVX-512 epilogue's branch-free
    kernels): int8 / uint8, with and without ReLU and bias, saturating and in-range, int8 and
    uint8 in."""
    for xdtype in (torch.uint8, torch.int8):
        x, xs, xz, w, ws, bias = _make(case, 2, xdtype, seed=13)
        for out_dtype in (torch.uint8, torch.int8):
            for relu in (False, True):
                for scale, b in ((0.01, bias), (2.0, None), (1e4, bias)):
                    os_, oz = out_qparams(out_dtype, "cpu", scale=scale)
                    got, want = _run(case, x, xs, xz, w, ws, b, out_dtype, relu, os_, oz)
                    assert_same(got, want)


def test_reference_matches_float_conv():
    """The oracle itself: with small integers the float convolution of the dequantized input is
    exact, so the reference must equal F.conv2d of (x - zp) * scale."""
    x = torch.randint(0, 10, (2, 4, 6, 6), dtype=torch.uint8)
    w = torch.randint(-3, 4, (6, 2, 3, 3), dtype=torch.int8)
    got = reference.conv_int8(x, torch.tensor([1.0]), torch.tensor([4]), w, torch.ones(6), None, 2, 1, 1, 2)
    want = F.conv2d(x.float() - 4, w.float(), None, 2, 1, 1, 2)
    assert torch.equal(got, want)


def test_public_functions():
    w = torch.randint(-128, 128, (8, 3, 3, 3), dtype=torch.int8)
    wp, cs = torchquant.pack_conv_weight(w)
    x = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    y = torchquant.conv_int8(x, 0.02, 128, wp, cs, torch.full((8,), 0.01), [3, 3], padding=1)
    want = reference.conv_int8(x, torch.tensor([0.02]), torch.tensor([128]), w, torch.full((8,), 0.01), None, 1, 1)
    assert torch.equal(y, want)
    y = torchquant.conv_int8(x, 0.02, 128, wp, cs, torch.full((8,), 0.01), 3, padding=1)
    assert torch.equal(y, want)


def test_fake_kernels_match():
    """torch.compile's fake kernels give the real kernels' shapes, dtypes and strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for case in (CASES[2], CASES[6], CASES[7], CASES[12]):
        sp, cin, cout, k, s, p, d, g = case
        x, xs, xz, w, ws, bias = _make(case, 2, torch.uint8, seed=1)
        wp, cs = ops.pack_conv_weight(w, g)
        real = ops.conv_int8(x, xs, xz, wp, cs, ws, bias, list(k), list(s), list(p), list(d), g, None, None, False,
                             torch.float32)
        with FakeTensorMode() as mode:
            fw = mode.from_tensor(w)
            fwp, fcs = ops.pack_conv_weight(fw, g)
            assert fwp.shape == wp.shape and fcs.shape == cs.shape
            fx = mode.from_tensor(x)
            fake = ops.conv_int8(fx, mode.from_tensor(xs), mode.from_tensor(xz), fwp, fcs, mode.from_tensor(ws),
                                 mode.from_tensor(bias), list(k), list(s), list(p), list(d), g, None, None, False,
                                 torch.float32)
        assert fake.shape == real.shape and fake.dtype == real.dtype and fake.stride() == real.stride()


@pytest.mark.parametrize("w_shape,groups", [((17, 3, 7, 7), 1), ((8, 3, 3, 3), 1), ((6, 2, 3, 3), 3),
                                            ((4, 5, 3), 1), ((4, 3, 1, 7), 1), ((4, 70, 3, 1), 1),
                                            ((4, 3, 2, 3, 3), 1), ((4, 4, 3, 3), 1), ((9, 1, 3, 3), 9)])
def test_packed_weight_shape(w_shape, groups):
    """conv_packed_weight_shape (the fake kernel's shape) is what the CPU packing returns,
    kernel-row padding included, and the padding holds zero weights only."""
    w = torch.randint(-128, 128, w_shape, dtype=torch.int8)
    wp, cs = ops.pack_conv_weight(w, groups)
    assert tuple(wp.shape) == torchquant.conv.conv_packed_weight_shape(w_shape, groups)
    assert torch.equal(cs, w.reshape(w_shape[0], -1).sum(1, dtype=torch.int32))
    taps = 1
    for k in w_shape[2:]:
        taps *= k
    if wp.dim() == 1:  # panels [groups, ceil(Ng / 16), K', 16], then the 32-byte record of the weight
        row, rows = w_shape[-1] * w_shape[1], taps // w_shape[-1]
        padded = row % 4 != 0 and row < 64 and rows > 1
        panels = (w_shape[0] // groups + 15) // 16
        assert wp.numel() == groups * panels * rows * ((row + 3) // 4 * 4 if padded else row) * 16 + 32
        assert int(wp[:-32].ne(0).sum()) == int(w.ne(0).sum())
        k = [1] * (5 - len(w_shape)) + list(w_shape[2:])
        assert wp[-32:].view(torch.int32).tolist() == [0x57435154, w_shape[1], *k, groups, w_shape[0], 0]


@pytest.mark.parametrize("w_shape,x_channels,kernel_size", [
    ((4, 4, 3, 3), 3, (3, 3)),   # rows of 3 x 3 channels are padded to 12 bytes, as 3 x 4 channels are
    ((4, 3, 3, 3), 4, (3, 3)),
    ((4, 1, 3, 1), 3, (3, 1)),   # 1, 2, 3 channels of a 1-wide kernel all pad to 4 bytes
    ((4, 8, 3, 1), 8, (1, 3)),   # a 3 x 1 and a 1 x 3 kernel: the same K
    ((4, 8, 1, 3), 8, (3, 1)),
    ((4, 8, 7), 8, (7,)),
])
def test_conv_refuses_a_weight_packed_for_another_shape_of_the_same_size(w_shape, x_channels, kernel_size):
    # Before, these ran on the other weight's packing without a word (max error 78 on outputs of ~100).
    w = torch.randint(-127, 128, w_shape, dtype=torch.int8)
    wp, cs = ops.pack_conv_weight(w)
    x = torch.randint(0, 256, (1, x_channels) + (6,) * len(kernel_size), dtype=torch.uint8)

    def conv(packed):
        return ops.conv_int8(x, torch.tensor([0.1]), torch.tensor([3]), packed, cs, torch.full((4,), 0.01), None,
                             list(kernel_size), [1], [1], [1], 1, None, None, False, None)

    untagged = wp.clone()
    untagged[-32:] = 0
    if w_shape[2:] == tuple(kernel_size) and x_channels == w_shape[1]:  # the matching call runs
        conv(wp)
        with pytest.raises(RuntimeError, match=r"argument 'w_packed' is not a weight from pack_conv_weight"):
            conv(untagged)
        return
    with pytest.raises(RuntimeError, match=r"argument 'w_packed' (was packed from a weight|must be 1-D)"):
        conv(wp)
    with pytest.raises(RuntimeError, match=r"argument 'w_packed' (is not a weight from pack_conv_weight|must be 1-D)"):
        conv(untagged)


@pytest.mark.cuda
def test_cuda_conv_int64_zero_point_past_int32_saturates():
    # The CPU refuses a zero point outside the activation's codes; the GPU kernels clamp it into
    # them after saturating it into int32 (2^32 + 3 wrapped to 3 before: a wrong result).
    w = torch.randint(-128, 128, (4, 3, 3, 3), dtype=torch.int8)
    wp, cs = ops.pack_conv_weight(w.cuda(), 1)
    x = torch.randint(0, 256, (1, 3, 6, 6), dtype=torch.uint8, device="cuda")
    ws = torch.full((4,), 0.01, device="cuda")
    xs = torch.tensor([0.1], device="cuda")

    def conv(zp):
        return ops.conv_int8(x, xs, zp, wp, cs.cuda(), ws, None, [3, 3], [1, 1], [1, 1], [1, 1], 1, None, None,
                             False, None)

    big = torch.tensor([2 ** 32 + 3], dtype=torch.int64, device="cuda")
    assert torch.equal(conv(big), conv(torch.tensor([255], dtype=torch.int32, device="cuda")))
    with pytest.raises(RuntimeError, match="x_zero_point"):
        ops.conv_int8(x.cpu(), xs.cpu(), big.cpu(), *ops.pack_conv_weight(w, 1), ws.cpu(), None, [3, 3], [1, 1],
                      [1, 1], [1, 1], 1, None, None, False, None)


@pytest.mark.cuda
@pytest.mark.parametrize("w_shape,groups", [((8, 3, 3, 1), 1), ((6, 2, 1, 3), 3), ((4, 5, 3), 1), ((9, 1, 3, 1), 9),
                                            ((4, 3, 2, 3, 1), 1), ((6, 1, 2, 3), 6)])
def test_cuda_packed_weight_shape_holds_the_kernel(w_shape, groups):
    w = torch.randint(-128, 128, w_shape, dtype=torch.int8)
    wp, cs = ops.pack_conv_weight(w.cuda(), groups)
    assert tuple(wp.shape) == torchquant.conv.conv_packed_weight_shape(w_shape, groups, "cuda")
    k = list(w_shape[2:])
    x = torch.randint(0, 256, (1, w_shape[1] * groups) + (8,) * len(k), dtype=torch.uint8, device="cuda")
    ws = torch.full((w_shape[0],), 0.01, device="cuda")

    def conv(kernel_size):
        return ops.conv_int8(x, torch.tensor([0.1], device="cuda"), torch.tensor([3], device="cuda"), wp, cs.cuda(),
                             ws, None, kernel_size, [1], [0], [1], groups, None, None, False, None)

    want = reference.conv_int8(x.cpu(), torch.tensor([0.1]), torch.tensor([3]), w, ws.cpu(), None, [1], [0], [1],
                               groups, None, None, False, None)
    assert torch.equal(conv(k).cpu(), want)
    if len(k) >= 2 and k[-1] != k[-2]:  # as many taps, the other shape
        with pytest.raises(RuntimeError, match=r"argument 'w_packed' must be"):
            conv(k[:-2] + [k[-1], k[-2]])


@pytest.mark.parametrize("w_kernel,kernel_size", [((3, 3), (3, 3)), ((3, 3), (1, 9)), ((3, 3), (9, 1)),
                                                   ((3, 1), (1, 3)), ((4,), (2, 2))])
def test_depthwise_conv_refuses_a_weight_packed_for_another_kernel_of_as_many_taps(w_kernel, kernel_size):
    # The depthwise packing was [taps, C]: a 3 x 3 weight ran as a 1 x 9 one without a word.
    w = torch.randint(-127, 128, (6, 1, *w_kernel), dtype=torch.int8)
    wp, cs = ops.pack_conv_weight(w, 6)
    assert tuple(wp.shape) == (*w_kernel, 6)
    x = torch.randint(0, 256, (1, 6) + (9,) * len(kernel_size), dtype=torch.uint8)

    def conv():
        return ops.conv_int8(x, torch.tensor([0.1]), torch.tensor([3]), wp, cs, torch.full((6,), 0.01), None,
                             list(kernel_size), [1], [1], [1], 6, None, None, False, None)

    if tuple(w_kernel) == tuple(kernel_size):
        want = reference.conv_int8(x, torch.tensor([0.1]), torch.tensor([3]), w, torch.full((6,), 0.01), None,
                                   [1], [1], [1], 6, None, None, False, None)
        assert torch.equal(conv(), want)
        return
    with pytest.raises(RuntimeError, match=r"argument 'w_packed' must be the depthwise packing \[\*kernel_size, C\] = "
                                           + re.escape(str(list(kernel_size) + [6]))):
        conv()


def _args(x=None, w=None, groups=1, k=(3, 3), **kw):
    x = torch.randint(0, 256, (1, 4, 6, 6), dtype=torch.uint8) if x is None else x
    w = torch.randint(-128, 128, (6, 4 // groups, *k), dtype=torch.int8) if w is None else w
    wp, cs = ops.pack_conv_weight(w, groups)
    a = dict(x=x, x_scale=torch.tensor([0.1]), x_zero_point=torch.tensor([3]), w_packed=wp, w_col_sums=cs,
             w_scale=torch.full((w.shape[0],), 0.01), bias=None, kernel_size=list(k), stride=[1], padding=[1],
             dilation=[1], groups=groups, out_scale=None, out_zero_point=None, relu=False, out_dtype=None)
    a.update(kw)
    return a


def _call(a):
    return ops.conv_int8(*a.values())


def test_conv_bad_input():
    check_shared_bad_input(ops.pack_conv_weight, _call, _args, "conv")
    with pytest.raises(RuntimeError, match="argument 'groups' \\(3\\) must divide the output channels of 'w'"):
        ops.pack_conv_weight(torch.zeros(4, 2, 3, 3, dtype=torch.int8), 3)
    with pytest.raises(RuntimeError, match="argument 'w_packed' must be"):
        a = _args(x=torch.randint(0, 256, (1, 2, 6, 6), dtype=torch.uint8))  # weight packed for Cin = 4
        _call(a)
    with pytest.raises(RuntimeError, match="smaller than the dilated kernel"):
        _call(_args(padding=[0], dilation=[4]))


@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[9], CASES[13]], ids=_ids)
def test_conv_nonfinite_bias(isa, device, case):
    """A NaN / inf bias makes y NaN / inf: requantized to the zero point / saturated, as
    linear_int8 does (the kernels' NaN path, not taken when everything is finite)."""
    x, xs, xz, w, ws, bias = _make(case, 2, torch.uint8, seed=8, device=device)
    bias[0], bias[1 % bias.numel()] = float("nan"), float("inf")
    bias[-1] = float("-inf")
    for out_dtype in (torch.uint8, torch.int8, torch.float32):
        for relu in (False, True):
            got, want = _run(case, x, xs, xz, w, ws, bias, out_dtype, relu, *out_qparams(out_dtype, device))
            if out_dtype == torch.float32:
                assert torch.equal(got.isnan().cpu(), want.isnan())
                got, want = torch.nan_to_num(got.cpu()), torch.nan_to_num(want)
            assert_same(got, want)


@pytest.mark.parametrize("case", [
    ((6, 150), 33, 33, (3, 3), (1, 1), (1, 1), (1, 1), 33),      # rows longer than a column pass, 1-ch tail
    ((5, 261), 16, 16, (3, 3), (2, 2), (1, 1), (1, 1), 16),      # strided passes, half a block
    ((7, 9), 64, 64, (4, 3), (1, 1), (2, 1), (1, 1), 64),        # four kernel rows in one group
    ((6, 8), 70, 70, (1, 3), (1, 2), (0, 1), (1, 1), 70),        # one kernel row
    ((9, 11), 24, 24, (5, 5), (2, 1), (2, 2), (1, 2), 24),       # two row groups, dilated along W
    ((4, 5, 6), 8, 8, (3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 8),  # 3-d: nine rows, three groups
    ((8, 8), 1, 1, (3, 3), (1, 1), (0, 0), (1, 1), 1),           # one channel, no padding
], ids=["wide", "wide-s2", "k4x3", "k1x3", "k5x5", "3d", "c1"])
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
def test_depthwise_blocks_groups_and_zero_points(isa, case, xdtype):
    """Depthwise kernels' paths: input columns in several passes, channel counts that are not a
    multiple of the 16 / 32-channel blocks, one to four kernel rows per group and several groups,
    3-d kernels; the activation zero point at 0 (what follows a ReLU in a model), at the type's
    extremes and random; every output kind, ReLU on and off, batch 0, 1 and 3."""
    lo, hi = (0, 255) if xdtype == torch.uint8 else (-128, 127)
    for seed, batch in ((1, 3), (2, 0), (3, 1)):
        x, xs, xz, w, ws, bias = _make(case, batch, xdtype, seed=seed)
        for zp in (0 if xdtype == torch.uint8 else -5, lo, hi, int(xz)) if batch != 1 else (int(xz),):
            xz = torch.tensor([zp], dtype=torch.int32)
            for out_dtype, relu in ((torch.uint8, True), (torch.int8, False), (torch.float32, True),
                                    (torch.float32, False)):
                os_, oz = out_qparams(out_dtype, "cpu", scale=0.5)
                got, want = _run(case, x, xs, xz, w, ws, bias if zp != hi else None, out_dtype, relu, os_, oz)
                assert_same(got, want)


@pytest.mark.parametrize("case,batch", [
    (((7, 5), 32, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1), 2),   # N = 16: four rows per pack, 64-byte stores
    (((7, 5), 16, 96, (1, 1), (1, 1), (0, 0), (1, 1), 1), 1),   # K = 16, 64 + 32 columns
    (((5, 3), 5, 10, (1, 1), (1, 1), (0, 0), (1, 1), 1), 2),    # K % 4 = 1 in the micro-kernel, N < 16
    (((3, 3), 7, 17, (1, 1), (1, 1), (0, 0), (1, 1), 1), 1),    # K % 4 = 3, N = 17
    (((1, 1), 24, 48, (1, 1), (1, 1), (0, 0), (1, 1), 1), 1),   # M = 1
    (((9, 7), 16, 40, (1, 1), (2, 2), (0, 0), (1, 1), 1), 1),   # strided 1x1 (implicit GEMM)
    (((6, 7), 8, 24, (3, 3), (1, 1), (1, 1), (1, 1), 1), 1),    # implicit GEMM, padded
    (((8, 7), 32, 32, (1, 1), (1, 1), (0, 0), (1, 1), 2), 1),   # 16 channels per group: row by row stores
    (((11,), 4, 16, (1,), (1,), (0,), (1,), 1), 3),             # conv1d, K = 4
    (((5, 5), 4, 16, (1, 1), (1, 1), (0, 0), (1, 1), 1), 0),    # batch 0
], ids=["n16", "k16", "k5", "k7n17", "m1", "strided", "implicit", "groups", "conv1d", "batch0"])
def test_conv_small_k_fused_requantize(isa, case, batch):
    """Small-K convolutions (the AVX-512 micro-kernel requantizes its accumulators in registers):
    K not a multiple of 4, N not a multiple of 16, M = 1 and odd spatial sizes, batch 0, zero
    points 0 and not, ReLU or not, int8 / uint8 / float out, with and without bias."""
    for xdtype in (torch.uint8, torch.int8):
        x, xs, xz, w, ws, bias = _make(case, batch, xdtype, seed=21)
        for zp in (0, int(xz)):
            xz = torch.tensor([zp], dtype=torch.int32)
            for out_dtype in (torch.uint8, torch.int8, torch.float32):
                for relu in (False, True):
                    for scale, b in ((0.01, bias), (0.5, None)):
                        os_, oz = out_qparams(out_dtype, "cpu", scale=scale)
                        if oz is not None and relu:
                            oz = torch.zeros_like(oz)  # a fused ConvReLU's output zero point
                        got, want = _run(case, x, xs, xz, w, ws, b, out_dtype, relu, os_, oz)
                        assert_same(got, want)


@pytest.mark.parametrize("case", [
    ((7, 7), 64, 72, (3, 3), (1, 1), (1, 1), (1, 1), 1),          # resnet's late 3x3 (7x7, a border row = 7 px)
    ((6, 12), 16, 20, (3, 3), (1, 1), (1, 1), (1, 1), 1),         # border rows of 12 px: two whole tiles
    ((9, 5), 8, 16, (5, 3), (2, 1), (2, 1), (1, 1), 1),           # 5 kernel rows, 2 padded at each end
    ((10, 8), 8, 12, (3, 3), (1, 1), (3, 1), (2, 1), 1),          # dilated along H, padding past the reach
    ((4, 9), 4, 8, (3, 3), (1, 1), (4, 1), (1, 1), 1),            # output rows whose every kernel row is padding
    ((8, 8), 8, 8, (1, 3), (1, 1), (0, 1), (1, 1), 1),            # no H padding: nothing to skip
    ((3, 6, 7), 4, 8, (1, 3, 3), (2, 1, 2), (0, 1, 1), (1, 2, 1), 1),  # conv3d of depth-1 kernel
    ((7, 7), 6, 8, (3, 3), (1, 1), (1, 1), (1, 1), 1),            # C % 4 != 0: rows skipped, not columns
    ((5, 9), 8, 8, (3, 3), (1, 1), (1, 4), (1, 1), 1),            # output columns whose every kernel column is padding
    ((8, 11), 12, 16, (3, 5), (1, 2), (1, 2), (1, 1), 1),         # strided along W, 2 padded columns each side
    ((14, 14), 32, 40, (3, 3), (1, 1), (1, 1), (1, 1), 1),        # resnet's 3x3 at 14x14: 9 padding classes
    ((30, 30), 8, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1),         # 2 % of taps in side padding: raster order
    ((12, 12), 4, 8, (9, 9), (1, 1), (4, 4), (1, 1), 1),          # 81 padding classes
    ((18, 18), 4, 8, (17, 17), (1, 1), (8, 8), (1, 1), 1),        # 289 classes: raster order
], ids=["7x7", "wide", "k5", "dilated", "all-pad", "no-hpad", "3d", "c6", "all-pad-cols", "w-stride",
        "14x14", "30x30", "k9", "k17"])
@pytest.mark.parametrize("threads", [1, 2])
def test_conv_zero_point0_skips_padded_kernel_rows(isa, case, threads):
    """uint8 activations of zero point 0 (after a ReLU): the implicit GEMM skips the kernel rows
    and columns that fall in the padding of every pixel of a register tile, whose pixels are
    gathered by padding class. Bit-identical with the reference on every ISA, whatever the tile
    boundaries (batch 1 to 3), for every output kind."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for batch in (1, 2, 3):
            x, xs, xz, w, ws, bias = _make(case, batch, torch.uint8, seed=41 + batch)
            x = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(batch)) < 0.4,
                            torch.zeros_like(x), x)
            xz = torch.zeros_like(xz)
            for out_dtype, relu in ((torch.uint8, True), (torch.int8, False), (torch.float32, False)):
                got, want = _run(case, x, xs, xz, w, ws, bias, out_dtype, relu, *out_qparams(out_dtype, "cpu"))
                assert_same(got, want)
    finally:
        torch.set_num_threads(old)


@st.composite
def _conv_geometries(draw):
    """A random convolution: 1-d to 3-d, dense / grouped / depthwise, kernel 1-5, stride 1-3,
    padding 0-3 (up to past the kernel's reach), dilation 1-2, odd and tiny sizes, batch 0-3."""
    nd = draw(st.sampled_from([1, 2, 2, 2, 3]))
    kind = draw(st.sampled_from(["dense", "dense", "dense", "grouped", "depthwise"]))
    # Channel counts that are multiples of 4 often: kernel columns of whole 4-byte groups.
    cin_g = 1 if kind == "depthwise" else draw(st.sampled_from([1, 2, 3, 4, 4, 5, 8, 8, 12, 16]))
    groups = 1 if kind == "dense" else draw(st.integers(2, 4)) if kind == "grouped" else draw(st.integers(1, 40))
    cout_g = draw(st.integers(1, 2)) if kind == "depthwise" else draw(st.integers(1, 24))
    big = 14 if nd < 3 else 6
    k, s, p, d, sp = [], [], [], [], []
    for _ in range(nd):
        kk, dd = draw(st.integers(1, 5)), draw(st.sampled_from([1, 1, 2]))
        pp = draw(st.integers(0, 3))
        reach = dd * (kk - 1) + 1
        sp.append(draw(st.integers(max(1, reach - 2 * pp), max(1, reach - 2 * pp) + big)))
        k.append(kk)
        d.append(dd)
        p.append(pp)
        s.append(draw(st.integers(1, 3)))
    return (tuple(sp), cin_g * groups, cout_g * groups, tuple(k), tuple(s), tuple(p), tuple(d), groups)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=_conv_geometries(), seed=st.integers(0, 2**32 - 1))
def test_conv_random_geometries_match_reference(isa, case, seed):
    """Property test over random geometries: every kernel path (implicit GEMM with and without
    padding skip and gathering by padding class, im2col tiles, 1x1 in place, depthwise) is
    bit-identical to the reference. zp0: unsigned input of zero point 0 with many zeros (the
    input after a ReLU, where padded taps are skipped). The batch, dtypes and thread count come
    from the drawn seed, uniformly (hypothesis's own draws lean to the first choice and to 0)."""
    r = random.Random(seed)
    batch, xdtype, zp0 = r.choice([0, 1, 1, 2, 3]), r.choice([torch.uint8, torch.int8]), r.random() < 0.6
    out = r.choice([(torch.uint8, True), (torch.int8, False), (torch.float32, False), (torch.float32, True)])
    threads = r.choice([1, 2])
    x, xs, xz, w, ws, bias = _make(case, batch, xdtype, seed=seed % 2**31)
    if zp0 and xdtype == torch.uint8:
        xz = torch.zeros_like(xz)
        x = torch.where(x < 100, torch.zeros_like(x), x)
    out_dtype, relu = out
    with num_threads(threads):
        got, want = _run(case, x, xs, xz, w, ws, bias, out_dtype, relu, *out_qparams(out_dtype, "cpu"))
    assert_same(got, want)
