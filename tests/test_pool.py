"""int8 pooling ops (max_pool_int8, avg_pool_int8, adaptive_avg_pool_int8): every CPU kernel
variant and CUDA bit-exact against the plain-torch oracles of torchquant.reference, on odd
shapes, both layouts, ties and saturation; the argument errors; the QTensor functions and
modules that reach them."""
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchquant
from torchquant import QTensor, reference

ops = torch.ops.torchquant
CL = torch.channels_last


def _codes(shape, dtype, gen, layout="cl"):
    lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
    x = torch.randint(lo, hi + 1, shape, dtype=dtype, generator=gen)
    if layout == "cl":
        if x.dim() == 4:
            x = x.contiguous(memory_format=CL)
        elif x.dim() == 5:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        elif x.dim() == 3:
            x = x.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "strided":
        x = torch.randint(lo, hi + 1, (*shape[:-1], 2 * shape[-1]), dtype=dtype, generator=gen)[..., ::2]
    return x


def _zp(dtype, v=None):
    return torch.tensor([(17 if dtype == torch.uint8 else -9) if v is None else v], dtype=torch.int32)


def _check_layout(got, x):
    """The result has x's memory format (channels-last in, channels-last out)."""
    if x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=CL) and not x.is_contiguous():
        assert got.is_contiguous(memory_format=CL)
    elif x.is_contiguous():
        assert got.is_contiguous()


SHAPES_2D = [(2, 64, 13, 11), (1, 37, 7, 9), (3, 5, 6, 6), (1, 200, 9, 8), (2, 1, 5, 5), (0, 33, 6, 7),
             (1, 96, 3, 3), (1, 31, 4, 5)]
