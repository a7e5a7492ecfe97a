"""int8 transposed convolution ops: bit-identical with torchquant.reference.conv_transpose_int8
on every CPU kernel variant (isa fixture) and on CUDA (device fixture), for 1-d / 2-d / 3-d,
groups, stride / padding / output_padding / dilation, odd sizes, batch 0 and 1, int8 / uint8
in and out, float out, ReLU, non-contiguous input, saturation and ties; and the errors bad input
gets."""
import pytest
import torch
import torch.nn.functional as F

import torchquant
from torchquant import reference

from _conv_helpers import (assert_same, check_7bit_activations, check_device_matches_reference, check_low_float_out,
                           check_matches_reference, check_noncontiguous_and_layouts, check_saturation_and_ties,
                           check_shared_bad_input, make_data, out_qparams)

ops = torch.ops.torchquant

# (spatial input sizes, Cin, Cout, kernel, stride, padding, output_padding, dilation, groups)
CASES = [
    ((9,), 5, 7, (3,), (1,), (1,), (0,), (1,), 1),                          # 1-d, odd
    ((8,), 8, 6, (4,), (3,), (2,), (1,), (2,), 2),                          # 1-d strided, dilated, grouped
    ((4, 4), 16, 8, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1),             # DCGAN-like 4x4 stride 2
    ((5, 6), 12, 20, (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1),            # UNet 2x2 upsampling
    ((1, 1), 10, 24, (4, 4), (1, 1), (0, 0), (0, 0), (1, 1), 1),            # DCGAN stem: 1x1 -> 4x4
    ((7, 5), 9, 3, (3, 5), (2, 3), (1, 2), (1, 2), (1, 1), 1),              # RGB output, odd, output_padding
    ((6, 7), 12, 18, (3, 2), (2, 1), (1, 0), (1, 0), (1, 2), 3),            # grouped, asymmetric, dilated
    ((5, 5), 6, 6, (3, 3), (2, 2), (1, 1), (1, 1), (1, 1), 6),              # depthwise
    ((3, 4), 40, 36, (3, 3), (1, 1), (2, 2), (0, 0), (2, 2), 2),            # padding eats the border
    ((3, 4, 5), 4, 9, (3, 3, 2), (2, 1, 2), (1, 1, 0), (1, 0, 1), (1, 1, 1), 1),  # 3-d
    ((2, 3, 3), 6, 4, (2, 2, 2), (2, 2, 2), (0, 0, 0), (0, 0, 0), (1, 1, 1), 2),  # 3-d grouped upsampling
    ((5, 7), 8, 32, (3, 3), (3, 3), (1, 1), (0, 0), (1, 1), 2),             # kernel = stride, cropped
    ((9,), 6, 20, (2,), (2,), (0,), (0,), (3,), 2),                         # kernel = stride, dilated
]


def _ids(case):
    sp, cin, cout, k, s, p, op, d, g = case
    return (f"{len(sp)}d-{'x'.join(map(str, sp))}-c{cin}-o{cout}-k{'x'.join(map(str, k))}-s{s[0]}-p{p[0]}"
            f"-op{op[0]}-d{d[-1]}-g{g}")


def _make(case, batch, xdtype, seed, device="cpu", saturate=False):
    sp, cin, cout, k, s, p, op, d, g = case
    return make_data(sp, cin, cout, (cin, cout // g, *k), batch, xdtype, seed, device, saturate)


def _run(case, x, xs, xz, w, ws, bias, out_dtype, relu, out_scale=None, out_zp=None):
    sp, cin, cout, k, s, p, op, d, g = case
    wp, cs = ops.pack_conv_transpose_weight(w, g)
    got = ops.conv_transpose_int8(x, xs, xz, wp, cs, ws, bias, list(k), list(s), list(p), list(op), list(d), g,
                                  out_scale, out_zp, relu, out_dtype)
    cpu = lambda t: None if t is None else t.cpu()  # noqa: E731
    want = reference.conv_transpose_int8(x.cpu(), xs.cpu(), xz.cpu(), w.cpu(), ws.cpu(), cpu(bias), list(s), list(p),
                                         list(op), list(d), g, cpu(out_scale), cpu(out_zp), relu, out_dtype)
    return got, want


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("xdtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("out_dtype,relu", [(torch.float32, False), (torch.uint8, True), (torch.int8, False)])
def test_conv_transpose_matches_reference(isa, case, xdtype, out_dtype, relu):
    check_matches_reference(_make, _run, case, xdtype, out_dtype, relu, CASES.index(case))


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("out_dtype,relu", [(torch.float32, False), (torch.uint8, True)])
def test_conv_transpose_7bit_activations(isa, case, out_dtype, relu):
    check_7bit_activations(_make, _run, case, out_dtype, relu, CASES.index(case))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_conv_transpose_cuda_matches_reference(device, case):
    check_device_matches_reference(_make, _run, case, device)


@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[9]], ids=_ids)
def test_conv_transpose_saturation_and_ties(isa, device, case):
    sp, cin, cout, k, s, p, op, d, g = case
    check_saturation_and_ties(_make, _run, lambda x, xs, xz, w, ws: reference.conv_transpose_int8(
        x, xs, xz, w, ws, None, list(s), list(p), list(op), list(d), g), case, device)


def test_conv_transpose_batch0_and_empty(isa, device):
    case = CASES[6]
    x, xs, xz, w, ws, bias = _make(case, 0, torch.uint8, seed=1, device=device)
    got, want = _run(case, x, xs, xz, w, ws, bias, torch.float32, False)
    assert got.shape == want.shape == (0, 18, 12, 9)
    # No output channels.
    x, xs, xz, w, ws, bias = _make(CASES[0], 2, torch.uint8, seed=1, device=device)
    wp, cs = ops.pack_conv_transpose_weight(w[:, :0], 1)
    y = ops.conv_transpose_int8(x, xs, xz, wp, cs, ws[:0], None, [3], [1], [1], [0], [1], 1, None, None, False,
                                None)
    assert y.shape == (2, 0, 9)
    # No input channels: every output is the bias.
    x0, w0 = x[:, :0], w[:0]
    wp, cs = ops.pack_conv_transpose_weight(w0, 1)
    got = ops.conv_transpose_int8(x0, xs, xz, wp, cs, ws, bias, [3], [1], [1], [0], [1], 1, None, None, False, None)
    assert torch.equal(got.cpu(), bias.cpu().reshape(1, -1, 1).expand(2, -1, 9))


def test_conv_transpose_noncontiguous_and_layouts(isa, device):
    check_noncontiguous_and_layouts(_make, _run, CASES[6], (2, 12, 12, 14), CASES[9], device)


def test_conv_transpose_low_float_out(isa):
    check_low_float_out(_make, _run, CASES[3])


@pytest.mark.parametrize("case", [
    ((16, 16), 64, 48, (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1),    # several bands and chunks
    ((20, 24), 32, 16, (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1),    # UNet upsampling, many pixels
    ((3, 3), 24, 600, (3, 3), (1, 1), (0, 0), (0, 0), (1, 1), 1),     # columns over several panel chunks
    ((12, 12), 48, 40, (5, 5), (1, 1), (2, 2), (0, 0), (1, 1), 4),    # stride 1: bands share input rows
    ((3, 3), 128, 128, (4, 4), (2, 2), (1, 1), (1, 1), (1, 1), 2),  # channel blocks split among tasks
    ((3, 4, 4), 16, 32, (3, 2, 2), (2, 2, 2), (1, 0, 0), (0, 1, 0), (1, 1, 1), 1),  # 3-d, depth taps
    ((3, 200), 24, 48, (2, 2), (2, 2), (0, 0), (0, 0), (1, 1), 1),   # kernel = stride, rows past a chunk
    ((3, 3), 64, 128, (3, 3), (3, 3), (1, 1), (0, 0), (1, 1), 2),    # kernel = stride, channel blocks split
    ((3, 4, 5), 16, 40, (2, 2, 2), (2, 2, 2), (1, 0, 0), (0, 0, 0), (1, 1, 1), 1),  # 3-d kernel = stride
], ids=["dcgan", "unet", "wide", "s1", "grouped-split", "3d", "once-long-rows", "once-split", "once-3d"])
def test_conv_transpose_large_layer_tiles(isa, case):
    """Layers with many output pixels, columns or taps: several bands, GEMM chunks and
    threads, at batch 1 (bands split for the threads) and 2."""
    for batch in (1, 2):
        x, xs, xz, w, ws, bias = _make(case, batch, torch.uint8, seed=9)
        got, want = _run(case, x, xs, xz, w, ws, bias, torch.uint8, True, *out_qparams(torch.uint8, "cpu"))
        assert_same(got, want)
        got, want = _run(case, x, xs, xz, w, ws, bias, torch.float32, False)
        assert_same(got, want)


@pytest.mark.parametrize("case", [CASES[2], CASES[6], CASES[7]], ids=_ids)
def test_conv_transpose_nonfinite_bias(isa, device, case):
    """A NaN / inf bias makes y NaN / inf: requantized to the zero point / saturated, as
    conv_int8 does."""
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


def test_reference_matches_float_conv_transpose():
    """The oracle itself: with small integers the float transposed convolution of the
    dequantized input is exact, so the reference must equal F.conv_transpose2d of
    (x - zp) * scale."""
    x = torch.randint(0, 10, (2, 4, 5, 6), dtype=torch.uint8)
    w = torch.randint(-3, 4, (4, 3, 3, 3), dtype=torch.int8)
    got = reference.conv_transpose_int8(x, torch.tensor([1.0]), torch.tensor([4]), w, torch.ones(6), None, 2, 1, 1,
                                        1, 2)
    want = F.conv_transpose2d(x.float() - 4, w.float(), None, 2, 1, 1, 2, 1)
    assert torch.equal(got, want)


def test_public_functions():
    w = torch.randint(-128, 128, (8, 3, 4, 4), dtype=torch.int8)
    wp, cs = torchquant.pack_conv_transpose_weight(w)
    x = torch.randint(0, 256, (1, 8, 5, 5), dtype=torch.uint8)
    y = torchquant.conv_transpose_int8(x, 0.02, 128, wp, cs, torch.full((3,), 0.01), [4, 4], stride=2, padding=1)
    want = reference.conv_transpose_int8(x, torch.tensor([0.02]), torch.tensor([128]), w, torch.full((3,), 0.01),
                                         None, 2, 1)
    assert y.shape == (1, 3, 10, 10)
    assert torch.equal(y, want)
    y = torchquant.conv_transpose_int8(x, 0.02, 128, wp, cs, torch.full((3,), 0.01), 4, stride=2, padding=1)
    assert torch.equal(y, want)


def test_fake_kernels_match():
    """torch.compile's fake kernels give the real kernels' shapes, dtypes and strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for case in (CASES[1], CASES[5], CASES[6], CASES[9]):
        sp, cin, cout, k, s, p, op, d, g = case
        x, xs, xz, w, ws, bias = _make(case, 2, torch.uint8, seed=1)
        wp, cs = ops.pack_conv_transpose_weight(w, g)
        args = (list(k), list(s), list(p), list(op), list(d), g, None, None, False, torch.float32)
        real = ops.conv_transpose_int8(x, xs, xz, wp, cs, ws, bias, *args)
        with FakeTensorMode() as mode:
            fw = mode.from_tensor(w)
            fwp, fcs = ops.pack_conv_transpose_weight(fw, g)
            assert fwp.shape == wp.shape and fcs.shape == cs.shape
            fake = ops.conv_transpose_int8(mode.from_tensor(x), mode.from_tensor(xs), mode.from_tensor(xz), fwp, fcs,
                                           mode.from_tensor(ws), mode.from_tensor(bias), *args)
        assert fake.shape == real.shape and fake.dtype == real.dtype and fake.stride() == real.stride()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_packing_records_the_weight(case):
    sp, cin, cout, k, s, p, op, d, g = case
    w = torch.randint(-128, 128, (cin, cout // g, *k), dtype=torch.int8)
    wp, cs = ops.pack_conv_transpose_weight(w, g)
    assert tuple(wp.shape) == torchquant.conv_transpose.conv_transpose_packed_weight_shape(tuple(w.shape), g)
    kk = [1] * (3 - len(k)) + list(k)
    assert wp[-32:].view(torch.int32).tolist() == [0x54435154, cin // g, *kk, g, cout, 0]
    assert int(wp[:-32].ne(0).sum()) == int(w.ne(0).sum())


@pytest.mark.parametrize("w_kernel,kernel_size", [((3, 1), (1, 3)), ((1, 3), (3, 1)), ((2, 3), (3, 2))])
def test_conv_transpose_refuses_a_weight_packed_for_another_kernel_of_as_many_taps(w_kernel, kernel_size):
    # The CPU packing's size depends on the taps only: a 3 x 1 weight ran as a 1 x 3 one without a word.
    w = torch.randint(-127, 128, (4, 8, *w_kernel), dtype=torch.int8)
    wp, cs = ops.pack_conv_transpose_weight(w, 1)
    a = _args(w=w, k=kernel_size, stride=[1], padding=[0])
    a["w_packed"] = wp
    with pytest.raises(RuntimeError, match=r"argument 'w_packed' was packed from a weight with Cin/groups=4, kernel "
                                           r"\(kD, kH, kW\)=\(1, %d, %d\)" % w_kernel):
        _call(a)
    untagged = wp.clone()
    untagged[-32:] = 0
    a = _args(w=w, k=w_kernel, stride=[1], padding=[0])
    _call(a)
    a["w_packed"] = untagged
    with pytest.raises(RuntimeError, match="argument 'w_packed' is not a weight from pack_conv_transpose_weight"):
        _call(a)


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_cuda_packed_weight_shape_holds_the_kernel(case):
    sp, cin, cout, k, s, p, op, d, g = case
    w = torch.randint(-128, 128, (cin, cout // g, *k), dtype=torch.int8)
    wp, cs = ops.pack_conv_transpose_weight(w.cuda(), g)
    assert tuple(wp.shape) == torchquant.conv_transpose.conv_transpose_packed_weight_shape(tuple(w.shape), g, "cuda")
    if len(k) >= 2 and k[-1] != k[-2]:  # as many taps, the other shape
        x, xs, xz, _, ws, bias = _make(case, 1, torch.uint8, seed=2, device="cuda")
        swapped = list(k[:-2]) + [k[-1], k[-2]]
        with pytest.raises(RuntimeError, match=r"argument 'w_packed' must be"):
            ops.conv_transpose_int8(x, xs, xz, wp, cs, ws, bias, swapped, list(s), [0] * len(k), [0] * len(k),
                                    [1] * len(k), g, None, None, False, None)


def test_torch_compile():
    case = CASES[2]
    x, xs, xz, w, ws, bias = _make(case, 2, torch.uint8, seed=1)
    wp, cs = ops.pack_conv_transpose_weight(w, 1)

    def f(x):
        return ops.conv_transpose_int8(x, xs, xz, wp, cs, ws, bias, [4, 4], [2, 2], [1, 1], [0, 0], [1, 1], 1, None,
                                       None, True, None)

    got = torch.compile(f, fullgraph=True, backend="eager")(x)
    assert torch.equal(got, f(x))


def _args(x=None, w=None, groups=1, k=(3, 3), **kw):
    x = torch.randint(0, 256, (1, 4, 6, 6), dtype=torch.uint8) if x is None else x
    w = torch.randint(-128, 128, (4, 6 // groups, *k), dtype=torch.int8) if w is None else w
    wp, cs = ops.pack_conv_transpose_weight(w, groups)
    a = dict(x=x, x_scale=torch.tensor([0.1]), x_zero_point=torch.tensor([3]), w_packed=wp, w_col_sums=cs,
             w_scale=torch.full((w.shape[1] * groups,), 0.01), bias=None, kernel_size=list(k), stride=[2],
             padding=[1], output_padding=[0], dilation=[1], groups=groups, out_scale=None, out_zero_point=None,
             relu=False, out_dtype=None)
    a.update(kw)
    return a


def _call(a):
    return ops.conv_transpose_int8(*a.values())


def test_conv_transpose_bad_input():
    check_shared_bad_input(ops.pack_conv_transpose_weight, _call, _args, "conv_transpose")
    with pytest.raises(RuntimeError, match="argument 'groups' \\(3\\) must divide the input channels of 'w' \\(4"):
        ops.pack_conv_transpose_weight(torch.zeros(4, 2, 3, 3, dtype=torch.int8), 3)
    with pytest.raises(RuntimeError, match="argument 'w_packed' must be"):
        _call(_args(x=torch.randint(0, 256, (1, 8, 6, 6), dtype=torch.uint8)))  # weight packed for Cin = 4
    with pytest.raises(RuntimeError, match="argument 'output_padding' must be smaller than either stride or dilation"):
        _call(_args(output_padding=[2]))
    with pytest.raises(RuntimeError, match="argument 'output_padding' must be smaller than either stride or dilation"):
        _call(_args(stride=[1], output_padding=[1]))
    with pytest.raises(RuntimeError, match="padding is too large"):
        _call(_args(x=torch.randint(0, 256, (1, 4, 1, 1), dtype=torch.uint8), stride=[1], padding=[2]))
    with pytest.raises(RuntimeError, match="non-zero spatial sizes"):
        _call(_args(x=torch.randint(0, 256, (1, 4, 0, 3), dtype=torch.uint8)))
    with pytest.raises(RuntimeError, match="argument 'w_col_sums' must have groups \\* taps"):
        _call(_args(w_col_sums=torch.zeros(7, dtype=torch.int32)))