MAX_ARGS = [  # kernel_size, stride, padding, dilation, ceil_mode
    ([3, 3], [2, 2], [1, 1], [1, 1], False),  # resnet's stem
    ([3, 3], [2, 2], [1, 1], [1, 1], True),
    ([2, 2], [], [0], [1], False),
    ([3, 2], [1, 2], [1, 0], [2, 1], True),
    ([2, 3], [3, 1], [1, 1], [3, 2], True),
    ([1, 1], [2, 2], [0], [1], False),
    ([3], [2], [1], [1], True),
]
AVG_ARGS = [  # kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
    ([3, 3], [2, 2], [1, 1], False, True, None),
    ([3, 3], [1, 1], [1, 1], True, False, None),
    ([2, 3], [2, 1], [1, 1], True, True, 5),
    ([2, 2], [], [0], True, True, None),
    ([3, 2], [2, 3], [1, 1], True, False, None),
    ([5, 5], [3, 3], [2, 2], True, True, None),
    ([4, 3], [1, 1], [0], False, True, -3),
]
ADAPTIVE_SIZES = [[1, 1], [3, 2], [7, 5], [1, 4], [2, 1]]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("layout", ["cl", "contiguous", "strided"])
def test_max_pool_matches_reference(isa, dtype, layout):
    gen = torch.Generator().manual_seed(1)
    for shape, args in itertools.product(SHAPES_2D, MAX_ARGS):
        x = _codes(shape, dtype, gen, layout)
        try:
            want = reference.max_pool_int8(x, *args)
        except RuntimeError:  # torch refuses the geometry: so must the op
            with pytest.raises(RuntimeError):
                ops.max_pool_int8(x, *args)
            continue
        got = ops.max_pool_int8(x, *args)
        assert got.dtype == dtype and got.shape == want.shape, (shape, args)
        assert torch.equal(got, want), (shape, args)
        _check_layout(got, x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("layout", ["cl", "contiguous", "strided"])
def test_avg_pool_matches_reference(isa, dtype, layout):
    gen = torch.Generator().manual_seed(2)
    for (shape, args), zp in itertools.product(itertools.product(SHAPES_2D, AVG_ARGS), (None, 0)):
        x = _codes(shape, dtype, gen, layout)
        z = _zp(dtype, zp)
        try:
            want = reference.avg_pool_int8(x, z, *args)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                ops.avg_pool_int8(x, z, *args)
            continue
        got = ops.avg_pool_int8(x, z, *args)
        assert got.dtype == dtype and got.shape == want.shape, (shape, args)
        assert torch.equal(got, want), (shape, args, zp)
        _check_layout(got, x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
@pytest.mark.parametrize("layout", ["cl", "contiguous", "strided"])
def test_adaptive_avg_pool_matches_reference(isa, dtype, layout):
    gen = torch.Generator().manual_seed(3)
    for shape, size in itertools.product(SHAPES_2D + [(2, 1280, 7, 7), (1, 40, 20, 21)], ADAPTIVE_SIZES):
        x = _codes(shape, dtype, gen, layout)
        z = _zp(dtype)
        got = ops.adaptive_avg_pool_int8(x, z, size)
        want = reference.adaptive_avg_pool_int8(x, z, size)
        assert torch.equal(got, want), (shape, size)
        _check_layout(got, x)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_1d_3d_and_unbatched(isa, dtype):
    gen = torch.Generator().manual_seed(4)
    z = _zp(dtype)
    for layout in ("cl", "contiguous"):
        for shape in [(2, 35, 11), (1, 64, 8), (3, 1, 9)]:
            x = _codes(shape, dtype, gen, layout)
            for args in [([3], [2], [1], [1], True), ([2], [], [0], [3], False)]:
                assert torch.equal(ops.max_pool_int8(x, *args), reference.max_pool_int8(x, *args))
            for args in [([3], [2], [1], True, False, None), ([4], [1], [2], False, True, None)]:
                assert torch.equal(ops.avg_pool_int8(x, z, *args), reference.avg_pool_int8(x, z, *args))
            for size in ([1], [3], [12]):
                assert torch.equal(ops.adaptive_avg_pool_int8(x, z, size), reference.adaptive_avg_pool_int8(x, z, size))
            if layout == "cl" and shape[1] > 1:
                y = ops.max_pool_int8(x, [2])
                assert y.stride(1) == 1
        for shape in [(2, 40, 5, 6, 7), (1, 3, 4, 4, 4)]:
            x = _codes(shape, dtype, gen, layout)
            for args in [([2, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 1], True), ([3], [1], [1], [2], False)]:
                args = ([args[0][0]] * 3, *args[1:]) if len(args[0]) == 1 else args
                assert torch.equal(ops.max_pool_int8(x, *args), reference.max_pool_int8(x, *args))
            for args in [([2, 3, 3], [2, 2, 1], [1, 1, 1], True, False, None), ([3, 3, 3], [], [1], False, True, 7)]:
                assert torch.equal(ops.avg_pool_int8(x, z, *args), reference.avg_pool_int8(x, z, *args))
            for size in ([1, 1, 1], [2, 3, 5]):
                assert torch.equal(ops.adaptive_avg_pool_int8(x, z, size), reference.adaptive_avg_pool_int8(x, z, size))
            if layout == "cl" and shape[1] > 1:
                assert ops.max_pool_int8(x, [2, 2, 2]).is_contiguous(memory_format=torch.channels_last_3d)
    # unbatched [C, H, W]
    x = _codes((33, 7, 6), dtype, gen, "contiguous")
    assert torch.equal(ops.max_pool_int8(x, [3, 3], [2, 2], [1, 1]), reference.max_pool_int8(x, [3, 3], [2, 2], [1, 1]))
    assert torch.equal(ops.adaptive_avg_pool_int8(x, z, [2, 2]), reference.adaptive_avg_pool_int8(x, z, [2, 2]))


def test_ties_saturation_and_long_windows(isa):
    # Ties: windows of two taps with centered sums 1, 3, -1, -3 -> 0.5, 1.5, -0.5, -1.5 round
    # half to even; divisor_override=1 saturates; windows of 128 to 400 taps cross the int16
    # partial sums of the SIMD kernels.
    for dtype, zp in [(torch.uint8, 100), (torch.int8, 0)]:
        base = torch.tensor([1, 0, 3, 0, -1, 0, -3, 0], dtype=torch.int32) + zp
        x = base.to(dtype).reshape(1, 1, 1, 8).repeat(1, 70, 1, 1).contiguous(memory_format=CL)
        z = _zp(dtype, zp)
        got = ops.avg_pool_int8(x, z, [1, 2])
        assert got[0, :, 0].unique(dim=0).tolist() == [[zp + 0, zp + 2, zp + 0, zp - 2]]
        assert torch.equal(got, reference.avg_pool_int8(x, z, [1, 2]))
        hi = torch.full((2, 64, 5, 5), 127 if dtype == torch.int8 else 255, dtype=dtype).contiguous(memory_format=CL)
        sat = ops.avg_pool_int8(hi, z, [3, 3], [1, 1], [1, 1], False, True, 1)
        assert int(sat.max()) == (127 if dtype == torch.int8 else 255)
        assert torch.equal(sat, reference.avg_pool_int8(hi, z, [3, 3], [1, 1], [1, 1], False, True, 1))
        gen = torch.Generator().manual_seed(5)
        for hw in [(8, 16), (16, 8), (1, 129), (16, 16), (20, 20)]:
            x = _codes((2, 72, *hw), dtype, gen)
            assert torch.equal(ops.adaptive_avg_pool_int8(x, z, [1, 1]), reference.adaptive_avg_pool_int8(x, z, [1, 1]))
            assert torch.equal(ops.avg_pool_int8(x, z, list(hw)), reference.avg_pool_int8(x, z, list(hw)))
        # extremes: every code at the dtype's bounds
        lo_hi = torch.tensor([0, 255] if dtype == torch.uint8 else [-128, 127], dtype=dtype)
        x = lo_hi[torch.randint(0, 2, (2, 48, 9, 9), generator=gen)].contiguous(memory_format=CL)
        for k in (2, 3):
            assert torch.equal(ops.max_pool_int8(x, [k, k], [1, 1], [1, 1]), reference.max_pool_int8(x, [k, k], [1, 1], [1, 1]))
            assert torch.equal(ops.avg_pool_int8(x, z, [k, k], [1, 1], [1, 1]), reference.avg_pool_int8(x, z, [k, k], [1, 1], [1, 1]))


def test_max_pool_window_of_padding_only_gives_the_minimum(isa):
    """kernel 2, padding 1, dilation 5 on 4 pixels: the window (-1, 4) reads padding only; torch.ao's
    quantized max_pool2d gives the dtype's minimum there."""
    for dtype in (torch.uint8, torch.int8):
        x = _codes((1, 40, 4, 4), dtype, torch.Generator().manual_seed(6))
        got = ops.max_pool_int8(x, [2, 2], [1, 1], [1, 1], [5, 5])
        assert got.shape == (1, 40, 1, 1) and int(got.max()) == (0 if dtype == torch.uint8 else -128)
        assert torch.equal(got, reference.max_pool_int8(x, [2, 2], [1, 1], [1, 1], [5, 5]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = torch._make_per_tensor_quantized_tensor(x, 0.1, 3)
            assert torch.equal(got, F.max_pool2d(ref, 2, 1, 1, 5).int_repr())


def test_inputs_are_not_modified_and_threads_agree():
    gen = torch.Generator().manual_seed(7)
    x = _codes((8, 64, 56, 56), torch.uint8, gen)
    x0 = x.clone()
    z = _zp(torch.uint8)
    outs = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append((ops.max_pool_int8(x, [3, 3], [2, 2], [1, 1]), ops.avg_pool_int8(x, z, [3, 3], [2, 2], [1, 1]),
                         ops.adaptive_avg_pool_int8(x[:, :, :7, :7], z, [1, 1])))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(x, x0)
    assert all(torch.equal(a, b) for a, b in zip(*outs))
    assert torch.equal(outs[0][0], reference.max_pool_int8(x, [3, 3], [2, 2], [1, 1]))


def test_bad_arguments():
    x = torch.zeros(1, 3, 8, 8, dtype=torch.uint8)
    z = _zp(torch.uint8)
    cases = [
        (lambda: ops.max_pool_int8(x, [0, 0]), r"max_pool2d: argument 'kernel_size' must be positive, got \[0, 0\]"),
        (lambda: ops.max_pool_int8(x, [3, 3], [0, 1]), r"argument 'stride' must be positive, got \[0, 1\]"),
        (lambda: ops.max_pool_int8(x, [3, 3], [1], [2]), r"argument 'padding' must be at least 0 and at most half"),
        (lambda: ops.max_pool_int8(x, [3, 3], [1], [1], [0]), r"argument 'dilation' must be positive"),
        (lambda: ops.max_pool_int8(x[:, :, :2, :2], [3, 3]), r"max_pool2d: given input of shape \[1, 3, 2, 2\] the "
                                                             r"calculated output size is \[0, 0\]: too small"),
        (lambda: ops.max_pool_int8(x.float(), [2, 2]), r"argument 'x' must be an int8 or uint8 tensor"),
        (lambda: ops.max_pool_int8(x, [2, 2, 2, 2]), r"argument 'kernel_size' must hold 1, 2 or 3 values"),
        (lambda: ops.max_pool_int8(x[0, 0], [2, 2, 2]), r"max_pool3d: argument 'x' must be 4-d \(unbatched\) or 5-d"),
        (lambda: ops.max_pool_int8(x, [2, 2], [1, 1, 1]), r"argument 'stride' must hold 1 or 2 values"),
        (lambda: ops.max_pool_int8(x[:, :0], [2, 2]), r"argument 'x' must have non-zero sizes"),
        (lambda: ops.avg_pool_int8(x, z, [3, 3], [1], [1], False, True, 0), r"argument 'divisor_override' must not be 0"),
        (lambda: ops.avg_pool_int8(x, torch.tensor([300]), [2, 2]), r"argument 'zero_point' must lie in \[0, 255\]"),
        (lambda: ops.avg_pool_int8(x, torch.tensor([1, 2]), [2, 2]), r"argument 'zero_point' must have 1 element"),
        (lambda: ops.avg_pool_int8(x, torch.tensor([1.0]), [2, 2]), r"argument 'zero_point' must be an integer tensor"),
        (lambda: ops.adaptive_avg_pool_int8(x, z, [-1, 2]), r"argument 'output_size' must hold sizes >= 0"),
        (lambda: ops.adaptive_avg_pool_int8(x, z, [2 ** 40, 2]), r"argument 'output_size' must hold sizes below 2\^31"),
        (lambda: ops.adaptive_avg_pool_int8(x[:, :, :0], z, [1, 1]), r"argument 'x' must have non-zero sizes"),
    ]
    for fn, match in cases:
        with pytest.raises(RuntimeError, match=match):
            fn()
    assert ops.adaptive_avg_pool_int8(x, z, [0, 2]).shape == (1, 3, 0, 2)  # as torch


def test_spatial_size_past_int32_is_refused():
    # Each output position's window lives in int32 tables: a 1-d input of 2^31 + 1 bytes wrapped
    # them (max pool read before the buffer; adaptive average divided by 0). Refused before any
    # read (torch.empty commits no memory).
    big = torch.empty(1, 1, 2 ** 31 + 1, dtype=torch.uint8)
    z = _zp(torch.uint8)
    for fn in (lambda: ops.max_pool_int8(big, [2], [2]), lambda: ops.avg_pool_int8(big, z, [2], [2]),
               lambda: ops.adaptive_avg_pool_int8(big, z, [1])):
        with pytest.raises(RuntimeError, match=r"argument 'x' must have spatial sizes below 2\^31, got \[1, 1, 2147483649\]"):
            fn()


def test_fake_kernels():
    from torch._subclasses.fake_tensor import FakeTensorMode
    gen = torch.Generator().manual_seed(8)
    z = _zp(torch.uint8)
    for x in (_codes((2, 16, 9, 7), torch.uint8, gen), _codes((2, 16, 9, 7), torch.uint8, gen, "contiguous"),
              _codes((2, 16, 9), torch.uint8, gen), _codes((16, 9, 7), torch.uint8, gen, "contiguous")):
        nsp = 1 if x.dim() == 3 and x.shape[0] == 2 else 2
        calls = [(ops.max_pool_int8, (x, [3] * nsp, [2] * nsp, [1] * nsp, [1] * nsp, True)),
                 (ops.avg_pool_int8, (x, z, [3] * nsp, [2] * nsp, [1] * nsp, True, False, None)),
                 (ops.adaptive_avg_pool_int8, (x, z, [3] * nsp))]
        for op, args in calls:
            real = op(*args)
            with FakeTensorMode() as m:
                fake = op(*[m.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args])
            assert fake.shape == real.shape and fake.stride() == real.stride() and fake.dtype == real.dtype
            torch.library.opcheck(op.default, args)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_on_device(device, dtype):
    gen = torch.Generator().manual_seed(9)
    for layout in ("cl", "contiguous"):
        for shape in [(2, 64, 13, 11), (1, 37, 7, 9), (0, 8, 5, 5), (2, 1280, 7, 7)]:
            x = _codes(shape, dtype, gen, layout)
            z = _zp(dtype)
            xd, zd = x.to(device), z.to(device)
            for args in MAX_ARGS[:5]:
                got = ops.max_pool_int8(xd, *args)
                assert torch.equal(got.cpu(), reference.max_pool_int8(x, *args))
                _check_layout(got, xd)
            for args in AVG_ARGS:
                got = ops.avg_pool_int8(xd, zd, *args)
                assert torch.equal(got.cpu(), reference.avg_pool_int8(x, z, *args)), (shape, args)
                _check_layout(got, xd)
            for size in ADAPTIVE_SIZES:
                got = ops.adaptive_avg_pool_int8(xd, zd, size)
                assert torch.equal(got.cpu(), reference.adaptive_avg_pool_int8(x, z, size))
                _check_layout(got, xd)
    x = _codes((2, 40, 5, 6, 7), dtype, gen)
    z = _zp(dtype)
    assert torch.equal(ops.max_pool_int8(x.to(device), [2, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 2], True).cpu(),
                       reference.max_pool_int8(x, [2, 3, 3], [2, 2, 2], [1, 1, 1], [1, 1, 2], True))
    assert torch.equal(ops.adaptive_avg_pool_int8(x.to(device), z.to(device), [2, 3, 5]).cpu(),
                       reference.adaptive_avg_pool_int8(x, z, [2, 3, 5]))


# ---- the QTensor functions and modules
def _qtensor(x, zp):
    return QTensor(x, torch.tensor([0.1]), torch.tensor([zp], dtype=torch.int32))


def test_modules_take_the_op_without_copies():
    """nn.MaxPool2d / nn.AdaptiveAvgPool2d on a channels-last QTensor (a torchvision model's
    flow) call the int8 ops once, with no layout copy."""
    gen = torch.Generator().manual_seed(10)
    q = _qtensor(_codes((1, 64, 112, 112), torch.uint8, gen), 3)
    g = _qtensor(_codes((1, 512, 7, 7), torch.uint8, gen), 3)
    for mod, x, op in [(nn.MaxPool2d(3, 2, 1), q, "torchquant::max_pool_int8"),
                       (nn.AdaptiveAvgPool2d(1), g, "torchquant::adaptive_avg_pool_int8"),
                       (nn.AvgPool2d(3, 2, 1), q, "torchquant::avg_pool_int8")]:
        with torch.profiler.profile() as prof:
            out = mod(x)
        names = [e.name for e in prof.events()]
        assert op in names and not any(n in ("aten::copy_", "aten::clone", "aten::contiguous") for n in names), names
        assert out.data.is_contiguous(memory_format=CL)
        assert out.scale is x.scale and out.zero_point is x.zero_point


def test_functions_route_to_the_ops():
    gen = torch.Generator().manual_seed(11)
    for dtype, zp in [(torch.uint8, 5), (torch.int8, -4)]:
        x = _codes((2, 24, 9, 10), dtype, gen)
        q = _qtensor(x, zp)
        z = q.zero_point
        assert torch.equal(F.max_pool2d(q, 3, 2, 1, ceil_mode=True).data, reference.max_pool_int8(x, [3, 3], [2, 2], [1, 1], [1, 1], True))
        assert torch.equal(F.max_pool2d(q, (3, 2), dilation=2).data, reference.max_pool_int8(x, [3, 2], [3, 2], [0], [2, 2]))
        assert torch.equal(F.avg_pool2d(q, 3, 1, 1, count_include_pad=False).data,
                           reference.avg_pool_int8(x, z, [3, 3], [1, 1], [1, 1], False, False))
        assert torch.equal(F.adaptive_avg_pool2d(q, (None, 3)).data, reference.adaptive_avg_pool_int8(x, z, [9, 3]))
        assert torch.equal(q.mean((2, 3), keepdim=True).data, reference.adaptive_avg_pool_int8(x, z, [1, 1]))
        assert torch.equal(torch.mean(q, [-1, -2]).data, reference.adaptive_avg_pool_int8(x, z, [1, 1]).flatten(1))
        x1 = _codes((2, 24, 9), dtype, gen, "contiguous")
        q1 = _qtensor(x1, zp)
        assert torch.equal(F.max_pool1d(q1, 3, 2, 1).data, reference.max_pool_int8(x1, [3], [2], [1]))
        assert torch.equal(F.avg_pool1d(q1, 3, 2, 1).data, reference.avg_pool_int8(x1, z, [3], [2], [1]))
        assert torch.equal(F.adaptive_avg_pool1d(q1, 4).data, reference.adaptive_avg_pool_int8(x1, z, [4]))
        x3 = _codes((1, 8, 4, 6, 5), dtype, gen)
        q3 = _qtensor(x3, zp)
        assert torch.equal(nn.MaxPool3d(2, ceil_mode=True)(q3).data, reference.max_pool_int8(x3, [2] * 3, [2] * 3, [0], [1], True))
        assert torch.equal(F.avg_pool3d(q3, 3, 1, 1).data, reference.avg_pool_int8(x3, z, [3] * 3, [1] * 3, [1] * 3))
        # return_indices: torch's float pooling on the codes, same values
        out, idx = F.max_pool2d(q, 3, 2, 1, return_indices=True)
        assert torch.equal(out.data, reference.max_pool_int8(x, [3, 3], [2, 2], [1, 1])) and idx.dtype == torch.int64
    with pytest.raises(RuntimeError, match="max_pool2d: argument 'kernel_size' must be a single int or a tuple of 2"):
        F.max_pool2d(q, (2, 2, 2))
    pc = torchquant.quantize_per_channel(torch.randn(2, 3, 4, 4), torch.full((3,), 0.1), torch.zeros(3, dtype=torch.int32), 1, torch.qint8)
    for fn in (lambda t: F.max_pool2d(t, 2), lambda t: F.avg_pool2d(t, 2), lambda t: F.adaptive_avg_pool2d(t, 1)):
        with pytest.raises(NotImplementedError, match="per-tensor quantization"):
            fn(pc)


def test_compile_sees_the_ops():
    gen = torch.Generator().manual_seed(12)
    q = _qtensor(_codes((2, 16, 8, 8), torch.uint8, gen), 3)
    model = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1))
    want = model(q)
    got = torch.compile(model, backend="eager", fullgraph=True)(q)
    assert torch.equal(got.data, want.data)
